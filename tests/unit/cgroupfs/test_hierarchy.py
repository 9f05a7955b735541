"""Memory hierarchy detection (fixture mountinfo) and cgroup id -> path resolution (real trees)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import require

from otel_oom.cgroupfs.hierarchy import CgroupError, MemoryHierarchy, cgroup_line, detect_memory_hierarchy
from otel_oom.cgroupfs.tree import CgroupResolver, path_from_names
from testing.agent_process import REPO

FIX = REPO / "tests" / "fixtures" / "mountinfo"
SYS_ROOT = str(FIX / "root")
REAL_MEMORY = "/sys/fs/cgroup/memory"



def detect(name: str, cgroups: str = "hybrid.cgroups") -> MemoryHierarchy | None:
    return detect_memory_hierarchy(str(FIX / name), str(FIX / cgroups), SYS_ROOT)


# --- detection -----------------------------------------------------------------------------

@pytest.mark.parametrize("mountinfo, cgroups, expected", [
    # this VM: v1 memory plus a cgroup2 mount without memory -> v1
    ("hybrid.mountinfo", "hybrid.cgroups", MemoryHierarchy(1, "/sys/fs/cgroup/memory", 4, "memory")),
    ("v2.mountinfo", "v2.cgroups", MemoryHierarchy(2, "/sys/fs/cgroup", 0)),
    # own namespaced mount (root "/") loses to the host's bind mount (root "/../../..")
    ("container-v2.mountinfo", "v2.cgroups", MemoryHierarchy(2, "/host/sys/fs/cgroup", 0)),
    # own subtree bind mount is skipped for the host's full hierarchy
    ("container-v1.mountinfo", "hybrid.cgroups",
     MemoryHierarchy(1, "/host/sys/fs/cgroup/memory", 4, "memory")),
    ("comounted-escaped.mountinfo", "comounted.cgroups",
     MemoryHierarchy(1, "/sys/fs/cgroup/cpu and memory", 5, "cpu,memory,name=agent")),
    ("nomemory.mountinfo", "hybrid.cgroups", None),
])
def test_detect_fixture(mountinfo, cgroups, expected):
    assert detect(mountinfo, cgroups) == expected


def test_detect_v2_needs_memory_in_cgroup_controllers(tmp_path):
    # same pure-v2 mountinfo, but the controllers file is absent under this sys_root
    assert detect_memory_hierarchy(str(FIX / "v2.mountinfo"), str(FIX / "v2.cgroups"),
                                   str(tmp_path)) is None
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu io pids\n")
    assert detect_memory_hierarchy(str(FIX / "v2.mountinfo"), str(FIX / "v2.cgroups"),
                                   str(tmp_path)) is None
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu io memory pids\n")
    assert detect_memory_hierarchy(str(FIX / "v2.mountinfo"), str(FIX / "v2.cgroups"),
                                   str(tmp_path)) == MemoryHierarchy(2, "/sys/fs/cgroup", 0)


def test_detect_subtree_only_is_a_clear_error():
    with pytest.raises(CgroupError, match="only a subtree .* mount the host's /sys/fs/cgroup"):
        detect("subtree-only.mountinfo")


def test_detect_v1_without_proc_cgroups_is_a_clear_error(tmp_path):
    with pytest.raises(CgroupError, match="cannot read .*hierarchy id"):
        detect_memory_hierarchy(str(FIX / "hybrid.mountinfo"), str(tmp_path / "missing"), SYS_ROOT)
    (tmp_path / "cgroups").write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\n")
    with pytest.raises(CgroupError, match="no memory row"):
        detect_memory_hierarchy(str(FIX / "hybrid.mountinfo"), str(tmp_path / "cgroups"), SYS_ROOT)


def test_detect_tolerates_garbage_lines(tmp_path):
    text = (FIX / "hybrid.mountinfo").read_bytes()
    (tmp_path / "mi").write_bytes(b"garbage\n\n1 2 3\n\xff\xfe - -\n" + text + b"trailing - x")
    assert detect_memory_hierarchy(str(tmp_path / "mi"), str(FIX / "hybrid.cgroups"),
                                   SYS_ROOT) == MemoryHierarchy(1, "/sys/fs/cgroup/memory", 4)


def test_detect_this_machine_agrees_with_proc_self_cgroup():
    h = detect_memory_hierarchy()
    require(h is not None, "no memory cgroup controller mounted on this machine")
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    if h.version == 1:
        mine = next(line for line in lines if "memory" in line.split(":")[1].split(","))
    else:
        mine = next(line for line in lines if line.startswith("0::"))
    path = mine.split(":", 2)[2]
    # only true in the host cgroup namespace, which is where this suite runs
    assert cgroup_line(h, path) == mine
    assert os.path.isdir(h.mount + path)


def test_cgroup_line():
    assert cgroup_line(MemoryHierarchy(2, "/sys/fs/cgroup", 0), "/a/b") == "0::/a/b"
    assert cgroup_line(MemoryHierarchy(1, "/sys/fs/cgroup/memory", 4), "/a/b") == "4:memory:/a/b"
    assert cgroup_line(MemoryHierarchy(1, "/x", 5, "cpu,memory"), "/") == "5:cpu,memory:/"


# --- names captured by the kernel ----------------------------------------------------------

@pytest.mark.parametrize("names, path", [
    (["c", "b", "a", ""], "/a/b/c"),
    ([""], "/"),
    (["leaf", ""], "/leaf"),
    (["a b\n\"q\"", "bad\udcffname", ""], "/bad\udcffname/a b\n\"q\""),
])
def test_path_from_names(names, path):
    assert path_from_names(names) == path


@pytest.mark.parametrize("names", [[], ["c", "b"]])
def test_path_from_names_rejects_incomplete_walk(names):
    with pytest.raises(ValueError, match="did not reach the root"):
        path_from_names(names)


# --- resolver on real directory trees ------------------------------------------------------

def ino(p: Path | bytes | str) -> int:
    return os.stat(p, follow_symlinks=False).st_ino


def test_resolver_real_tree(tmp_path):
    (tmp_path / "a/b/c").mkdir(parents=True)
    (tmp_path / "a/file").write_text("not a cgroup")
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    r = CgroupResolver(str(tmp_path))
    assert r.path_for_id(ino(tmp_path)) == "/"
    assert r.path_for_id(ino(tmp_path / "a")) == "/a"
    assert r.path_for_id(ino(tmp_path / "a/b/c")) == "/a/b/c"
    assert r.path_for_id(ino(tmp_path / "x")) == "/x"
    assert r.path_for_id(ino(tmp_path / "a/file")) is None      # files are not cgroups
    assert r.path_for_id(ino(tmp_path / "link")) is None        # symlinks are not followed
    assert r.scans == 1  # everything above after one scan; the two misses were rate limited


def test_resolver_hostile_names(tmp_path):
    bad = os.fsencode(tmp_path) + b"/bad\xffname"
    os.mkdir(bad)
    quoted = tmp_path / "bad\udcffname" / "a b\n\"q\""
    quoted.mkdir()
    r = CgroupResolver(str(tmp_path))
    assert r.path_for_id(ino(bad)) == "/bad\udcffname"
    assert r.path_for_id(ino(quoted)) == "/bad\udcffname/a b\n\"q\""
    assert os.fsencode(r.path_for_id(ino(quoted))) == b"/bad\xffname/a b\n\"q\""


def test_resolver_rescans_on_miss_but_rate_limited(tmp_path):
    now = [100.0]
    r = CgroupResolver(str(tmp_path), min_rescan_interval=0.2, clock=lambda: now[0])
    assert r.path_for_id(ino(tmp_path)) == "/"
    assert r.scans == 1
    (tmp_path / "new").mkdir()
    new = ino(tmp_path / "new")
    # a storm of unknown ids inside the interval: no scan at all
    for unknown in range(10**9, 10**9 + 1000):
        assert r.path_for_id(unknown) is None
    assert r.path_for_id(new) is None
    assert r.scans == 1
    now[0] += 0.2
    assert r.path_for_id(new) == "/new"
    assert r.scans == 2
    assert r.path_for_id(new) == "/new"   # cached: no scan
    assert r.scans == 2


def test_resolver_keeps_a_removed_cgroup_for_one_scan(tmp_path):
    now = [0.0]
    (tmp_path / "gone").mkdir()
    gone = ino(tmp_path / "gone")
    r = CgroupResolver(str(tmp_path), clock=lambda: now[0])
    assert r.path_for_id(gone) == "/gone"
    (tmp_path / "gone").rmdir()
    now[0] += 1
    r.rescan()
    assert r.path_for_id(gone) == "/gone"   # a kill's cgroup removed right after still resolves
    now[0] += 1
    r.rescan()
    assert gone not in r._paths              # two scans later it is forgotten: memory stays bounded


def test_resolver_missing_mount(tmp_path):
    r = CgroupResolver(str(tmp_path / "absent"))
    assert r.path_for_id(1) is None


def test_resolver_tolerates_directories_vanishing_mid_scan(tmp_path):
    # Remove directories from a concurrent thread while scanning a wide tree, many times.
    import threading
    for _ in range(20):
        for i in range(200):
            (tmp_path / f"d{i}" / "sub").mkdir(parents=True, exist_ok=True)
        stop = threading.Event()

        def churn(stop=stop):
            for i in range(200):
                for p in (tmp_path / f"d{i}" / "sub", tmp_path / f"d{i}"):
                    try:
                        p.rmdir()
                    except OSError:
                        pass
            stop.set()

        t = threading.Thread(target=churn)
        t.start()
        r = CgroupResolver(str(tmp_path))
        r.rescan()
        t.join()
        assert r._paths[ino(tmp_path)] == "/"


def test_a_full_rescan_finds_every_directory_of_a_big_hierarchy(tmp_path):
    # 10,000 directories, wider and deeper than a busy Kubernetes node's memory hierarchy
    for q in range(10):
        for p in range(100):
            for c in range(9):
                (tmp_path / f"qos{q}" / f"pod{p}" / f"c{c}").mkdir(parents=True)
    r = CgroupResolver(str(tmp_path))
    r.rescan()  # (its speed is a figure of bench/, not a test)
    assert len(r._paths) == 1 + 10 + 1000 + 9000


# --- the real memory cgroup hierarchy -----------------------------------------------------


