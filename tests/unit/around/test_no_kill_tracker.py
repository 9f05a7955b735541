"""The no-kill tracker (oom.no_kill), fed the pressure source's events, kills and a fake clock, reading a
fixture cgroup tree (cgroup v1 and v2 files as the kernel writes them)."""
from __future__ import annotations

from otel_oom.around.no_kill import NoKillTracker
from otel_oom.cgroupfs.memcg import MemcgFiles
from otel_oom.pressure.events import OOM, USAGE, CgroupAppeared, CgroupRemoved, CgroupSignal
from otel_oom.schema.records import OomKill

MiB = 1 << 20
T = 1795602667_000000000


def kill(path: str, **over) -> OomKill:
    base = dict(event_id="b:100:42", time_unix_nano=T, boot_time_ns=100, hook="tp_btf", context_hook="none",
                recovered=False, victim_pid=42, victim_tid=42, victim_comm="leaky", cgroup_path=path,
                constraint="memcg", memcg_path=path)
    base.update(over)
    return OomKill(**base)


def v1_cgroup(root, name, oom_control, procs=""):
    d = root / name
    d.mkdir(parents=True)
    (d / "memory.oom_control").write_text(oom_control)
    (d / "memory.limit_in_bytes").write_text(str(32 * MiB))
    (d / "memory.usage_in_bytes").write_text(str(32 * MiB))
    (d / "cgroup.procs").write_text(procs)
    return d


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tracker(root, version=1, **kw) -> tuple[NoKillTracker, Clock]:
    clock = Clock()
    return NoKillTracker(MemcgFiles(version, str(root), proc_root=str(root / "proc")), "b", clock=clock, **kw), clock


def test_notified_then_a_kill_within_the_grace_is_nothing_then_no_kill_starts_and_ends(tmp_path):
    v1_cgroup(tmp_path, "a", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "")
    nk, clock = tracker(tmp_path, grace_s=1, clear_s=5)
    assert nk.handle(CgroupAppeared("/a", 32 * MiB)) == []
    assert nk.handle(CgroupSignal("/a", OOM)) == []
    assert nk.kill_seen(kill("/a")) == []  # an ordinary kill came
    clock.now = 1.5
    assert nk.tick() == []
    nk.handle(CgroupSignal("/a", OOM))  # again, and this time no kill
    clock.now = 12
    (start,) = nk.tick()
    assert (start.reason, start.state, start.limit_bytes, start.cgroup_path) == ("nothing_killable", "start", 32 * MiB, "/a")
    assert nk.active() == {"nothing_killable": 1}
    assert nk.handle(CgroupSignal("/a", OOM, 5)) == []  # the faulting task retries: the same episode
    clock.now = 16
    assert nk.tick() == []
    clock.now = 22
    (end,) = nk.tick()
    assert (end.state, end.ended_by, end.ooms, end.episode_id) == ("end", "resolved", 6, start.episode_id)
    assert end.duration_ns == 10 * 10**9 and nk.active() == {}


def test_a_kill_the_probe_missed_is_seen_in_the_kernel_counter(tmp_path):
    d = v1_cgroup(tmp_path, "a", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    nk, clock = tracker(tmp_path, grace_s=1)
    nk.handle(CgroupAppeared("/a", 32 * MiB))
    nk.handle(CgroupSignal("/a", OOM))
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    clock.now = 2
    assert nk.tick() == []


def test_v1_notifies_the_oom_cgroup_and_those_below_it_the_highest_is_reported(tmp_path):
    v1_cgroup(tmp_path, "p", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    v1_cgroup(tmp_path, "p/c", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    nk, clock = tracker(tmp_path, grace_s=1)
    nk.handle(CgroupSignal("/p/c", OOM))
    nk.handle(CgroupSignal("/p", OOM))
    clock.now = 2
    assert [r.cgroup_path for r in nk.tick()] == ["/p"]


def test_oom_kill_disable_with_tasks_waiting_starts_at_once_and_ends_when_under_oom_drops(tmp_path):
    d = v1_cgroup(tmp_path, "a", "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n", "7\n")
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "stat").write_text("7 (holder) D 1 7 7 0\n")
    nk, clock = tracker(tmp_path)
    (start,) = nk.handle(CgroupSignal("/a", OOM, 2))
    assert (start.reason, start.tasks, start.task_pids, start.tasks_waiting, start.ooms) == \
        ("oom_kill_disable", 1, (7,), 1, 2)
    clock.now = 30
    assert nk.tick() == []  # still under_oom: no timeout for a disabled killer
    (d / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 0\noom_kill 0\n")
    (tmp_path / "proc" / "7" / "stat").write_text("7 (holder) R 1 7 7 0\n")
    (end,) = nk.tick()
    assert (end.ended_by, end.tasks_waiting) == ("resolved", 0)


def test_a_victim_only_marked_opens_victim_exiting_and_a_later_kill_ends_it(tmp_path):
    v1_cgroup(tmp_path, "a", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    nk, clock = tracker(tmp_path)
    marked = kill("/a", killed=False, victim_pid=77, memcg_usage_bytes=31 * MiB, memcg_limit_bytes=32 * MiB)
    (start,) = nk.victim_exiting(marked)
    assert (start.reason, start.victim_pid, start.usage_bytes, start.time_unix_nano) == ("victim_exiting", 77, 31 * MiB, T)
    assert nk.victim_exiting(marked) == []  # the same episode
    (end,) = nk.kill_seen(kill("/a", victim_pid=78))
    assert (end.ended_by, end.ooms) == ("killed", 2)
    # a global OOM's exiting victim: no cgroup to read
    (glob,) = nk.victim_exiting(kill(None, killed=False, constraint="global"))
    assert (glob.cgroup_path, glob.limit_bytes, glob.tasks) == ("/", None, None)


def test_a_removed_cgroup_ends_its_episode_and_those_below_and_other_signals_are_not_its(tmp_path):
    v1_cgroup(tmp_path, "p", "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n")
    v1_cgroup(tmp_path, "p/c", "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n")
    nk, _ = tracker(tmp_path)
    assert nk.handle(CgroupSignal("/p/c", USAGE)) == []
    nk.handle(CgroupSignal("/p/c", OOM))
    ends = nk.handle(CgroupRemoved("/p"))
    assert [(r.cgroup_path, r.ended_by) for r in ends] == [("/p/c", "cgroup_removed")]


def test_v2_reads_no_oom_control_and_decides_nothing_killable(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "memory.max").write_text(f"{32 * MiB}\n")
    (d / "memory.current").write_text(f"{32 * MiB}\n")
    (d / "memory.events").write_text("oom 3\noom_kill 0\n")
    (d / "cgroup.procs").write_text("")
    nk, clock = tracker(tmp_path, version=2)
    nk.handle(CgroupAppeared("/w", 32 * MiB))
    nk.handle(CgroupSignal("/w", OOM, 3))
    clock.now = 1
    (start,) = nk.tick()
    assert (start.reason, start.ooms, start.limit_bytes) == ("nothing_killable", 3, 32 * MiB)


def test_v2_an_oom_that_goes_on_keeps_its_episode_though_its_signal_lags_behind_the_tick(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "memory.max").write_text(f"{32 * MiB}\n")
    (d / "memory.current").write_text(f"{32 * MiB}\n")
    (d / "memory.events").write_text("oom 1\noom_kill 0\n")
    (d / "memory.events.local").write_text("oom 1\noom_kill 0\n")
    (d / "cgroup.procs").write_text("")
    nk, clock = tracker(tmp_path, version=2, grace_s=1, clear_s=2)
    nk.handle(CgroupSignal("/w", OOM))
    clock.now = 1
    (start,) = nk.tick()
    for second, ooms in ((3, 5), (5, 9), (7, 12)):  # the kernel declares OOM on and on; no signal came yet
        (d / "memory.events.local").write_text(f"oom {ooms}\noom_kill 0\n")
        clock.now = second
        assert nk.tick() == []
    clock.now = 8.9
    assert nk.tick() == []
    clock.now = 9
    (end,) = nk.tick()
    assert (end.ended_by, end.episode_id) == ("resolved", start.episode_id)
