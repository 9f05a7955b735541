"""The records around the kill on cgroup v2, for real, in QEMU guests (tests/qemu/harness.py): Debian 6.12
(no cgroup v1 code: no oom_lock) and 6.1 (with it), each running tests/qemu/around_cases.py: real v2
pressure (usage near memory.max, memory.high breaches and their PSI), an OOM that can kill nobody,
a memcg kill and its reclaim time, and the whole guest out of memory (host PSI, a global kill).
Judged here against what a real OTLP receiver in the guest got."""
from __future__ import annotations

import json
import os
import time

import pytest
from conftest import require

MiB = 1 << 20
GUESTS = [("6.12", "v2"), ("6.1", "v2")]
GUEST_MEMORY_MB = 384
pytestmark = [pytest.mark.timeout(900), pytest.mark.qemu]


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, dict]:
    if os.environ.get("OTEL_OOM_QEMU_GUEST"):
        pytest.skip("already inside a QEMU test guest: guests are not nested")
    from tests.qemu import harness as h

    usable, reason = h.qemu_usable()
    require(usable, f"QEMU cannot run here: {reason}")
    share = str(tmp_path_factory.mktemp("around"))
    jobs = [dict(kernel=k, cgroup=cg, memory_mb=GUEST_MEMORY_MB, share_dir=share, timeout=600,
                 command=["python3", "-m", "tests.qemu.around_cases", "--out", f"{share}/{k}.json"])
            for k, cg in GUESTS]
    t0 = time.monotonic()
    results = h.boot_many(jobs, workers=2)
    out = {}
    for (k, _), r in zip(GUESTS, results, strict=True):
        if isinstance(r, Exception):
            pytest.fail(f"{k} guest failed: {r}\n{getattr(r, 'output', '')[-3000:]}")
        assert r.exit_code == 0, f"{k} guest exited {r.exit_code}:\n{r.output[-3000:]}"
        with open(f"{share}/{k}.json") as f:
            out[k] = json.load(f)
        out[k]["boot"] = {"duration_s": round(r.duration_s, 1), "boot_s": r.boot_s}
    print(f"\naround-the-kill guests: {time.monotonic() - t0:.0f} s wall, "
          + ", ".join(f"{k} {v['boot']['duration_s']} s" for k, v in out.items()))
    return out


def _case(doc: dict, name: str) -> dict:
    case = doc["cases"][name]
    assert "error" not in case, f"{name}: {case['error']}\nagent:\n{doc['agent_stderr'][-3000:]}"
    return case


def _by(doc: dict, event: str, key: str, value) -> list[dict]:
    return [r for r in doc["records"] if r["event_name"] == event and r["attributes"].get(key) == value]


def _states(recs: list[dict], key: str) -> list[str]:
    return [r["attributes"][key] for r in recs]


@pytest.mark.parametrize("kernel", [k for k, _ in GUESTS])
def test_v2_usage_near_the_limit_is_one_episode(guests, kernel):
    doc = guests[kernel]
    case = _case(doc, "usage")
    recs = _by(doc, "oom.pressure", "oom.memcg.path", case["cgroup"])
    assert _states(recs, "oom.pressure.state") == ["start", "end"], recs
    start, end = (r["attributes"] for r in recs)
    assert start["oom.pressure.source"] == "usage" and start["oom.memcg.limit"] == 64 * MiB
    assert start["oom.memcg.usage"] >= 0.9 * 64 * MiB
    # v2 readings: the cgroup's own PSI and memory.events.local counters
    assert isinstance(start["oom.pressure.psi.some.avg10"], float) and "oom.memcg.events.max" in start
    assert end["oom.pressure.ended_by"] == "cleared" and end["oom.pressure.id"] == start["oom.pressure.id"]


@pytest.mark.parametrize("kernel", [k for k, _ in GUESTS])
def test_v2_memory_high_breaches_start_an_episode_with_their_stall(guests, kernel):
    doc = guests[kernel]
    case = _case(doc, "high")
    recs = _by(doc, "oom.pressure", "oom.memcg.path", case["cgroup"])
    assert _states(recs, "oom.pressure.state") == ["start", "end"], recs
    start, end = (r["attributes"] for r in recs)
    assert start["oom.pressure.source"] in ("memory.events.high", "psi")
    assert start["oom.memcg.events.high"] >= 1
    assert end["oom.pressure.peak.psi.some.avg10"] > 0  # the throttled task stalled on memory


@pytest.mark.parametrize("kernel", [k for k, _ in GUESTS])
def test_v2_an_oom_with_nothing_killable_is_reported_once_and_resolved(guests, kernel):
    doc = guests[kernel]
    case = _case(doc, "nokill")
    assert case["returncode"] == 0  # nobody was killed: the holder finished once the limit was raised
    events = dict(line.split() for line in case["memory_events"].splitlines())
    assert events["oom_kill"] == "0" and int(events["oom"]) >= 1  # the kernel declared OOM, killed nobody
    recs = _by(doc, "oom.no_kill", "oom.memcg.path", case["cgroup"])
    assert _states(recs, "oom.no_kill.state") == ["start", "end"], recs
    start, end = (r["attributes"] for r in recs)
    assert start["oom.no_kill.reason"] == "nothing_killable"
    assert start["oom.no_kill.tasks"] == 1 and start["oom.no_kill.task_pids"] == [case["pid"]]
    assert start["oom.memcg.limit"] == 32 * MiB
    assert end["oom.no_kill.ended_by"] == "resolved" and end["oom.no_kill.ooms"] >= 2
    assert not _by(doc, "oom.kill", "process.pid", case["pid"])


@pytest.mark.parametrize("kernel", [k for k, _ in GUESTS])
def test_v2_kill_names_its_memcg_from_kernel_state_and_reports_its_reclaim(guests, kernel):
    doc = guests[kernel]
    case = _case(doc, "kill")
    (kill,) = _by(doc, "oom.kill", "process.pid", case["pid"])
    a = kill["attributes"]
    assert a["oom.constraint"] == "memcg" and a["oom.memcg.path"] == case["cgroup"] and a["oom.killer"] == "kernel"
    if a["oom.context_hook"] == "none":
        # 6.1 has the cgroup v1 code (memcg->oom_lock) even on v2; Debian 6.12 is built without it
        assert a["oom.memcg.evidence"] == ("oom_lock" if kernel == "6.1" else "usage")
    (reclaim,) = _by(doc, "oom.reclaim", "process.pid", case["pid"])
    r = reclaim["attributes"]
    assert r["oom.kill.event.id"] == a["oom.event.id"] and r["oom.reclaim.method"] in ("exit_mmap", "exit", "reaper")
    assert 0 < r["oom.reclaim.duration"] < 10


@pytest.mark.parametrize("kernel", [k for k, _ in GUESTS])
def test_the_guest_short_of_memory_and_stalling_is_one_host_pressure_episode(guests, kernel):
    doc = guests[kernel]
    case = _case(doc, "host")
    assert case["filled"] == "full" and case["fill_rc"] == 0
    host = _by(doc, "oom.pressure", "oom.pressure.scope", "host")
    assert _states(host, "oom.pressure.state")[:2] == ["start", "end"], host
    start, end = host[0]["attributes"], host[1]["attributes"]
    assert start["oom.pressure.source"] == "psi" and start["oom.host.memory.total"] == case["mem_total_kb"] * 1024
    assert start["oom.host.memory.available"] <= 0.1 * start["oom.host.memory.total"]
    # it ends when the stalls stop (the churn is stopped first) or the memory is back, whichever is first
    assert end["oom.pressure.ended_by"] == "cleared" and end["oom.pressure.peak.psi.some.avg10"] > 0
    assert end["oom.pressure.duration"] >= 2  # --pressure-clear-seconds


@pytest.mark.parametrize("kernel", [k for k, _ in GUESTS])
def test_the_guest_out_of_memory_is_a_global_kill_and_its_reclaim(guests, kernel):
    doc = guests[kernel]
    case = _case(doc, "global")
    assert case["returncode"] == -9
    (kill,) = _by(doc, "oom.kill", "process.pid", case["pid"])
    assert kill["attributes"]["oom.constraint"] in ("global", "unknown") and kill["attributes"]["oom.killer"] == "kernel"
    (reclaim,) = _by(doc, "oom.reclaim", "process.pid", case["pid"])
    assert reclaim["attributes"]["oom.reclaim.method"] in ("exit_mmap", "exit", "reaper")
