"""Cgroup discovery (discovery.py) on a real directory tree with real inotify: a tmpfs directory stands in
for the cgroupfs (mkdir, rmdir and writes to a limit file reach inotify the same way), no root needed."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from otel_oom.pressure.discovery import CREATED, DELETED, FILE, LIMIT, Change, Discovery
from otel_oom.pressure.inotify import Inotify


@pytest.fixture
def tree(tmp_path):
    """A fresh directory on /dev/shm (tmpfs) where there is one, else pytest's tmp_path."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="otel-oom-around-test-", dir="/dev/shm")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def mkcg(root: Path, path: str) -> Path:
    d = root / path.lstrip("/")
    d.mkdir(parents=True)
    (d / "memory.max").write_text("max\n")
    return d


def test_inotify_reports_new_cgroups_their_limit_writes_watched_files_and_removals(tree):
    warnings: list[tuple[str, str]] = []
    ino = Inotify()
    try:
        d = Discovery(str(tree), "memory.max", ino, lambda key, msg: warnings.append((key, msg)))
        assert d.rescan() == (["/"], []) and d.known == {"/"}
        a = mkcg(tree, "/a")
        assert d.changes() == [Change(CREATED, "/a")]
        mkcg(tree, "/a/b")
        mkcg(tree, "/a/b/c")  # made before any watch on /a/b existed: the new directory is walked
        assert d.changes() == [Change(CREATED, "/a/b"), Change(CREATED, "/a/b/c")]
        (a / "memory.max").write_text(f"{64 << 20}\n")
        assert d.changes() == [Change(LIMIT, "/a")]
        (a / "memory.events.local").write_text("oom 0\n")
        wd = d.watch_file("/a", "memory.events.local")
        (a / "memory.events.local").write_text("oom 1\n")
        assert d.changes() == [Change(FILE, "/a")]
        d.unwatch_file(wd)
        (a / "memory.events.local").write_text("oom 2\n")
        assert d.changes() == []
        shutil.rmtree(a / "b" / "c")
        assert d.changes() == [Change(DELETED, "/a/b/c")]
        assert sorted(d.gone("/a/b")) == ["/a/b", "/a/b/c"]  # the source forgets what was deleted
        assert d.known == {"/", "/a"} and warnings == []
    finally:
        ino.close()


def test_a_rescan_finds_what_no_watch_told_and_names_only_the_highest_removed(tree):
    d = Discovery(str(tree), "memory.max", None, lambda key, msg: None)  # no inotify: the rescan alone
    for path in ("/x", "/x/y", "/x/y/z", "/x y", "/w"):
        mkcg(tree, path)
    found, gone = d.rescan()
    assert sorted(found) == ["/", "/w", "/x", "/x y", "/x/y", "/x/y/z"] and gone == []
    shutil.rmtree(tree / "x")
    shutil.rmtree(tree / "x y")
    found, gone = d.rescan()
    assert found == [] and gone == ["/x", "/x y"]  # "/x/y" and "/x/y/z" go with "/x"
    for root in gone:
        d.gone(root)
    assert d.known == {"/", "/w"}
    assert d.watch_file("/w", "memory.events.local") == -1  # nothing to watch with


def test_a_cgroup_whose_limit_file_cannot_be_watched_is_warned_about_and_still_known(tree):
    warnings: list[str] = []
    ino = Inotify()
    try:
        d = Discovery(str(tree), "memory.max", ino, lambda key, msg: warnings.append(key))
        d.rescan()
        (tree / "nolimit").mkdir()  # no limit file: the watch on it fails
        (tree / "nolimit2").mkdir()
        assert [c.path for c in d.changes()] == ["/nolimit", "/nolimit2"]
        assert warnings == ["inotify", "inotify"] and {"/nolimit", "/nolimit2"} <= d.known
    finally:
        ino.close()
