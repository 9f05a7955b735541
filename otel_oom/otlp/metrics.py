"""The agent's metrics: OOM kills and victims' RSS, and the agent's own health, over OTLP and Prometheus.

Metric attributes are bounded (`mapping.kill_metric_attributes`): never a pid or an event id.
The observable instruments read the agent's counters through cheap callables at each collection.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from .. import __version__
from ..schema.mapping import RSS_BUCKETS, SCOPE_NAME, kill_metric_attributes
from ..schema.records import OomKill, Record
from .env import OtlpSettings
from .episode_metrics import EpisodeMetrics, guarded

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.otlp")


class Metrics:
    """The agent's metrics over OTLP (periodic) and, optionally, a Prometheus registry to serve.

    The callables feed the observable instruments at each collection and must be cheap:
    drop_counts() -> {reason: total}, fault_counts() -> {stage: total},
    hooks() -> [(hook, "victim" | "context")], unobserved() -> int.
    """

    def __init__(self, resource: "Resource", otlp: Optional[OtlpSettings], prometheus: bool = False, *,
                 drop_counts: Optional[Callable[[], Mapping[str, int]]] = None,
                 fault_counts: Optional[Callable[[], Mapping[str, int]]] = None,
                 hooks: Optional[Callable[[], Iterable[tuple[str, str]]]] = None,
                 unobserved: Optional[Callable[[], int]] = None) -> None:
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        self._drop_counts = drop_counts or (lambda: {})
        self._fault_counts = fault_counts or (lambda: {})
        self._hooks = hooks or (lambda: [])
        self._unobserved = unobserved or (lambda: 0)
        self.prometheus_registry = None
        self._periodic: Any = None
        self._closed = False
        readers: list[Any] = []
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            # a registry of our own: the global one would mix in whatever else the process registers
            self.prometheus_registry = CollectorRegistry()
            # first: the provider shuts readers down in order within one deadline, and this one is instant
            readers.append(PrometheusMetricReader(registry=self.prometheus_registry))
        if otlp is not None:
            self.export_interval_millis = otlp.metric_export_interval_ms
            from .metric_exporter import OtlpMetricExporter

            exporter = OtlpMetricExporter(otlp, lambda: self.record_export_failure("metrics"))
            self._periodic = PeriodicExportingMetricReader(exporter, export_interval_millis=self.export_interval_millis)
            readers.append(self._periodic)
        self._provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        meter = self._provider.get_meter(SCOPE_NAME, __version__)

        self._kills = meter.create_counter(
            "oom.kills", unit="{kill}", description="OOM kills reported, by constraint, container runtime and pod QoS class")
        self._rss = meter.create_histogram(
            "oom.victim.rss", unit="By", description="Resident memory of the OOM victim when it was killed",
            explicit_bucket_boundaries_advisory=RSS_BUCKETS)
        self._export_failures = meter.create_counter(
            "otel_oom.export.failures", unit="{export}", description="OTLP exports the collector did not accept")
        for signal in ("logs", "metrics"):
            # the series exist from the start, so rate() and increase() see the first failure
            self._export_failures.add(0, {"signal": signal})
        meter.create_observable_counter(
            "otel_oom.events.dropped", unit="{event}", description="Events otel-oom lost, by reason",
            callbacks=[guarded("otel_oom.events.dropped", lambda: [
                Observation(int(n), {"reason": str(reason)}) for reason, n in sorted(self._drop_counts().items())])])
        meter.create_observable_counter(
            "otel_oom.faults", unit="{event}",
            description="Events delivered despite a fault on the way (e.g. without attribution), by stage",
            callbacks=[guarded("otel_oom.faults", lambda: [
                Observation(int(n), {"stage": str(stage)}) for stage, n in sorted(self._fault_counts().items())])])
        meter.create_observable_gauge(
            "otel_oom.hooks.attached", unit="{hook}", description="Kernel hooks attached (1 per hook)",
            callbacks=[guarded("otel_oom.hooks.attached", lambda: [
                Observation(1, {"oom.hook": hook, "oom.hook.role": role}) for hook, role in self._hooks()])])
        meter.create_observable_gauge(
            "oom.kills.unobserved", unit="{kill}",
            description="OOM kills the kernel counted that otel-oom did not observe",
            callbacks=[guarded("oom.kills.unobserved", lambda: [Observation(int(self._unobserved()))])])
        # issue 13: pressure, no-kill and reclaim metrics (their gauges' sources are set by the agent)
        self.episodes = EpisodeMetrics(meter)

    def record_kill(self, kill: OomKill) -> None:
        if kill.killed is False:
            return  # only marked (already exiting): the kernel killed nothing and counts nothing
        self._kills.add(1, kill_metric_attributes(kill))
        rss = kill.rss_bytes
        if rss is not None:
            self._rss.record(rss, {"oom.constraint": kill.constraint})

    def record_event(self, record: Record) -> None:
        """A record other than a kill: pressure and no-kill episodes, reclaim times."""
        self.episodes.record(record)

    def record_export_failure(self, signal: str) -> None:
        """Count an export the collector did not accept; signal is "logs" or "metrics"."""
        self._export_failures.add(1, {"signal": signal})

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._provider.force_flush(timeout_millis=timeout_millis)

    def healthy(self) -> tuple[bool, str]:
        """(False, why) once the SDK's periodic export thread died (it is not a supervised thread, and
        an exception in its wait ends it for good: no metric is exported again)."""
        thread = getattr(self._periodic, "_daemon_thread", None)
        if self._closed or thread is None or thread.is_alive():
            return True, "ok"
        return False, "the metric export thread has ended: no metrics are exported; see the log for why"

    def shutdown(self, timeout_millis: float = 5_000) -> None:
        """Final export within `timeout_millis`; a collector that does not answer in time costs one line."""
        self._closed = True
        try:
            self._provider.shutdown(timeout_millis=timeout_millis)
        except Exception as e:  # noqa: BLE001 - the SDK raises when a reader ran out of time
            log.warning("final metric export did not complete: %s", " ".join(str(e).split())[:300])
