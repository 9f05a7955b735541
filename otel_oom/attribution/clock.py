"""Kernel timestamps to wall-clock time, and the identity of this boot.

The BPF programs stamp events with CLOCK_BOOTTIME (CLOCK_MONOTONIC on kernels before 5.8).
The offset to CLOCK_REALTIME is sampled for every event, not once at start, so NTP steps and
suspends between start-up and the kill do not shift the reported time.
"""
from __future__ import annotations

import time


def to_wall_ns(kernel_ns: int, boot_clock: bool = True) -> int:
    clock = time.CLOCK_BOOTTIME if boot_clock else time.CLOCK_MONOTONIC
    # bracket the kernel-clock read with two wall reads and use their midpoint
    before = time.time_ns()
    k = time.clock_gettime_ns(clock)
    after = time.time_ns()
    return kernel_ns + (before + after) // 2 - k


def boot_id(proc_root: str = "/proc") -> str:
    with open(f"{proc_root}/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def event_id(boot: str, kernel_ns: int, pid: int) -> str:
    """Unique per kill, identical for every copy of it (retries, replays after a restart)."""
    return f"{boot}:{kernel_ns}:{pid}"
