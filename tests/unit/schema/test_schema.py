"""The schema room: every record type as a log record (time, trace, name, severity, body, attributes),
the episode as a span, and the renderings that go through it (console, JSON line, webhook) byte for
byte what the agent printed before the schema moved (tests/fixtures/otlp/golden-sinks.json, made by
tests/fixtures/otlp/make_golden.py from the code before)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from otel_oom.schema.log_records import ERROR, INFO, WARN, log_record
from otel_oom.schema.mapping import log_body
from otel_oom.schema.records import OomEpisode, OomKill, OomNoKill, OomPressure, OomReclaim, record_fields, record_from_json
from otel_oom.schema.spans import SPAN_KIND_INTERNAL, STATUS_ERROR, STATUS_OK, episode_span
from otel_oom.sinks.console import format_console, format_json, format_record_console, format_record_json
from otel_oom.sinks.webhook import build_message

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "otlp"
RECORDS = [record_from_json(line) for line in (FIXTURES / "records.jsonl").read_text().splitlines()]
LOGS = [r for r in RECORDS if not isinstance(r, OomEpisode)]
SINKS = json.loads((FIXTURES / "golden-sinks.json").read_text())


def test_the_fixture_covers_every_record_type():
    assert {type(r) for r in RECORDS} == {OomKill, OomPressure, OomNoKill, OomReclaim, OomEpisode}
    assert len(SINKS) == len(LOGS)


@pytest.mark.parametrize("i", range(len(LOGS)))
def test_console_json_and_webhook_output_is_what_the_agent_printed_before(i):
    record, before = LOGS[i], SINKS[i]
    assert format_record_console(record) == before["console"]
    assert format_record_json(record) == before["json"]
    if isinstance(record, OomKill):
        assert format_console(record) == before["console_kill"]
        assert build_message(record, log_body(record)).decode("ascii") == before["webhook"]
        if not record.trace_id:
            assert format_json(record) == before["json_kill"]
        else:  # deliberate: format_json is format_record_json now, with the trace (what the agent printed)
            assert format_json(record) == before["json"]


def test_each_record_type_has_its_event_name_severity_time_and_trace():
    kill, untraced_kill = LOGS[0], LOGS[2]
    f = log_record(kill)
    assert (f.event_name, f.severity_number, f.severity_text) == ("oom.kill", ERROR, "ERROR")
    assert (f.time_unix_nano, f.trace_id, f.span_id) == (kill.time_unix_nano, kill.trace_id, kill.span_id)
    assert f.body == log_body(kill) and f.attributes["process.pid"] == kill.victim_pid
    g = log_record(untraced_kill)
    assert untraced_kill.trace_id and g.trace_id is None and g.span_id is None  # a trace id alone is no trace
    assert g.attributes["process.executable.name"] == b"\x1b]0;x\x07\n\xff"  # raw kernel bytes: bytes_value
    assert log_record(untraced_kill, raw=True).attributes["process.executable.name"] == "\x1b]0;x\x07\n\udcff"
    names = {type(r).__name__: log_record(r) for r in LOGS}
    assert (names["OomPressure"].event_name, names["OomNoKill"].event_name, names["OomReclaim"].event_name) == \
        ("oom.pressure", "oom.no_kill", "oom.reclaim")
    severities = {(type(r).__name__, getattr(r, "state", None) or getattr(r, "method", None)): log_record(r).severity_number
                  for r in LOGS if not isinstance(r, OomKill)}
    assert severities == {("OomPressure", "start"): WARN, ("OomPressure", "end"): INFO,
                          ("OomNoKill", "start"): ERROR, ("OomNoKill", "end"): INFO,
                          ("OomReclaim", "exit"): INFO, ("OomReclaim", "timeout"): WARN}
    with pytest.raises(TypeError):
        log_record(RECORDS[-1])  # an episode is a span, not a log record


def test_the_episode_span():
    kill_episode, quiet = [r for r in RECORDS if isinstance(r, OomEpisode)]
    s = episode_span(kill_episode)
    assert (s.name, s.kind, s.status_code, s.status_message) == ("oom.episode", SPAN_KIND_INTERNAL, STATUS_ERROR, "kill")
    assert (s.trace_id, s.span_id) == (kill_episode.trace_id, kill_episode.span_id)
    assert s.attributes == {"oom.episode.scope": "memcg", "oom.episode.outcome": "kill",
                            "oom.episode.ended_by": "reclaimed", "oom.episode.kills": 1,
                            "oom.memcg.path": kill_episode.cgroup_path, "container.id": kill_episode.container_id,
                            "container.runtime.name": "containerd", "k8s.pod.uid": kill_episode.pod_uid}
    assert [e.name for e in s.events] == ["oom.pressure.start", "oom.kill", "oom.reclaim"]
    kill_event = s.events[1].attributes
    assert kill_event["process.executable.name"] == b"\x1b]0;x\x07\n\xff" and "oom.victim.memory.rss" not in kill_event
    q = episode_span(quiet)
    assert (q.status_code, q.status_message) == (STATUS_OK, "") and q.end_unix_nano == q.start_unix_nano
    assert q.attributes == {"oom.episode.scope": "host", "oom.episode.outcome": "pressure",
                            "oom.episode.ended_by": "cleared", "oom.episode.kills": 0}


def test_a_records_fields_are_its_json():
    for r in RECORDS:
        fields = record_fields(r)
        decoded = json.loads(r.to_json())
        decoded.pop("type", None)
        assert json.loads(json.dumps(fields)) == decoded


def test_the_schema_imports_nothing_from_opentelemetry():
    room = Path(__file__).resolve().parents[3] / "otel_oom" / "schema"
    for path in room.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.startswith("opentelemetry") for n in names), path
