"""The records around the kill, without a kernel: their spool format (old spools still replay), their
OTLP mapping through the real SDK into a real receiver (trace and span ids included), the
console/JSON lines, and the trackers' rules (episodes, reclaim timing, OOMs without a kill against
a fixture cgroup tree)."""
from __future__ import annotations

import json
import os

import pytest

from otel_oom.around.episodes import EpisodeTracker
from otel_oom.around.no_kill import NoKillTracker
from otel_oom.around.reclaim import ReclaimTracker
from otel_oom.cgroupfs.psi import parse_psi
from otel_oom.kernel.reclaim_wire import RECLAIM_EVENT_SIZE, RawReclaimEvent, ReclaimEvent, decode_reclaim
from otel_oom.kernel.wire import F_BOOT_CLOCK
from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.logs import LogSender
from otel_oom.otlp.resource import build_resource
from otel_oom.otlp.traces import TraceSender
from otel_oom.pressure.episode import Episode, Thresholds
from otel_oom.pressure.psi import trigger_text
from otel_oom.schema.log_records import log_record
from otel_oom.schema.records import OomEpisode, OomKill, OomNoKill, OomPressure, OomReclaim, record_from_json
from otel_oom.sinks.console import format_record_console, format_record_json
from testing.otlp_receiver import OtlpGrpcReceiver

MiB = 1 << 20
T = 1795602667_000000000
CG = "/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def kill(**over) -> OomKill:
    base = dict(event_id="b:100:42", time_unix_nano=T, boot_time_ns=100, hook="tp_btf", context_hook="none",
                recovered=False, victim_pid=42, victim_tid=42, victim_comm="leaky", cgroup_path=CG + "/c",
                constraint="memcg", memcg_path=CG, anon_rss_bytes=30 * MiB, file_rss_bytes=0, shmem_rss_bytes=0)
    base.update(over)
    return OomKill(**base)


def pressure(state="start", **over) -> OomPressure:
    base = dict(event_id=f"ep1:{state}", time_unix_nano=T - 5_000_000_000, state=state, scope="memcg",
                source="usage", episode_id="ep1", cgroup_path=CG, limit_bytes=64 * MiB, usage_bytes=60 * MiB)
    base.update(over)
    return OomPressure(**base)


# ---- spool format -------------------------------------------------------------------------------
OLD_SPOOL_KILL = ('{"event_id":"b:1:7","time_unix_nano":5,"boot_time_ns":1,"hook":"tp_btf","context_hook":"none",'
                  '"recovered":false,"victim_pid":7,"victim_tid":7,"victim_comm":"x","constraint":"memcg"}')


def test_a_kill_spooled_before_the_other_types_existed_replays_as_a_kill():
    rec = record_from_json(OLD_SPOOL_KILL)
    assert isinstance(rec, OomKill) and rec.victim_pid == 7 and rec.killer == "kernel"
    assert "type" not in json.loads(kill().to_json())  # kills are written as they always were


@pytest.mark.parametrize("record", [
    kill(killer="earlyoom", killer_pid=9, trace_id="a" * 32, span_id="b" * 16),
    pressure(), pressure("end", duration_ns=5, ended_by="cleared"),
    OomNoKill("n1:start", T, "start", "oom_kill_disable", "n1", cgroup_path=CG, task_pids=(3, 4)),
    OomReclaim("b:100:42:reclaim", T + 5, "b:100:42", "exit", 5_000_000, 42, 42, "x\udcff"),
    OomEpisode("c" * 32, "d" * 16, T, T + 9, "memcg", "kill", "reclaimed", kills=1,
               events=({"name": "oom.kill", "time_unix_nano": T, "attributes": {"process.pid": 42}},)),
])
def test_every_record_type_round_trips_through_its_spool_json(record):
    text = record.to_json()
    assert text.isascii()
    assert record_from_json(text) == record
    if not isinstance(record, OomKill):
        assert json.loads(text)["type"] == record.TYPE


def test_a_record_of_an_unknown_type_is_undecodable_not_a_crash():
    with pytest.raises(ValueError, match="unknown record type"):
        record_from_json('{"type":"oom.future","event_id":"x"}')


# ---- mapping -------------------------------------------------------------------------------------
def test_each_record_maps_to_its_event_name_severity_and_attributes():
    f = log_record(pressure())
    assert (f.event_name, f.severity_number, f.severity_text) == ("oom.pressure", 13, "WARN")
    assert f.attributes["oom.memcg.usage_ratio"] == 0.9375 and f.attributes["oom.memcg.path"] == CG
    assert f.body == f"Memory pressure in memory cgroup {CG} (started by usage): usage 60.0 MiB of 64.0 MiB (94%)"
    f = log_record(pressure("end", duration_ns=12_300_000_000, ended_by="cleared", peak_usage_bytes=63 * MiB))
    assert f.severity_text == "INFO" and f.attributes["oom.pressure.duration"] == 12.3
    assert "ended after 12.3 s (cleared), peak usage 63.0 MiB" in f.body
    f = log_record(OomNoKill("n:start", T, "start", "nothing_killable", "n", cgroup_path=CG, tasks=2, task_pids=(5, 6),
                             tasks_waiting=0, limit_bytes=MiB, usage_bytes=MiB))
    assert (f.event_name, f.severity_text) == ("oom.no_kill", "ERROR")
    assert f.attributes["oom.no_kill.task_pids"] == [5, 6] and "oom.no_kill.duration" not in f.attributes
    f = log_record(OomReclaim("r", T, "b:100:42", "reaper", 2_500_000_000, 42, 42, "leaky", reaper_woken=True))
    assert f.attributes["oom.reclaim.duration"] == 2.5 and f.attributes["oom.reclaim.reaper.woken"] is True
    assert f.body == "Memory of OOM-killed process 42 (leaky) given back 2500.0 ms after the kill (reaper)"
    f = log_record(kill(killer="earlyoom", killer_pid=77))
    assert f.attributes["oom.killer"] == "earlyoom" and f.attributes["oom.killer.pid"] == 77
    assert f.body.startswith("User-space OOM killer earlyoom (pid 77): Killed process 42 (leaky)")
    assert log_record(kill()).attributes["oom.killer"] == "kernel"


def test_console_and_json_lines_carry_the_event_name_and_the_trace():
    p = pressure(trace_id="1" * 32, span_id="2" * 16)
    doc = json.loads(format_record_json(p))
    assert doc["event_name"] == "oom.pressure" and doc["trace_id"] == "1" * 32 and doc["span_id"] == "2" * 16
    assert doc["oom.pressure.state"] == "start" and doc["time"].endswith("Z")
    line = format_record_console(p)
    assert line.count("\n") == 1 and "OOM PRESSURE START: Memory pressure in memory cgroup" in line
    assert json.loads(format_record_json(kill()))["event_name"] == "oom.kill"


def test_log_records_and_the_episode_span_reach_a_receiver_with_matching_ids(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("OTEL_"):
            monkeypatch.delenv(k)
    (tmp_path / "mid").write_text("0123456789abcdef0123456789abcdef\n")
    resource = build_resource({}, machine_id_path=str(tmp_path / "mid"), hostname="n")
    with OtlpGrpcReceiver() as rx:
        settings = resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint})
        tracker = EpisodeTracker()
        start, _ = tracker.observe(pressure())
        k, _ = tracker.observe(kill())
        r, ended = tracker.observe(OomReclaim("b:100:42:reclaim", T + 7_000_000, "b:100:42", "exit", 7_000_000,
                                              42, 42, "leaky"))
        assert len(ended) == 1 and ended[0].outcome == "kill" and ended[0].ended_by == "reclaimed"
        logs = LogSender(resource, settings.logs)
        assert logs.send([start, k, r])
        assert settings.traces is not None
        spans = TraceSender(resource, settings.traces)
        assert spans.send(ended)
        recs = rx.wait_for_logs(3)
        assert {x["trace_id"] for x in recs} == {ended[0].trace_id}
        assert {x["span_id"] for x in recs} == {ended[0].span_id}
        logs.shutdown()
        spans.shutdown()


# ---- the trackers ---------------------------------------------------------------------------------
def test_an_episode_spans_pressure_start_to_reclaim_and_the_late_pressure_end_keeps_its_trace():
    t = EpisodeTracker()
    s, ended = t.observe(pressure())
    assert ended == [] and s.trace_id and len(s.trace_id) == 32 and len(s.span_id) == 16
    k, ended = t.observe(kill())
    assert (k.trace_id, k.span_id) == (s.trace_id, s.span_id) and ended == []
    r, ended = t.observe(OomReclaim("r", T + 1, "b:100:42", "exit", 1, 42, 42, "leaky"))
    (span,) = ended
    assert span.start_unix_nano == s.time_unix_nano and span.end_unix_nano == T + 1
    assert [e["name"] for e in span.events] == ["oom.pressure.start", "oom.kill", "oom.reclaim"]
    e, ended = t.observe(pressure("end"))
    assert ended == [] and e.trace_id == s.trace_id and t.open_count() == 0


def test_kills_elsewhere_start_their_own_episode_and_a_user_space_kill_joins_the_host():
    t = EpisodeTracker(expect_reclaim=False)
    h, _ = t.observe(pressure(scope="host", cgroup_path=None, episode_id="h", event_id="h:start"))
    other, ended = t.observe(kill(cgroup_path="/elsewhere", memcg_path="/elsewhere", event_id="o"))
    assert other.trace_id != h.trace_id and len(ended) == 1  # no reclaim expected: the kill ends it
    u, _ = t.observe(kill(killer="earlyoom", cgroup_path="/x", memcg_path=None, constraint="unknown", event_id="u"))
    assert u.trace_id == h.trace_id


def _reclaim_event(kind, ts, pid=42, tgid=42) -> ReclaimEvent:
    r = RawReclaimEvent()
    r.version, r.flags, r.kind = 1, F_BOOT_CLOCK, {"exit": 1, "reaper_wake": 2, "reaper_finish": 4, "reaper_skip": 5}[kind]
    r.timestamp_ns, r.marked_ns, r.pid, r.tgid = ts, 100, pid, tgid
    raw = bytes(r)
    assert len(raw) == RECLAIM_EVENT_SIZE == 40
    return decode_reclaim(raw)


def test_reclaim_time_is_from_the_kill_to_the_first_of_exit_and_reaper_finish():
    clock = [0.0]
    tr = ReclaimTracker(timeout_s=30, clock=lambda: clock[0])
    tr.killed(kill())
    assert tr.observe(_reclaim_event("reaper_wake", 2_000_000_100)) is None
    r = tr.observe(_reclaim_event("reaper_finish", 2_004_000_100))
    assert r is not None and r.method == "reaper" and r.duration_ns == 2_004_000_000 and r.reaper_woken
    assert r.kill_event_id == "b:100:42" and r.time_unix_nano == T + 2_004_000_000
    assert tr.observe(_reclaim_event("exit", 2_005_000_100)) is None  # only the first counts
    tr.killed(kill(event_id="b:200:43", boot_time_ns=200, victim_pid=43, victim_tid=43))
    clock[0] = 31
    (late,) = tr.expire()
    assert late.method == "timeout" and late.duration_ns is None and late.victim_pid == 43


def _fixture_v1_cgroup(root, name, oom_control, procs=""):
    d = root / name
    d.mkdir(parents=True)
    (d / "memory.oom_control").write_text(oom_control)
    (d / "memory.limit_in_bytes").write_text(str(32 * MiB))
    (d / "memory.usage_in_bytes").write_text(str(32 * MiB))
    (d / "cgroup.procs").write_text(procs)
    return d


def test_no_kill_waits_for_the_kill_then_reports_nothing_killable_once_and_its_end(tmp_path):
    out, clock = [], [0.0]
    d = _fixture_v1_cgroup(tmp_path, "a", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "")
    nk = NoKillTracker(1, str(tmp_path), "b", out.append, grace_s=1, clear_s=5, clock=lambda: clock[0])
    nk.baseline("/a", str(d))
    nk.oom_notified("/a", str(d))
    nk.kill_seen(kill(cgroup_path="/a", memcg_path="/a"))  # an ordinary kill came
    clock[0] = 1.5
    nk.tick()
    assert out == []
    nk.oom_notified("/a", str(d))  # again, and this time no kill
    clock[0] = 12
    nk.tick()
    (start,) = out
    assert start.reason == "nothing_killable" and start.limit_bytes == 32 * MiB and start.state == "start"
    nk.oom_notified("/a", str(d), 5)  # the faulting task retries: the same episode
    clock[0] = 16
    nk.tick()
    assert len(out) == 1
    clock[0] = 22
    nk.tick()
    assert out[1].state == "end" and out[1].ended_by == "resolved" and out[1].ooms == 6


def test_a_kill_the_probe_missed_is_seen_in_the_kernel_counter(tmp_path):
    out, clock = [], [0.0]
    d = _fixture_v1_cgroup(tmp_path, "a", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    nk = NoKillTracker(1, str(tmp_path), "b", out.append, grace_s=1, clock=lambda: clock[0])
    nk.baseline("/a", str(d))
    nk.oom_notified("/a", str(d))
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    clock[0] = 2
    nk.tick()
    assert out == []


def test_v1_notifies_the_oom_cgroup_and_those_below_it_the_highest_is_reported(tmp_path):
    out, clock = [], [0.0]
    top = _fixture_v1_cgroup(tmp_path, "p", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    sub = _fixture_v1_cgroup(tmp_path, "p/c", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    nk = NoKillTracker(1, str(tmp_path), "b", out.append, grace_s=1, clock=lambda: clock[0])
    nk.oom_notified("/p/c", str(sub))
    nk.oom_notified("/p", str(top))
    clock[0] = 2
    nk.tick()
    assert [r.cgroup_path for r in out] == ["/p"]


# ---- thresholds ---------------------------------------------------------------------------------
def test_psi_files_and_triggers():
    p = parse_psi("some avg10=12.50 avg60=3.00 avg300=1.00 total=999\nfull avg10=1.25 avg60=0.00 avg300=0.00 total=9\n")
    assert (p.some_avg10, p.full_avg10, p.some_total_us) == (12.5, 1.25, 999)
    assert trigger_text(10, 2) == b"some 200000 2000000\0"
    with pytest.raises(ValueError):
        trigger_text(10, 3)


def test_hysteresis_keeps_one_episode_until_every_reading_is_below_its_clear_level():
    t = Thresholds(usage_percent=90, stall_percent=10, clear_seconds=10)
    assert t.usage_starts(90, 100) and not t.usage_starts(89, 100)
    assert t.usage_hot(80, 100) and not t.usage_hot(79, 100)
    assert t.psi_hot(5.0) and not t.psi_hot(4.9)
    ep = Episode.begin("b", "/a", "usage", T, 0.0)
    ep.heat(5.0)
    assert not ep.cleared(14.9, 10) and ep.cleared(15.0, 10)


# ---- the sturdier OOMing-memcg derivation (what the kernel holds at mark_victim) ------------------
def _event(chain, trigger_ids, levels=(), **fields):
    """A decoded event; `levels`: per-level extras {index: {field: value}} set on the raw bytes."""
    from otel_oom.kernel import wire as W
    from testing.events import raw_event

    r = W.RawEvent.from_buffer_copy(raw_event(chain, trigger_ids, **fields))
    for i, extra in dict(levels).items():
        for k, v in extra.items():
            setattr(r.victim_memcg[i], k, v)
    return W.decode(bytes(r), 4096)


UNLIMITED = (1 << 63) // 4096
CHAIN = [(50, b"c1", 8000, 8192), (40, b"pod", 16000, 16384), (1, b"", 99999, UNLIMITED)]
W = 0x2 | 0x4  # L_HAS_OOM_LOCK | L_HAS_OOM_COUNT


def test_oom_lock_names_the_oom_memcg_even_when_a_lower_level_is_at_its_limit():
    from otel_oom.attribution.enrich import derive_oom_memcg

    # the kernel holds oom_lock for the OOMing memcg (the pod) and every cgroup below it
    ev = _event(CHAIN, [50, 40, 1], levels={0: {"level_flags": W | 1}, 1: {"level_flags": W | 1},
                                            2: {"level_flags": W}})
    assert derive_oom_memcg(ev) == (1, "oom_lock")


def test_a_kill_right_after_a_reaped_victim_is_found_by_the_watermark_or_the_oom_count():
    from otel_oom.attribution.enrich import Enricher, derive_oom_memcg
    from otel_oom.cgroupfs.hierarchy import MemoryHierarchy

    # the reaper gave the first victim's memory back: usage is far below the limit, the watermark is not
    reaped = [(50, b"c1", 2000, 8192), (1, b"", 99999, UNLIMITED)]
    ev = _event(reaped, [50, 1], levels={0: {"watermark_pages": 8192, "level_flags": 0x4, "oom_events": 3},
                                         1: {"level_flags": 0x4}})
    assert derive_oom_memcg(ev) == (0, "watermark")
    assert derive_oom_memcg(ev, {50: 2}) == (0, "oom_events")  # an OOM was declared there since last seen
    enricher = Enricher(MemoryHierarchy(1, "/nonexistent", 4), "b")
    first = enricher.enrich(_event(reaped, [50, 1], levels={0: {"watermark_pages": 8192, "level_flags": 0x4,
                                                                "oom_events": 2}}))
    second = enricher.enrich(ev)
    assert (first.constraint, first.memcg_evidence, first.memcg_path) == ("memcg", "watermark", "/c1")
    assert (second.constraint, second.memcg_evidence, second.memcg_path) == ("memcg", "oom_events", "/c1")


def test_a_user_space_killers_sigkill_names_the_killer_and_no_oom_decision():
    from otel_oom.attribution.enrich import Enricher
    from otel_oom.cgroupfs.hierarchy import MemoryHierarchy

    ev = _event(CHAIN, [1], hook=4, trigger_comm=b"earlyoom", trigger_tgid=900, trigger_pid=900)
    k = Enricher(MemoryHierarchy(1, "/nonexistent", 4), "b").enrich(ev)
    assert (k.killer, k.killer_pid, k.trigger_pid, k.trigger_comm) == ("earlyoom", 900, None, None)
    assert (k.constraint, k.memcg_path, k.hook) == ("unknown", None, "signal_generate")
    assert k.cgroup_path == "/pod/c1" and k.victim_pid == 4242


# ---- configuration ---------------------------------------------------------------------------------
def test_the_issue_13_settings_come_from_flags_then_the_environment_and_are_checked_once():
    from otel_oom.config import resolve
    from otel_oom.errors import UsageError

    cfg = resolve({}, {})
    assert cfg.events.kinds == {"pressure", "no_kill", "reclaim", "userspace_kill"} and not cfg.events.traces
    assert cfg.events.userspace_killers == ("systemd-oomd", "earlyoom", "oomd", "nohang", "lmkd")
    env = {"OTEL_OOM_EVENTS": "reclaim", "OTEL_OOM_TRACES": "true", "OTEL_OOM_USERSPACE_KILLERS": "mykiller",
           "OTEL_OOM_PRESSURE_WINDOW": "4", "OTEL_OOM_PRESSURE_USAGE_PERCENT": "80"}
    cfg = resolve({}, env)
    assert cfg.events.kinds == {"reclaim"} and cfg.events.traces and cfg.events.userspace_killers == ("mykiller",)
    assert cfg.events.psi_window_s == 4 and cfg.events.usage_percent == 80
    assert resolve({"events": "none"}, env).events.kinds == frozenset()  # the flag wins
    for flags, env, message in (
            ({"events": "pressure,bogus"}, {}, "unknown item 'bogus'"),
            ({"pressure_window": "3"}, {}, "must be 2, 4, 6, 8 or 10"),
            ({}, {"OTEL_OOM_USERSPACE_KILLERS": "a-name-longer-than-15"}, "at most 15 bytes"),
            ({"traces": True, "no_otlp": True}, {}, "cannot be combined with --no-otlp"),
            ({"pressure_usage_percent": "5"}, {}, "between 11 and 100")):
        with pytest.raises(UsageError, match=message):
            resolve(flags, env)


def test_a_victim_the_kernel_only_marked_also_opens_an_oom_without_a_kill(tmp_path):
    """mark_victim for a task not exiting on SIGKILL (task_will_free_mem): its oom.kill says killed=false,
    and the no-kill tracker opens a victim_exiting episode for its cgroup."""
    from collections import Counter

    from otel_oom.attribution.enrich import Enricher
    from otel_oom.cgroupfs.hierarchy import MemoryHierarchy
    from otel_oom.kernel import wire as Wire
    from otel_oom.pipeline import Pipeline
    from testing.events import raw_event

    class Store:
        def __init__(self):
            self.items = []
            self.next_seq = 1

        def append(self, payload: bytes) -> int:
            self.items.append(record_from_json(payload))
            return len(self.items)

        def append_many(self, payloads: list[bytes]) -> list[int]:
            return [self.append(p) for p in payloads]

    store, queued = Store(), []
    chain = [(50, b"c1", 8192, 8192), (1, b"", 99999, UNLIMITED)]
    nk = NoKillTracker(1, str(tmp_path), "b", queued.append)
    p = Pipeline(Enricher(MemoryHierarchy(1, str(tmp_path), 4), "b"), Counter(), Counter(), store=store, no_kill=nk)
    killed = Wire.F_VICTIM_TASK | Wire.F_MM_SIZES | Wire.F_BOOT_CLOCK | Wire.F_SIGKILLED
    p.handle_sample(raw_event(chain, [50, 1], flags=killed))
    assert queued == [] and store.items[0].killed is True
    p.handle_sample(raw_event(chain, [50, 1], flags=killed & ~Wire.F_SIGKILLED, victim_pid=77, victim_tgid=77,
                              timestamp_ns=999))
    assert [(r.victim_pid, r.killed) for r in store.items] == [(4242, True), (77, False)]
    (nokill,) = queued
    assert (nokill.reason, nokill.state, nokill.victim_pid, nokill.cgroup_path) == ("victim_exiting", "start", 77, "/c1")
