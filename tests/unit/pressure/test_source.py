"""The pressure source's thread on a fixture hierarchy in a tmpfs directory: real inotify, epoll and
eventfds, no root. What it submits is what the worker gets: plain events, in batches, and it calls
nobody else."""
from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from otel_oom.cgroupfs.hierarchy import MemoryHierarchy
from otel_oom.pressure.events import (
    OOM,
    Batch,
    CgroupAppeared,
    CgroupRemoved,
    CgroupSignal,
    CgroupUnlimited,
)
from otel_oom.pressure.source import PressureSource, WatchSettings
from otel_oom.pressure.thresholds import Thresholds

MiB = 1 << 20
WAIT_S = 60.0  # generous: the machine may be busy; nothing here measures speed


@pytest.fixture
def tree(tmp_path):
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="otel-oom-around-test-", dir="/dev/shm")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def v2_cgroup(root: Path, path: str, limit: str) -> Path:
    d = root / path.lstrip("/")
    d.mkdir(parents=True)
    (d / "memory.current").write_text(f"{MiB}\n")
    (d / "memory.events.local").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    (d / "memory.max").write_text(limit + "\n")
    return d


class Collected:
    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()
        self.events: list = []

    def submit(self, item: object) -> None:
        self.q.put(item)

    def until(self, want: object) -> list:
        """Every event submitted until `want` (batches unpacked); fails after WAIT_S without it."""
        while want not in self.events:
            try:
                item = self.q.get(timeout=WAIT_S)
            except queue.Empty:
                pytest.fail(f"no {want} from the source; got {self.events}")
            self.events += list(item.events) if isinstance(item, Batch) else [item]
        return self.events


def test_the_source_submits_what_the_tree_and_the_counters_tell(tree):
    v2_cgroup(tree, "/a", f"{64 * MiB}")
    v2_cgroup(tree, "/free", "max")
    got = Collected()
    settings = WatchSettings(thresholds=Thresholds(), scan_interval_s=0.2, host=False, report=False)
    source = PressureSource(MemoryHierarchy(2, str(tree), 0), settings, got.submit)
    source.start()
    thread = threading.Thread(target=source.run, name="otel-oom-test-pressure-source")
    thread.start()
    try:
        got.until(CgroupAppeared("/a", 64 * MiB))
        assert source.watched() == 1 and source.unwatched() == 0 and not source.host_watched()
        (tree / "a" / "memory.events.local").write_text("low 0\nhigh 0\nmax 0\noom 2\noom_kill 0\n")
        got.until(CgroupSignal("/a", OOM, 2))
        v2_cgroup(tree, "/a/b", f"{32 * MiB}")  # found by inotify, or by the rescan if it raced its files
        got.until(CgroupAppeared("/a/b", 32 * MiB))
        (tree / "a" / "b" / "memory.max").write_text("max\n")
        got.until(CgroupUnlimited("/a/b"))
        shutil.rmtree(tree / "a")
        events = got.until(CgroupRemoved("/a"))
        assert not [e for e in events if getattr(e, "path", "") == "/free"]  # unlimited: never watched
        assert source.watched() == 0
    finally:
        source.stop()
        thread.join(WAIT_S)
        source.close()
    assert not thread.is_alive() and source.faults == {}
