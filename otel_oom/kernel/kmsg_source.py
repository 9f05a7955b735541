"""The kmsg backend: every OOM kill from the kernel's own report, where no BPF program may be loaded.

It follows /dev/kmsg live (CAP_SYSLOG where kernel.dmesg_restrict=1; no CAP_BPF, CAP_PERFMON or
CAP_SYS_ADMIN) and reads the OOM killer's report with `reconcile.oom_report.OomReport`, the parser
recovery uses: only the kernel's own records (facility 0) count, every field is untrusted input.
Each "Killed process" line is handed on as a `LoggedKill` as soon as it is read, with what its
decision's header said (the pipeline attributes it like a BPF event: cgroup path, container, pod,
names); nothing waits for lines that may never come. A kill whose header the kernel rate-limited
gets its cgroup from the kill counters when they tell it unambiguously (`kill_counters.py`).

What this cannot see is what the kernel does not print: the OOM decision's internals (badness,
domain size), kills by user-space OOM killers, reclaim times, tasks marked without a kill, a
group kill's members beyond the lines printed; and the time is printk's clock, read when the line is.
Records the kernel overwrote before they were read (a reader that fell behind) are counted as
`kmsg_overrun`; the kills among them are the reconciler's unobserved ones.
"""
from __future__ import annotations

import errno
import logging
import select
import time
from dataclasses import replace
from typing import Callable, Optional

from ..reconcile.kmsg import KmsgError, KmsgReader
from ..reconcile.oom_report import GroupAnnounced, LoggedKill, OomReport, Reprint
from .kill_counters import KillCounterCgroups
from .source import HookPlan
from .syslog_reader import SyslogReader

log = logging.getLogger("otel_oom.kernel")

KMSG_PLAN = HookPlan("kmsg", "none", backend="kmsg")
_ATTEMPTS = 3       # counter readings for one batch: a kill counted between two reads has its line µs later
_REMEMBERED = 256   # recent kills' cgroups, for the group scan's second line of a victim


class KmsgSource:
    """A `SampleSource` handing `LoggedKill`s to `on_sample`, from `poll()` only.

    `after`: the sequence number of the last record the reconciler's start-up reading of the log
    held (kills up to there are its to recover); later records are followed, so no kill falls
    between the two. None: follow from the end of the log as it is now. Either way the records
    before are read once for their context (a decision whose header was printed before the start).
    `counters`: the kill counters for kills without a summary line (None: no memory hierarchy).
    """

    plan = KMSG_PLAN
    reclaim_events = False

    def __init__(self, on_sample: Callable[[LoggedKill], None], path: str = "/dev/kmsg",
                 after: Optional[int] = None, counters: Optional[KillCounterCgroups] = None,
                 reader: "Optional[KmsgReader | SyslogReader]" = None) -> None:
        self._on_sample = on_sample
        self._reader = reader if reader is not None else KmsgReader(path, after=after)
        self._closed = False
        self._report = OomReport()
        self._counters = counters
        self._after = after
        self._cgroups: dict[tuple[int, int], Optional[str]] = {}  # (decision, pid) -> cgroup, recent kills
        self._pending: list[LoggedKill] = []  # read, waiting for the kill counters' reading
        self.submitted = 0
        self.assigned = 0   # kills given their cgroup by the counters
        if after is None:
            for rec in self._reader.read():  # the log as it is: context only
                self._report.feed(rec)
            self._after = self._reader.last_seq
        if counters is not None:
            counters.start()

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for the log to grow; hand on the kills read; return how many.

        A batch holding a kill without its cgroup waits for the kill counters' next reading (a few
        ms; `kill_counters.MAX_WAIT_S` at most, and never with timeout_ms 0, as at shutdown)."""
        if self._closed:
            return 0
        counters = self._counters
        wait = max(0, timeout_ms) / 1000
        if self._pending and counters is not None:
            wait = min(wait, counters.wait_s())
        if self._reader.fd >= 0:
            ready = bool(select.select([self._reader.fd], [], [], wait)[0])
        else:  # syslog(2): nothing to wait on, so read after the wait
            time.sleep(wait)
            ready = True
        if ready:
            self._pending += self._read()
        if not self._pending:
            return 0
        bare = any(k.task_memcg is None for k in self._pending)
        if bare and counters is not None and counters.wait_s() > 0 and timeout_ms > 0:
            return 0
        kills, self._pending = self._pending, []
        if bare and counters is not None:
            kills = self._with_counted_cgroups(kills)
        for kill in kills:
            self._on_sample(kill)
        self.submitted += len(kills)
        return len(kills)

    def _read(self) -> list[LoggedKill]:
        kills: list[LoggedKill] = []
        for rec in self._reader.read():
            event = self._report.feed(rec)
            if event is None or (self._after is not None and rec.seq <= self._after):
                continue  # before the start: context only
            if isinstance(event, LoggedKill):
                kills.append(event)
                self._remember(event)
                self._count(event.task_memcg)
            elif isinstance(event, Reprint):
                self._count(self._cgroups.get((event.decision_seq, event.pid)))
            elif isinstance(event, GroupAnnounced):
                pass  # the kills after it carry the group's path
        return kills

    def _remember(self, kill: LoggedKill) -> None:
        self._cgroups[(kill.decision_seq, kill.pid)] = kill.task_memcg
        if len(self._cgroups) > _REMEMBERED:
            del self._cgroups[next(iter(self._cgroups))]

    def _count(self, cgroup: Optional[str]) -> None:
        if self._counters is not None:
            self._counters.line(cgroup)

    def _with_counted_cgroups(self, kills: list[LoggedKill]) -> list[LoggedKill]:
        """The batch with its kills lacking a cgroup given the one the counters tell, if they tell one."""
        counters = self._counters
        assert counters is not None
        reading = None
        for _ in range(_ATTEMPTS):
            reading = counters.read()
            if counters.consistent(reading):
                break
            more = self._read()  # a kill line in flight while the counters were read
            if not more:
                break
            kills += more
        cgroup = counters.cgroup_of_unknown(reading)
        bare = sum(1 for k in kills if k.task_memcg is None)
        counters.rebase(reading, bare if cgroup is not None else 0)
        if cgroup is None:
            return kills
        self.assigned += bare
        out = [replace(k, task_memcg=cgroup) if k.task_memcg is None else k for k in kills]
        for k in out:
            self._remember(k)
        return out

    def stats(self) -> dict[str, int]:
        """"submitted": kills handed on; "kmsg_overrun": log records the kernel overwrote before they
        were read; "kmsg_malformed": kernel lines shaped like a kill with impossible numbers."""
        return {"submitted": self.submitted, "ringbuf_full": 0, "decisions": 0,
                "kmsg_overrun": self._reader.lost, "kmsg_malformed": self._report.malformed,
                "cgroups_from_counters": self.assigned}

    def close(self) -> None:
        self._closed = True
        self._reader.close()


def open_kmsg_source(on_sample: Callable[[LoggedKill], None], path: str = "/dev/kmsg",
                     after: Optional[int] = None, counters: Optional[KillCounterCgroups] = None) -> KmsgSource:
    """Raises `reconcile.kmsg.KmsgError` (an OSError saying what to do) when the log cannot be read.

    When /dev/kmsg exists but may not be opened (EPERM: a container runtime's device cgroup, which
    no capability lifts), the same log is read through syslog(2) (`syslog_reader.py`)."""
    try:
        return KmsgSource(on_sample, path, after, counters)
    except KmsgError as e:
        if e.errno != errno.EPERM or path != "/dev/kmsg":
            raise
        try:
            reader = SyslogReader()
            source = KmsgSource(on_sample, path, None, counters, reader=reader)
        except KmsgError as e2:
            raise KmsgError(e.errno, f"{e.strerror}; and through syslog(2): {e2.strerror}", path) from None
        log.info("%s cannot be opened here (%s: in a container, the device cgroup refuses it whatever the "
                 "capabilities); following the same kernel log through syslog(2)", path, e.strerror)
        return source
