"""Every record type -> its log record: time, trace, event name, severity, body and attributes (pure).

`OomKill` maps through `mapping.py` as it always did; the records around the kill (`oom.pressure`,
`oom.no_kill`, `oom.reclaim`) map here. Their stable id is `oom.record.id`: `oom.event.id` stays
the kill's (queries that select kill records by it, like deploy/alerts/loki-rules.yaml's, keep
selecting only kills). `log_record(record)` is the one entry point for the OTLP encoder
(`otlp/encode.py`), the console/JSON renderings and the tests. The episode span (`OomEpisode`) is
not a log record: `spans.py` maps it. Like mapping.py, this imports nothing from OpenTelemetry and
every string attribute goes through `text.for_otlp` (kept as decoded with `raw`, for the JSON line).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..text import for_otlp, for_terminal
from .mapping import EVENT_NAME, log_attributes, log_body
from .records import STATE_START, OomKill, OomNoKill, OomPressure, OomReclaim, Record

# OTLP SeverityNumber values
INFO, WARN, ERROR = 9, 13, 17


@dataclass(frozen=True)
class LogRecordFields:
    """One record as an OTLP log record, field for field (the observed time is the sender's)."""

    time_unix_nano: int            # when it happened (0: unknown, left unset)
    event_name: str
    severity_number: int
    severity_text: str
    body: str
    attributes: dict[str, Any]     # in wire order; unknown values left out
    trace_id: Optional[str] = None  # --traces: 32 and 16 hex digits, the OOM episode's span
    span_id: Optional[str] = None


def _clean(attrs: dict[str, Any], raw: bool = False) -> dict[str, Any]:
    """Unknown values are omitted, strings through `text.for_otlp` (kept as decoded with `raw`, for
    the JSON line, as `mapping.log_attributes` does), tuples become lists (OTLP arrays)."""
    out: dict[str, Any] = {}
    for key, v in attrs.items():
        if v is None or v == ():
            continue
        if isinstance(v, str) and not raw:
            v = for_otlp(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[key] = v
    return out


def _seconds(ns: Optional[int]) -> Optional[float]:
    return None if ns is None else ns / 1e9


def _workload(cgroup_path: Optional[str], runtime: Optional[str], container_id: Optional[str],
              pod_uid: Optional[str]) -> dict[str, Any]:
    return {"oom.memcg.path": cgroup_path, "container.id": container_id, "container.runtime.name": runtime,
            "k8s.pod.uid": pod_uid}


def pressure_attributes(p: OomPressure, raw: bool = False) -> dict[str, Any]:
    ratio = p.usage_ratio
    return _clean({
        "oom.record.id": p.event_id,
        "oom.pressure.state": p.state,
        "oom.pressure.scope": p.scope,
        "oom.pressure.source": p.source,
        "oom.pressure.id": p.episode_id,
        **_workload(p.cgroup_path, p.container_runtime, p.container_id, p.pod_uid),
        "oom.memcg.limit": p.limit_bytes,
        "oom.memcg.usage": p.usage_bytes,
        "oom.memcg.usage_ratio": None if ratio is None else round(ratio, 4),
        "oom.memcg.failcnt": p.failcnt,
        "oom.memcg.events.high": p.events_high,
        "oom.memcg.events.max": p.events_max,
        "oom.memcg.events.oom": p.events_oom,
        "oom.memcg.events.oom_kill": p.events_oom_kill,
        "oom.pressure.psi.some.avg10": p.psi_some_avg10,
        "oom.pressure.psi.full.avg10": p.psi_full_avg10,
        "oom.pressure.vmpressure.level": p.vmpressure_level,
        "oom.host.memory.available": p.host_available_bytes,
        "oom.host.memory.total": p.host_total_bytes,
        "oom.pressure.duration": _seconds(p.duration_ns),
        "oom.pressure.peak.usage": p.peak_usage_bytes,
        "oom.pressure.peak.psi.some.avg10": p.peak_psi_some_avg10,
        "oom.pressure.ended_by": p.ended_by,
    }, raw)


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / (1 << 20):.1f} MiB"


def pressure_body(p: OomPressure) -> str:
    where = "on the host" if p.scope == "host" else f"in memory cgroup {for_terminal(p.cgroup_path or '?')}"
    facts = []
    if p.usage_bytes is not None:
        ratio = p.usage_ratio
        facts.append(f"usage {_size(p.usage_bytes)}"
                     + (f" of {_size(p.limit_bytes)} ({ratio:.0%})" if ratio is not None else ""))
    if p.psi_some_avg10 is not None:
        facts.append(f"PSI some avg10 {p.psi_some_avg10:.1f}%"
                     + (f", full {p.psi_full_avg10:.1f}%" if p.psi_full_avg10 is not None else ""))
    if p.host_available_bytes is not None:
        facts.append(f"available {_size(p.host_available_bytes)} of {_size(p.host_total_bytes)}")
    if p.state == STATE_START:
        return f"Memory pressure {where} (started by {p.source}): " + ", ".join(facts or ["no readings"])
    peak = f", peak usage {_size(p.peak_usage_bytes)}" if p.peak_usage_bytes is not None else ""
    took = f" after {p.duration_ns / 1e9:.1f} s" if p.duration_ns is not None else ""
    return f"Memory pressure {where} ended{took} ({p.ended_by}){peak}: " + ", ".join(facts or ["no readings"])


def no_kill_attributes(n: OomNoKill, raw: bool = False) -> dict[str, Any]:
    return _clean({
        "oom.record.id": n.event_id,
        "oom.no_kill.state": n.state,
        "oom.no_kill.reason": n.reason,
        "oom.no_kill.id": n.episode_id,
        **_workload(n.cgroup_path, n.container_runtime, n.container_id, n.pod_uid),
        "oom.memcg.limit": n.limit_bytes,
        "oom.memcg.usage": n.usage_bytes,
        "oom.no_kill.tasks": n.tasks,
        "oom.no_kill.task_pids": n.task_pids,
        "oom.no_kill.tasks.waiting": n.tasks_waiting,
        "oom.no_kill.ooms": n.ooms,
        "process.pid": n.victim_pid,
        "oom.victim.tid": n.victim_tid,
        "process.executable.name": n.victim_comm,
        "oom.no_kill.duration": _seconds(n.duration_ns),
        "oom.no_kill.ended_by": n.ended_by,
    }, raw)


def no_kill_body(n: OomNoKill) -> str:
    where = for_terminal(n.cgroup_path or "?")
    tasks = f", {n.tasks} task(s)" if n.tasks is not None else ""
    waiting = f", {n.tasks_waiting} waiting" if n.tasks_waiting else ""
    usage = f"; usage {_size(n.usage_bytes)} of {_size(n.limit_bytes)}" if n.usage_bytes is not None else ""
    victim = (f"; marked pid {n.victim_pid} ({for_terminal(n.victim_comm or '?')}) was already exiting"
              if n.victim_pid is not None else "")
    if n.state == STATE_START:
        return f"Memory cgroup out of memory, nobody killed: {where} ({n.reason}){tasks}{waiting}{usage}{victim}"
    took = f" after {n.duration_ns / 1e9:.1f} s" if n.duration_ns is not None else ""
    return f"Memory cgroup out of memory without a kill ended{took}: {where} ({n.reason}, {n.ended_by}){usage}"


def reclaim_attributes(r: OomReclaim, raw: bool = False) -> dict[str, Any]:
    return _clean({
        "oom.record.id": r.event_id,
        "oom.kill.event.id": r.kill_event_id,
        "oom.reclaim.method": r.method,
        "oom.reclaim.duration": _seconds(r.duration_ns),
        "oom.reclaim.reaper.woken": r.reaper_woken,
        "oom.reclaim.reaper.skipped": r.reaper_skipped,
        "oom.killer": r.killer,
        "process.pid": r.victim_pid,
        "oom.victim.tid": r.victim_tid,
        "process.executable.name": r.victim_comm,
        "oom.victim.memory.rss": r.rss_bytes,
        "oom.victim.cgroup.path": r.cgroup_path,
        "container.id": r.container_id,
        "container.runtime.name": r.container_runtime,
        "k8s.pod.uid": r.pod_uid,
        "oom.memcg.path": r.memcg_path,
    }, raw)


def reclaim_body(r: OomReclaim) -> str:
    who = f"process {r.victim_pid} ({for_terminal(r.victim_comm)})"
    if r.duration_ns is None:
        return f"Memory of OOM-killed {who} not given back yet ({r.method})"
    ms = r.duration_ns / 1e6
    return f"Memory of OOM-killed {who} given back {ms:.1f} ms after the kill ({r.method})"


_SEVERITY_TEXT = {INFO: "INFO", WARN: "WARN", ERROR: "ERROR"}


def log_record(record: Record, raw: bool = False) -> LogRecordFields:
    """The log record for any record type except OomEpisode (a span); `raw` as in `_clean`."""
    if isinstance(record, OomKill):
        sev, name = ERROR, EVENT_NAME
        body, attrs = log_body(record), log_attributes(record, raw=raw)
    elif isinstance(record, OomPressure):
        sev, name = (WARN if record.state == STATE_START else INFO), OomPressure.TYPE
        body, attrs = pressure_body(record), pressure_attributes(record, raw)
    elif isinstance(record, OomNoKill):
        sev, name = (ERROR if record.state == STATE_START else INFO), OomNoKill.TYPE
        body, attrs = no_kill_body(record), no_kill_attributes(record, raw)
    elif isinstance(record, OomReclaim):
        sev, name = (INFO if record.duration_ns is not None else WARN), OomReclaim.TYPE
        body, attrs = reclaim_body(record), reclaim_attributes(record, raw)
    else:
        raise TypeError(f"{type(record).__name__} is not a log record")
    # with --traces the record carries its OOM episode's trace (both ids, or neither)
    traced = bool(record.trace_id and record.span_id)
    return LogRecordFields(record.time_unix_nano, name, sev, _SEVERITY_TEXT[sev], body, attrs,
                           record.trace_id if traced else None, record.span_id if traced else None)
