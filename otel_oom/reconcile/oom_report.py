"""What the OOM killer printed: its lines in the kernel log, parsed into the kills they describe.

Used to recover kills that happened while the agent was not running (Linux 4.19 to 6.18 wording).
Task names and cgroup paths are printed unescaped between commas and brackets, so a hostile name
can imitate a field; the parsers below match the known victim first and never guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

from ..cgroupfs.tree import is_under
from ..schema.records import SOURCE_KMSG, SOURCE_NONE, OomKill
from .kmsg import KmsgRecord

_INVOKED = re.compile(
    r"^(?P<comm>.*?) invoked oom-killer: gfp_mask=(?P<gfp>0x[0-9a-fA-F]+|0)\((?P<flags>.*?)\)"
    r"(?:, nodemask=(?:\(null\)|[0-9,-]*?))?, order=(?P<order>-?\d+), oom_score_adj=(?P<adj>-?\d+)$",
    re.S)
# dump_stack(): "CPU: 1 PID: 42 Comm: x ..." (4.19-6.9) or "CPU: 1 UID: 0 PID: 42 Comm: x ..." (6.10+)
_CPU = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (?P<tid>\d+) Comm: ")
_MEMCG_USAGE = re.compile(r"^memory: usage (?P<usage>\d+)kB, limit (?P<limit>\d+)kB, failcnt \d+$")
_MEMCG_STATS = re.compile(r"^Memory cgroup stats for (?P<path>.*):$", re.S)
_GROUP = re.compile(r"^Tasks in (?P<path>.*) are going to be killed due to memory\.oom\.group set$",
                    re.S)
# 4.19-5.0 announce the choice before the kill line: "<prefix>: Kill process N (c) score S or sacrifice child"
_CHOICE = re.compile(r"^(?P<prefix>[A-Za-z ()_]+): Kill process \d+ \(.*\) score \d+ or sacrifice child$",
                     re.S)
# the comm is greedy so a name holding ") total-vm:" still leaves the real fields at the end
_KILLED = re.compile(
    r"^(?:(?P<prefix>[A-Za-z ()_]+): )?Killed process (?P<pid>\d+) \((?P<comm>.*)\) "
    r"total-vm:(?P<vm>\d+)kB, anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, "
    r"shmem-rss:(?P<shmem>\d+)kB(?:, UID:(?P<uid>\d+))?(?: pgtables:(?P<pgt>\d+)kB)?"
    r"(?: oom_score_adj:(?P<adj>-?\d+))?$", re.S)
_NO_KILLABLE = "Out of memory and no killable processes"

_CONSTRAINTS = {"CONSTRAINT_NONE": "global", "CONSTRAINT_CPUSET": "cpuset",
                "CONSTRAINT_MEMORY_POLICY": "mempolicy", "CONSTRAINT_MEMCG": "memcg"}
_MEMCG_PREFIX = "Memory cgroup out of memory"


@dataclass(frozen=True)
class OomKillLine:
    """The fields of one "oom-kill:constraint=..." summary line."""
    constraint: str                  # "memcg" | "global" | "cpuset" | "mempolicy" | "unknown"
    nodemask: Optional[str]
    cpuset: Optional[str]
    mems_allowed: Optional[str]
    oom_memcg: Optional[str]         # None for a global OOM ("global_oom") or without CONFIG_MEMCG
    task_memcg: Optional[str]
    task: str
    pid: int
    uid: int


def parse_oom_kill_line(message: str, comm: Optional[str] = None,
                        pid: Optional[int] = None) -> Optional[OomKillLine]:
    """Parse the summary line; `comm`/`pid` from the matching "Killed process" line disambiguate.

    Names are printed unescaped between commas, so a hostile name can imitate a field. The tail is
    matched against the victim's known comm and pid when given; between oom_memcg and task_memcg
    the split where the task's cgroup lies inside the OOMing one wins.
    """
    m = re.match(r"oom-kill:constraint=(\w+),nodemask=(\(null\)|[0-9,-]*?)(?=,|$)", message)
    if not m:
        return None
    constraint = _CONSTRAINTS.get(m.group(1), "unknown")
    nodemask = m.group(2)
    rest = message[m.end():]
    tail = None
    if comm is not None and pid is not None:
        tail = re.search(r",task=" + re.escape(comm) + r",pid=" + str(pid) + r",uid=(\d+)$", rest, re.S)
        if tail:
            task, tpid, uid = comm, pid, int(tail.group(1))
    if tail is None:
        candidates = [i for i in range(len(rest)) if rest.startswith(",task=", i)]
        for i in reversed(candidates):
            t = re.fullmatch(r",task=(.*),pid=(\d+),uid=(\d+)", rest[i:], re.S)
            if t:
                tail, task, tpid, uid = t, t.group(1), int(t.group(2)), int(t.group(3))
                rest = rest[:i]
                break
        else:
            return None
    else:
        rest = rest[:tail.start()]
    cpuset = mems = None
    c = re.match(r",cpuset=(.*?),mems_allowed=([0-9,-]*?)(?=,oom_memcg=|,global_oom|,task_memcg=|$)",
                 rest, re.S)
    if c:
        cpuset, mems = c.group(1), c.group(2)
        rest = rest[c.end():]
    oom_memcg = task_memcg = None
    if rest.startswith(",global_oom"):
        rest = rest[len(",global_oom"):]
        if rest.startswith(",task_memcg="):
            task_memcg = rest[len(",task_memcg="):]
    elif rest.startswith(",oom_memcg="):
        body = rest[len(",oom_memcg="):]
        splits = [i for i in range(len(body)) if body.startswith(",task_memcg=", i)]
        if not splits:
            oom_memcg = body
        else:
            pick = next((i for i in splits if is_under(body[i + len(",task_memcg="):], body[:i])), splits[0])
            oom_memcg, task_memcg = body[:pick], body[pick + len(",task_memcg="):]
    elif rest.startswith(",task_memcg="):
        task_memcg = rest[len(",task_memcg="):]
    return OomKillLine(constraint=constraint, nodemask=nodemask, cpuset=cpuset, mems_allowed=mems,
                       oom_memcg=oom_memcg, task_memcg=task_memcg, task=task, pid=tpid, uid=uid)


@dataclass(frozen=True)
class RecoveredKill:
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
    kernel_counts: int = 1            # times /proc/vmstat oom_kill counted it (a group kill's chosen victim: 2)


class _Decision:
    """What has been printed so far about the OOM decision in progress."""

    def __init__(self, seq: int):
        self.seq = seq
        self.invoked: Optional[re.Match] = None
        self.trigger_tid: Optional[int] = None
        self.usage: Optional[re.Match] = None
        self.stats_path: Optional[str] = None
        self.summary: Optional[str] = None
        self.prefix: Optional[str] = None
        self.group = False
        self.kills = 0
        self.pids: set[int] = set()


def recovered_kills(records: list[KmsgRecord]) -> list[RecoveredKill]:
    """One RecoveredKill per "Killed process" line, with the context its decision printed.

    The header of a decision (invoked line, memcg usage, oom-kill summary) is rate limited by the
    kernel (10 per 5 s) while the "Killed process" line is not: a kill without its own header gets
    no context rather than a stale one. A context serves one kill, or every kill of a group kill.
    """
    out: list[RecoveredKill] = []
    d: Optional[_Decision] = None
    for rec in records:
        msg = rec.message
        m = _INVOKED.match(msg) if " invoked oom-killer: " in msg else None
        if m:
            d = _Decision(rec.seq)
            d.invoked = m
            continue
        if msg.startswith("oom-kill:"):
            if d is None or d.summary is not None or d.kills:
                d = _Decision(rec.seq)
            d.summary = msg
            continue
        if msg.startswith(_NO_KILLABLE):
            d = None  # this decision killed nobody: its header must not stick to a later kill
            continue
        if d is not None and not d.kills:
            if d.summary is None:
                if msg.startswith("CPU: ") and d.invoked is not None and d.trigger_tid is None:
                    m = _CPU.match(msg)
                    if m:
                        d.trigger_tid = int(m.group("tid"))
                        continue
                m = _MEMCG_USAGE.match(msg)
                if m and d.usage is None:
                    d.usage = m
                    continue
                m = _MEMCG_STATS.match(msg)
                if m and d.stats_path is None:
                    d.stats_path = m.group("path")
                    continue
            m = _CHOICE.match(msg)
            if m:
                d.prefix = m.group("prefix")
                continue
        m = _GROUP.match(msg)
        if m:
            if d is not None:
                d.group = True
                # the chosen victim is killed (and printed) before the group line announces the rest
                out = [replace(k, group_kill=True) if k.decision_seq == d.seq else k for k in out]
            continue
        m = _KILLED.match(msg)
        if not m:
            continue
        pid, comm = int(m.group("pid")), m.group("comm")
        if d is not None and d.kills and not d.group:
            d = None  # a second kill without a header of its own: its header was rate limited
        if d is not None and d.group and pid in d.pids:
            # the group scan kills (prints, counts) the already chosen victim again: one kill, counted twice
            out = [replace(k, kernel_counts=k.kernel_counts + 1) if k.decision_seq == d.seq and k.pid == pid
                   else k for k in out]
            continue
        summary = parse_oom_kill_line(d.summary, comm, pid) if d is not None and d.summary else None
        # 4.19-5.0 may kill a child of the task the summary names ("or sacrifice child")
        if d is not None and not d.kills and summary is not None and summary.pid != pid and d.prefix is None:
            d, summary = None, None  # that header belongs to a decision whose kill was not printed
        if d is None:
            d = _Decision(rec.seq)
        prefix = m.group("prefix") or d.prefix
        own = summary if summary is not None and summary.pid == pid else None
        constraint, known = "unknown", False
        if summary is not None and summary.constraint != "unknown":
            constraint, known = summary.constraint, True
        elif prefix == _MEMCG_PREFIX:
            constraint, known = "memcg", True
        oom_memcg = summary.oom_memcg if summary is not None else None
        if oom_memcg is None and constraint == "memcg":
            oom_memcg = d.stats_path
        uid = m.group("uid")
        out.append(RecoveredKill(
            seq=rec.seq, usec=rec.usec, pid=pid, comm=comm,
            total_vm_kb=int(m.group("vm")), anon_rss_kb=int(m.group("anon")),
            file_rss_kb=int(m.group("file")), shmem_rss_kb=int(m.group("shmem")),
            uid=int(uid) if uid is not None else (own.uid if own else None),
            pgtables_kb=int(m.group("pgt")) if m.group("pgt") is not None else None,
            oom_score_adj=int(m.group("adj")) if m.group("adj") is not None else None,
            prefix=prefix, decision_seq=d.seq, constraint=constraint, constraint_known=known,
            oom_memcg=oom_memcg, task_memcg=own.task_memcg if own else None,
            cpuset=summary.cpuset if summary is not None else None,
            memcg_usage_kb=int(d.usage.group("usage")) if d.usage and constraint == "memcg" else None,
            memcg_limit_kb=int(d.usage.group("limit")) if d.usage and constraint == "memcg" else None,
            trigger_comm=d.invoked.group("comm") if d.invoked else None,
            trigger_tid=d.trigger_tid,
            gfp_mask=int(d.invoked.group("gfp"), 16) if d.invoked else None,
            order=int(d.invoked.group("order")) if d.invoked else None,
            group_kill=d.group))
        d.kills += 1
        d.pids.add(pid)
    return out


def _kb(value: Optional[int]) -> Optional[int]:
    return None if value is None else value * 1024


def to_oom_kill(r: RecoveredKill, boot_id: str, boot_wall_ns: int) -> OomKill:
    """The OomKill for a recovered kill; `boot_wall_ns` is the wall-clock time of boot in ns.

    printk stamps records with local_clock(), not CLOCK_BOOTTIME: the two agree on a machine that
    never suspended and drift apart by the time spent suspended otherwise, so boot_time_ns and
    time_unix_nano are approximate. The event_id is built as for live events, from that timestamp.
    """
    timestamp_ns = r.usec * 1000
    memcg_known = r.oom_memcg is not None
    return OomKill(
        event_id=f"{boot_id}:{timestamp_ns}:{r.pid}",
        time_unix_nano=boot_wall_ns + timestamp_ns,
        boot_time_ns=timestamp_ns,
        hook="kmsg",
        context_hook="none",
        recovered=True,
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
    )
