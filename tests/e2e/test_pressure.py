"""Early warning and OOMs without a kill, for real on this host: `otel-oom run` + throwaway memory
cgroups under real pressure + a real OTLP gRPC receiver.

The memory hierarchy here is cgroup v1, so these exercise the v1 notifications (usage thresholds,
memory.pressure_level, memory.oom_control eventfds); tests/qemu/test_around_qemu.py runs the v2 ones
(PSI triggers, memory.events) and the host's PSI in a QEMU guest. Each test asserts what the
receiver got: the cgroup, its limit and usage, the start and the end of each episode, and that an
episode is one start and one end record, not a record per notification.
"""
from __future__ import annotations

import time

import pytest
from conftest import require

from otel_oom.cgroupfs.hierarchy import detect_memory_hierarchy
from testing.around import MemoryHolder

MiB = 1 << 20
pytestmark = pytest.mark.root
FAST = ["--pressure-clear-seconds=2", "--pressure-scan-interval=2"]


def _records(receiver, event_name: str, key: str, value) -> list[dict]:
    return [r for r in receiver.log_records() if r["event_name"] == event_name and r["attributes"].get(key) == value]


def _wait(receiver, event_name: str, key: str, value, n: int, timeout: float = 30.0) -> list[dict]:
    receiver.wait_for_logs(lambda recs: len([r for r in recs if r["event_name"] == event_name
                                             and r["attributes"].get(key) == value]) >= n, timeout)
    return _records(receiver, event_name, key, value)


def _v1() -> None:
    h = detect_memory_hierarchy()
    require(h is not None and h.version == 1, "this test exercises cgroup v1 (the QEMU tests cover v2)")


def test_usage_near_the_limit_is_one_episode_with_a_start_and_an_end(receiver, start_agent):
    _v1()
    agent = start_agent(["--json", *FAST], receiver.endpoint)
    with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=60 * MiB) as h:
        t0 = time.time_ns()
        h.start()
        h.wait_held()
        (start,) = _wait(receiver, "oom.pressure", "oom.memcg.path", h.path, 1)
        a = start["attributes"]
        assert a["oom.pressure.state"] == "start" and a["oom.pressure.scope"] == "memcg"
        assert a["oom.pressure.source"] in ("usage", "vmpressure")
        assert a["oom.memcg.limit"] == 64 * MiB
        assert 0.9 * 64 * MiB <= a["oom.memcg.usage"] <= 64 * MiB
        assert a["oom.memcg.usage_ratio"] >= 0.9
        assert isinstance(a["oom.memcg.failcnt"], int)
        assert start["severity_text"] == "WARN" and start["body"].startswith(f"Memory pressure in memory cgroup {h.path}")
        assert t0 <= start["time_unix_nano"] <= time.time_ns()
        time.sleep(3)  # held above the clear level: still one episode, no repeats
        assert len(_records(receiver, "oom.pressure", "oom.memcg.path", h.path)) == 1
        assert h.release() == 0
        recs = _wait(receiver, "oom.pressure", "oom.memcg.path", h.path, 2, timeout=90)
    end = next(r for r in recs if r["attributes"]["oom.pressure.state"] == "end")
    e = end["attributes"]
    assert e["oom.pressure.id"] == a["oom.pressure.id"] and e["oom.pressure.ended_by"] == "cleared"
    assert 3.0 <= e["oom.pressure.duration"] < 30
    assert e["oom.pressure.peak.usage"] >= 0.9 * 64 * MiB and e["oom.memcg.usage"] < 0.8 * 64 * MiB
    assert end["severity_text"] == "INFO" and end["time_unix_nano"] > start["time_unix_nano"]
    assert len(_records(receiver, "oom.pressure", "oom.memcg.path", h.path)) == 2
    # the metrics: one episode counted, none active at the end
    receiver.wait_for_metric("oom.pressure.episodes", lambda pts: any(
        p["attributes"].get("oom.pressure.scope") == "memcg" and p["value"] >= 1 for p in pts), 15)
    receiver.wait_for_metric("otel_oom.pressure.cgroups", lambda pts: any(
        p["attributes"].get("state") == "watched" for p in pts), 15)
    out = agent.wait_stdout(lambda s: '"oom.pressure.state":"end"' in s)
    assert '"event_name":"oom.pressure"' in out
    assert agent.stop() == 0 and "Traceback" not in agent.stderr


def test_oom_kill_disable_is_an_oom_without_a_kill_until_the_limit_is_raised(receiver, start_agent):
    _v1()
    agent = start_agent(["--console", *FAST], receiver.endpoint)
    with MemoryHolder(limit_bytes=32 * MiB, hold_bytes=48 * MiB, oom_kill_disable=True) as h:
        h.start()
        h.wait_blocked()
        (start,) = _wait(receiver, "oom.no_kill", "oom.memcg.path", h.path, 1)
        a = start["attributes"]
        assert a["oom.no_kill.state"] == "start" and a["oom.no_kill.reason"] == "oom_kill_disable"
        assert a["oom.no_kill.tasks"] == 1 and a["oom.no_kill.task_pids"] == [h.pid]
        assert a["oom.no_kill.tasks.waiting"] == 1
        assert a["oom.memcg.limit"] == 32 * MiB and a["oom.memcg.usage"] >= 31 * MiB
        assert start["severity_text"] == "ERROR"
        time.sleep(3)  # the tasks keep waiting: still one record
        assert len(_records(receiver, "oom.no_kill", "oom.memcg.path", h.path)) == 1
        h.raise_limit(128 * MiB)  # the test releases it: the allocation completes
        h.wait_held()
        recs = _wait(receiver, "oom.no_kill", "oom.memcg.path", h.path, 2, timeout=90)
        assert h.release() == 0
    end = next(r for r in recs if r["attributes"]["oom.no_kill.state"] == "end")
    assert end["attributes"]["oom.no_kill.ended_by"] == "resolved"
    assert end["attributes"]["oom.no_kill.id"] == a["oom.no_kill.id"]
    assert 3.0 <= end["attributes"]["oom.no_kill.duration"] < 30
    # nobody was killed, and the agent did not claim a kill
    assert not [r for r in receiver.log_records() if r["event_name"] == "oom.kill"
                and r["attributes"].get("process.pid") == h.pid]
    receiver.wait_for_metric("oom.no_kill.episodes", lambda pts: any(
        p["attributes"].get("oom.no_kill.reason") == "oom_kill_disable" and p["value"] >= 1 for p in pts), 15)
    assert "OOM NO-KILL START" in agent.stdout and "Traceback" not in agent.stderr
    assert agent.stop() == 0


def test_on_a_read_only_cgroupfs_v1_cgroups_are_read_at_each_sweep_instead(receiver, tmp_path):
    """The DaemonSet mounts /sys/fs/cgroup read-only: no eventfd can be registered there."""
    _v1()
    from conftest import agent_env, require_root_bpf

    from testing.agent_process import AgentProcess

    require_root_bpf()
    h0 = detect_memory_hierarchy()
    assert h0 is not None
    # the agent in its own mount namespace, with the memory hierarchy remounted read-only
    prefix = ("unshare", "-m", "sh", "-c", 'mount -o remount,bind,ro "$1" && shift && exec "$@"', "sh", h0.mount)
    agent = AgentProcess([f"--spool-dir={tmp_path / 'spool'}", *FAST], agent_env(receiver.endpoint), prefix=prefix)
    try:
        with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=60 * MiB) as h:
            h.start()
            h.wait_held()
            (start,) = _wait(receiver, "oom.pressure", "oom.memcg.path", h.path, 1)
            # said once, at the first cgroup that could not be registered (this one, if no other)
            assert "read every --pressure-scan-interval instead" in agent.stderr
            assert start["attributes"]["oom.pressure.source"] == "usage"
            assert h.release() == 0
            recs = _wait(receiver, "oom.pressure", "oom.memcg.path", h.path, 2)
        assert [r["attributes"]["oom.pressure.state"] for r in recs] == ["start", "end"]
        with MemoryHolder(limit_bytes=32 * MiB, hold_bytes=48 * MiB, oom_kill_disable=True) as h:
            h.start()
            h.wait_blocked()
            (nk,) = _wait(receiver, "oom.no_kill", "oom.memcg.path", h.path, 1)
            assert nk["attributes"]["oom.no_kill.reason"] == "oom_kill_disable"
            h.raise_limit(128 * MiB)
            h.wait_held()
            _wait(receiver, "oom.no_kill", "oom.memcg.path", h.path, 2)
            h.release()
    finally:
        agent.stop(9)
