"""Read the kernel's own OOM kill counters, so what the agent reported can be reconciled with them.

`/proc/vmstat` `oom_kill` counts every OOM kill on the node since boot; each memory cgroup counts the
kills of its own tasks (v1 `memory.oom_control`, v2 `memory.events.local` / `memory.events`).
"""
from __future__ import annotations

import os
from typing import Optional

from ..cgroupfs import memcg
from ..cgroupfs.tree import walk


def _field(path: str, key: str) -> Optional[int]:
    """The integer after `key` on a "key value" line of a /proc file, or None."""
    return memcg.keyed(memcg.read_text(path, strict=True)).get(key)


def vmstat_oom_kills(proc_root: str = "/proc") -> Optional[int]:
    """Node-wide OOM kills since boot (`oom_kill` in /proc/vmstat; None before Linux 4.13)."""
    return _field(os.path.join(proc_root, "vmstat"), "oom_kill")


def memcg_oom_kills(mount: str, version: int) -> dict[str, int]:
    """Map every memory cgroup under `mount` ("/" for the root, "/a/b" below) to its own kill count.

    Counts are local to each cgroup (a kill counts once, in the victim's cgroup): v1 oom_control's
    counter is local already; on v2 `memory.events.local` is used when the kernel has it (5.2+),
    else `memory.events`, which is hierarchical unless mounted with memory_localevents.
    Paths are decoded with surrogateescape, like every cgroup path in otel-oom.
    """
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2 (cgroup v1 or v2), got {version!r}")
    if not os.path.isdir(mount):
        raise FileNotFoundError(f"memory hierarchy mount {mount!r} is not a directory")
    out: dict[str, int] = {}
    for path, directory, _inode in walk(mount):
        value = memcg.local_oom_kills(version, directory, strict=True)
        if value is not None:
            out[path] = value
    return out
