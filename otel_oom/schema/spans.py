"""The OOM episode (`OomEpisode`, --traces) -> its span: name, kind, times, status, attributes, events (pure).

One span named `oom.episode` per episode, its records as span events in time order. Its trace and
span ids were chosen when the episode started, so the log records of the episode (stamped before
they were spooled) carry the same ids and a log backend can jump to the trace. Like the log
records, every string attribute goes through `text.for_otlp`; unknown values are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..text import for_otlp
from .records import OomEpisode

SPAN_NAME = "oom.episode"
# OTLP enum values (trace.proto): Span.SpanKind and Status.StatusCode
SPAN_KIND_INTERNAL = 1
STATUS_OK, STATUS_ERROR = 1, 2


@dataclass(frozen=True)
class SpanEventFields:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SpanFields:
    """One episode as an OTLP span, field for field."""

    trace_id: str                  # 32 hex digits
    span_id: str                   # 16 hex digits
    name: str
    kind: int
    start_unix_nano: int
    end_unix_nano: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: tuple[SpanEventFields, ...]


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: (for_otlp(v) if isinstance(v, str) else v) for k, v in attrs.items() if v is not None}


def span_attributes(ep: OomEpisode) -> dict[str, Any]:
    return _clean({
        "oom.episode.scope": ep.scope,
        "oom.episode.outcome": ep.outcome,
        "oom.episode.ended_by": ep.ended_by,
        "oom.episode.kills": ep.kills,
        "oom.memcg.path": ep.cgroup_path,
        "container.id": ep.container_id,
        "container.runtime.name": ep.container_runtime,
        "k8s.pod.uid": ep.pod_uid,
    })


def episode_span(ep: OomEpisode) -> SpanFields:
    # a kill, or an OOM nobody was killed for, is what an operator looks for: marked as an error
    failed = ep.outcome in ("kill", "no_kill")
    events = tuple(SpanEventFields(str(e["name"]), int(e["time_unix_nano"]), _clean(dict(e.get("attributes") or {})))
                   for e in ep.events)
    return SpanFields(ep.trace_id, ep.span_id, SPAN_NAME, SPAN_KIND_INTERNAL, ep.start_unix_nano,
                      max(ep.end_unix_nano, ep.start_unix_nano), STATUS_ERROR if failed else STATUS_OK,
                      ep.outcome if failed else "", span_attributes(ep), events)
