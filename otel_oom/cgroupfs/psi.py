"""Pressure stall information files: /proc/pressure/memory (the host) and a cgroup's memory.pressure.

`some`: the share of time at least one task stalled on memory; `full` (memory, since 5.2): all
non-idle tasks at once. Registering a trigger on such a file is the pressure source's business
(`pressure/psi_trigger.py`); reading one is here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

HOST_PSI = "/proc/pressure/memory"


@dataclass(frozen=True)
class Psi:
    some_avg10: float   # percent of the last 10 s in which at least one task stalled on memory
    some_avg60: float
    full_avg10: Optional[float]  # percent in which all non-idle tasks stalled (None: no "full" line)
    full_avg60: Optional[float]
    some_total_us: int


def parse_psi(text: str) -> Psi:
    """`some avg10=1.00 avg60=0.50 avg300=0.10 total=12345` (+ a `full` line since 5.2 for memory)."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        rows[kind] = dict(item.split("=", 1) for item in rest.split() if "=" in item)
    if "some" not in rows:
        raise ValueError(f"not a PSI file: {text[:60]!r}")
    some, full = rows["some"], rows.get("full")
    return Psi(some_avg10=float(some["avg10"]), some_avg60=float(some["avg60"]),
               full_avg10=float(full["avg10"]) if full else None, full_avg60=float(full["avg60"]) if full else None,
               some_total_us=int(some["total"]))


def read_psi(path: str) -> Optional[Psi]:
    """The PSI file at `path`; None when it is missing, unreadable or not a PSI file."""
    try:
        with open(path) as f:
            return parse_psi(f.read())
    except (OSError, ValueError, KeyError):
        return None
