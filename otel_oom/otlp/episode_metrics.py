"""The metrics of the records around the kill: pressure and no-kill episodes, reclaim times, watched cgroups,
and what the kubelet reported of each kill in a pod (`oom.kills.kubelet`).

Created on the agent's meter by `metrics.Metrics`; attributes are bounded (scope, source, reason,
method, killer, state), never a cgroup path or a pid. The observable gauges read the watchers'
state through the callables the agent sets once they exist (until then they report nothing).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from ..schema.kubelet import OomKubelet, kubelet_metric_attributes
from ..schema.records import STATE_END, STATE_START, OomNoKill, OomPressure, OomReclaim, Record
from ..text import for_otlp_label

log = logging.getLogger("otel_oom.otlp")

# 1 ms .. 60 s: an exit is usually a few ms, the reaper runs after ~2 s, a stuck victim takes longer
RECLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# 1 s .. 1 h
PRESSURE_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def guarded(name: str, fn: Callable[[], list[Any]]) -> Callable[[Any], list[Any]]:
    """An observable instrument's callback that logs a failing stats source instead of breaking
    the whole export."""
    def callback(_options: Any) -> list[Any]:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - a broken stats source must not stop the export
            log.exception("metric callback for %s failed", name)
            return []
    return callback


class EpisodeMetrics:
    def __init__(self, meter: Any) -> None:
        from opentelemetry.metrics import Observation

        # set by the agent once the watchers run: () -> {label: count}
        self.pressure_active: Callable[[], Mapping[str, int]] = lambda: {}
        self.no_kill_active: Callable[[], Mapping[str, int]] = lambda: {}
        self.cgroups: Callable[[], Mapping[str, int]] = lambda: {}

        self._pressure = meter.create_counter(
            "oom.pressure.episodes", unit="{episode}",
            description="Memory pressure episodes that started, by scope (host, memcg) and what started them")
        self._pressure_duration = meter.create_histogram(
            "oom.pressure.duration", unit="s", description="How long memory pressure episodes lasted",
            explicit_bucket_boundaries_advisory=PRESSURE_BUCKETS)
        self._no_kill = meter.create_counter(
            "oom.no_kill.episodes", unit="{episode}", description="OOMs that killed nobody, by reason")
        self._reclaims = meter.create_counter(
            "oom.reclaims", unit="{kill}", description="Killed victims whose memory came back (or did not), by method")
        self._reclaim = meter.create_histogram(
            "oom.reclaim.duration", unit="s", description="Time from an OOM kill until the victim's memory was given back",
            explicit_bucket_boundaries_advisory=RECLAIM_BUCKETS)
        self._kubelet = meter.create_counter(
            "oom.kills.kubelet", unit="{kill}",
            description="Kills in pods by what the kubelet reported for the killed container (--k8s-kubelet-check)")
        meter.create_observable_gauge(
            "oom.pressure.active", unit="{episode}", description="Memory pressure episodes going on now, by scope",
            callbacks=[guarded("oom.pressure.active", lambda: [
                Observation(int(n), {"oom.pressure.scope": k}) for k, n in sorted(self.pressure_active().items())])])
        meter.create_observable_gauge(
            "oom.no_kill.active", unit="{episode}", description="OOMs without a kill going on now, by reason",
            callbacks=[guarded("oom.no_kill.active", lambda: [
                Observation(int(n), {"oom.no_kill.reason": k}) for k, n in sorted(self.no_kill_active().items())])])
        meter.create_observable_gauge(
            "otel_oom.pressure.cgroups", unit="{cgroup}",
            description="Limited memory cgroups watched for pressure (state=watched) or not (state=unwatched)",
            callbacks=[guarded("otel_oom.pressure.cgroups", lambda: [
                Observation(int(n), {"state": k}) for k, n in sorted(self.cgroups().items())])])

    def record(self, record: Record) -> None:
        if isinstance(record, OomPressure):
            attrs = {"oom.pressure.scope": record.scope, "oom.pressure.source": record.source}
            if record.state == STATE_START:
                self._pressure.add(1, attrs)
            elif record.state == STATE_END and record.duration_ns is not None:
                self._pressure_duration.record(record.duration_ns / 1e9, {"oom.pressure.scope": record.scope})
        elif isinstance(record, OomNoKill) and record.state == STATE_START:
            self._no_kill.add(1, {"oom.no_kill.reason": record.reason})
        elif isinstance(record, OomReclaim):
            attrs = {"oom.reclaim.method": record.method, "oom.killer": for_otlp_label(record.killer)}
            self._reclaims.add(1, attrs)
            if record.duration_ns is not None:
                self._reclaim.record(record.duration_ns / 1e9, attrs)
        elif isinstance(record, OomKubelet):
            self._kubelet.add(1, kubelet_metric_attributes(record))
