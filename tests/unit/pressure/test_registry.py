"""Registering a cgroup's notifications and what each one means (registry.py), on fixture trees with real
eventfds, epoll and inotify. cgroup.event_control is a plain file here, so a v1 registration goes through
(the kernel's side is exercised by tests/e2e/test_pressure.py); the test writes to the eventfds as the
kernel would. A v2 `memory.pressure` is a FIFO here, which accepts a trigger line and can be polled."""
from __future__ import annotations

import os
import select
import shutil

import pytest

from otel_oom.pressure.discovery import Discovery
from otel_oom.pressure.events import (
    HIGH,
    MAX,
    OOM,
    PSI,
    USAGE,
    VMPRESSURE,
    CgroupAppeared,
    CgroupSignal,
    CgroupUnlimited,
)
from otel_oom.pressure.inotify import Inotify
from otel_oom.pressure.notifier import Notifier
from otel_oom.pressure.registry import Registry
from otel_oom.pressure.thresholds import Thresholds

MiB = 1 << 20
READ_ONLY_SYSFS_FILE = "/sys/kernel/uevent_seqnum"  # kernfs refuses to open it for writing, even to root


class Fixture:
    def __init__(self, root, version: int, report: bool = True, max_cgroups: int = 100) -> None:
        self.root, self.version, self.now = root, version, 100.0
        self.warnings: list[str] = []
        self.ino = Inotify()
        self.notifier: Notifier = Notifier()
        self.discovery = Discovery(str(root), "memory.limit_in_bytes" if version == 1 else "memory.max", self.ino,
                                   lambda key, msg: self.warnings.append(key))
        self.reg = Registry(version, self.discovery, self.notifier, Thresholds(usage_percent=90), max_cgroups,
                            report, lambda key, msg: self.warnings.append(key), clock=lambda: self.now)

    def v1(self, path: str, limit: int = 64 * MiB, usage: int = 0, event_control: str = ""):
        d = self.root / path.lstrip("/")
        d.mkdir(parents=True)
        for name, text in (("memory.limit_in_bytes", f"{limit}\n"), ("memory.usage_in_bytes", f"{usage}\n"),
                           ("memory.pressure_level", ""), ("memory.oom_control", "under_oom 0\n")):
            (d / name).write_text(text)
        if event_control:
            os.symlink(event_control, d / "cgroup.event_control")
        else:
            (d / "cgroup.event_control").write_text("")
        return d

    def v2(self, path: str, limit: str = f"{64 * MiB}", usage: int = 0, psi_fifo: bool = True):
        d = self.root / path.lstrip("/")
        d.mkdir(parents=True)
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(f"{usage}\n")
        (d / "memory.events.local").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
        if psi_fifo:
            os.mkfifo(d / "memory.pressure")
        return d

    def close(self) -> None:
        self.reg.close()
        self.notifier.close()
        self.ino.close()


@pytest.fixture
def fx(tmp_path):
    made: list[Fixture] = []

    def make(version: int, **kw) -> Fixture:
        made.append(Fixture(tmp_path, version, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def test_v1_a_storm_on_an_eventfd_is_one_signal_then_one_per_tick(fx):
    f = fx(1)
    f.v1("/a", limit=64 * MiB)
    assert f.reg.consider("/a") == [CgroupAppeared("/a", 64 * MiB)] and f.reg.consider("/a") == []
    fds = f.reg.regs["/a"].fds
    assert sorted(fds) == sorted([USAGE, VMPRESSURE, OOM])
    os.eventfd_write(fds[VMPRESSURE], 500)
    (fired,) = f.notifier.wait(5)
    assert f.reg.fired(*fired) == [CgroupSignal("/a", VMPRESSURE, 500)]
    os.eventfd_write(fds[VMPRESSURE], 300)  # still firing: disarmed, no wake-up until the tick
    assert f.notifier.wait(0) == [] and f.reg.busy()
    assert f.reg.tick() == ([CgroupSignal("/a", VMPRESSURE, 300)], [])
    assert f.reg.busy()  # it fired since the last tick: stays disarmed for one more
    assert f.reg.tick() == ([], []) and not f.reg.busy()
    os.eventfd_write(fds[OOM], 1)
    (fired,) = f.notifier.wait(5)
    shutil.rmtree(f.root / "a")  # removing a cgroup signals its eventfds one last time
    assert f.reg.fired(*fired) is None


def test_v1_limit_changes_register_again_and_an_unlimited_cgroup_is_dropped(fx):
    f = fx(1)
    d = f.v1("/a", limit=64 * MiB)
    f.reg.consider("/a")
    old = f.reg.regs["/a"]
    (d / "memory.limit_in_bytes").write_text(f"{128 * MiB}\n")
    assert f.reg.consider("/a") == [CgroupAppeared("/a", 128 * MiB)]
    new = f.reg.regs["/a"]
    assert new is not old and old.fds == {} and new.limit == 128 * MiB and len(new.fds) == 3
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert f.reg.consider("/a") == [CgroupUnlimited("/a")] and "/a" not in f.reg.regs
    assert f.reg.consider("/a") == []  # unlimited and unknown: nothing to say


def test_only_the_oom_notification_without_pressure_and_the_cap_counts_the_rest(fx):
    f = fx(1, report=False, max_cgroups=1)
    f.v1("/a")
    f.v1("/b")
    f.v1("/c")
    assert f.reg.consider("/a") == [CgroupAppeared("/a", 64 * MiB)]
    assert list(f.reg.regs["/a"].fds) == [OOM]
    assert f.reg.consider("/b") == [] and f.reg.consider("/c") == []
    assert f.reg.unwatched == 2 and f.warnings == ["cap", "cap"]  # the source says it once


def test_v1_on_a_read_only_cgroupfs_is_polled_at_each_sweep(fx):
    if not os.path.exists(READ_ONLY_SYSFS_FILE):
        pytest.skip(f"{READ_ONLY_SYSFS_FILE} is missing: no read-only kernfs file to stand for the cgroupfs")
    f = fx(1)
    d = f.v1("/a", usage=10 * MiB, event_control=READ_ONLY_SYSFS_FILE)
    assert f.reg.consider("/a") == [CgroupAppeared("/a", 64 * MiB)]
    assert f.reg.regs["/a"].polled and f.reg.regs["/a"].fds == {} and f.warnings == ["read-only"]
    assert f.reg.sweep() == []
    (d / "memory.usage_in_bytes").write_text(f"{60 * MiB}\n")
    (d / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 1\n")
    assert f.reg.sweep() == [CgroupSignal("/a", USAGE), CgroupSignal("/a", OOM)]


def test_v2_counter_changes_are_read_at_most_once_a_second_and_each_rise_is_a_signal(fx):
    f = fx(2)
    d = f.v2("/a")
    f.discovery.rescan()
    assert f.reg.consider("/a") == [CgroupAppeared("/a", 64 * MiB)] and f.warnings == []
    (d / "memory.events.local").write_text("low 0\nhigh 4\nmax 1\noom 2\noom_kill 0\n")
    assert [c.kind for c in f.discovery.changes()] == ["file"]
    assert f.reg.events_changed("/a") == []  # read less than a second ago (at the registration)
    assert f.reg.busy()
    f.now += 1
    assert f.reg.tick() == ([CgroupSignal("/a", OOM, 2), CgroupSignal("/a", MAX, 1), CgroupSignal("/a", HIGH, 4)], [])
    (d / "memory.events.local").write_text("low 0\nhigh 5\nmax 1\noom 2\noom_kill 0\n")
    f.now += 1
    assert f.reg.events_changed("/a") == [CgroupSignal("/a", HIGH, 1)] and not f.reg.busy()


def test_v2_psi_and_usage_sweep(fx):
    f = fx(2)
    d = f.v2("/a", usage=10 * MiB)
    f.reg.consider("/a")
    psi = f.reg.regs["/a"].psi
    assert psi is not None and f.notifier.owner(psi.fileno()) == ("/a", PSI)
    assert f.reg.fired(("/a", PSI), psi.fileno(), select.EPOLLPRI) == [CgroupSignal("/a", PSI)]
    assert f.reg.fired(("/a", PSI), psi.fileno(), select.EPOLLERR) is None  # the cgroup is being removed
    assert f.reg.sweep() == []
    (d / "memory.current").write_text(f"{58 * MiB}\n")  # 90.6 % of the limit
    assert f.reg.sweep() == [CgroupSignal("/a", USAGE)]
    f.v2("/b", limit="max")
    assert f.reg.consider("/b") == []  # unlimited: not watched


def test_a_cgroup_gone_before_it_was_registered_is_not_counted(fx):
    f = fx(1)
    d = f.v1("/a")
    (d / "memory.oom_control").unlink()  # as if removed between the limit read and the registration
    assert f.reg.consider("/a") == [] and f.reg.unwatched == 0 and f.reg.regs == {}
    assert not f.reg.busy() and f.notifier.wait(0) == []
