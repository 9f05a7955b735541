"""The standard OTEL_* settings, checked and resolved once at start-up.

For each signal this settles what an OTLP exporter needs, the way the Python SDK (1.45) resolves
it: protocol, endpoint (an empty variable counts as unset, as the specification says), headers,
TLS files, insecure, compression and timeout, the per-signal variable winning over the generic
one, and for http/protobuf the proxy (`proxy.py`). otel-oom's own transport (`transport.py`) sends
every signal with these settings as they are. The other variables
the SDK reads on otel-oom's paths (attribute limits, metric reader and exporter options) are
checked too, so a typo fails at start with one clear line instead of a traceback or a silent
fallback at the first export. No OpenTelemetry import here.

Credentials: a header value or a `user:password@` in an endpoint never appears in a message; an
endpoint's user:password becomes an `authorization: Basic` header and leaves the URL, so no
library (gRPC target, retry warnings) ever sees it. `secrets()` lists them for the log filter.
"""
from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import UsageError
from ..text import for_otlp
from ..urls import Url, parse_url
from .env_values import ConfigError, bool_var, check_headers_for_grpc, parse_headers, positive, whole_number
from .proxy import proxy_for

log = logging.getLogger("otel_oom.otlp")

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"
DEFAULT_TIMEOUT_S = 10.0
# The SDK exports metrics every 60 s. oom.kills feeds alerts, and a kill should page within
# about one Prometheus scrape interval, not a minute later; the agent's handful of series
# costs next to nothing to send four times as often.
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 15000.0
# The SDK's metric reader waits interval/1000 seconds on a threading.Event: past threading.TIMEOUT_MAX
# (9.2e9 s) the wait raises OverflowError and the reader thread dies; a day is more than any use. Under 100 ms
# it would export in a loop.
METRIC_MS_RANGE = (100.0, 86_400_000.0)
# An export deadline: gRPC and requests take a deadline of 1e12 s badly (overflow, or never
# failing over), and one under 50 ms times out before any collector can answer (the log
# transports floored it at 50 ms, the SDK's metric exporter did not).
TIMEOUT_S_RANGE = (0.05, 86_400.0)


@dataclass(frozen=True)
class SignalSettings:
    protocol: str                           # "grpc" | "http/protobuf"
    endpoint: Url                           # for http/protobuf the full URL, /v1/<signal> included
    headers: tuple[tuple[str, str], ...] = ()   # lower-case keys, decoded values (secrets: never log)
    timeout_s: float = DEFAULT_TIMEOUT_S
    compression: Optional[str] = None       # "gzip" | "deflate" | None
    insecure: bool = True                   # gRPC: plaintext channel
    certificate: Optional[str] = None       # CA file
    client_key: Optional[str] = None
    client_certificate: Optional[str] = None
    proxy: Optional[Url] = None             # http/protobuf: the http:// proxy (proxy.py); gRPC reads its own


DEFAULT_ATTRIBUTE_COUNT_LIMIT = 128  # the SDK's


@dataclass(frozen=True)
class AttributeLimits:
    """A log record's attribute limits, applied as the SDK's `BoundedAttributes` applies them: string
    values cut to `length` characters (bytes, ints, ... untouched), then, past `count` attributes, the
    first ones dropped and counted. None: no limit. otel-oom's records hold fewer than 128."""

    count: Optional[int] = DEFAULT_ATTRIBUTE_COUNT_LIMIT
    length: Optional[int] = None

    def apply(self, attrs: Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
        """(the attributes to send, how many were dropped)."""
        if self.length is None and (self.count is None or len(attrs) <= self.count):
            return attrs, 0
        if self.length is not None:
            attrs = {k: _truncated(v, self.length) for k, v in attrs.items()}
        if self.count is None or len(attrs) <= self.count:
            return attrs, 0
        dropped = len(attrs) - self.count
        return dict(list(attrs.items())[dropped:]), dropped


def _truncated(v: Any, length: int) -> Any:
    if isinstance(v, str):
        otlp = for_otlp(v)  # raw kernel bytes go as bytes_value, which the SDK never cut
        return otlp if isinstance(otlp, bytes) else v[:length]
    if isinstance(v, (list, tuple)):
        return tuple(_truncated(x, length) for x in v)
    if isinstance(v, dict):
        return {k: _truncated(x, length) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class OtlpSettings:
    logs: SignalSettings
    metrics: SignalSettings
    metric_export_interval_ms: float
    traces: Optional[SignalSettings] = None  # the OOM episodes' spans (--traces)
    log_limits: AttributeLimits = AttributeLimits()
    metric_temporality: str = "cumulative"              # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
    histogram_aggregation: str = "explicit_bucket_histogram"  # ..._METRICS_DEFAULT_HISTOGRAM_AGGREGATION

    def secrets(self) -> list[str]:
        """Every credential these settings hold (header values, URL and proxy user info), for log redaction."""
        out: list[str] = []
        for s in (self.logs, self.metrics, *([self.traces] if self.traces else [])):
            out.extend(v for _, v in s.headers)
            out.extend(s.endpoint.credentials())
            out.extend(s.proxy.credentials() if s.proxy else ())
        return sorted({x for x in out if len(x) >= 3}, key=len, reverse=True)


_PREFIX = "OTEL_EXPORTER_OTLP_"
_SIGNALS = ("", "LOGS_", "METRICS_", "TRACES_")  # generic first, then the per-signal overrides
_ALL = ("LOGS", "METRICS", "TRACES")  # TRACES: the OOM episodes' spans (--traces)


def _parse_endpoint(var: str, value: str) -> Url:
    try:
        return parse_url(var, value, "http://collector:4317 (plaintext) or https://collector:4317 (TLS)",
                         hint="note that a gRPC endpoint without http:// or https:// makes the exporter use TLS")
    except UsageError as e:
        raise ConfigError(str(e)) from None


def otlp_protocol(environ: Mapping[str, str], signal: str) -> str:
    """The protocol for "LOGS", "METRICS" or "TRACES": per-signal variable, else the generic one, else grpc."""
    value = environ.get(f"{_PREFIX}{signal}_PROTOCOL") or environ.get(f"{_PREFIX}PROTOCOL") or DEFAULT_PROTOCOL
    return value.strip().lower()


def otlp_endpoint(environ: Mapping[str, str], signal: str, protocol: str) -> str:
    """The endpoint for "LOGS", "METRICS" or "TRACES", resolved as the SDK would (an empty variable is unset)."""
    specific = environ.get(f"{_PREFIX}{signal}_ENDPOINT", "").strip()
    if specific:
        return specific
    if protocol == "http/protobuf":
        # to the path, before any query (`?api-key=...`), not to the end of the text
        generic = environ.get(f"{_PREFIX}ENDPOINT", "").strip() or "http://localhost:4318"
        return _parse_endpoint(f"{_PREFIX}ENDPOINT", generic).with_path_suffix(f"/v1/{signal.lower()}")
    return environ.get(f"{_PREFIX}ENDPOINT", "").strip() or "http://localhost:4317"


def _check_readable(var: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{var}: cannot read {path!r} ({e.strerror or e}); mount the file or unset {var}") from None


def check_client_pair(prefix: str, cert: str, key: str) -> None:
    """ConfigError unless the client key is the certificate's, in PEM, without a passphrase: else every
    TLS handshake fails later with a message that names neither file."""
    import ssl

    def no_passphrase() -> str:
        raise ConfigError(f"{prefix}CLIENT_KEY is encrypted; give the key without a passphrase")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as e:
        why = ("the key is not the certificate's" if e.reason == "KEY_VALUES_MISMATCH"
               else "not a PEM certificate and a PEM private key" if e.reason in (None, "PEM_LIB")
               else f"they do not load: {e.reason}")
        raise ConfigError(f"{prefix}CLIENT_KEY and {prefix}CLIENT_CERTIFICATE do not make a pair ({why}); "
                          "give the PEM private key of that certificate") from None


def _check_signal_variables(environ: Mapping[str, str], sig: str) -> None:
    var = f"{_PREFIX}{sig}PROTOCOL"
    value = environ.get(var)
    if value and value.strip().lower() not in PROTOCOLS:
        extra = " (http/json is not supported by the Python SDK)" if value.strip().lower() == "http/json" else ""
        raise ConfigError(f"{var} must be grpc or http/protobuf, got {value.strip()!r}{extra}")

    var = f"{_PREFIX}{sig}ENDPOINT"
    value = environ.get(var)
    if value and value.strip():
        url = _parse_endpoint(var, value)
        grpc = [s for s in (_ALL if not sig else (sig.rstrip("_"),)) if otlp_protocol(environ, s) == "grpc"]
        if url.query and grpc:
            raise ConfigError(f"{var} has a query string, which gRPC does not send ({url.redacted!r}); "
                              f"put a token in {_PREFIX}{sig}HEADERS instead")
        if sig and otlp_protocol(environ, sig.rstrip("_")) == "http/protobuf" and url.path in ("", "/"):
            # the SDK appends /v1/logs to the generic endpoint only, never to a per-signal one
            log.warning("%s is used as is over http/protobuf; it usually ends in /v1/%s", var, sig.rstrip("_").lower())

    for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
        var = f"{_PREFIX}{sig}{name}"
        if environ.get(var):
            _check_readable(var, environ[var])
    key, cert = environ.get(f"{_PREFIX}{sig}CLIENT_KEY"), environ.get(f"{_PREFIX}{sig}CLIENT_CERTIFICATE")
    if bool(key) != bool(cert):
        raise ConfigError(f"mutual TLS needs both {_PREFIX}{sig}CLIENT_KEY and {_PREFIX}{sig}CLIENT_CERTIFICATE; "
                          "set both or neither")
    grpc_signals = [s for s in (_ALL if not sig else (sig.rstrip("_"),))
                    if otlp_protocol(environ, s) == "grpc"]
    if key and not environ.get(f"{_PREFIX}{sig}CERTIFICATE") and grpc_signals:
        # the gRPC exporter loads the client certificate only together with a CA file
        raise ConfigError(f"{_PREFIX}{sig}CLIENT_CERTIFICATE is ignored over gRPC unless "
                          f"{_PREFIX}{sig}CERTIFICATE is set too; point it at the collector's CA "
                          "(the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt, for a public CA)")

    if key and cert:
        check_client_pair(f"{_PREFIX}{sig}", cert, key)

    var = f"{_PREFIX}{sig}TIMEOUT"
    value = environ.get(var)
    if value is not None and value.strip() != "":
        if positive(var, value, "seconds", *TIMEOUT_S_RANGE) > 300:
            # the spec says milliseconds; the Python exporters read seconds
            log.warning("%s=%s is read as seconds by the Python OTLP exporters (not milliseconds)", var, value.strip())

    var = f"{_PREFIX}{sig}INSECURE"
    if environ.get(var):
        bool_var(var, environ[var])

    var = f"{_PREFIX}{sig}HEADERS"
    if environ.get(var):
        headers = parse_headers(var, environ[var])
        # the generic variable reaches a signal only when that signal has no headers of its own
        users = [s for s in (_ALL if not sig else (sig.rstrip("_"),))
                 if sig or not environ.get(f"{_PREFIX}{s}_HEADERS", "").strip()]
        if any(otlp_protocol(environ, s) == "grpc" for s in users):
            check_headers_for_grpc(var, headers)

    var = f"{_PREFIX}{sig}COMPRESSION"
    value = environ.get(var)
    if value:
        value = value.strip().lower()
        for s in (_ALL if not sig else (sig.rstrip("_"),)):
            allowed = ("gzip",) if otlp_protocol(environ, s) == "grpc" else ("gzip", "deflate", "none")
            if value not in allowed:
                raise ConfigError(f"{var} must be {' or '.join(allowed)} (or unset) for "
                                  f"{otlp_protocol(environ, s)}, got {value!r}")


_CREDENTIAL_PROVIDERS = ("OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER",
                         "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                         "OTEL_PYTHON_EXPORTER_OTLP_GRPC_LOGS_CREDENTIAL_PROVIDER",
                         "OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER")


def check_sdk_variables(environ: Mapping[str, str]) -> None:
    """The SDK variables outside OTEL_EXPORTER_OTLP_* that otel-oom's paths read (limits, metric reader)."""
    for var in ("OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
                "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
        value = environ.get(var)
        if value is not None:
            whole_number(var, value)
    var = "OTEL_METRIC_EXPORT_TIMEOUT"
    if environ.get(var, "").strip():
        positive(var, environ[var], "milliseconds", *METRIC_MS_RANGE)
    choices = {"OTEL_METRICS_EXEMPLAR_FILTER": ("trace_based", "always_on", "always_off"),
               "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": ("cumulative", "delta", "lowmemory"),
               "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION":
                   ("explicit_bucket_histogram", "base2_exponential_bucket_histogram"),
               "OTEL_SDK_DISABLED": ("true", "false")}
    for var, allowed in choices.items():
        value = environ.get(var)
        if value is not None and value.strip() and value.strip().lower() not in allowed:
            raise ConfigError(f"{var} must be one of {', '.join(allowed)}, got {value.strip()!r}")
    var = "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES"
    codes = ("CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS PERMISSION_DENIED "
             "RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE UNIMPLEMENTED INTERNAL UNAVAILABLE "
             "DATA_LOSS UNAUTHENTICATED").split()
    for code in environ.get(var, "").split(","):
        if code.strip() and code.strip().upper() not in codes:
            raise ConfigError(f"{var} holds {code.strip()!r}, not a gRPC status name (e.g. UNAVAILABLE)")
    for var in _CREDENTIAL_PROVIDERS:
        if environ.get(var, "").strip():
            raise ConfigError(f"{var} is not supported by otel-oom's log export; use OTEL_EXPORTER_OTLP_HEADERS "
                              "or the TLS variables instead")


def resolve_otlp(environ: Mapping[str, str] = os.environ) -> OtlpSettings:
    """Validate the OTEL_* settings and resolve them per signal; raise ConfigError (one line, what to do)."""
    for sig in _SIGNALS:
        _check_signal_variables(environ, sig)
    check_sdk_variables(environ)
    return OtlpSettings(
        logs=_signal(environ, "LOGS"),
        metrics=_signal(environ, "METRICS"),
        metric_export_interval_ms=metric_export_interval_ms(environ),
        traces=_signal(environ, "TRACES"),
        log_limits=log_record_limits(environ),
        metric_temporality=_choice(environ, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative"),
        histogram_aggregation=_choice(environ, "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                                      "explicit_bucket_histogram"),
    )


def _choice(environ: Mapping[str, str], var: str, default: str) -> str:
    """A variable with a fixed set of values (checked by `check_sdk_variables`), lower case, or the default."""
    return environ.get(var, "").strip().lower() or default


def log_record_limits(environ: Mapping[str, str]) -> AttributeLimits:
    """OTEL_LOGRECORD_ATTRIBUTE_{COUNT,VALUE_LENGTH}_LIMIT, else OTEL_ATTRIBUTE_..., as the SDK reads
    them (`LogRecordLimits`): "unset" is no limit; the count's default is 128 (also when the generic
    count is "unset"). Values were checked by `check_sdk_variables`."""
    def read(var: str, default: Optional[int]) -> Optional[int]:
        if var not in environ:
            return default
        return whole_number(var, environ[var])

    generic_count = read("OTEL_ATTRIBUTE_COUNT_LIMIT", None)
    generic_length = read("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", None)
    return AttributeLimits(
        count=read("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
                   DEFAULT_ATTRIBUTE_COUNT_LIMIT if generic_count is None else generic_count),
        length=read("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", generic_length))


def _first(environ: Mapping[str, str], signal: str, name: str) -> tuple[Optional[str], Optional[str]]:
    """(variable, value) of the per-signal variable if set, else of the generic one, else (None, None)."""
    for var in (f"{_PREFIX}{signal}_{name}", f"{_PREFIX}{name}"):
        value = environ.get(var, "").strip()
        if value:
            return var, value
    return None, None


def _signal(environ: Mapping[str, str], signal: str) -> SignalSettings:
    protocol = otlp_protocol(environ, signal)
    var = f"{_PREFIX}{signal}_ENDPOINT" if environ.get(f"{_PREFIX}{signal}_ENDPOINT", "").strip() \
        else f"{_PREFIX}ENDPOINT"
    endpoint = _parse_endpoint(var, otlp_endpoint(environ, signal, protocol))
    header_var, header_text = _first(environ, signal, "HEADERS")
    headers = dict(parse_headers(header_var, header_text) if header_var and header_text else ())
    user, password = endpoint.userinfo()
    if user is not None and "authorization" not in headers:
        # what requests would do with user:password@ for HTTP; gRPC has no such notion, so the
        # same header carries it there (the Collector's basicauth extension reads it)
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        headers["authorization"] = f"Basic {token}"
    _, timeout = _first(environ, signal, "TIMEOUT")
    _, compression = _first(environ, signal, "COMPRESSION")
    # the SDK's TLS rules: https is TLS; otherwise *_INSECURE decides, else the scheme (http: plaintext)
    _, insecure_text = _first(environ, signal, "INSECURE")
    insecure = endpoint.scheme == "http" if insecure_text is None else insecure_text.lower() == "true"
    if endpoint.scheme == "https":
        insecure = False
    # the CA comes with the client key and certificate of the same level (per-signal or generic)
    ca_var, ca = _first(environ, signal, "CERTIFICATE")
    level = ca_var[: -len("CERTIFICATE")] if ca_var else None
    key = environ.get(f"{level}CLIENT_KEY") or None if level else None
    cert = environ.get(f"{level}CLIENT_CERTIFICATE") or None if level else None
    if protocol == "http/protobuf" and not level:
        # the HTTP exporter takes the client certificate from either level, CA or not
        key = _first(environ, signal, "CLIENT_KEY")[1]
        cert = _first(environ, signal, "CLIENT_CERTIFICATE")[1]
    return SignalSettings(
        protocol=protocol, endpoint=endpoint, headers=tuple(headers.items()),
        timeout_s=positive("timeout", timeout, "seconds") if timeout else DEFAULT_TIMEOUT_S,
        compression=None if compression is None or compression.lower() == "none" else compression.lower(),
        insecure=insecure, certificate=ca, client_key=key, client_certificate=cert,
        proxy=proxy_for(environ, endpoint) if protocol == "http/protobuf" else None)


def metric_export_interval_ms(environ: Mapping[str, str]) -> float:
    """OTEL_METRIC_EXPORT_INTERVAL (milliseconds), or otel-oom's default of 15 s."""
    var = "OTEL_METRIC_EXPORT_INTERVAL"
    value = environ.get(var, "").strip()
    if not value:
        return DEFAULT_METRIC_EXPORT_INTERVAL_MS
    return positive(var, value, "milliseconds", *METRIC_MS_RANGE)
