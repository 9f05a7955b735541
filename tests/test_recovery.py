"""Reconciliation against the kernel's own counters, on fixture /proc and memory-cgroup trees."""
from __future__ import annotations

import json

from otel_oom.attribution.cgroups import MemoryHierarchy
from otel_oom.model import OomKill
from otel_oom.reconcile.recovery import Reconciler

BOOT = "boot-1"


def _tree(tmp_path, vmstat: int, memcgs: dict[str, int]):
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "vmstat").write_text(f"nr_free_pages 1\noom_kill {vmstat}\n")
    mount = tmp_path / "memory"
    for path, n in memcgs.items():
        d = mount / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n")
    return str(proc), MemoryHierarchy(version=1, mount=str(mount), hierarchy_id=4)


def _kill(pid: int, path: str) -> OomKill:
    return OomKill(event_id=f"{BOOT}:{pid}:{pid}", time_unix_nano=1, boot_time_ns=1, hook="tp_btf",
                   context_hook="none", recovered=False, victim_pid=pid, victim_tid=pid, victim_comm="x",
                   cgroup_path=path)


def test_unobserved_counts_only_kills_older_than_one_refresh(tmp_path):
    proc, h = _tree(tmp_path, 10, {"/": 0, "/a": 1})
    r = Reconciler(str(tmp_path / "state"), h, BOOT, proc_root=proc)
    r.observed(_kill(1, "/a"))
    _tree(tmp_path, 12, {"/": 0, "/a": 2, "/b": 1})   # one kill in /a (seen), one in a new /b (not seen)
    r.refresh()
    assert r.unobserved() == 0                       # the latest snapshot may still be in flight
    r.refresh()
    assert r.unobserved() == 1
    assert r.memcg_unobserved == 1                   # and the cgroups say where: /b


def test_a_cgroup_counter_reveals_a_miss_the_host_count_hides(tmp_path):
    # a task already exiting is marked as a victim without the kernel counting a kill: the agent saw
    # two "kills" in /a, the kernel counted one there and one in /b that the agent missed
    proc, h = _tree(tmp_path, 0, {"/": 0, "/a": 0, "/b": 0})
    r = Reconciler(None, h, BOOT, proc_root=proc)
    r.observed(_kill(1, "/a"))
    r.observed(_kill(2, "/a"))
    _tree(tmp_path, 2, {"/": 0, "/a": 1, "/b": 1})
    r.refresh()
    r.refresh()
    assert r.unobserved() == 1


def test_state_survives_as_one_record_and_a_restart_recovers_nothing_it_saw(tmp_path):
    proc, h = _tree(tmp_path, 5, {"/": 0})
    state = tmp_path / "state"
    first = Reconciler(str(state), h, BOOT, proc_root=proc)
    assert first.recover_missed() == []              # first start ever: nothing was missed
    first.observed(_kill(1, "/"))
    _tree(tmp_path, 6, {"/": 1})
    first.close()
    saved = json.loads((state / "reconcile.json").read_text())
    assert saved["boot_id"] == BOOT and saved["vmstat_oom_kill"] == 6
    assert (state / "reconcile.json").stat().st_size == 256
    second = Reconciler(str(state), h, BOOT, proc_root=proc, kmsg_path=str(tmp_path / "no-kmsg"))
    assert second.recover_missed() == [] and second.unobserved() == 0


def test_kills_while_stopped_are_counted_even_without_the_kernel_log(tmp_path):
    proc, h = _tree(tmp_path, 5, {"/": 0})
    state = tmp_path / "state"
    Reconciler(str(state), h, BOOT, proc_root=proc).recover_missed()
    _tree(tmp_path, 8, {"/": 3})                     # three kills while no agent ran
    again = Reconciler(str(state), h, BOOT, proc_root=proc, kmsg_path=str(tmp_path / "no-kmsg"))
    assert again.recover_missed() == []              # no readable kernel log: no details...
    assert again.unobserved() == 3                   # ...but never silently: counted as unobserved


def test_a_group_kill_counted_twice_by_the_kernel_is_not_reported_unobserved(tmp_path):
    # memory.oom.group: the kernel counts the chosen victim twice (the group scan kills it again),
    # so 3 victims of one decision raise the counters by 4 (measured on 6.1 and 6.12 in the QEMU matrix)
    proc, h = _tree(tmp_path, 0, {"/": 0, "/g": 0})
    r = Reconciler(None, h, BOOT, proc_root=proc)
    for pid in (11, 12, 13):
        k = _kill(pid, "/g")
        r.observed(OomKill(**{**k.__dict__, "oom_group_path": "/g", "trigger_tid": 11,
                              "time_unix_nano": 1_000 + pid}))
    _tree(tmp_path, 4, {"/": 0, "/g": 4})
    r.refresh()
    r.refresh()
    assert r.group_decisions == 1
    assert r.unobserved() == 0
    assert r.memcg_unobserved == 0


def test_a_victim_observed_without_a_cgroup_is_not_reported_unobserved_by_its_cgroup(tmp_path):
    # a pid-only mark_victim kernel without the task hook: a group member that already left /proc
    # arrives without a cgroup path (seen on 5.10 in the QEMU matrix); its cgroup's counter still
    # shows the kill, which the agent did observe
    proc, h = _tree(tmp_path, 0, {"/": 0, "/g": 0})
    r = Reconciler(None, h, BOOT, proc_root=proc)
    for pid, path in ((11, "/g"), (12, "/g"), (13, None)):
        k = _kill(pid, path)
        r.observed(OomKill(**{**k.__dict__, "oom_group_path": path, "trigger_tid": 11, "time_unix_nano": 1_000 + pid}))
    _tree(tmp_path, 4, {"/": 0, "/g": 4})
    r.refresh()
    r.refresh()
    assert (r.memcg_unobserved, r.unobserved()) == (0, 0)


def test_oom_group_is_read_up_to_the_oom_domain(tmp_path):
    from otel_oom.attribution.enrich import Enricher

    mount = tmp_path / "cg"
    for path, flag in (("/kubepods", "1"), ("/kubepods/pod", "0"), ("/kubepods/pod/ctr", "1")):
        (mount / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (mount / path.lstrip("/") / "memory.oom.group").write_text(flag + "\n")
    e = Enricher(MemoryHierarchy(version=2, mount=str(mount), hierarchy_id=0), BOOT)
    # the kernel keeps the highest grouped cgroup between the victim and the OOM domain
    assert e.oom_group("/kubepods/pod/ctr", "/kubepods/pod") == "/kubepods/pod/ctr"
    assert e.oom_group("/kubepods/pod/ctr", None) == "/kubepods"
    assert e.oom_group("/kubepods/pod", "/kubepods/pod") is None
    v1 = Enricher(MemoryHierarchy(version=1, mount=str(mount), hierarchy_id=4), BOOT)
    assert v1.oom_group("/kubepods/pod/ctr", None) is None   # cgroup v1 has no group kills
