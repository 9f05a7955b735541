"""The kmsg backend's source on files shaped like the kernel's: a log written record by record (as the
device holds them), /proc/vmstat, and a memory cgroup tree with each cgroup's own kill counter.

The real /dev/kmsg, real kills and user-space writes to the device are tests/e2e/test_kmsg_backend.py's;
here the order of lines and counters is placed exactly (what a kernel does between two reads)."""
from __future__ import annotations

import os

import pytest

from otel_oom.kernel.kill_counters import KillCounterCgroups
from otel_oom.kernel.kmsg_source import KmsgSource
from otel_oom.reconcile.kcounters import memcg_oom_kills, vmstat_oom_kills
from otel_oom.reconcile.oom_report import LoggedKill
from testing.agent_process import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "kmsg")


class Kernel:
    """A log file, /proc/vmstat and a v1 memory tree, moved together like the kernel moves them."""

    def __init__(self, tmp_path, cgroups=("/a", "/b")) -> None:
        self.log = tmp_path / "kmsg"
        self.log.write_bytes(b"")
        self.proc = tmp_path / "proc"
        self.proc.mkdir()
        self.mount = tmp_path / "memory"
        self.total, self.seq = 0, 100
        self.counts = {"/": 0, **{c: 0 for c in cgroups}}
        self.now = 0.0
        self._write()

    def _write(self) -> None:
        (self.proc / "vmstat").write_text(f"nr_free_pages 1\noom_kill {self.total}\n")
        for path, n in self.counts.items():
            d = self.mount / path.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n")

    def line(self, text: str, prio: int = 3) -> None:
        self.seq += 1
        with open(self.log, "a") as f:
            f.write(f"{prio},{self.seq},{self.seq * 1000},-;{text}\n")

    def count(self, cgroup: str) -> None:
        """The kernel counts a kill (before it prints its line)."""
        self.total += 1
        self.counts[cgroup] += 1
        self._write()

    def bare_kill(self, pid: int, cgroup: str, print_line: bool = True) -> None:
        """A kill whose header the kernel rate-limited: counted, then only its "Killed process" line."""
        self.count(cgroup)
        if print_line:
            self.killed_line(pid)

    def killed_line(self, pid: int, prio: int = 3) -> None:
        self.line(f"Memory cgroup out of memory: Killed process {pid} (v{pid}) total-vm:1000kB, anon-rss:900kB, "
                  "file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:64kB oom_score_adj:0", prio)

    def full_kill(self, pid: int, cgroup: str) -> None:
        self.line(f"v{pid} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0", 4)
        self.line(f"CPU: 1 UID: 0 PID: {pid} Comm: v{pid} Not tainted 6.18.0 #1", 4)
        self.line("memory: usage 16384kB, limit 16384kB, failcnt 7", 6)
        self.line(f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={cgroup},"
                  f"task_memcg={cgroup},task=v{pid},pid={pid},uid=0", 6)
        self.bare_kill(pid, cgroup)

    def counters(self) -> KillCounterCgroups:
        return KillCounterCgroups(lambda: vmstat_oom_kills(str(self.proc)),
                                  lambda: memcg_oom_kills(str(self.mount), 1), clock=lambda: self.now)


def _source(k: Kernel, got: list, counters: bool = True, after=None) -> KmsgSource:
    return KmsgSource(got.append, str(k.log), after=after, counters=k.counters() if counters else None)


def test_a_kill_is_handed_on_at_its_line_with_its_header(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.full_kill(501, "/a")
    assert src.poll(10) == 1
    [kill] = got
    assert (kill.pid, kill.comm, kill.task_memcg, kill.oom_memcg, kill.trigger_tid) == (501, "v501", "/a", "/a", 501)
    assert (kill.memcg_limit_kb, kill.total_vm_kb, kill.gfp_mask) == (16384, 1000, 0xCC0)
    assert src.poll(0) == 0 and len(got) == 1  # read once


def test_the_log_before_the_start_is_context_only(tmp_path):
    k = Kernel(tmp_path)
    k.full_kill(400, "/a")          # before the start: not this source's (recovery's)
    k.line("v402 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0", 4)
    k.line("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/b,"
           "task_memcg=/b,task=v402,pid=402,uid=0", 6)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.bare_kill(402, "/b")          # its header was printed before the start: it still counts
    src.poll(10)
    assert [(g.pid, g.task_memcg, g.trigger_comm) for g in got] == [(402, "/b", "v402")]


def test_from_where_the_reconcilers_reading_ended(tmp_path):
    k = Kernel(tmp_path)
    k.full_kill(400, "/a")
    end = k.seq                     # the reconciler's start-up reading of the log ended here
    k.full_kill(401, "/a")          # printed while the backend was being opened: this source's
    got: list[LoggedKill] = []
    src = _source(k, got, after=end)
    k.full_kill(402, "/b")
    src.poll(10)
    assert [g.pid for g in got] == [401, 402]
    assert src.stats()["kmsg_overrun"] == 0


def test_records_the_kernel_overwrote_are_counted(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got, after=k.seq)
    k.seq += 40                     # 40 records gone before they were read (the device says EPIPE)
    k.full_kill(403, "/a")
    src.poll(10)
    assert [g.pid for g in got] == [403]
    assert src.stats()["kmsg_overrun"] == 40


@pytest.mark.parametrize("prio", [8, 11, 12, 14, 30])  # user (also a forged "<0>" or "<3>"), daemon
def test_lines_user_space_wrote_are_no_kill(tmp_path, prio):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.line("evil invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0", prio)
    k.line("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/b,"
           "task_memcg=/b,task=v9,pid=9,uid=0", prio)
    k.killed_line(9, prio)
    k.bare_kill(10, "/a")           # a real kill after the forged header: none of it
    src.poll(10)
    assert [(g.pid, g.trigger_comm) for g in got] == [(10, None)]


# ---- a kill whose summary the kernel rate-limited: its cgroup from the counters ----------------------

def test_the_one_cgroup_whose_counter_rose_is_the_kills(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.full_kill(500, "/b")          # named by its summary: taken off /b's rise
    k.bare_kill(501, "/a")
    k.bare_kill(502, "/a")
    src.poll(10)
    assert [(g.pid, g.task_memcg) for g in got] == [(500, "/b"), (501, "/a"), (502, "/a")]
    assert src.stats()["cgroups_from_counters"] == 2


def test_two_cgroups_rising_leave_the_cgroup_out(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.bare_kill(501, "/a")
    k.bare_kill(502, "/b")
    src.poll(10)
    assert [(g.pid, g.task_memcg) for g in got] == [(501, None), (502, None)]


def test_a_kill_counted_whose_line_is_not_read_yet_leaves_the_cgroup_out(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.bare_kill(501, "/a")
    k.bare_kill(502, "/a", print_line=False)  # counted; its line comes after the counters are read
    src.poll(10)
    assert [(g.pid, g.task_memcg) for g in got] == [(501, None)]
    # that reading is the new base: the next kill alone is told again
    k.killed_line(502)
    k.now += 1
    k.bare_kill(503, "/a")
    src.poll(10)
    assert [(g.pid, g.task_memcg) for g in got[1:]] == [(502, None), (503, None)]
    k.now += 1
    k.bare_kill(504, "/a")
    src.poll(10)
    assert got[-1].pid == 504 and got[-1].task_memcg == "/a"


def test_a_lost_line_leaves_the_cgroup_out(tmp_path):
    k = Kernel(tmp_path)
    k.line("the log before the start", 6)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.count("/a")                   # a kill whose line the kernel overwrote before it was read
    k.seq += 1
    k.bare_kill(502, "/a")
    src.poll(10)
    assert [(g.pid, g.task_memcg) for g in got] == [(502, None)]
    assert src.stats()["kmsg_overrun"] == 1


def test_a_cgroup_removed_leaves_the_cgroup_out(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.bare_kill(501, "/a")
    del k.counts["/a"]              # the container's cgroup is gone by the reading
    os.remove(k.mount / "a" / "memory.oom_control")
    os.rmdir(k.mount / "a")
    src.poll(10)
    assert [(g.pid, g.task_memcg) for g in got] == [(501, None)]


def test_a_batch_waits_for_the_reading_at_most_the_duty_cycle_and_never_at_shutdown(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    counters = k.counters()
    src = KmsgSource(got.append, str(k.log), counters=counters)
    k.bare_kill(501, "/a")
    src.poll(10)                    # read at once: the counters were never read
    assert [(g.pid, g.task_memcg) for g in got] == [(501, "/a")]
    counters._next_reading = k.now + 0.2  # the last reading took 22 ms: the next is due in 0.2 s
    k.bare_kill(502, "/a")
    assert src.poll(10) == 0 and len(got) == 1  # held for the reading...
    k.now += 0.2
    assert src.poll(10) == 1                    # ...until it is due
    assert got[-1].task_memcg == "/a"
    counters._next_reading = k.now + 0.2
    k.bare_kill(503, "/a")
    assert src.poll(0) == 1 and got[-1].pid == 503  # poll(0) (shutdown, start-up) holds nothing


def test_without_a_memory_hierarchy_nothing_waits(tmp_path):
    k = Kernel(tmp_path)
    got: list[LoggedKill] = []
    src = _source(k, got, counters=False)
    k.bare_kill(501, "/a")
    assert src.poll(10) == 1 and got[0].task_memcg is None


def test_a_group_kill_the_chosen_victim_once(tmp_path):
    k = Kernel(tmp_path, cgroups=("/g", "/g/a", "/g/b"))
    got: list[LoggedKill] = []
    src = _source(k, got)
    k.full_kill(601, "/g/a")
    k.line("Tasks in /g are going to be killed due to memory.oom.group set", 6)
    k.bare_kill(601, "/g/a")        # the group scan kills (prints, counts) the chosen victim again
    k.bare_kill(602, "/g/b")
    src.poll(10)
    assert [(g.pid, g.task_memcg, g.group_path) for g in got] == [(601, "/g/a", None), (602, "/g/b", "/g")]
