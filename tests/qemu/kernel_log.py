"""What the kernel printed about its OOM decisions, parsed: the yardstick the kernel matrix holds
every record to (tests/test_kernel_matrix.py).

One `Decision` per "invoked oom-killer" ... "oom-kill:" report: the trigger (comm, gfp mask, order,
the dump_stack PID), "memory: usage/limit", show_mem's RAM size, the task dump (from which the
kernel's oom_badness() is recomputed) and the summary line, plus the "Killed process" lines that
follow it. The task_will_free_mem() shortcut prints none of these; it leaves only the OOM
reaper's "reaped process" line (`reaped`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from otel_oom.reconcile.oom_lines import OomKillLine, parse_oom_kill_line

_KILLED = re.compile(r"^(?P<prefix>[A-Za-z ]+): Killed process (?P<pid>\d+) \((?P<comm>.*)\) total-vm:(?P<vm>\d+)kB, "
                     r"anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, shmem-rss:(?P<shmem>\d+)kB, "
                     r"UID:(?P<uid>\d+) pgtables:(?P<pgt>\d+)kB oom_score_adj:(?P<adj>-?\d+)$", re.S)
_INVOKED = re.compile(r"^(?P<comm>.*) invoked oom-killer: gfp_mask=(?P<gfp>0x[0-9a-f]+)\(.*\), order=(?P<order>-?\d+), "
                      r"oom_score_adj=(?P<adj>-?\d+)$", re.S)
_CPU = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (?P<tid>\d+) Comm: ")
_USAGE = re.compile(r"^memory: usage (?P<usage>\d+)kB, limit (?P<limit>\d+)kB, failcnt \d+$")


@dataclass
class Decision:
    """One OOM decision as the kernel log tells it (one "invoked oom-killer" ... "Killed process")."""
    trigger_comm: str
    gfp_mask: int
    order: int
    trigger_tid: Optional[int] = None
    usage_kb: Optional[int] = None
    limit_kb: Optional[int] = None
    ram_pages: Optional[int] = None
    reserved_pages: Optional[int] = None
    swap_kb: Optional[int] = None
    tasks: dict[int, dict[str, int]] = field(default_factory=dict)
    summary: Optional[OomKillLine] = None
    group: bool = False
    killed: list[dict] = field(default_factory=list)

    def domain_pages(self) -> int:
        if self.summary.constraint == "memcg":
            return self.limit_kb // 4  # no swap in the guests: mem_cgroup_get_max() is the limit
        return self.ram_pages - self.reserved_pages + self.swap_kb // 4  # totalram_pages + swap

    def badness(self, pid: int, page_size: int = 4096) -> int:
        """oom_badness() of `pid` as the kernel computed it, from the task dump of this decision."""
        t = self.tasks[pid]
        return (t["rss"] + t["swapents"] + t["pgtables_bytes"] // page_size
                + t["oom_score_adj"] * (self.domain_pages() // 1000))


def decisions(kmsg: list[list]) -> list[Decision]:
    out: list[Decision] = []
    pending: Optional[Decision] = None
    columns: list[str] = []
    for _seq, _usec, _level, msg in kmsg:
        if m := _INVOKED.match(msg):
            pending = Decision(m["comm"], int(m["gfp"], 16), int(m["order"]))
        elif pending is None:
            if (m := _KILLED.match(msg)) and out:
                out[-1].killed.append(m.groupdict())
            elif msg.endswith("are going to be killed due to memory.oom.group set") and out:
                out[-1].group = True
        elif (m := _CPU.match(msg)) and pending.trigger_tid is None:
            pending.trigger_tid = int(m["tid"])
        elif (m := _USAGE.match(msg)) and pending.usage_kb is None:
            pending.usage_kb, pending.limit_kb = int(m["usage"]), int(m["limit"])
        elif m := re.match(r"^(\d+) pages RAM$", msg):
            pending.ram_pages = int(m[1])
        elif m := re.match(r"^(\d+) pages reserved$", msg):
            pending.reserved_pages = int(m[1])
        elif m := re.match(r"^Total swap = (\d+)kB$", msg):
            pending.swap_kb = int(m[1])
        elif msg.startswith("[  pid  ]"):
            columns = msg.split("]", 1)[1].split()
        elif columns and (m := re.match(r"^\[\s*(\d+)\]\s", msg)):
            values = msg.split("]", 1)[1].split(None, len(columns) - 1)
            pending.tasks[int(m[1])] = {c: int(v) for c, v in zip(columns, values, strict=False) if c != "name"}
        elif msg.startswith("oom-kill:"):
            pending.summary = parse_oom_kill_line(msg)
            out.append(pending)
            pending, columns = None, []
    return out


def killed_line(decs: list[Decision], pid: int) -> tuple[Decision, dict]:
    for d in decs:
        for k in d.killed:
            if int(k["pid"]) == pid:
                return d, k
    raise AssertionError(f"the kernel log has no 'Killed process {pid}' line")


def reaped(kmsg: list[list], pid: int) -> bool:
    """Whether the OOM reaper took on `pid` (what a marked-but-not-killed victim leaves): it reaped it, or
    said it was unable to (its ten tries at the victim's mm lock failed: seen in an emulated guest on a
    host busy with other work, while the exiting victim held the lock)."""
    return any(re.match(rf"^oom_reaper: (reaped process {pid} \(|unable to reap pid:{pid} \()", msg)
               for *_, msg in kmsg)


def killed_lines(kmsg: list[list], pid: int) -> list[str]:
    return [msg for *_, msg in kmsg if _KILLED.match(msg) and _KILLED.match(msg)["pid"] == str(pid)]
