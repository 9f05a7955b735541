"""The records around the kill, without a kernel: their JSON (old spools still replay), their
OTLP mapping through the agent's export into a real receiver (trace and span ids included), the
console/JSON lines, the OOMing-memcg evidence, and their settings. The trackers that make them:
test_pressure_tracker.py, test_no_kill_tracker.py, test_reclaim_and_episodes.py, test_room.py."""
from __future__ import annotations

import json
import os

import pytest

from otel_oom.around.episodes import EpisodeTracker
from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.export import OtlpExport
from otel_oom.otlp.resource import build_resource
from otel_oom.otlp.spooled import SpoolCodec
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
        export, codec = OtlpExport(resource, settings, traces=True), SpoolCodec()
        assert export.send("logs", [codec.decode(codec.encode(x)).message for x in (start, k, r)]).ok
        assert export.send("traces", [codec.decode(codec.encode(ended[0])).message]).ok
        recs = rx.wait_for_logs(3)
        assert {x["trace_id"] for x in recs} == {ended[0].trace_id}
        assert {x["span_id"] for x in recs} == {ended[0].span_id}
        (span,) = rx.wait_for_spans(lambda spans: len(spans) >= 1)
        assert (span["trace_id"], span["span_id"], span["name"]) == (ended[0].trace_id, ended[0].span_id, "oom.episode")
        export.shutdown()


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
def test_the_settings_around_the_kill_come_from_flags_then_the_environment_and_are_checked_once():
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
