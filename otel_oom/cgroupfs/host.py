"""The host's own memory files, read like a cgroup's: /proc/pressure/memory and /proc/meminfo.

The host is the root of what the memory cgroups divide: its PSI counts every stalled task, and
MemAvailable says whether the host itself is short of memory. Both paths may be fixture files.
"""
from __future__ import annotations

from typing import Optional

from .psi import HOST_PSI, Psi, read_psi


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo in bytes (the "kB" lines times 1024); {} when unreadable."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


class HostFiles:
    def __init__(self, psi_path: str = HOST_PSI, meminfo_path: str = "/proc/meminfo") -> None:
        self.psi_path = psi_path
        self.meminfo_path = meminfo_path

    def psi(self) -> Optional[Psi]:
        return read_psi(self.psi_path)

    def meminfo(self) -> dict[str, int]:
        return meminfo(self.meminfo_path)
