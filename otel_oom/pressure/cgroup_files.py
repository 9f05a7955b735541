"""Reading one memory cgroup's own files, cgroup v1 and v2: limit, usage, event counters, tasks.

Every reader returns None (or an empty result) when the file is gone or unreadable: a cgroup may
be removed at any moment, and a reading that failed is a missing attribute, never an error.
`directory` is the cgroup's directory under the mount.
"""
from __future__ import annotations

import os
from typing import Optional

# v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (about 2^63); anything this large is unlimited
_UNLIMITED = 1 << 62


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return None


def keyed(text: Optional[str]) -> dict[str, int]:
    """`key value` lines (memory.events, memory.oom_control, memory.stat) as a dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def limit_bytes(version: int, directory: str) -> Optional[int]:
    """The hard limit in bytes; None when unlimited or unreadable."""
    if version == 1:
        n = _int(_read(os.path.join(directory, "memory.limit_in_bytes")))
        return None if n is None or n >= _UNLIMITED else n
    text = _read(os.path.join(directory, "memory.max"))
    if text is None or text.strip() == "max":
        return None
    return _int(text)


def usage_bytes(version: int, directory: str) -> Optional[int]:
    name = "memory.usage_in_bytes" if version == 1 else "memory.current"
    return _int(_read(os.path.join(directory, name)))


def failcnt(directory: str) -> Optional[int]:
    """v1: how many times a charge hit the limit (ever)."""
    return _int(_read(os.path.join(directory, "memory.failcnt")))


def events_local(directory: str) -> dict[str, int]:
    """v2 memory.events.local (this cgroup only): low, high, max, oom, oom_kill, oom_group_kill."""
    return keyed(_read(os.path.join(directory, "memory.events.local")))


def oom_control(directory: str) -> dict[str, int]:
    """v1 memory.oom_control: oom_kill_disable, under_oom, oom_kill (this cgroup and below)."""
    return keyed(_read(os.path.join(directory, "memory.oom_control")))


def oom_kills(version: int, directory: str) -> Optional[int]:
    """Kills the kernel counted in this cgroup and below (v1 memory.oom_control, v2 memory.events)."""
    counts = oom_control(directory) if version == 1 else keyed(_read(os.path.join(directory, "memory.events")))
    return counts.get("oom_kill")


def tasks(directory: str, max_pids: int) -> tuple[int, tuple[int, ...]]:
    """Processes in the cgroup and its descendants: (count, the lowest `max_pids` pids)."""
    pids: set[int] = set()
    for dirpath, _dirs, _files in os.walk(directory):
        text = _read(os.path.join(dirpath, "cgroup.procs"))
        pids.update(int(p) for p in (text or "").split() if p.isdigit())
    return len(pids), tuple(sorted(pids)[:max_pids])


def waiting(pids: tuple[int, ...], proc_root: str = "/proc") -> int:
    """How many of `pids` sleep uninterruptibly (state D): what tasks waiting for memory look like."""
    n = 0
    for pid in pids:
        stat = _read(f"{proc_root}/{pid}/stat")
        if stat and stat.rsplit(")", 1)[-1].split()[:1] == ["D"]:
            n += 1
    return n
