"""cgroupfs/memcg.py, psi.py, host.py and `is_under`: every memory cgroup file kind read from fixture
trees written here (v1 and v2 layouts), with the kernel's own formats."""
from __future__ import annotations

import os

import pytest

from otel_oom.cgroupfs import memcg
from otel_oom.cgroupfs.host import HostFiles
from otel_oom.cgroupfs.memcg import MemcgFiles
from otel_oom.cgroupfs.tree import is_under, walk

MiB = 1 << 20
PSI = "some avg10=12.50 avg60=3.00 avg300=1.00 total=999\nfull avg10=1.25 avg60=0.00 avg300=0.00 total=9\n"


def _files(d, **files) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text)


@pytest.mark.parametrize("path, root, under", [
    ("/a/b", "/a", True), ("/a", "/a", True), ("/ab", "/a", False), ("/a", "/a/b", False),
    ("/x", "/", True), ("/", "/", True), (None, "/", False), ("/a/b", "/a/", True),
])
def test_is_under(path, root, under):
    assert is_under(path, root) is under


def test_v1_files(tmp_path):
    _files(tmp_path / "a", memory__limit_in_bytes=f"{32 * MiB}\n", memory__usage_in_bytes=f"{30 * MiB}\n",
           memory__failcnt="7\n", memory__oom_control="oom_kill_disable 1\nunder_oom 1\noom_kill 3\n",
           cgroup__procs="12\n11\n")
    _files(tmp_path / "a" / "b", memory__limit_in_bytes="9223372036854771712\n", cgroup__procs="13\n")
    f = MemcgFiles(1, str(tmp_path))
    assert (f.limit("/a"), f.usage("/a"), f.failcnt("/a")) == (32 * MiB, 30 * MiB, 7)
    assert f.limit("/a/b") is None  # PAGE_COUNTER_MAX: unlimited
    assert f.oom_control("/a") == {"oom_kill_disable": 1, "under_oom": 1, "oom_kill": 3}
    assert f.oom_kills("/a") == 3 and memcg.local_oom_kills(1, f.directory("/a")) == 3
    assert f.tasks("/a", 2) == (3, (11, 12)) and memcg.procs(f.directory("/a")) == [12, 11]
    assert f.events_local("/a") == {} and f.pressure("/a") is None  # v2 only
    assert f.directory("/") == str(tmp_path) and f.directory("/a/b") == str(tmp_path / "a" / "b")
    assert memcg.limit_file(1) == "memory.limit_in_bytes" and memcg.limit_file(2) == "memory.max"


def test_v2_files(tmp_path):
    _files(tmp_path / "p", memory__max="max\n", memory__current=f"{5 * MiB}\n", memory__pressure=PSI,
           memory__events="low 0\nhigh 4\nmax 2\noom 1\noom_kill 6\noom_group_kill 0\n",
           memory__events__local="low 0\nhigh 4\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n",
           memory__oom__group="1\n")
    _files(tmp_path / "old", memory__max=f"{MiB}\n", memory__events="oom_kill 2\n")
    f = MemcgFiles(2, str(tmp_path))
    assert f.limit("/p") is None and f.limit("/old") == MiB and f.usage("/p") == 5 * MiB
    assert f.events_local("/p")["high"] == 4 and f.oom_kills("/p") == 6  # hierarchical memory.events
    assert memcg.local_oom_kills(2, f.directory("/p")) == 1   # memory.events.local where the kernel has it
    assert memcg.local_oom_kills(2, f.directory("/old")) == 2  # else memory.events (before 5.2)
    psi = f.pressure("/p")
    assert psi is not None and (psi.some_avg10, psi.full_avg10) == (12.5, 1.25)
    assert memcg.oom_group(f.directory("/p")) and not memcg.oom_group(f.directory("/old"))
    assert f.failcnt("/p") is None and f.oom_control("/p") == {}  # v1 only


def test_a_removed_cgroup_reads_as_missing_and_strict_raises_only_for_other_errors(tmp_path):
    f = MemcgFiles(2, str(tmp_path))
    assert (f.limit("/gone"), f.usage("/gone"), f.events_local("/gone"), f.tasks("/gone", 4)) == (None, None, {}, (0, ()))
    assert not f.exists("/gone") and memcg.local_oom_kills(2, f.directory("/gone"), strict=True) is None
    (tmp_path / "dir-not-file").mkdir()
    (tmp_path / "dir-not-file" / "memory.events.local").mkdir()  # reading a directory: EISDIR
    assert memcg.local_oom_kills(2, str(tmp_path / "dir-not-file")) is None
    with pytest.raises(IsADirectoryError):
        memcg.local_oom_kills(2, str(tmp_path / "dir-not-file"), strict=True)


def test_tasks_waiting_are_those_in_state_d(tmp_path):
    for pid, state in ((5, "D"), (6, "S"), (7, "D")):
        _files(tmp_path / str(pid), stat=f"{pid} (a name) with) {state} 1 2 3\n")
    assert MemcgFiles(1, "/nonexistent", proc_root=str(tmp_path)).waiting((5, 6, 7, 8)) == 2


def test_host_files(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nMemAvailable:    100 kB\nHugePages_Total:   3\n")
    (tmp_path / "psi").write_text(PSI)
    host = HostFiles(str(tmp_path / "psi"), str(tmp_path / "meminfo"))
    assert host.meminfo() == {"MemTotal": 1024000, "MemAvailable": 102400, "HugePages_Total": 3}
    psi = host.psi()
    assert psi is not None and psi.some_avg10 == 12.5
    assert HostFiles(str(tmp_path / "none"), str(tmp_path / "none")).meminfo() == {}


def test_walk_is_root_first_and_paths_are_inside_the_hierarchy(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    found = {path: directory for path, directory, _ in walk(str(tmp_path))}
    assert list(found)[0] == "/" and set(found) == {"/", "/a", "/a/b", "/c"}
    assert found["/a/b"] == os.path.join(str(tmp_path), "a", "b")
