"""What the OOM killer printed: its report in the kernel log, read line by line into the kills it tells.

`OomReport` reads the log as it comes (the kmsg backend follows /dev/kmsg live with it), and
`recovered_kills` reads a saved stretch of it (kills that happened while the agent was not
running). Both hold to the same rules:

- Only records of the kernel's own facility count (`KmsgRecord.from_kernel`): any root process can
  write to /dev/kmsg, and the kernel stores what it writes as facility 1 whatever it claims.
- A "Killed process" line is a kill, reported at once with what its decision's header said; the
  header (invoked line, memcg usage, oom-kill summary) is rate limited by the kernel (10 per 5 s)
  while the kill line is not, so a kill without its own header gets no context rather than a stale
  one. A context serves one kill, or every kill of a memory.oom.group kill.
- The group scan of a memory.oom.group kill kills (prints, counts) the chosen victim a second time:
  one kill, counted twice by the kernel (`Reprint`).

Field by field parsing, and the ranges numbers are held to, are `oom_lines.py`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

from ..schema.records import SOURCE_KMSG, SOURCE_NONE, OomKill
from . import oom_lines as L
from .kmsg import KmsgRecord
from .oom_lines import MALFORMED, InvokedLine, parse_oom_kill_line


@dataclass(frozen=True)
class LoggedKill:
    """One "Killed process" line and what the lines of the same OOM decision before it say."""
    seq: int                          # kmsg sequence number of the "Killed process" line
    usec: int                         # its printk time (local_clock, µs since boot)
    pid: int                          # task_pid_nr of the killed thread (the tgid unless the leader had exited)
    comm: str
    total_vm_kb: int
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    uid: Optional[int] = None         # "UID:" (5.3+) or the summary line's uid=
    pgtables_kb: Optional[int] = None  # 5.8+
    oom_score_adj: Optional[int] = None  # 5.8+
    prefix: Optional[str] = None      # "Memory cgroup out of memory" | "Out of memory" | ...
    decision_seq: int = 0             # first record of the decision; shared by a group kill's victims
    constraint: str = "unknown"
    constraint_known: bool = False    # True when the kernel log says the constraint
    oom_memcg: Optional[str] = None   # the memcg whose limit was hit
    task_memcg: Optional[str] = None  # the victim's memcg (summary line; only for the chosen victim)
    cpuset: Optional[str] = None
    memcg_usage_kb: Optional[int] = None
    memcg_limit_kb: Optional[int] = None
    trigger_comm: Optional[str] = None
    trigger_tid: Optional[int] = None  # dump_stack prints the thread id of the allocating task
    gfp_mask: Optional[int] = None
    order: Optional[int] = None
    group_kill: bool = False          # memory.oom.group: killed with the rest of its cgroup
    group_path: Optional[str] = None  # the cgroup the "Tasks in ... memory.oom.group" line named
    kernel_counts: int = 1            # times /proc/vmstat oom_kill counted it (a group kill's chosen victim: 2)


@dataclass(frozen=True)
class Reprint:
    """The group scan printed (and counted) the decision's already killed victim `pid` again."""
    decision_seq: int
    pid: int


@dataclass(frozen=True)
class GroupAnnounced:
    """"Tasks in <path> are going to be killed due to memory.oom.group set": the decision is a group kill."""
    decision_seq: int
    path: str


ReportEvent = Union[LoggedKill, Reprint, GroupAnnounced]


class _Decision:
    """What has been printed so far about the OOM decision in progress."""

    def __init__(self, seq: int):
        self.seq = seq
        self.invoked: Optional[InvokedLine] = None
        self.trigger_tid: Optional[int] = None
        self.usage: Optional[tuple[int, int]] = None
        self.stats_path: Optional[str] = None
        self.summary: Optional[str] = None
        self.prefix: Optional[str] = None
        self.group: Optional[str] = None
        self.kills = 0
        self.pids: set[int] = set()


class OomReport:
    """Reads kernel log records in order; `feed` says what each one tells (usually nothing)."""

    def __init__(self) -> None:
        self._d: Optional[_Decision] = None
        self.malformed = 0   # kernel lines shaped like a kill with numbers out of range: no kill

    def feed(self, rec: KmsgRecord) -> Optional[ReportEvent]:
        if not rec.from_kernel:
            return None  # user space wrote it, whatever it says (see kmsg.py)
        msg, d = rec.message, self._d
        invoked = L.parse_invoked(msg)
        if invoked is not None:
            self._d = _Decision(rec.seq)
            self._d.invoked = invoked
            return None
        if msg.startswith("oom-kill:"):
            if d is None or d.summary is not None or d.kills:
                d = self._d = _Decision(rec.seq)
            d.summary = msg
            return None
        if msg.startswith(L.NO_KILLABLE):
            self._d = None  # this decision killed nobody: its header must not stick to a later kill
            return None
        if d is not None and not d.kills and self._header_line(d, msg):
            return None
        group = L.parse_group_path(msg)
        if group is not None:
            if d is None:
                return None
            d.group = group
            # the chosen victim is killed (and printed) before the group line announces the rest
            return GroupAnnounced(d.seq, group)
        killed = L.parse_killed(msg)
        if killed is None:
            return None
        if killed is MALFORMED:
            self.malformed += 1
            return None
        assert isinstance(killed, L.KilledLine)
        return self._kill(rec, killed)

    def _header_line(self, d: _Decision, msg: str) -> bool:
        """A line of the decision's header before its first kill: taken into `d`."""
        if d.summary is None:
            tid = L.parse_cpu_tid(msg) if d.invoked is not None and d.trigger_tid is None else None
            if tid is not None:
                d.trigger_tid = tid
                return True
            usage = L.parse_memcg_usage(msg) if d.usage is None else None
            if usage is not None:
                d.usage = usage
                return True
            path = L.parse_memcg_stats_path(msg) if d.stats_path is None else None
            if path is not None:
                d.stats_path = path
                return True
        prefix = L.parse_choice_prefix(msg)
        if prefix is not None:
            d.prefix = prefix
            return True
        return False

    def _kill(self, rec: KmsgRecord, k: L.KilledLine) -> Optional[ReportEvent]:
        d = self._d
        if d is not None and d.kills and d.group is None:
            d = None  # a second kill without a header of its own: its header was rate limited
        if d is not None and d.group is not None and k.pid in d.pids:
            return Reprint(d.seq, k.pid)
        summary = parse_oom_kill_line(d.summary, k.comm, k.pid) if d is not None and d.summary else None
        # 4.19-5.0 may kill a child of the task the summary names ("or sacrifice child")
        if d is not None and not d.kills and summary is not None and summary.pid != k.pid and d.prefix is None:
            d, summary = None, None  # that header belongs to a decision whose kill was not printed
        if d is None:
            d = _Decision(rec.seq)
        self._d = d
        prefix = k.prefix or d.prefix
        own = summary if summary is not None and summary.pid == k.pid else None
        constraint, known = "unknown", False
        if summary is not None and summary.constraint != "unknown":
            constraint, known = summary.constraint, True
        elif prefix == L.MEMCG_PREFIX:
            constraint, known = "memcg", True
        oom_memcg = summary.oom_memcg if summary is not None else None
        if oom_memcg is None and constraint == "memcg":
            oom_memcg = d.stats_path
        usage = d.usage if constraint == "memcg" else None
        d.kills += 1
        d.pids.add(k.pid)
        return LoggedKill(
            seq=rec.seq, usec=rec.usec, pid=k.pid, comm=k.comm, total_vm_kb=k.total_vm_kb,
            anon_rss_kb=k.anon_rss_kb, file_rss_kb=k.file_rss_kb, shmem_rss_kb=k.shmem_rss_kb,
            uid=k.uid if k.uid is not None else (own.uid if own else None), pgtables_kb=k.pgtables_kb,
            oom_score_adj=k.oom_score_adj, prefix=prefix, decision_seq=d.seq, constraint=constraint,
            constraint_known=known, oom_memcg=oom_memcg, task_memcg=own.task_memcg if own else None,
            cpuset=summary.cpuset if summary is not None else None,
            memcg_usage_kb=usage[0] if usage else None, memcg_limit_kb=usage[1] if usage else None,
            trigger_comm=d.invoked.comm if d.invoked else None, trigger_tid=d.trigger_tid,
            gfp_mask=d.invoked.gfp_mask if d.invoked else None, order=d.invoked.order if d.invoked else None,
            group_kill=d.group is not None, group_path=d.group)


def recovered_kills(records: list[KmsgRecord]) -> list[LoggedKill]:
    """One LoggedKill per kill a stretch of the log tells, with what was printed after it too: a
    group kill's chosen victim is marked as such, and counted twice when the group scan killed it again."""
    report = OomReport()
    out: list[LoggedKill] = []
    by_decision: dict[int, list[int]] = {}  # decision_seq -> indexes in out
    for rec in records:
        ev = report.feed(rec)
        if isinstance(ev, LoggedKill):
            by_decision.setdefault(ev.decision_seq, []).append(len(out))
            out.append(ev)
        elif isinstance(ev, GroupAnnounced):
            for i in by_decision.get(ev.decision_seq, ()):
                out[i] = replace(out[i], group_kill=True, group_path=ev.path)
        elif isinstance(ev, Reprint):
            for i in by_decision.get(ev.decision_seq, ()):
                if out[i].pid == ev.pid:
                    out[i] = replace(out[i], kernel_counts=out[i].kernel_counts + 1)
    return out


def _kb(value: Optional[int]) -> Optional[int]:
    return None if value is None else value * 1024


def to_oom_kill(r: LoggedKill, boot_id: str, boot_wall_ns: int, recovered: bool = True) -> OomKill:
    """The OomKill for a logged kill; `boot_wall_ns` is the wall-clock time of boot in ns.

    printk stamps records with local_clock(), not CLOCK_BOOTTIME: the two agree on a machine that
    never suspended and drift apart by the time spent suspended otherwise, so boot_time_ns and
    time_unix_nano are approximate. The event_id is built as for live events, from that timestamp:
    the same line gives the same id, followed live (`recovered=False`) or recovered at a start.
    Only what the lines say is set; the rest stays unknown (no parent, no domain size, no badness).
    """
    timestamp_ns = r.usec * 1000
    memcg_known = r.oom_memcg is not None
    # the trigger is the victim's own thread: the same process
    trigger_pid = r.pid if r.trigger_tid is not None and r.trigger_tid == r.pid else None
    return OomKill(
        event_id=f"{boot_id}:{timestamp_ns}:{r.pid}",
        time_unix_nano=boot_wall_ns + timestamp_ns,
        boot_time_ns=timestamp_ns,
        hook="kmsg",
        context_hook="none",
        recovered=recovered,
        victim_pid=r.pid,
        victim_tid=r.pid,
        victim_comm=r.comm,
        victim_uid=r.uid,
        oom_score_adj=r.oom_score_adj,
        total_vm_bytes=_kb(r.total_vm_kb),
        anon_rss_bytes=_kb(r.anon_rss_kb),
        file_rss_bytes=_kb(r.file_rss_kb),
        shmem_rss_bytes=_kb(r.shmem_rss_kb),
        pgtables_bytes=_kb(r.pgtables_kb),
        cgroup_path=r.task_memcg,
        trigger_pid=trigger_pid,
        trigger_tid=r.trigger_tid,
        trigger_comm=r.trigger_comm,
        constraint=r.constraint,
        constraint_source=SOURCE_KMSG if r.constraint_known else SOURCE_NONE,
        memcg_path=r.oom_memcg,
        memcg_limit_bytes=_kb(r.memcg_limit_kb),
        memcg_usage_bytes=_kb(r.memcg_usage_kb),
        memcg_source=SOURCE_KMSG if memcg_known else SOURCE_NONE,
        gfp_mask=r.gfp_mask,
        order=r.order,
        decision_id=f"{boot_id}:kmsg:{r.decision_seq}",
        oom_group_path=r.group_path,
        killed=True,  # the kernel prints the line after it sent the SIGKILL
    )
