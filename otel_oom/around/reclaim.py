"""After the kill: how long until the victim's memory was given back (`oom.reclaim`).

Every kill the probe delivered (the kernel's, or a user-space killer's SIGKILL) waits here for
the kernel's account of its memory (`kernel.reclaim_wire.ReclaimEvent`): the OOM reaper finishing
with it (`oom:finish_task_reaping`; the reaper runs only when the victim has not exited on its own
within about 2 s on kernels since 5.18, at once before), or its address space torn down
(`mmap:exit_mmap`, 6.1+; on older kernels, or for a victim whose mm was not seen, its last thread
passing `sched:sched_process_exit`), whichever comes first. The duration is
measured between two CLOCK_BOOTTIME stamps of the same BPF object: mark_victim (or the SIGKILL)
and that event. A victim with neither within `timeout_s` is reported once as `timeout`: its
memory is still held (stuck in an uninterruptible sleep, or shared with a process that lives on).

Runs on the worker thread only (the pipeline calls it).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from ..kernel.reclaim_wire import FINAL, ReclaimEvent
from ..schema.records import RECLAIM_EXIT, RECLAIM_EXIT_MMAP, RECLAIM_REAPER, RECLAIM_TIMEOUT, OomKill, OomReclaim

_METHODS = {"exit": RECLAIM_EXIT, "exit_mmap": RECLAIM_EXIT_MMAP, "reaper_finish": RECLAIM_REAPER}

PENDING_MAX = 65536  # victims waiting for their memory; the oldest are forgotten beyond this


@dataclass
class _Pending:
    kill: OomKill
    since_mono: float
    reaper_woken: bool = False
    reaper_skipped: bool = False


class ReclaimTracker:
    def __init__(self, timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # victim tid -> its kill
        self.forgotten = 0

    def killed(self, kill: OomKill) -> None:
        """A kill whose memory is now awaited (only kills stamped by the probe's clock can be timed)."""
        if kill.recovered or not kill.boot_time_ns:
            return
        self._pending[kill.victim_tid] = _Pending(kill, self._clock())
        while len(self._pending) > PENDING_MAX:
            self._pending.popitem(last=False)
            self.forgotten += 1

    def observe(self, ev: ReclaimEvent) -> Optional[OomReclaim]:
        p = self._pending.get(ev.pid)
        if p is None and ev.tgid:
            p = next((q for q in self._pending.values() if q.kill.victim_pid == ev.tgid), None)
        if p is None:
            return None  # a victim from before this agent started, or already reported
        if ev.kind == "reaper_wake":
            p.reaper_woken = True
            return None
        if ev.kind == "reaper_skip":
            p.reaper_skipped = True
            return None
        if ev.kind not in FINAL:
            return None  # reaper_start, exited: the memory is not back yet
        self._pending.pop(p.kill.victim_tid, None)
        start = p.kill.boot_time_ns or ev.marked_ns
        return self._record(p, _METHODS[ev.kind], max(0, ev.timestamp_ns - start))

    def expire(self) -> list[OomReclaim]:
        now = self._clock()
        late = [p for p in self._pending.values() if now - p.since_mono >= self.timeout_s]
        for p in late:
            self._pending.pop(p.kill.victim_tid, None)
        return [self._record(p, RECLAIM_TIMEOUT, None) for p in late]

    def pending(self) -> int:
        return len(self._pending)

    @staticmethod
    def _record(p: _Pending, method: str, duration_ns: Optional[int]) -> OomReclaim:
        k = p.kill
        when = k.time_unix_nano + duration_ns if duration_ns is not None else time.time_ns()
        return OomReclaim(
            event_id=f"{k.event_id}:reclaim", time_unix_nano=when, kill_event_id=k.event_id, method=method,
            duration_ns=duration_ns, victim_pid=k.victim_pid, victim_tid=k.victim_tid, victim_comm=k.victim_comm,
            killer=k.killer, reaper_woken=p.reaper_woken, reaper_skipped=p.reaper_skipped, rss_bytes=k.rss_bytes,
            cgroup_path=k.cgroup_path, container_runtime=k.container_runtime, container_id=k.container_id,
            pod_uid=k.pod_uid, memcg_path=k.memcg_path)
