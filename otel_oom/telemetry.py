"""OpenTelemetry for otel-oom: the resource, the OomKill -> log record mapping, acknowledged log
export and the agent's metrics.

OOM events do not go through the SDK's BatchLogRecordProcessor: it drops a batch the collector
did not take and keeps nothing on disk. `LogSender.send()` exports synchronously and says whether
the collector accepted the batch, so the caller can keep events in its spool until it did.

The mapping (`log_attributes`, `log_body`) is pure and imports nothing from OpenTelemetry, so the
console/JSON output and the webhook can use it without paying for the SDK's imports. Everything
that needs the SDK imports it where it is used. This is the only module that touches the
unstable logs SDK (`opentelemetry.sdk._logs`).

The standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers, TLS files, insecure, timeout,
compression) are read by the SDK exporters themselves, from the process environment; only the
protocol is chosen here. `validate_otlp_environment` checks them all up front so a typo fails at
start with one clear line instead of a traceback or a silent fallback at the first export.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence
from urllib.parse import unquote, urlsplit

from . import __version__
from .errors import UsageError
from .kill import OomKill
from .output import escape_untrusted

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.telemetry")

SERVICE_NAME = "otel-oom"
SCOPE_NAME = "otel_oom"
EVENT_NAME = "oom.kill"
# semconv: a stable service.instance.id is a UUID v5 of an inherent id under this namespace
SERVICE_INSTANCE_NAMESPACE = uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320")

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"
# The SDK exports metrics every 60 s. oom.kills feeds alerts, and a kill should page within
# about one Prometheus scrape interval, not a minute later; the agent's handful of series
# costs next to nothing to send four times as often.
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 15000

MiB = 1 << 20
# 1 MiB, 4 MiB, ... 64 GiB: powers of 4 cover a tiny sidecar to a whole node in 9 buckets
RSS_BUCKETS = tuple(float(MiB * 4**i) for i in range(9))


class ConfigError(UsageError):
    """A bad OTEL_* setting; the message names the variable and the fix, never a header value."""


# ---- resource ---------------------------------------------------------------------------------

def _read_id(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return None
    # an image built without systemd ships an empty or "uninitialized" machine-id
    if not value or value == "uninitialized":
        return None
    return value


def parse_resource_attributes(text: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES as the SDK reads it: k=v pairs, comma-separated, values %-decoded."""
    attrs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # same leniency as the SDK's detector; the item itself may hold a secret, so not shown
            log.warning("ignoring a malformed OTEL_RESOURCE_ATTRIBUTES item (expected key=value)")
            continue
        attrs[key.strip()] = unquote(value.strip())
    return attrs


def build_resource(environ: Mapping[str, str] = os.environ, machine_id_path: str = "/etc/machine-id",
                   hostname: Optional[str] = None,
                   boot_id_path: str = "/proc/sys/kernel/random/boot_id",
                   os_release: Optional[str] = None) -> "Resource":
    """The reporter's identity. Precedence: OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES > detected."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.version import __version__ as sdk_version

    machine_id = _read_id(machine_id_path)
    # Without a machine id (a container image that does not mount the host's /etc/machine-id)
    # the boot id is the next best per-host identity: stable across agent restarts, but new
    # after every reboot, so the instance id changes then.
    instance_source = machine_id or _read_id(boot_id_path)
    node_name = environ.get("K8S_NODE_NAME") or None
    attrs: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        # inside a pod the hostname is the pod's: the node name from the downward API is the host
        "host.name": node_name or hostname or socket.gethostname(),
        "os.type": "linux",
        "os.version": os_release if os_release is not None else os.uname().release,
    }
    if instance_source:
        attrs["service.instance.id"] = str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, instance_source))
    if machine_id:
        attrs["host.id"] = machine_id
    if node_name:
        attrs["k8s.node.name"] = node_name
    attrs.update(parse_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = environ["OTEL_SERVICE_NAME"]
    return Resource(attrs)


# ---- the OomKill -> log record mapping (pure) ---------------------------------------------------

def utf8_safe(s: str) -> str:
    """Valid UTF-8 for protobuf: undecodable kernel bytes (lone surrogates) become "\\xNN" text.

    Control characters are kept: in an attribute they are data, and OTLP carries them intact.
    """
    if s.isascii():
        return s
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        # a surrogate outside surrogateescape's range did not come from the kernel; keep it visible
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def log_attributes(kill: OomKill) -> dict[str, Any]:
    """The record's attributes: the victim's identity in semconv names, the rest under oom.*."""
    k = kill
    attrs: dict[str, Any] = {
        # the victim, with the standard process/container/k8s attributes
        "process.pid": k.victim_pid,
        "process.parent_pid": k.victim_ppid,
        "process.executable.name": k.victim_comm,
        "process.real_user.id": k.victim_uid,
        "process.linux.cgroup": k.cgroup_line,
        "container.id": k.container_id,
        "container.runtime.name": k.container_runtime,
        "k8s.pod.uid": k.pod_uid,
        "oom.victim.tid": k.victim_tid,
        "oom.victim.cgroup.path": k.cgroup_path,
        "oom.victim.pod.qos_class": k.pod_qos_class,
        "oom.victim.oom_score_adj": k.oom_score_adj,
        "oom.victim.memory.total_vm": k.total_vm_bytes,
        "oom.victim.memory.anon_rss": k.anon_rss_bytes,
        "oom.victim.memory.file_rss": k.file_rss_bytes,
        "oom.victim.memory.shmem_rss": k.shmem_rss_bytes,
        "oom.victim.memory.rss": k.rss_bytes,
        "oom.victim.memory.page_tables": k.pgtables_bytes,
        # the task whose allocation failed
        "oom.trigger.pid": k.trigger_pid,
        "oom.trigger.tid": k.trigger_tid,
        "oom.trigger.executable.name": k.trigger_comm,
        # the decision
        "oom.constraint": k.constraint,
        "oom.constraint.source": k.constraint_source,
        "oom.memcg.path": k.memcg_path,
        "oom.memcg.limit": k.memcg_limit_bytes,
        "oom.memcg.usage": k.memcg_usage_bytes,
        "oom.memcg.source": k.memcg_source,
        "oom.domain.size": k.domain_bytes,
        "oom.badness": k.badness_points,
        "oom.gfp_mask": k.gfp_mask,
        "oom.order": k.order,
        "oom.decision.id": k.decision_id,
        "oom.group.path": k.oom_group_path,
        # how it was observed
        "oom.event.id": k.event_id,
        "oom.hook": k.hook,
        "oom.context_hook": k.context_hook,
        "oom.recovered": bool(k.recovered),
    }
    return {key: (utf8_safe(v) if isinstance(v, str) else v) for key, v in attrs.items() if v is not None}


def _kb(n: int) -> str:
    return f"{n // 1024}kB"


def log_body(kill: OomKill) -> str:
    """One line in the kernel's own wording; unknown fields are left out, names are escaped."""
    k = kill
    prefix = "Memory cgroup out of memory" if k.constraint == "memcg" else "Out of memory"
    text = f"{prefix}: Killed process {k.victim_pid} ({escape_untrusted(k.victim_comm)})"
    memory = [f"{label}:{_kb(v)}" for label, v in (("total-vm", k.total_vm_bytes), ("anon-rss", k.anon_rss_bytes),
                                                   ("file-rss", k.file_rss_bytes), ("shmem-rss", k.shmem_rss_bytes))
              if v is not None]
    tail = []
    if k.victim_uid is not None:
        tail.append(f"UID:{k.victim_uid}")
    if k.pgtables_bytes is not None:
        tail.append(f"pgtables:{_kb(k.pgtables_bytes)}")
    if k.oom_score_adj is not None:
        tail.append(f"oom_score_adj:{k.oom_score_adj}")
    # the kernel's punctuation: "total-vm:..kB, anon-rss:..kB, ..., UID:0 pgtables:..kB oom_score_adj:0"
    details = ", ".join(filter(None, (", ".join(memory), " ".join(tail))))
    return f"{text} {details}" if details else text


# ---- configuration ----------------------------------------------------------------------------

_PREFIX = "OTEL_EXPORTER_OTLP_"
_SIGNALS = ("", "LOGS_", "METRICS_")  # generic first, then the per-signal overrides


def otlp_protocol(environ: Mapping[str, str], signal: str) -> str:
    """The protocol for "LOGS" or "METRICS": per-signal variable, else the generic one, else grpc."""
    value = environ.get(f"{_PREFIX}{signal}_PROTOCOL") or environ.get(f"{_PREFIX}PROTOCOL") or DEFAULT_PROTOCOL
    return value.strip().lower()


def _redact_url(url: str) -> str:
    """The URL without user:password@ (an endpoint may carry credentials; logs must not)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def otlp_endpoint(environ: Mapping[str, str], signal: str, protocol: str) -> str:
    """The endpoint the SDK exporter will use (for messages; the exporter resolves it itself)."""
    specific = environ.get(f"{_PREFIX}{signal}_ENDPOINT")
    if specific:
        return specific
    path = f"/v1/{signal.lower()}"
    if protocol == "http/protobuf":
        return (environ.get(f"{_PREFIX}ENDPOINT") or "http://localhost:4318").rstrip("/") + path
    return environ.get(f"{_PREFIX}ENDPOINT") or "http://localhost:4317"


def _check_endpoint(var: str, value: str) -> None:
    shown = _redact_url(value.strip())
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise ConfigError(f"{var} has an invalid port: {shown!r}; use a URL such as http://collector:4317") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{var} must be a URL such as http://collector:4317 (plaintext) or https://collector:4317 (TLS), "
            f"got {shown!r}; note that a gRPC endpoint without http:// or https:// makes the exporter use TLS")


def _check_readable(var: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{var}: cannot read {path!r} ({e.strerror or e}); mount the file or unset {var}") from None


def validate_otlp_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Raise ConfigError (one line, what to do) for OTEL_* settings the exporters would choke on."""
    for sig in _SIGNALS:
        var = f"{_PREFIX}{sig}PROTOCOL"
        value = environ.get(var)
        if value and value.strip().lower() not in PROTOCOLS:
            extra = " (http/json is not supported by the Python SDK)" if value.strip().lower() == "http/json" else ""
            raise ConfigError(f"{var} must be grpc or http/protobuf, got {value.strip()!r}{extra}")

        var = f"{_PREFIX}{sig}ENDPOINT"
        value = environ.get(var)
        if value:
            _check_endpoint(var, value)
            if sig and otlp_protocol(environ, sig.rstrip("_")) == "http/protobuf" \
                    and urlsplit(value.strip()).path in ("", "/"):
                # the SDK appends /v1/logs to the generic endpoint only, never to a per-signal one
                log.warning("%s is used as is over http/protobuf; it usually ends in /v1/%s",
                            var, sig.rstrip("_").lower())

        for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
            var = f"{_PREFIX}{sig}{name}"
            if environ.get(var):
                _check_readable(var, environ[var])
        key, cert = environ.get(f"{_PREFIX}{sig}CLIENT_KEY"), environ.get(f"{_PREFIX}{sig}CLIENT_CERTIFICATE")
        if bool(key) != bool(cert):
            raise ConfigError(f"mutual TLS needs both {_PREFIX}{sig}CLIENT_KEY and {_PREFIX}{sig}CLIENT_CERTIFICATE; "
                              "set both or neither")
        grpc_signals = [s for s in (("LOGS", "METRICS") if not sig else (sig.rstrip("_"),))
                        if otlp_protocol(environ, s) == "grpc"]
        if key and not environ.get(f"{_PREFIX}{sig}CERTIFICATE") and grpc_signals:
            # the gRPC exporter loads the client certificate only together with a CA file
            raise ConfigError(f"{_PREFIX}{sig}CLIENT_CERTIFICATE is ignored over gRPC unless "
                              f"{_PREFIX}{sig}CERTIFICATE is set too; point it at the collector's CA "
                              "(the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt, for a public CA)")

        var = f"{_PREFIX}{sig}TIMEOUT"
        value = environ.get(var)
        if value is not None and value.strip() != "":
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if not math.isfinite(seconds) or seconds <= 0:
                raise ConfigError(f"{var} must be a positive number of seconds, got {value.strip()!r}")
            if seconds > 300:
                # the spec says milliseconds; the Python exporters read seconds
                log.warning("%s=%s is read as seconds by the Python OTLP exporters (not milliseconds)",
                            var, value.strip())

        var = f"{_PREFIX}{sig}INSECURE"
        value = environ.get(var)
        if value and value.strip().lower() not in ("true", "false"):
            raise ConfigError(f"{var} must be true or false, got {value.strip()!r}")

        var = f"{_PREFIX}{sig}HEADERS"
        value = environ.get(var)
        if value:
            for i, item in enumerate(value.split(","), 1):
                key, sep, _ = item.partition("=")
                if item.strip() and not (sep and key.strip()):
                    # the values are secrets (API keys): name the position, never the content
                    raise ConfigError(f"{var} item {i} is not key=value; expected k1=v1,k2=v2 "
                                      "(values are not shown)")

    for sig in _SIGNALS:
        var = f"{_PREFIX}{sig}COMPRESSION"
        value = environ.get(var)
        if not value:
            continue
        value = value.strip().lower()
        signals = ("LOGS", "METRICS") if not sig else (sig.rstrip("_"),)
        for s in signals:
            allowed = ("gzip",) if otlp_protocol(environ, s) == "grpc" else ("gzip", "deflate", "none")
            if value not in allowed:
                raise ConfigError(f"{var} must be {' or '.join(allowed)} (or unset) for "
                                  f"{otlp_protocol(environ, s)}, got {value!r}")

    var = "OTEL_METRIC_EXPORT_INTERVAL"
    value = environ.get(var)
    if value:
        try:
            ok = float(value) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{var} must be a positive number of milliseconds, got {value.strip()!r}")


# ---- exporters --------------------------------------------------------------------------------

def _http_session():
    """A requests session for the HTTP exporters that keeps the CA file the SDK configured on it.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set by many base images) replace a session's
    CA file, which silently turns OTEL_EXPORTER_OTLP_CERTIFICATE into a no-op and fails TLS to a
    collector with a private CA. None when a credential-provider session is configured instead.
    """
    if any(v.startswith("OTEL_PYTHON_EXPORTER_OTLP_HTTP") and v.endswith("CREDENTIAL_PROVIDER") for v in os.environ):
        return None
    import requests

    class ExplicitCaSession(requests.Session):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None and isinstance(self.verify, str):
                merged["verify"] = self.verify
            return merged

    return ExplicitCaSession()


def _log_exporter(protocol: str):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(session=_http_session())


def _metric_exporter(protocol: str):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(session=_http_session())


# ---- logs -------------------------------------------------------------------------------------

class LogSender:
    """Synchronous, acknowledged export of OOM kills as `oom.kill` log records.

    Built from the standard environment only: the protocol is chosen here from
    OTEL_EXPORTER_OTLP_LOGS_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL, and the SDK exporter reads
    the rest (endpoint, headers, TLS, timeout, compression) from the process environment.
    """

    def __init__(self, resource: "Resource", environ: Mapping[str, str] = os.environ,
                 on_failure: Optional[Callable[[], None]] = None) -> None:
        from opentelemetry.sdk._logs import LogRecordLimits
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = resource
        self.protocol = otlp_protocol(environ, "LOGS")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got {self.protocol!r}")
        self.endpoint = otlp_endpoint(environ, "LOGS", self.protocol)
        self.on_failure = on_failure
        self.export_failures = 0
        self._scope = InstrumentationScope(SCOPE_NAME, __version__)
        self._limits = LogRecordLimits()
        self._exporter = _log_exporter(self.protocol)
        self._shut_down = False

    def describe(self) -> str:
        return f"{self.protocol} to {_redact_url(self.endpoint)}"

    def records(self, kills: Iterable[OomKill], observed_ns: Optional[int] = None) -> list:
        """The SDK's ReadableLogRecords for `kills`, built exactly as its own processors build them."""
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord, ReadWriteLogRecord

        now = observed_ns if observed_ns is not None else time.time_ns()
        out = []
        for kill in kills:
            api_record = LogRecord(
                timestamp=kill.time_unix_nano or None,
                observed_timestamp=now,
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
                body=log_body(kill),
                attributes=log_attributes(kill),
                event_name=EVENT_NAME,
            )
            # ReadWriteLogRecord applies the attribute limits (OTEL_ATTRIBUTE_*_LIMIT), as Logger.emit does
            rw = ReadWriteLogRecord(log_record=api_record, resource=self.resource,
                                    instrumentation_scope=self._scope, limits=self._limits)
            out.append(ReadableLogRecord(log_record=rw.log_record, resource=self.resource,
                                         instrumentation_scope=self._scope, limits=self._limits))
        return out

    def send(self, kills: Sequence[OomKill]) -> bool:
        """Export now; True only if the collector accepted the whole batch."""
        if not kills:
            return True
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        if self._shut_down:
            return False
        try:
            ok = self._exporter.export(self.records(kills)) is LogRecordExportResult.SUCCESS
        except Exception:  # noqa: BLE001 - an exporter bug must read as "not delivered", not kill the sender
            log.exception("OTLP log export raised")
            ok = False
        if not ok:
            self.export_failures += 1
            if self.on_failure is not None:
                self.on_failure()
        return ok

    def shutdown(self) -> None:
        # also aborts a retry backoff in progress; the agent may call it twice (out of time, teardown)
        if not self._shut_down:
            self._shut_down = True
            self._exporter.shutdown()


# ---- metrics ----------------------------------------------------------------------------------

def _counting_exporter(inner, on_failure: Callable[[], None]):
    """Wrap a MetricExporter so a failed export is counted (the SDK reader only logs it)."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class CountingMetricExporter(MetricExporter):
        def __init__(self) -> None:
            super().__init__(preferred_temporality=inner._preferred_temporality,
                             preferred_aggregation=inner._preferred_aggregation)

        def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
            result = inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            if result is not MetricExportResult.SUCCESS:
                on_failure()
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return inner.force_flush(timeout_millis=timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
            inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    return CountingMetricExporter()


def kill_metric_attributes(kill: OomKill) -> dict[str, str]:
    """Bounded attributes for oom.kills: the constraint, and the container and pod when known."""
    attrs = {"oom.constraint": kill.constraint}
    if kill.container_id:
        attrs["container.id"] = utf8_safe(kill.container_id)
    if kill.pod_uid:
        attrs["k8s.pod.uid"] = utf8_safe(kill.pod_uid)
    return attrs


class Metrics:
    """The agent's metrics over OTLP (periodic) and, optionally, a Prometheus registry to serve.

    The callables feed the observable instruments at each collection and must be cheap:
    drop_counts() -> {reason: total}, hooks() -> [(hook, "victim" | "context")], unobserved() -> int.
    """

    def __init__(self, resource: "Resource", environ: Mapping[str, str] = os.environ, prometheus: bool = False, *,
                 drop_counts: Optional[Callable[[], Mapping[str, int]]] = None,
                 hooks: Optional[Callable[[], Iterable[tuple[str, str]]]] = None,
                 unobserved: Optional[Callable[[], int]] = None,
                 otlp: bool = True) -> None:
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        self._drop_counts = drop_counts or (lambda: {})
        self._hooks = hooks or (lambda: [])
        self._unobserved = unobserved or (lambda: 0)
        self.protocol = otlp_protocol(environ, "METRICS")
        if otlp and self.protocol not in PROTOCOLS:
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got {self.protocol!r}")
        self.prometheus_registry = None
        readers = []
        self.export_interval_millis = float(environ.get("OTEL_METRIC_EXPORT_INTERVAL")
                                            or DEFAULT_METRIC_EXPORT_INTERVAL_MS)
        if otlp:
            exporter = _counting_exporter(_metric_exporter(self.protocol),
                                          lambda: self.record_export_failure("metrics"))
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=self.export_interval_millis))
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            # a registry of our own: the global one would mix in whatever else the process registers
            self.prometheus_registry = CollectorRegistry()
            readers.append(PrometheusMetricReader(registry=self.prometheus_registry))
        self._provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        meter = self._provider.get_meter(SCOPE_NAME, __version__)

        def guarded(name: str, fn: Callable[[], list]) -> Callable:
            def callback(_options):
                try:
                    return fn()
                except Exception:  # noqa: BLE001 - a broken stats source must not stop the export
                    log.exception("metric callback for %s failed", name)
                    return []
            return callback

        self._kills = meter.create_counter(
            "oom.kills", unit="{kill}", description="OOM kills reported, by constraint, container and pod")
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
        meter.create_observable_gauge(
            "otel_oom.hooks.attached", unit="{hook}", description="Kernel hooks attached (1 per hook)",
            callbacks=[guarded("otel_oom.hooks.attached", lambda: [
                Observation(1, {"oom.hook": hook, "oom.hook.role": role}) for hook, role in self._hooks()])])
        meter.create_observable_gauge(
            "oom.kills.unobserved", unit="{kill}",
            description="OOM kills the kernel counted that otel-oom did not observe",
            callbacks=[guarded("oom.kills.unobserved", lambda: [Observation(int(self._unobserved()))])])

    def record_kill(self, kill: OomKill) -> None:
        self._kills.add(1, kill_metric_attributes(kill))
        rss = kill.rss_bytes
        if rss is not None:
            self._rss.record(rss, {"oom.constraint": kill.constraint})

    def record_export_failure(self, signal: str) -> None:
        """Count an export the collector did not accept; signal is "logs" or "metrics"."""
        self._export_failures.add(1, {"signal": signal})

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._provider.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 5_000) -> None:
        self._provider.shutdown(timeout_millis=timeout_millis)
