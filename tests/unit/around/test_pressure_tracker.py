"""The pressure tracker (oom.pressure), fed the pressure source's events and a fake clock, reading fixture
cgroup trees (v1 and v2 files as the kernel writes them) and a fixture /proc/meminfo and host PSI file:
start, heat and clear, one start and one end per episode, PSI's hierarchy, the host's shortage rule."""
from __future__ import annotations

import shutil

from otel_oom.around.pressure import PressureTracker
from otel_oom.cgroupfs.host import HostFiles
from otel_oom.cgroupfs.memcg import MemcgFiles
from otel_oom.pressure.events import (
    HIGH,
    MAX,
    OOM,
    PSI,
    USAGE,
    VMPRESSURE,
    CgroupAppeared,
    CgroupRemoved,
    CgroupSignal,
    CgroupUnlimited,
    HostPressure,
)
from otel_oom.pressure.thresholds import Thresholds

MiB = 1 << 20
LIMIT = 100 * MiB
T = Thresholds(stall_percent=10, usage_percent=90, window_s=2, clear_seconds=10)


def psi_text(some: float, full: float = 0.0) -> str:
    return (f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=1\n"
            f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=1\n")


class Fixture:
    """A fixture hierarchy (v1 or v2) and host files, a fake clock and wall clock, the tracker."""

    def __init__(self, root, version: int) -> None:
        self.root, self.version, self.now, self.wall = root, version, 0.0, 1_000_000_000_000
        (root / "host").mkdir()
        self.meminfo(total=1000, available=900)
        self.host_psi(0.0)
        self.t = PressureTracker(MemcgFiles(version, str(root / "cg")), HostFiles(str(root / "host" / "psi"),
                                 str(root / "host" / "meminfo")), T, "boot", clock=lambda: self.now,
                                 wall=lambda: self.wall + int(self.now * 1e9))

    def cgroup(self, path: str, usage_mib: int, failcnt: int = 0, psi: float = 0.0, **events: int) -> None:
        d = self.root / "cg" / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        if self.version == 1:
            (d / "memory.limit_in_bytes").write_text(f"{LIMIT}\n")
            (d / "memory.usage_in_bytes").write_text(f"{usage_mib * MiB}\n")
            (d / "memory.failcnt").write_text(f"{failcnt}\n")
        else:
            (d / "memory.max").write_text(f"{LIMIT}\n")
            (d / "memory.current").write_text(f"{usage_mib * MiB}\n")
            (d / "memory.pressure").write_text(psi_text(psi))
            counts = {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0, **events}
            (d / "memory.events.local").write_text("".join(f"{k} {v}\n" for k, v in counts.items()))

    def meminfo(self, total: int, available: int) -> None:
        (self.root / "host" / "meminfo").write_text(f"MemTotal: {total} kB\nMemAvailable: {available} kB\n")

    def host_psi(self, some: float) -> None:
        (self.root / "host" / "psi").write_text(psi_text(some, some / 2))

    def at(self, seconds: float) -> list:
        self.now = seconds
        return self.t.tick()


def test_v1_usage_threshold_starts_one_episode_the_failcnt_keeps_it_and_it_clears_once(tmp_path):
    f = Fixture(tmp_path, 1)
    f.cgroup("/a", 50)
    assert f.t.handle(CgroupAppeared("/a", LIMIT)) == []
    assert f.t.handle(CgroupSignal("/a", USAGE)) == []  # crossed downwards (or not yet there)
    f.cgroup("/a", 95, failcnt=0)
    (start,) = f.t.handle(CgroupSignal("/a", USAGE))
    assert (start.state, start.scope, start.source, start.cgroup_path) == ("start", "memcg", "usage", "/a")
    assert (start.limit_bytes, start.usage_bytes, start.failcnt, start.time_unix_nano) == (LIMIT, 95 * MiB, 0, f.wall)
    assert start.psi_some_avg10 is None and start.events_max is None  # v2 readings
    assert f.t.active() == {"host": 0, "memcg": 1}
    f.cgroup("/a", 50, failcnt=3)  # below the clear level, but charges keep failing at the limit
    assert f.at(5) == []
    f.cgroup("/a", 85, failcnt=3)  # 85 % is above the clear level (80 %)
    assert f.at(12) == [] and f.at(21.9) == []
    f.cgroup("/a", 40, failcnt=3)
    assert f.at(22) == [] and f.at(31.5) == []  # 10 s after the last hot reading (21.9 s): not yet
    (end,) = f.at(32)
    assert (end.state, end.ended_by, end.episode_id, end.event_id) == ("end", "cleared", start.episode_id,
                                                                       start.episode_id + ":end")
    assert end.peak_usage_bytes == 95 * MiB and end.usage_bytes == 40 * MiB and end.duration_ns == 32 * 10**9
    assert f.at(40) == [] and f.t.active() == {"host": 0, "memcg": 0}


def test_v1_vmpressure_starts_an_episode_with_its_level_and_heats_one_in_progress(tmp_path):
    f = Fixture(tmp_path, 1)
    f.cgroup("/a", 60)
    f.t.handle(CgroupAppeared("/a", LIMIT))
    (start,) = f.t.handle(CgroupSignal("/a", VMPRESSURE, 40))
    assert (start.source, start.vmpressure_level) == ("vmpressure", "medium")
    f.now = 9
    assert f.t.handle(CgroupSignal("/a", VMPRESSURE)) == []  # reclaim goes on: still hot at 9 s
    assert f.at(18.9) == []
    assert [r.ended_by for r in f.at(19)] == ["cleared"]


def test_a_cgroup_found_above_the_start_level_starts_at_once_and_a_new_limit_keeps_the_episode(tmp_path):
    f = Fixture(tmp_path, 2)
    f.cgroup("/a", 95)
    (start,) = f.t.handle(CgroupAppeared("/a", LIMIT))
    assert start.source == "usage" and start.psi_some_avg10 == 0.0 and start.events_max == 0
    assert start.failcnt is None  # v1 only
    assert f.t.handle(CgroupAppeared("/a", 2 * LIMIT)) == []  # the limit was raised: the same episode
    (end,) = f.t.handle(CgroupUnlimited("/a"))
    assert (end.ended_by, end.limit_bytes, end.episode_id) == ("cgroup_unlimited", 2 * LIMIT, start.episode_id)


def test_v2_limit_events_start_with_max_before_high_and_a_removed_cgroup_ends_its_episode(tmp_path):
    f = Fixture(tmp_path, 2)
    f.cgroup("/a/b", 10, max=1, high=4)
    f.t.handle(CgroupAppeared("/a/b", LIMIT))
    assert f.t.handle(CgroupSignal("/a/b", OOM)) == []  # the no-kill tracker's
    (start,) = f.t.handle(CgroupSignal("/a/b", MAX))
    assert f.t.handle(CgroupSignal("/a/b", HIGH, 3)) == []
    assert (start.source, start.events_max, start.events_high) == ("memory.events.max", 1, 4)
    shutil.rmtree(f.root / "cg" / "a")
    (end,) = f.t.handle(CgroupRemoved("/a"))
    assert (end.ended_by, end.cgroup_path, end.usage_bytes) == ("cgroup_removed", "/a/b", None)
    assert f.t.handle(CgroupSignal("/a/b", HIGH)) == []  # no longer tracked (nor there)


def test_v2_psi_hierarchy_only_the_deepest_that_fired_starts_and_not_while_the_host_is_under_pressure(tmp_path):
    f = Fixture(tmp_path, 2)
    for path in ("/p", "/p/c", "/q"):
        f.cgroup(path, 10, psi=30.0)
        f.t.handle(CgroupAppeared(path, LIMIT))
    for path in ("/p", "/p/c", "/q"):
        assert f.t.handle(CgroupSignal(path, PSI)) == []  # decided at the tick
    started = f.at(1)
    assert [(r.cgroup_path, r.source, r.psi_some_avg10) for r in started] == [("/p/c", "psi", 30.0), ("/q", "psi", 30.0)]
    # the host short of memory and stalling: its episode explains the memcg stalls
    f.meminfo(total=1000, available=50)
    f.host_psi(40.0)
    (host,) = f.t.handle(HostPressure())
    f.cgroup("/p", 10, psi=30.0)
    f.t.handle(CgroupSignal("/p", PSI))
    assert f.at(2) == []
    assert (host.scope, host.source, host.host_available_bytes, host.host_total_bytes) == ("host", "psi", 51200, 1024000)


def test_the_host_episode_needs_a_memavailable_shortage_and_clears_when_the_stall_stops(tmp_path):
    f = Fixture(tmp_path, 1)
    f.host_psi(50.0)
    f.meminfo(total=1000, available=500)  # stalls at cgroup limits on a host with memory to spare
    assert f.t.handle(HostPressure()) == []
    f.meminfo(total=1000, available=100)  # 90 % used: the start level
    (start,) = f.t.handle(HostPressure())
    assert (start.state, start.psi_some_avg10, start.psi_full_avg10) == ("start", 50.0, 25.0)
    assert f.t.active()["host"] == 1
    f.host_psi(80.0)
    assert f.at(3) == []
    f.meminfo(total=1000, available=150)  # 85 % used: still above the clear level (80 %)
    assert f.at(12) == []
    f.host_psi(1.0)  # the stall stopped (below half the start level)
    assert f.at(21.9) == []
    (end,) = f.at(22)
    assert (end.ended_by, end.peak_psi_some_avg10, end.duration_ns) == ("cleared", 80.0, 22 * 10**9)


def test_without_a_hierarchy_only_the_host_is_tracked(tmp_path):
    f = Fixture(tmp_path, 1)
    t = PressureTracker(None, f.t.host, T, "boot", clock=lambda: 0.0)
    assert t.handle(CgroupSignal("/a", USAGE)) == [] and t.tick() == []


def test_a_signal_from_a_cgroup_not_heard_of_reads_it_then_and_an_unlimited_one_is_ignored(tmp_path):
    """Its CgroupAppeared may have been lost to a full worker queue: the signal alone is enough."""
    f = Fixture(tmp_path, 2)
    f.cgroup("/late", 95)
    (start,) = f.t.handle(CgroupSignal("/late", USAGE))
    assert (start.cgroup_path, start.limit_bytes) == ("/late", LIMIT)
    f.cgroup("/free", 95)
    (f.root / "cg" / "free" / "memory.max").write_text("max\n")
    assert f.t.handle(CgroupSignal("/free", MAX)) == []


def test_describe_names_what_is_watched(tmp_path):
    from collections import Counter

    from otel_oom.around.room import Around

    f = Fixture(tmp_path, 1)
    assert Around(Counter(), pressure=f.t).describe() == "pressure (memory cgroups)"
    host_only = PressureTracker(None, f.t.host, T, "boot")
    assert Around(Counter(), pressure=host_only).describe() == "pressure (nothing to watch)"


def test_v2_limit_counters_still_rising_keep_an_episode_on_without_waiting_for_their_signal(tmp_path):
    """The source reports a rising counter once a second, out of phase with the tick: the tick reads it."""
    f = Fixture(tmp_path, 2)
    f.cgroup("/a", 10, high=1)
    f.t.handle(CgroupAppeared("/a", LIMIT))
    (start,) = f.t.handle(CgroupSignal("/a", HIGH))
    for second, high in ((3, 7), (6, 20), (9, 21), (12, 40)):  # throttled on, never signalled again
        f.cgroup("/a", 10, high=high)
        assert f.at(second) == []
    assert f.at(21.9) == []
    (end,) = f.at(22)
    assert (end.ended_by, end.events_high, end.episode_id) == ("cleared", 40, start.episode_id)
