"""Kills by user-space OOM killers, for real: a SIGKILL (signal:signal_generate) from a process named like
one becomes an `oom.kill` with `oom.killer` naming it and the same attribution as a kernel kill;
then `oom.reclaim` says when the victim's memory came back. Two real killers: Debian's earlyoom,
confined to a private PID namespace (it sees and can kill only the victim there), and a small
stand-in named systemd-oomd. Every victim lives in a throwaway memory cgroup.
"""
from __future__ import annotations

import time

import pytest

from testing.around import MemoryHolder, earlyoom_kills_a_holder, fake_killer, wait_killed

MiB = 1 << 20
pytestmark = pytest.mark.root


def _for_pid(receiver, event_name: str, pid: int, timeout: float = 20.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(r["event_name"] == event_name and r["attributes"].get("process.pid") == pid
                                            for r in recs), timeout)
    return next(r for r in receiver.log_records()
                if r["event_name"] == event_name and r["attributes"].get("process.pid") == pid)


def test_a_sigkill_from_a_killer_named_systemd_oomd_is_an_oom_kill_by_it(receiver, start_agent):
    agent = start_agent(["--json"], receiver.endpoint)
    with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=24 * MiB) as h:
        h.start()
        h.wait_held()
        killer_pid = fake_killer("systemd-oomd", h.pid)
        assert h.proc is not None
        wait_killed(h.proc)
        rec = _for_pid(receiver, "oom.kill", h.pid)
        a = rec["attributes"]
        assert a["oom.killer"] == "systemd-oomd" and a["oom.killer.pid"] == killer_pid
        assert a["oom.hook"] == "signal_generate" and a["oom.victim.cgroup.path"] == h.path
        assert a["process.executable.name"].startswith("python") and a["process.parent_pid"] > 0
        assert 24 * MiB <= a["oom.victim.memory.rss"] < 64 * MiB
        assert "oom.trigger.pid" not in a and a["oom.constraint"] == "unknown"
        assert rec["body"].startswith(f"User-space OOM killer systemd-oomd (pid {killer_pid}): Killed process {h.pid}")
        reclaim = _for_pid(receiver, "oom.reclaim", h.pid)
        r = reclaim["attributes"]
        assert r["oom.kill.event.id"] == a["oom.event.id"] and r["oom.killer"] == "systemd-oomd"
        assert r["oom.reclaim.method"] == "exit_mmap" and 0 < r["oom.reclaim.duration"] < 5
    receiver.wait_for_metric("oom.kills", lambda pts: any(p["attributes"].get("oom.killer") == "systemd-oomd"
                                                          for p in pts), 15)
    receiver.wait_for_metric("oom.reclaim.duration", lambda pts: any(
        p["attributes"].get("oom.killer") == "systemd-oomd" and p["count"] >= 1 for p in pts), 15)
    assert agent.stop() == 0 and "Traceback" not in agent.stderr


def test_a_sigkill_from_any_other_process_is_not_an_oom_kill(receiver, start_agent):
    start_agent([], receiver.endpoint)
    with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=8 * MiB) as h:
        h.start()
        h.wait_held()
        fake_killer("cron-cleanup", h.pid)
        assert h.proc is not None
        wait_killed(h.proc)
        time.sleep(2)
    assert not [r for r in receiver.log_records() if r["attributes"].get("process.pid") == h.pid]


def test_earlyoom_from_debian_killing_a_victim_is_reported_as_its_kill(receiver, start_agent):
    start_agent([], receiver.endpoint)
    with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=0) as h:  # the cgroup only: the holder starts in the namespace
        pid, outcome = earlyoom_kills_a_holder(h.cgroup.leaf)
        assert outcome.endswith("holder -9"), outcome
        rec = _for_pid(receiver, "oom.kill", pid)
    a = rec["attributes"]
    assert a["oom.killer"] == "earlyoom" and a["oom.hook"] == "signal_generate"
    assert a["oom.victim.cgroup.path"] == h.path and a["oom.victim.oom_score_adj"] == 1000
    assert a["oom.victim.memory.rss"] >= 24 * MiB
    reclaim = _for_pid(receiver, "oom.reclaim", pid)
    assert reclaim["attributes"]["oom.killer"] == "earlyoom"
