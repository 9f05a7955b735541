"""The OOM killer's lines in the kernel log, one at a time (Linux 4.19 to 6.18 wording).

Each parser takes one message and returns its fields, or None when the message is not that line.
Everything is untrusted input: task names and cgroup paths are printed unescaped between commas and
brackets, so a hostile name can imitate a field; numbers are ASCII digits of bounded length, each
held to the range the kernel can print (a pid above PID_MAX_LIMIT is no pid). The parsers match the
known victim first and never guess. Which lines belong together is `oom_report.py`'s business.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..cgroupfs.tree import is_under

PID_MAX = 1 << 22            # PID_MAX_LIMIT on 64-bit kernels
UID_MAX = (1 << 32) - 1
KB_MAX = 1 << 53             # sizes in kB, so that bytes fit in a signed 64-bit attribute
ADJ_RANGE = range(-1000, 1001)
ORDER_RANGE = range(-1, 64)  # -1: sysrq-f and other forced OOMs
GFP_MAX = (1 << 32) - 1
COMM_MAX = 64                # the kernel prints at most TASK_COMM_LEN - 1 (15) bytes; generous

_A = re.ASCII | re.DOTALL    # \d is [0-9] only; "." crosses an escaped newline in a hostile name
_INVOKED = re.compile(
    r"^(?P<comm>.{0,64}?) invoked oom-killer: gfp_mask=(?P<gfp>0x[0-9a-fA-F]{1,8}|0)\((?P<flags>.*?)\)"
    r"(?:, nodemask=(?:\(null\)|[0-9,-]*?))?, order=(?P<order>-?\d{1,2}), oom_score_adj=(?P<adj>-?\d{1,4})$", _A)
# dump_stack(): "CPU: 1 PID: 42 Comm: x ..." (4.19-6.9) or "CPU: 1 UID: 0 PID: 42 Comm: x ..." (6.10+)
_CPU = re.compile(r"^CPU: \d{1,5} (?:UID: \d{1,10} )?PID: (?P<tid>\d{1,7}) Comm: ", _A)
_MEMCG_USAGE = re.compile(r"^memory: usage (?P<usage>\d{1,16})kB, limit (?P<limit>\d{1,16})kB, failcnt \d{1,20}$", _A)
_MEMCG_STATS = re.compile(r"^Memory cgroup stats for (?P<path>.*):$", _A)
_GROUP = re.compile(r"^Tasks in (?P<path>.*) are going to be killed due to memory\.oom\.group set$", _A)
# 4.19-5.0 announce the choice before the kill line: "<prefix>: Kill process N (c) score S or sacrifice child"
_CHOICE = re.compile(r"^(?P<prefix>[A-Za-z ()_]{1,64}): Kill process \d{1,7} \(.{0,64}\) score \d{1,20} "
                     r"or sacrifice child$", _A)
# the comm is greedy so a name holding ") total-vm:" still leaves the real fields at the end
_KILLED = re.compile(
    r"^(?:(?P<prefix>[A-Za-z ()_]{1,64}): )?Killed process (?P<pid>\d{1,7}) \((?P<comm>.{0,64})\) "
    r"total-vm:(?P<vm>\d{1,16})kB, anon-rss:(?P<anon>\d{1,16})kB, file-rss:(?P<file>\d{1,16})kB, "
    r"shmem-rss:(?P<shmem>\d{1,16})kB(?:, UID:(?P<uid>\d{1,10}))?(?: pgtables:(?P<pgt>\d{1,16})kB)?"
    r"(?: oom_score_adj:(?P<adj>-?\d{1,4}))?$", _A)
KILLED_MARK = "Killed process "  # every kill line holds it: a cheap test before the expression
NO_KILLABLE = "Out of memory and no killable processes"
MEMCG_PREFIX = "Memory cgroup out of memory"

_CONSTRAINTS = {"CONSTRAINT_NONE": "global", "CONSTRAINT_CPUSET": "cpuset",
                "CONSTRAINT_MEMORY_POLICY": "mempolicy", "CONSTRAINT_MEMCG": "memcg"}


def _in(value: Optional[str], limit: int) -> Optional[int]:
    n = None if value is None else int(value)
    return n if n is not None and 0 <= n <= limit else None


@dataclass(frozen=True)
class KilledLine:
    """One "Killed process" line: the victim, sizes in kB."""
    prefix: Optional[str]             # "Memory cgroup out of memory" | "Out of memory" | ... | None (4.19)
    pid: int
    comm: str
    total_vm_kb: int
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    uid: Optional[int] = None         # 5.3+
    pgtables_kb: Optional[int] = None  # 5.8+
    oom_score_adj: Optional[int] = None  # 5.8+


class Malformed:
    """A line shaped like a kill whose numbers are out of the kernel's ranges: no kill, and counted."""


MALFORMED = Malformed()


def parse_killed(message: str) -> "Optional[KilledLine | Malformed]":
    if KILLED_MARK not in message:
        return None
    m = _KILLED.match(message)
    if not m:
        return None
    pid = _in(m.group("pid"), PID_MAX)
    sizes = [_in(m.group(g), KB_MAX) for g in ("vm", "anon", "file", "shmem", "pgt")]
    uid = _in(m.group("uid"), UID_MAX)
    adj = int(m.group("adj")) if m.group("adj") is not None else None
    if (not pid or any(s is None for s in sizes[:4]) or (m.group("pgt") is not None and sizes[4] is None)
            or (m.group("uid") is not None and uid is None) or (adj is not None and adj not in ADJ_RANGE)):
        return MALFORMED
    vm, anon, file, shmem, pgt = sizes
    assert vm is not None and anon is not None and file is not None and shmem is not None
    return KilledLine(prefix=m.group("prefix"), pid=pid, comm=m.group("comm"), total_vm_kb=vm, anon_rss_kb=anon,
                      file_rss_kb=file, shmem_rss_kb=shmem, uid=uid, pgtables_kb=pgt, oom_score_adj=adj)


@dataclass(frozen=True)
class InvokedLine:
    """"<trigger> invoked oom-killer: gfp_mask=..., order=..., oom_score_adj=...": the decision starts."""
    comm: str
    gfp_mask: int
    order: int


def parse_invoked(message: str) -> Optional[InvokedLine]:
    if " invoked oom-killer: " not in message:
        return None
    m = _INVOKED.match(message)
    if not m:
        return None
    gfp, order = int(m.group("gfp"), 16), int(m.group("order"))
    if gfp > GFP_MAX or order not in ORDER_RANGE or int(m.group("adj")) not in ADJ_RANGE:
        return None
    return InvokedLine(comm=m.group("comm"), gfp_mask=gfp, order=order)


def parse_cpu_tid(message: str) -> Optional[int]:
    """The thread id in dump_stack()'s "CPU: ... PID: N Comm: ..." line (the trigger's)."""
    m = _CPU.match(message) if message.startswith("CPU: ") else None
    return _in(m.group("tid"), PID_MAX) if m else None


def parse_memcg_usage(message: str) -> Optional[tuple[int, int]]:
    """(usage kB, limit kB) of "memory: usage ...kB, limit ...kB, failcnt ..."."""
    m = _MEMCG_USAGE.match(message) if message.startswith("memory: ") else None
    if not m:
        return None
    usage, limit = _in(m.group("usage"), KB_MAX), _in(m.group("limit"), KB_MAX)
    return (usage, limit) if usage is not None and limit is not None else None


def parse_memcg_stats_path(message: str) -> Optional[str]:
    m = _MEMCG_STATS.match(message) if message.startswith("Memory cgroup stats for ") else None
    return m.group("path") if m else None


def parse_group_path(message: str) -> Optional[str]:
    """The cgroup of "Tasks in <path> are going to be killed due to memory.oom.group set"."""
    m = _GROUP.match(message) if message.startswith("Tasks in ") else None
    return m.group("path") if m else None


def parse_choice_prefix(message: str) -> Optional[str]:
    """4.19-5.0: the prefix of "<prefix>: Kill process N (c) score S or sacrifice child"."""
    m = _CHOICE.match(message) if "or sacrifice child" in message else None
    return m.group("prefix") if m else None


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
    m = re.match(r"oom-kill:constraint=(\w+),nodemask=(\(null\)|[0-9,-]*?)(?=,|$)", message, re.ASCII)
    if not m:
        return None
    constraint = _CONSTRAINTS.get(m.group(1), "unknown")
    nodemask = m.group(2)
    rest = message[m.end():]
    tail = None
    if comm is not None and pid is not None:
        tail = re.search(r",task=" + re.escape(comm) + r",pid=" + str(pid) + r",uid=(\d{1,10})$", rest, _A)
        if tail:
            task, tpid, uid = comm, pid, int(tail.group(1))
    if tail is None:
        candidates = [i for i in range(len(rest)) if rest.startswith(",task=", i)]
        for i in reversed(candidates):
            t = re.fullmatch(r",task=(.*),pid=(\d{1,7}),uid=(\d{1,10})", rest[i:], _A)
            if t:
                tail, task, tpid, uid = t, t.group(1), int(t.group(2)), int(t.group(3))
                rest = rest[:i]
                break
        else:
            return None
    else:
        rest = rest[:tail.start()]
    if not 0 < tpid <= PID_MAX or uid > UID_MAX:
        return None
    cpuset = mems = None
    c = re.match(r",cpuset=(.*?),mems_allowed=([0-9,-]*?)(?=,oom_memcg=|,global_oom|,task_memcg=|$)", rest, _A)
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
