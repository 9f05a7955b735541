"""Reconciliation against the kernel's own counters, on fixture /proc and memory-cgroup trees, with
the ledger in a real spool."""
from __future__ import annotations

import dataclasses
import json

import pytest

from otel_oom.cgroupfs.hierarchy import MemoryHierarchy
from otel_oom.delivery.spool import Spool
from otel_oom.delivery.store import DeliveryStore
from otel_oom.reconcile.recovery import Reconciler
from otel_oom.schema.records import OomKill
from testing.spool_crash import abandon

BOOT = "boot-1"


def _store(directory) -> DeliveryStore:
    return DeliveryStore(Spool(directory, fsync=False, boot_id=BOOT))


def sigkill(store: DeliveryStore) -> None:
    """What a SIGKILL leaves: the spool's descriptors closed (its lock released), nothing more written."""
    abandon(store.spool)


def _stored(r: Reconciler, store: DeliveryStore, kill: OomKill) -> None:
    """What the pipeline does with a kill: count it, and store it with the count, in one write."""
    a = r.account(kill)
    store.append_many([kill.to_json().encode()], [a])


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
    r = Reconciler(None, h, BOOT, proc_root=proc)
    r.account(_kill(1, "/a"))
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
    r.account(_kill(1, "/a"))
    r.account(_kill(2, "/a"))
    _tree(tmp_path, 2, {"/": 0, "/a": 1, "/b": 1})
    r.refresh()
    r.refresh()
    assert r.unobserved() == 1


def test_the_ledger_survives_in_the_spool_and_a_restart_recovers_nothing_it_saw(tmp_path):
    proc, h = _tree(tmp_path, 5, {"/": 0})
    state = tmp_path / "spool"
    store = _store(state)
    first = Reconciler(store, h, BOOT, proc_root=proc)
    assert first.recover_missed() == []              # first start ever: nothing was missed
    first.start()
    _tree(tmp_path, 6, {"/": 1})
    _stored(first, store, _kill(1, "/"))
    store.close()                                    # (or a SIGKILL: the record is written)
    assert not (state / "reconcile.json").exists()
    with Spool(state, boot_id=BOOT) as spool:
        assert spool.ledger.accounted == 6 and [p for _, p in spool.pending()] == [_kill(1, "/").to_json().encode()]
    again = _store(state)
    second = Reconciler(again, h, BOOT, proc_root=proc, kmsg_path=str(tmp_path / "no-kmsg"))
    assert second.recover_missed() == [] and second.unobserved() == 0
    again.close()


def test_kills_while_stopped_are_counted_even_without_the_kernel_log(tmp_path):
    proc, h = _tree(tmp_path, 5, {"/": 0})
    store = _store(tmp_path / "spool")
    first = Reconciler(store, h, BOOT, proc_root=proc)
    first.recover_missed()
    first.start()
    store.close()
    _tree(tmp_path, 8, {"/": 3})                     # three kills while no agent ran
    store = _store(tmp_path / "spool")
    again = Reconciler(store, h, BOOT, proc_root=proc, kmsg_path=str(tmp_path / "no-kmsg"))
    assert again.recover_missed() == []              # no readable kernel log: no details...
    assert again.unobserved() == 3                   # ...but never silently: counted as unobserved
    again.start()
    store.close()
    with Spool(tmp_path / "spool", boot_id=BOOT) as spool:
        assert spool.ledger.accounted == 8           # and counted once: the next start does not again


def test_a_group_kill_counted_twice_by_the_kernel_is_not_reported_unobserved(tmp_path):
    # memory.oom.group: the kernel counts the chosen victim twice (the group scan kills it again),
    # so 3 victims of one decision raise the counters by 4 (measured on 6.1 and 6.12 in the QEMU matrix)
    proc, h = _tree(tmp_path, 0, {"/": 0, "/g": 0})
    r = Reconciler(None, h, BOOT, proc_root=proc)
    for pid in (11, 12, 13):
        k = _kill(pid, "/g")
        r.account(OomKill(**{**k.__dict__, "oom_group_path": "/g", "trigger_tid": 11,
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
        r.account(OomKill(**{**k.__dict__, "oom_group_path": path, "trigger_tid": 11, "time_unix_nano": 1_000 + pid}))
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


def _killed_line(seq: int, pid: int) -> str:
    return (f"3,{seq},{seq * 1000},-;Killed process {pid} (victim{pid}) total-vm:1000kB, anon-rss:900kB, "
            f"file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:64kB oom_score_adj:0\n")


@pytest.mark.timeout(30)
def test_the_counter_and_the_log_are_read_consistently(tmp_path):
    # state: 2 kills accounted. While stopped: kills 101, 102. Then, while the agent reads the
    # counter and the log at start-up, kill 103 happens (counted, then printed). Before, the counter
    # was read once (4) and the log later: the newest 2 lines were 102 and 103, so 103 was reported
    # twice (recovered, and live by the probe) and 101 never.
    import os
    import threading
    import time

    state = tmp_path / "state"
    state.mkdir()
    # the state of an agent before the ledger: read (and migrated) like the ledger
    (state / "reconcile.json").write_text(json.dumps({"boot_id": BOOT, "vmstat_oom_kill": 2}).ljust(256))
    store = _store(state)
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_killed_line(1, 99) + _killed_line(2, 100) + _killed_line(3, 101) + _killed_line(4, 102))
    proc = tmp_path / "proc"
    proc.mkdir()
    os.mkfifo(proc / "vmstat")
    served = []
    stop = threading.Event()

    def kernel():  # serves /proc/vmstat; the kill happens while the first read is in progress
        value = 4
        while not stop.is_set():
            try:
                with open(proc / "vmstat", "w") as f:
                    f.write(f"oom_kill {value}\n")
                    if value == 4:
                        with open(kmsg, "a") as k:
                            k.write(_killed_line(5, 103))
            except BrokenPipeError:
                return  # the test's last, empty read
            served.append(value)
            value = 5
            time.sleep(0.05)  # let the reader see EOF before the next writer opens

    t = threading.Thread(target=kernel, daemon=True)
    t.start()
    r = Reconciler(store, None, BOOT, proc_root=str(proc), kmsg_path=str(kmsg), state_dir=str(state))
    assert r.baseline == 5  # what the log holds: every kill the probe will not see
    assert [k.victim_pid for k in r.recover_missed()] == [101, 102, 103]
    assert r.unobserved() == 0 and served[:2] == [4, 5]
    store.close()
    stop.set()
    os.close(os.open(proc / "vmstat", os.O_RDONLY | os.O_NONBLOCK))  # unblock a writer waiting to open
    t.join(5)


def test_a_corrupt_state_file_is_a_warning_naming_it(tmp_path, caplog):
    import logging

    proc, h = _tree(tmp_path, 7, {"/": 0})
    for content, why in [("null", "a JSON NoneType"), ("{}", "no boot_id"), ("\xff\xfe", "not JSON"),
                         ('{"boot_id": "b", "vmstat_oom_kill": -1}', "no vmstat_oom_kill"), ("[1]", "a JSON list")]:
        state = tmp_path / f"state-{len(content)}-{why[:3]}"
        state.mkdir()
        (state / "reconcile.json").write_bytes(content.encode("latin-1"))
        caplog.clear()
        store = _store(state)
        with caplog.at_level(logging.INFO, logger="otel_oom.recovery"):
            r = Reconciler(store, h, BOOT, proc_root=proc, state_dir=str(state))
            assert r.recover_missed() == []
        (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert str(state / "reconcile.json") in rec.getMessage() and why in rec.getMessage(), rec.getMessage()
        assert "7 OOM kill(s)" in rec.getMessage()
        r.start()
        store.close()
        assert not (state / "reconcile.json").exists()  # the ledger holds the state now
        with Spool(state, boot_id=BOOT) as spool:
            assert spool.ledger.accounted == 7


def test_a_crash_between_counting_a_kill_and_storing_it_neither_loses_nor_repeats_it(tmp_path):
    proc, h = _tree(tmp_path, 5, {"/": 0})
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("".join(_killed_line(i, pid) for i, pid in enumerate((1, 2), 1)))
    for crash_before_append, want in ((True, [2]), (False, [])):
        state = tmp_path / f"spool-{crash_before_append}"
        store = _store(state)
        first = Reconciler(store, h, BOOT, proc_root=proc)
        first.recover_missed()
        first.start()
        _tree(tmp_path, 6, {"/": 1})
        a = first.account(_kill(2, "/"))  # counted...
        if not crash_before_append:
            store.append_many([b"kill 2"], [a])  # ...and written with its count, in one write
        sigkill(store)  # here: nothing else reaches the disk
        store = _store(state)
        again = Reconciler(store, h, BOOT, proc_root=proc, kmsg_path=str(kmsg))
        assert [k.victim_pid for k in again.recover_missed()] == want
        store.close()
        _tree(tmp_path, 5, {"/": 0})


def _user_line(seq: int, text: str, prio: int = 12) -> str:
    """A line any root process can write to /dev/kmsg, as the kernel stores it (facility 1: PRI 8-15)."""
    return f"{prio},{seq},{seq * 1000},-;{text}\n"


@pytest.mark.parametrize("forged", [
    # a plain write, a write claiming KERN_EMERG ("<0>": stored as PRI 8), one claiming KERN_ERR,
    # a whole forged report in front of it, and a group announcement that would make a real kill twice counted
    lambda seq: _user_line(seq, "Killed process 4190001 (evil) total-vm:1000kB, anon-rss:900kB, file-rss:0kB, "
                                "shmem-rss:0kB, UID:0 pgtables:64kB oom_score_adj:0"),
    lambda seq: _user_line(seq, "Memory cgroup out of memory: Killed process 4190002 (evil) total-vm:1kB, "
                                "anon-rss:1kB, file-rss:0kB, shmem-rss:0kB", prio=8),
    lambda seq: _user_line(seq, "Out of memory: Killed process 4190003 (evil) total-vm:1kB, anon-rss:1kB, "
                                "file-rss:0kB, shmem-rss:0kB", prio=11),
    lambda seq: (_user_line(seq, "evil invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0")
                 + _user_line(seq + 1, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
                                       "oom_memcg=/e,task_memcg=/e,task=evil,pid=4190004,uid=0")
                 + _user_line(seq + 2, "Memory cgroup out of memory: Killed process 4190004 (evil) total-vm:1kB, "
                                       "anon-rss:1kB, file-rss:0kB, shmem-rss:0kB", prio=11)),
    lambda seq: _user_line(seq, "Tasks in / are going to be killed due to memory.oom.group set"),
])
def test_lines_written_by_user_space_never_replace_the_kill_that_happened(tmp_path, forged):
    # issue 21: recovery took the newest "Killed process" lines of the log for the kills it missed,
    # whoever wrote them; a root process's line replaced the real kill of the time the agent was down
    proc, h = _tree(tmp_path, 5, {"/": 0})
    store = _store(tmp_path / "spool")
    first = Reconciler(store, h, BOOT, proc_root=proc)
    first.recover_missed()
    first.start()
    store.close()
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(_killed_line(1, 101) + forged(2) + _killed_line(9, 102) + forged(10))
    _tree(tmp_path, 7, {"/": 2})                     # two kills while no agent ran
    store = _store(tmp_path / "spool")
    again = Reconciler(store, h, BOOT, proc_root=proc, kmsg_path=str(kmsg))
    assert [(k.victim_pid, k.victim_comm) for k in again.recover_missed()] == [(101, "victim101"), (102, "victim102")]
    assert again.unobserved() == 0
    store.close()


def test_kills_of_the_attach_window_are_recovered_unless_the_probe_caught_them(tmp_path):
    # the counter and the log are read before the probes attach (which can take a second while
    # refused hook plans are tried): a kill in between is in neither the snapshot nor, maybe, the
    # probe's events. Counted only, a later restart would take a delivered kill's line for it.
    proc, h = _tree(tmp_path, 5, {"/": 0})
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("".join(_killed_line(i, 100 + i) for i in range(1, 6)))
    store = _store(tmp_path / "spool")
    r = Reconciler(store, h, BOOT, proc_root=proc, kmsg_path=str(kmsg))
    assert r.recover_missed() == []
    r.start()
    with open(kmsg, "a") as f:
        f.write(_killed_line(6, 201) + _killed_line(7, 202))  # during the attach
    _tree(tmp_path, 7, {"/": 2})
    (k,) = r.recover_window({202})  # the probe caught 202: only 201 is recovered
    assert k.victim_pid == 201 and k.recovered
    assert r.account(k) == 6
    assert r.account(_kill(202, "/")) == 7
    assert r.accounted() == 7
    r.release_snapshot()
    store.close()


def _group_killed_lines(seq: int, pids: tuple[int, ...], path: str = "/g") -> str:
    """A memory.oom.group kill as the kernel prints it: the chosen victim, the group line, every member
    (the chosen one again: the kernel counts it twice)."""
    lines = [_killed_line(seq, pids[0]), f"3,{seq + 1},{(seq + 1) * 1000},-;Tasks in {path} are going to be killed "
             "due to memory.oom.group set\n"]
    lines += [_killed_line(seq + 2 + i, pid) for i, pid in enumerate(pids)]
    return "".join(lines)


@pytest.mark.parametrize("window, caught, kernel_counts", [
    (_killed_line(6, 201), set(), 1),                          # one kill, not caught by the probe
    (_killed_line(6, 201) + _killed_line(7, 202), {202}, 2),   # two, the probe caught the second
    (_group_killed_lines(6, (301, 302)), set(), 3),            # a group kill: its chosen victim counted twice
])
def test_kills_of_the_attach_window_recovered_are_not_also_counted_unobserved(tmp_path, window, caught, kernel_counts):
    # before: recovered and delivered, and still counted in oom.kills.unobserved (a false alert)
    proc, h = _tree(tmp_path, 5, {"/": 0, "/g": 0})
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("".join(_killed_line(i, 100 + i) for i in range(1, 6)))
    store = _store(tmp_path / "spool")
    r = Reconciler(store, h, BOOT, proc_root=proc, kmsg_path=str(kmsg))
    r.recover_missed()
    r.start()
    with open(kmsg, "a") as f:
        f.write(window)  # during the attach
    _tree(tmp_path, 5 + kernel_counts, {"/": 0, "/g": kernel_counts})
    recovered = r.recover_window(caught)
    for k in recovered:
        _stored(r, store, dataclasses.replace(k, cgroup_path="/g"))  # (the summary line would name it)
    for pid in caught:
        _stored(r, store, _kill(pid, "/g"))
    r.refresh()
    r.refresh()  # the kernel's count one refresh old now holds the window's kills
    assert r.unobserved() == 0 and r.memcg_unobserved == 0
    assert r.accounted() == 5 + kernel_counts
    store.close()
