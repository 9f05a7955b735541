"""No OOM event is ever silently lost: the real agent, a real OTLP receiver, real memcg OOM kills, and faults.

Each test runs `python -m otel_oom run` against `OtlpGrpcReceiver` / `OtlpHttpReceiver`, causes real
OOM kills in throwaway memory cgroups, injects one fault (collector down, outage, error answers,
slowness, SIGKILL of the agent, a full or corrupt spool, SIGTERM, a kill storm) and asserts what
the receiver finally got: every victim pid, the same `oom.event.id` in every copy, and every event
that could not be kept counted under a reason in `otel_oom.events.dropped` and logged.
"""
from __future__ import annotations

import glob
import os
import re
import time

import grpc
import pytest
from conftest import require_root_bpf

from otel_oom.delivery.spool import Spool
from otel_oom.schema.records import OomKill
from otel_oom.trigger import trigger_oom
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, free_port
from testing.storm import trigger_storm

MiB = 1 << 20
pytestmark = pytest.mark.root


# ---- helpers --------------------------------------------------------------------------------------

@pytest.fixture
def receivers():
    """Make receivers (started or not); all are stopped at teardown."""
    made = []

    def make(cls=OtlpGrpcReceiver, start: bool = True, **kw):
        r = cls(**kw)
        made.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in made:
        r.stop()


def down_receiver(receivers, cls=OtlpGrpcReceiver):
    """A receiver whose port is reserved but not listening: the collector is down."""
    return receivers(cls, start=False, port=free_port())


def kill(n: int = 1, **kw) -> list:
    require_root_bpf()
    return [trigger_oom(limit_bytes=16 * MiB, **kw) for _ in range(n)]


def by_pid(receiver) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for rec in receiver.log_records():
        if rec["event_name"] == "oom.kill":  # not the records around it (oom.reclaim names the pid too)
            out.setdefault(rec["attributes"].get("process.pid"), []).append(rec)
    return out


def wait_pids(receiver, pids, timeout: float) -> dict[int, list[dict]]:
    want = set(pids)
    receiver.wait_for_logs(lambda recs: want <= {r["attributes"].get("process.pid") for r in recs
                                                 if r["event_name"] == "oom.kill"}, timeout)
    return by_pid(receiver)


def assert_one_event_each(got: dict[int, list[dict]], pids) -> None:
    """Every pid arrived at least once, and every copy of one kill carries the same oom.event.id."""
    for pid in pids:
        ids = {r["attributes"]["oom.event.id"] for r in got[pid]}
        assert len(ids) == 1, f"pid {pid} arrived as different events: {ids}"
        assert ids.pop().endswith(f":{pid}")


def metric_value(receiver, name: str, **attrs) -> float:
    """Largest value of the series matching attrs (cumulative sums only grow); 0 if none."""
    pts = [p for p in receiver.metric_points(name) if all(p["attributes"].get(k) == v for k, v in attrs.items())]
    return max((p["value"] for p in pts), default=0)


def wait_metric(receiver, name: str, done, timeout: float = 20.0, **attrs) -> list[dict]:
    return receiver.wait_for_metric(
        name, lambda pts: done(max((p["value"] for p in pts
                                    if all(p["attributes"].get(k) == v for k, v in attrs.items())), default=0)),
        timeout)


def wait_until(predicate, timeout: float, what: str, agent=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f"; agent stderr:\n{agent.stderr}" if agent else ""))


def spooled_pids(spool_dir) -> set[int]:
    """Victim pids of the kills in the spool's segment files (read raw: the agent holds the lock):
    each record's payload is the kill's encoded OTLP log record (otel_oom/otlp/spooled.py)."""
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from otel_oom.delivery.spool_format import HEAD as head
    from otel_oom.delivery.spool_format import MAGIC
    from otel_oom.otlp.spooled import LOGS, SpoolCodec

    pids = set()
    for path in glob.glob(os.path.join(spool_dir, "seg-*.log")):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue  # acknowledged and deleted since the listing
        pos = 0
        while pos + head.size <= len(data):
            magic, length = head.unpack_from(data, pos)[:2]
            if magic != MAGIC:
                break  # a torn tail
            item = SpoolCodec().decode(data[pos + head.size:pos + head.size + length])
            pos += head.size + length
            if item.signal == LOGS:
                record = LogRecord.FromString(item.message)
                if record.event_name == "oom.kill":
                    pids.update(kv.value.int_value for kv in record.attributes if kv.key == "process.pid")
    return pids


def assert_clean(agent) -> None:
    assert "Traceback" not in agent.stderr, agent.stderr


FAST_SDK = {"OTEL_EXPORTER_OTLP_TIMEOUT": "2"}  # the SDK gives up on a batch after 2 s, not 10 s


# ---- 1. the collector is down when the agent starts ------------------------------------------------

def test_collector_down_at_start_then_up_delivers_every_kill_in_order(receivers, start_agent):
    rx = down_receiver(receivers)
    agent = start_agent([], rx.endpoint)
    kills = kill(3)
    pids = [k.victim_pid for k in kills]
    rx.start()
    got = wait_pids(rx, pids, 60)
    assert_one_event_each(got, pids)
    first_seen = sorted(pids, key=lambda p: min(r["time_unix_nano"] for r in got[p]))
    assert first_seen == pids, "kills arrived out of kill order"
    assert all(r["attributes"]["oom.recovered"] is False for p in pids for r in got[p])
    assert agent.stop() == 0
    assert_clean(agent)


# ---- 2. an outage longer than the SDK's own retry window -------------------------------------------

def test_outage_during_kills_longer_than_sdk_retry_window_loses_nothing(receivers, start_agent):
    rx = receivers()
    agent = start_agent([], rx.endpoint)
    first = kill(1)[0]
    wait_pids(rx, [first.victim_pid], 20)
    rx.stop()
    down_at = time.monotonic()
    during = kill(3)
    pids = [k.victim_pid for k in during]
    # the agent knows it is failing: it says so and keeps the events
    wait_until(lambda: "collector did not accept" in agent.stderr, 30, "a delivery failure warning", agent)
    assert set(pids) <= spooled_pids(agent_spool(agent))
    while time.monotonic() - down_at < 22:  # longer than the SDK's ~10 s retry window
        time.sleep(0.5)
    outage = time.monotonic() - down_at
    rx.start()
    got = wait_pids(rx, [first.victim_pid, *pids], 60)
    assert_one_event_each(got, [first.victim_pid, *pids])
    print(f"\noutage {outage:.1f} s with {len(pids)} kills: all delivered "
          f"{time.monotonic() - down_at - outage:.1f} s after the collector came back")
    assert agent.stop() == 0
    assert_clean(agent)


def agent_spool(agent) -> str:
    arg = next(a for a in agent.proc.args if str(a).startswith("--spool-dir="))
    return str(arg).split("=", 1)[1]


# ---- 3. the agent is SIGKILLed, and a kill happens while it is down --------------------------------

def test_sigkilled_agent_restarts_from_spool_and_recovers_kill_while_down(receivers, start_agent, tmp_path):
    rx = down_receiver(receivers)
    spool = tmp_path / "spool"
    a1 = start_agent([f"--spool-dir={spool}"], rx.endpoint)
    kills = kill(3)
    pids = [k.victim_pid for k in kills]
    wait_until(lambda: set(pids) <= spooled_pids(spool), 20, "the kills in the spool", a1)
    a1.stop(9)
    assert a1.proc.returncode == -9

    while_down = kill(1)[0]

    rx.start()
    a2 = start_agent([f"--spool-dir={spool}"], rx.endpoint)
    got = wait_pids(rx, [*pids, while_down.victim_pid], 60)
    assert_one_event_each(got, [*pids, while_down.victim_pid])
    # the spooled kills come from the probe, once; not again as "recovered" duplicates
    for pid in pids:
        assert all(r["attributes"]["oom.recovered"] is False for r in got[pid]), got[pid]
        assert {r["attributes"]["oom.hook"] for r in got[pid]} <= {"tp_btf", "tracepoint"}
    rec = got[while_down.victim_pid]
    assert all(r["attributes"]["oom.recovered"] is True and r["attributes"]["oom.hook"] == "kmsg" for r in rec)
    # (other kills on the host while the agent was down are recovered too)
    m = re.search(r"(\d+) OOM kill\(s\) happened while otel-oom was not running; (\d+) recovered", a2.stderr)
    assert m and int(m.group(1)) == int(m.group(2)) >= 1, a2.stderr
    assert a2.stop() == 0
    assert_clean(a2)


# ---- 4. the collector answers with errors ---------------------------------------------------------

@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_grpc_error_answers_then_delivery(code, receivers, start_agent):
    rx = receivers()
    rx.fail_with(code, count=5, signal="logs")
    agent = start_agent([], rx.endpoint, **FAST_SDK)
    kills = kill(2)
    pids = [k.victim_pid for k in kills]
    got = wait_pids(rx, pids, 60)
    assert_one_event_each(got, pids)
    refused = [r for r in rx.requests if r["signal"] == "logs" and r["fault"] == code]
    assert len(refused) == 5
    wait_metric(rx, "otel_oom.export.failures", lambda v: v > 0, signal="logs")
    assert agent.stop() == 0
    assert_clean(agent)


@pytest.mark.parametrize("status, retry_after", [(503, None), (429, 1)])
def test_http_error_answers_then_delivery(status, retry_after, receivers, start_agent):
    rx = receivers(OtlpHttpReceiver)
    rx.fail_with(status, count=4, signal="logs", retry_after=retry_after)
    agent = start_agent([], rx.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", **FAST_SDK)
    kills = kill(2)
    pids = [k.victim_pid for k in kills]
    got = wait_pids(rx, pids, 60)
    assert_one_event_each(got, pids)
    assert len([r for r in rx.requests if r["signal"] == "logs" and r["fault"] == status]) == 4
    wait_metric(rx, "otel_oom.export.failures", lambda v: v > 0, signal="logs")
    assert agent.stop() == 0
    assert_clean(agent)


# ---- 5. a slow collector ------------------------------------------------------------------------

def test_slow_receiver_neither_blocks_nor_drops(receivers, start_agent):
    rx = receivers()
    rx.delay(3)
    agent = start_agent(["--console"], rx.endpoint)
    kills = []
    for _ in range(4):
        k = kill(1)[0]
        kills.append(k)
        # the worker is not held up by the sender: each kill is handled (printed) at once
        agent.wait_stdout(lambda s, pid=k.victim_pid: f"pid={pid} " in s, timeout=5)
    pids = [k.victim_pid for k in kills]
    got = wait_pids(rx, pids, 60)
    assert_one_event_each(got, pids)
    wait_metric(rx, "otel_oom.events.dropped", lambda v: True)
    assert sum(p["value"] for p in rx.metric_points("otel_oom.events.dropped", latest=True)) == 0
    assert agent.stop() == 0
    assert_clean(agent)


# ---- 6. the spool's size bound is reached --------------------------------------------------------

def test_full_spool_drops_are_counted_exported_and_logged(receivers, start_agent, tmp_path):
    require_root_bpf()
    rx = down_receiver(receivers)
    spool = tmp_path / "spool"
    # kills only (no reclaim or pressure records): then every spooled record is one kill, and the
    # kills the agent handled are exactly the ones delivered plus the ones the full spool dropped
    agent = start_agent([f"--spool-dir={spool}", "--spool-max-bytes=65536", "--events=none"], rx.endpoint)
    storm = trigger_storm(cgroups=2, kills=150)  # ~1 KB each: over twice the bound
    victims = set(storm.victim_pids)
    assert len(victims) == storm.kills_caused == 150
    wait_until(lambda: "(spool_full)" in agent.stderr, 30, "a spool_full log line", agent)
    line = next(ln for ln in agent.stderr_lines if "(spool_full)" in ln)
    assert re.search(r"WARNING: spool .*: over max_bytes=65536, dropped the \d+ oldest undelivered OOM events", line)
    rx.start()
    wait_metric(rx, "otel_oom.events.dropped", lambda v: v > 0, 60, reason="spool_full")
    wait_until(lambda: spooled_pids(spool) <= set(by_pid(rx)), 60, "the spool drained", agent)

    # the agent sees every kill on the host (other tests' too): count all of them, not only ours
    def handled() -> float:
        return sum(p["value"] for p in rx.metric_points("oom.kills", latest=True))

    def settled():
        received = {r["attributes"]["oom.event.id"] for recs in by_pid(rx).values() for r in recs}
        dropped = metric_value(rx, "otel_oom.events.dropped", reason="spool_full")
        return handled() >= storm.kills_caused and len(received) + dropped == handled()

    wait_until(settled, 60, "delivered + dropped(spool_full) == oom.kills", agent)
    delivered = len(set(by_pid(rx)) & victims)
    dropped = metric_value(rx, "otel_oom.events.dropped", reason="spool_full")
    print(f"\nspool bound 65536 B: {storm.kills_caused} kills, {delivered} delivered, {dropped:.0f} dropped "
          "(spool_full)")
    # at this bound a segment holds one event: an overflow drops the oldest one (two when the new
    # event is larger than the one freed), and the spool keeps as many as fit (before: one
    # overflow dropped 63 of 63); the log lines add up to the exported count
    per_line = [int(re.search(r"dropped the (\d+) oldest", ln).group(1))  # type: ignore[union-attr]
                for ln in agent.stderr_lines if "(spool_full)" in ln]
    assert per_line and max(per_line) <= 2 and sum(per_line) == dropped, per_line
    assert delivered >= 65536 // 2048
    assert agent.stop() == 0
    assert_clean(agent)


# ---- 7. a corrupt spool file ---------------------------------------------------------------------

def _fake_kill(pid: int) -> OomKill:
    return OomKill(event_id=f"spool-test:{pid}:{pid}", time_unix_nano=time.time_ns(), boot_time_ns=0,
                   hook="tp_btf", context_hook="none", recovered=False, victim_pid=pid, victim_tid=pid,
                   victim_comm="spooled", constraint="memcg", cgroup_path="/spool-test")


def test_corrupt_spool_is_reported_and_the_valid_events_still_delivered(receivers, start_agent, tmp_path):
    require_root_bpf()
    spool = tmp_path / "spool"
    bad, good, cut = 4_000_001, 4_000_002, 4_000_003  # above any real pid: cannot clash with a kill
    with Spool(spool) as sp:
        for pid in (bad, good, cut):
            sp.append(_fake_kill(pid).to_json().encode())
    (seg,) = glob.glob(str(spool / "seg-*.log"))
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    at = data.index(b'"victim_comm":"spooled"')  # the first record's payload
    data[at + 16] ^= 0x20  # one flipped bit: its crc no longer matches
    del data[-40:]  # the last record loses its tail
    with open(seg, "wb") as f:
        f.write(data)

    rx = receivers()
    agent = start_agent([f"--spool-dir={spool}"], rx.endpoint)
    warnings = [ln for ln in agent.stderr_lines if "spool_corrupt" in ln]
    assert len(warnings) == 2, agent.stderr
    assert any("a corrupt record" in w for w in warnings) and any("truncated or garbage tail" in w for w in warnings)
    got = wait_pids(rx, [good], 30)
    assert bad not in got and cut not in got
    new = kill(1)[0]
    wait_pids(rx, [new.victim_pid], 30)
    wait_metric(rx, "otel_oom.events.dropped", lambda v: v == 2, reason="spool_corrupt")
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    assert_clean(agent)


# ---- 8. SIGTERM while the collector is away ---------------------------------------------------------

@pytest.mark.parametrize("collector", ["down", "slow"])
def test_sigterm_exits_promptly_and_the_next_start_delivers(collector, receivers, start_agent, tmp_path):
    spool = tmp_path / "spool"
    if collector == "down":
        rx = down_receiver(receivers)
    else:
        rx = receivers()
        rx.delay(120, signal="logs")  # longer than the export timeout: nothing is ever acknowledged
    agent = start_agent([f"--spool-dir={spool}", "--shutdown-timeout=2"], rx.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="60")
    k = kill(1)[0]
    wait_until(lambda: k.victim_pid in spooled_pids(spool), 20, "the kill in the spool", agent)
    t0 = time.monotonic()
    rc = agent.stop(15, timeout=30)
    took = time.monotonic() - t0
    assert rc == 0, agent.stderr
    # behaviour, not speed: bounded by --shutdown-timeout, not held for an export's own 60 s timeout;
    # the margin is for a loaded machine
    assert took < 30, f"SIGTERM took {took:.1f} s"
    print(f"\nSIGTERM with the collector {collector}: exit 0 after {took:.1f} s (--shutdown-timeout=2)")
    assert "stay in the spool" in agent.stderr
    assert_clean(agent)
    assert k.victim_pid in spooled_pids(spool)
    segs = glob.glob(str(spool / "seg-*.log"))
    print(f"\nspool bytes for {len(spooled_pids(spool))} event(s): {sum(map(os.path.getsize, segs))}")

    if collector == "down":
        rx.start()
    else:
        rx.delay(0)
    again = start_agent([f"--spool-dir={spool}"], rx.endpoint)
    got = wait_pids(rx, [k.victim_pid], 60)
    assert_one_event_each(got, [k.victim_pid])
    assert again.stop() == 0
    assert_clean(again)


# ---- 9. a storm of kills ---------------------------------------------------------------------------

def test_storm_every_victim_arrives_nothing_unobserved(receivers, start_agent):
    require_root_bpf()
    rx = receivers()
    agent = start_agent([], rx.endpoint)
    storm = trigger_storm(cgroups=8, kills=800)
    t_storm = time.monotonic()
    victims = set(storm.victim_pids)
    assert len(victims) == len(storm.victim_pids) == storm.kills_caused

    rx.wait_for_logs(lambda recs: victims <= {r["attributes"].get("process.pid") for r in recs
                                              if r["event_name"] == "oom.kill"}, 90)
    drain = time.monotonic() - t_storm
    got = by_pid(rx)
    assert_one_event_each(got, victims)
    storm_ids = {r["attributes"]["oom.event.id"] for p in victims for r in got[p]}
    assert len(storm_ids) == storm.kills_caused

    # the kernel's count and the agent's agree: nothing unobserved, nothing dropped on the way in
    def unobserved_zero_after_drain():
        pts = [p for p in rx.metric_points("oom.kills.unobserved") if p["received_ns"] > time.time_ns() - 1e9]
        return pts and all(p["value"] == 0 for p in pts)
    # the agent compares with a kernel count at least one 5 s refresh old
    wait_until(unobserved_zero_after_drain, 20, "oom.kills.unobserved == 0", agent)
    drops = {p["attributes"]["reason"]: p["value"] for p in rx.metric_points("otel_oom.events.dropped", latest=True)}
    assert drops.get("ringbuf_full", 0) == 0 and drops.get("queue_full", 0) == 0, drops
    print(f"\nstorm: {storm.kills_caused} kills caused in {storm.seconds:.1f} s, {len(victims & set(got))} "
          f"delivered, drained {drain:.1f} s after the storm ended; drops {drops}")
    assert agent.stop() == 0
    assert_clean(agent)
