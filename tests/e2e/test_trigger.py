"""trigger_oom / trigger_storm cause real OOM kills, only inside cgroups they create, and clean up."""
from __future__ import annotations

import os
import secrets
import time

import pytest
from conftest import as_nobody, require

from otel_oom.reconcile.kcounters import vmstat_oom_kills
from otel_oom.trigger import TriggerError, memory_hierarchy, trigger_oom
from testing.storm import trigger_storm

MiB = 2**20


def _hierarchy() -> tuple[str, int]:
    require(os.geteuid() == 0, "needs root to create memory cgroups and cause OOM kills")
    try:
        return memory_hierarchy()
    except TriggerError as e:
        require(False, str(e))
        raise


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


# ---- argument checks (no root needed) ------------------------------------------------------------


def test_not_root_is_a_clear_error():
    require(os.geteuid() == 0, "needs root to drop privileges for the check")
    out = as_nobody(lambda: trigger_oom())
    assert out == "TriggerError: causing an OOM kill needs root (to create a memory cgroup); run as root"


# ---- hierarchy detection on fixture trees --------------------------------------------------------

# ---- real OOM kills -----------------------------------------------------------------------------

def test_a_victim_is_oom_killed_and_everything_is_cleaned_up():
    mount, version = _hierarchy()
    v0 = vmstat_oom_kills()
    r = trigger_oom(limit_bytes=16 * MiB)
    assert vmstat_oom_kills() - v0 >= 1  # exact count: memcg_oom_kills below
    assert r.victim_pid > 0
    assert not os.path.exists(f"/proc/{r.victim_pid}")
    assert r.memcg_oom_kills == 1
    assert r.cgroup_path.startswith(f"/otel-oom-trigger-{os.getpid()}-")
    assert r.cgroup_id > 0
    assert (r.mount, r.hierarchy_version) == (mount, version)
    assert not os.path.exists(mount + r.cgroup_path)


def test_keep_cgroup_leaves_the_limited_leaf_for_inspection():
    mount, version = _hierarchy()
    r = trigger_oom(limit_bytes=8 * MiB, keep_cgroup=True)
    leaf = mount + r.cgroup_path
    try:
        assert os.stat(leaf).st_ino == r.cgroup_id
        limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
        with open(os.path.join(leaf, limit_file)) as f:
            assert int(f.read()) == 8 * MiB
        with open(os.path.join(leaf, "cgroup.procs")) as f:
            assert f.read() == ""
    finally:
        os.rmdir(leaf)


def test_nested_kubepods_like_path_is_created_and_removed():
    mount, _ = _hierarchy()
    top = _unique("/otel-oom-test-kubepods")
    pod = "pod" + "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    cid = secrets.token_hex(32)
    path = f"{top}/burstable/{pod}/{cid}"
    r = trigger_oom(limit_bytes=8 * MiB, cgroup=path)
    assert r.cgroup_path == path
    assert r.memcg_oom_kills == 1
    assert not os.path.exists(mount + top)


def test_existing_parents_are_kept_and_only_created_dirs_removed():
    mount, _ = _hierarchy()
    parent = mount + _unique("/otel-oom-test-parent")
    os.mkdir(parent)
    try:
        r = trigger_oom(limit_bytes=8 * MiB, cgroup=parent[len(mount):] + "/a/b")
        assert r.memcg_oom_kills == 1
        assert os.path.isdir(parent)
        assert not os.path.exists(parent + "/a")
    finally:
        os.rmdir(parent)


def test_an_existing_leaf_is_never_limited():
    mount, _ = _hierarchy()
    leaf = mount + _unique("/otel-oom-test-existing")
    os.mkdir(leaf)
    try:
        with pytest.raises(TriggerError, match="already exists"):
            trigger_oom(cgroup=leaf[len(mount):])
        assert os.path.isdir(leaf)  # not ours: not removed
    finally:
        os.rmdir(leaf)


def test_hostile_comm_is_applied_to_the_victim():
    _hierarchy()
    comm = b"\x1b[31m(x) y\n\\\xff"
    r = trigger_oom(limit_bytes=8 * MiB, comm=comm)
    # read from /proc/self/comm inside the victim, just before it started allocating
    assert r.victim_comm == comm
    r2 = trigger_oom(limit_bytes=8 * MiB, comm="\x1b[31mred\n")
    assert r2.victim_comm == b"\x1b[31mred\n"


def test_hostile_cgroup_name_with_spaces_and_non_utf8_bytes():
    mount, _ = _hierarchy()
    name = _unique("/otel oom (test)") + " \udcff,task=x"
    r = trigger_oom(limit_bytes=8 * MiB, cgroup=name)
    assert r.cgroup_path == name
    assert r.memcg_oom_kills == 1
    assert not os.path.exists(os.fsencode(mount + name))


def test_a_name_the_kernel_refuses_is_a_clear_error_and_nothing_is_left():
    mount, _ = _hierarchy()
    top = _unique("/otel-oom-test-nl")
    with pytest.raises(TriggerError, match="cannot create cgroup"):
        trigger_oom(cgroup=top + "/a\nb")  # Linux refuses newlines in cgroup names
    assert not os.path.exists(mount + top)


def test_timeout_kills_the_victim_and_removes_the_cgroup():
    mount, _ = _hierarchy()
    before = {e for e in os.listdir(mount) if e.startswith(f"otel-oom-trigger-{os.getpid()}-")}
    with pytest.raises(TriggerError, match="within 0.001s"):
        trigger_oom(limit_bytes=8 * MiB, timeout=0.001)
    after = {e for e in os.listdir(mount) if e.startswith(f"otel-oom-trigger-{os.getpid()}-")}
    assert after == before


# ---- storms -------------------------------------------------------------------------------------

def _storm_dirs(mount: str) -> list[str]:
    return [e for e in os.listdir(mount) if e.startswith(f"otel-oom-storm-{os.getpid()}-")]


def test_a_small_storm_causes_exactly_the_kills_asked_for():
    mount, _ = _hierarchy()
    v0 = vmstat_oom_kills()
    s = trigger_storm(cgroups=2, kills=20)
    # the storm's own cgroups counted exactly 20; the host-wide counter may also see other kills
    assert vmstat_oom_kills() - v0 >= 20
    assert s.kills_caused == 20
    assert len(s.victim_pids) == 20 == len(set(s.victim_pids))
    assert not any(os.path.exists(f"/proc/{p}") for p in s.victim_pids)
    assert _storm_dirs(mount) == []


def test_a_storm_of_800_kills_causes_800_kills_and_leaves_nothing():
    mount, _ = _hierarchy()
    v0 = vmstat_oom_kills()
    t0 = time.monotonic()
    s = trigger_storm(cgroups=8, kills=800)
    wall = time.monotonic() - t0
    assert s.kills_caused == 800 <= vmstat_oom_kills() - v0
    assert s.seconds <= wall
    print(f"storm: 800 kills in {s.seconds:.2f}s = {800 / s.seconds:.0f} kills/s")  # its rate: bench/, not here
    assert _storm_dirs(mount) == []
