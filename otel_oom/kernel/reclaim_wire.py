"""Decoding of the second ring-buffer record: `struct oom_reclaim_event` (bpf/oomkill.h).

The BPF programs on the OOM reaper's tracepoints (`oom:wake_reaper`, `start_task_reaping`,
`finish_task_reaping`, `skip_task_reaping`), on `mmap:exit_mmap` (the victim's address space torn
down, 6.1+) and on `sched:sched_process_exit` (the victim's last thread) write one for each victim
they saw marked (by `mark_victim` or a user-space killer's
SIGKILL). It shares the ring buffer with `struct oom_event`, so it arrives after its kill, and is
told apart by its size. Like `wire.py`, the mirror is checked against the object's BTF.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from .wire import F_BOOT_CLOCK

OOM_RECLAIM_EVENT_VERSION = 1

# enum oom_reclaim_kind
KINDS = {1: "exit", 2: "reaper_wake", 3: "reaper_start", 4: "reaper_finish", 5: "reaper_skip", 6: "exit_mmap",
         7: "exited"}
# the memory is back: the first of these ends the wait for a victim
FINAL = ("exit", "exit_mmap", "reaper_finish")

u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


class RawReclaimEvent(ctypes.Structure):
    _fields_ = [
        ("timestamp_ns", u64),
        ("marked_ns", u64),
        ("version", u32),
        ("flags", u32),
        ("pid", u32),
        ("tgid", u32),
        ("kind", u8),
        ("__pad", u8 * 7),
    ]


RECLAIM_EVENT_SIZE = ctypes.sizeof(RawReclaimEvent)


class ReclaimDecodeError(ValueError):
    pass


@dataclass(frozen=True)
class ReclaimEvent:
    """What the kernel did with a victim's memory after the kill."""

    kind: str            # KINDS' values
    timestamp_ns: int    # CLOCK_BOOTTIME (CLOCK_MONOTONIC when boot_clock is False)
    marked_ns: int       # when the BPF side saw the victim marked, same clock
    boot_clock: bool
    pid: int             # the victim thread the kill named (mark_victim's pid)
    tgid: int            # 0 when unknown


def decode_reclaim(data: bytes) -> ReclaimEvent:
    if len(data) != RECLAIM_EVENT_SIZE:
        raise ReclaimDecodeError(f"sample of {len(data)} bytes, expected {RECLAIM_EVENT_SIZE}")
    r = RawReclaimEvent.from_buffer_copy(data)
    if r.version != OOM_RECLAIM_EVENT_VERSION:
        raise ReclaimDecodeError(f"reclaim event version {r.version}, this agent understands {OOM_RECLAIM_EVENT_VERSION}")
    return ReclaimEvent(kind=KINDS.get(r.kind, f"unknown-{r.kind}"), timestamp_ns=r.timestamp_ns,
                        marked_ns=r.marked_ns, boot_clock=bool(r.flags & F_BOOT_CLOCK), pid=r.pid, tgid=r.tgid)
