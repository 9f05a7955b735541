"""The OTLP metric exporter: the SDK's metric reader collects, this sends through `transport.py`.

The SDK's MetricExporter interface (public) with opentelemetry-proto's public encoder, carried by
the same transports as log records and spans, so every signal shares one set of OTLP settings
(TLS, headers, compression, proxy) and one reading of the collector's answer, and neither the
SDK's HTTP exporter (requests, ~8 MiB) nor its gRPC exporter is imported.

As the SDK's exporters do: a retryable failure is tried again with backoff (or the collector's
Retry-After) within the export's timeout; a partial success is logged; the preferred temporality
and histogram aggregation come from OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE and
OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION (resolved at start by env.py). A failed
export is counted (`on_failure`); the SDK's reader only logs it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, MetricExportResult
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

from .env import OtlpSettings
from .transport import RETRY, transport

log = logging.getLogger("otel_oom.otlp")

FIRST_BACKOFF_S = 1.0
_CUMULATIVE, _DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
# OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, as the specification (and the SDK) define it;
# an instrument not listed is cumulative
_DELTA_UNDER = {"delta": (Counter, Histogram, ObservableCounter), "lowmemory": (Counter, Histogram)}
_INSTRUMENTS = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)


def temporality(preference: str) -> dict[type, AggregationTemporality]:
    delta = _DELTA_UNDER.get(preference, ())
    return {kind: _DELTA if kind in delta else _CUMULATIVE for kind in _INSTRUMENTS}


def aggregation(choice: str) -> dict[type, Any]:
    # explicit_bucket_histogram is the SDK's default aggregation, which keeps the RSS buckets advised
    return {Histogram: ExponentialBucketHistogramAggregation()} if choice == "base2_exponential_bucket_histogram" else {}


class OtlpMetricExporter(MetricExporter):
    def __init__(self, otlp: OtlpSettings, on_failure: Callable[[], None]) -> None:
        super().__init__(preferred_temporality=temporality(otlp.metric_temporality),
                         preferred_aggregation=aggregation(otlp.histogram_aggregation))
        signal = self._settings = otlp.metrics
        self._transport = transport(signal, "metrics")
        self._on_failure = on_failure
        self._stopped = threading.Event()
        self._failing = False  # logged once per outage, not at every interval

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._stopped.is_set():
            return MetricExportResult.FAILURE
        request = encode_metrics(metrics_data).SerializeToString()
        deadline = time.monotonic() + timeout_millis / 1000
        backoff = FIRST_BACKOFF_S
        while True:
            left = deadline - time.monotonic()
            result = self._transport.export(request, min(self._settings.timeout_s, max(0.05, left)))
            if result.ok:
                if result.rejected or result.message:
                    log.warning("the collector rejected %d metric data points: %s", result.rejected, result.message)
                if self._failing:
                    self._failing = False
                    log.info("metrics are exported again")
                return MetricExportResult.SUCCESS
            wait = result.retry_after if result.retry_after is not None else backoff
            if result.outcome != RETRY or wait >= deadline - time.monotonic() or self._stopped.wait(wait):
                break
            backoff *= 2
        if not self._failing:
            self._failing = True
            log.warning("metrics export failed (%s): %s; counted in otel_oom.export.failures, logged once until it "
                        "works again (the next export carries cumulative values again)", result.outcome, result.message)
        self._on_failure()
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True  # nothing is buffered here: the reader's collection is exported at once

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._stopped.set()        # a retry waiting stops waiting
        self._transport.close()    # an export in flight is cut
