"""The standard OTEL_EXPORTER_OTLP_* settings, checked once at start-up.

The SDK exporters read most of these variables themselves (headers, TLS files, insecure, timeout,
compression); otel-oom resolves the protocol and the endpoint per signal (an empty variable counts
as unset, as the specification says) and hands them to the exporters explicitly. `resolve_otlp`
checks every variable up front, so a typo fails at start with one clear line instead of a
traceback or a silent fallback at the first export. No OpenTelemetry import here.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import UsageError
from ..urls import Url, parse_url

log = logging.getLogger("otel_oom.otlp")

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"
# The SDK exports metrics every 60 s. oom.kills feeds alerts, and a kill should page within
# about one Prometheus scrape interval, not a minute later; the agent's handful of series
# costs next to nothing to send four times as often.
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 15000.0


class ConfigError(UsageError):
    """A bad OTEL_* setting; the message names the variable and the fix, never a header value."""


@dataclass(frozen=True)
class SignalSettings:
    protocol: str    # "grpc" | "http/protobuf"
    endpoint: Url    # for http/protobuf the full URL, /v1/<signal> included


@dataclass(frozen=True)
class OtlpSettings:
    logs: SignalSettings
    metrics: SignalSettings
    metric_export_interval_ms: float


def _parse_endpoint(var: str, value: str) -> Url:
    try:
        return parse_url(var, value, "http://collector:4317 (plaintext) or https://collector:4317 (TLS)",
                         hint="note that a gRPC endpoint without http:// or https:// makes the exporter use TLS")
    except UsageError as e:
        raise ConfigError(str(e)) from None


_PREFIX = "OTEL_EXPORTER_OTLP_"
_SIGNALS = ("", "LOGS_", "METRICS_")  # generic first, then the per-signal overrides


def otlp_protocol(environ: Mapping[str, str], signal: str) -> str:
    """The protocol for "LOGS" or "METRICS": per-signal variable, else the generic one, else grpc."""
    value = environ.get(f"{_PREFIX}{signal}_PROTOCOL") or environ.get(f"{_PREFIX}PROTOCOL") or DEFAULT_PROTOCOL
    return value.strip().lower()


def otlp_endpoint(environ: Mapping[str, str], signal: str, protocol: str) -> str:
    """The endpoint for "LOGS" or "METRICS", resolved as the SDK would (an empty variable is unset)."""
    specific = environ.get(f"{_PREFIX}{signal}_ENDPOINT", "").strip()
    if specific:
        return specific
    path = f"/v1/{signal.lower()}"
    if protocol == "http/protobuf":
        return (environ.get(f"{_PREFIX}ENDPOINT", "").strip() or "http://localhost:4318").rstrip("/") + path
    return environ.get(f"{_PREFIX}ENDPOINT", "").strip() or "http://localhost:4317"


def _check_readable(var: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{var}: cannot read {path!r} ({e.strerror or e}); mount the file or unset {var}") from None


def resolve_otlp(environ: Mapping[str, str] = os.environ) -> OtlpSettings:
    """Validate the OTEL_* settings the exporters read; raise ConfigError (one line, what to do)."""
    for sig in _SIGNALS:
        var = f"{_PREFIX}{sig}PROTOCOL"
        value = environ.get(var)
        if value and value.strip().lower() not in PROTOCOLS:
            extra = " (http/json is not supported by the Python SDK)" if value.strip().lower() == "http/json" else ""
            raise ConfigError(f"{var} must be grpc or http/protobuf, got {value.strip()!r}{extra}")

        var = f"{_PREFIX}{sig}ENDPOINT"
        value = environ.get(var)
        if value and value.strip():
            url = _parse_endpoint(var, value)
            if sig and otlp_protocol(environ, sig.rstrip("_")) == "http/protobuf" and url.path in ("", "/"):
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

    return OtlpSettings(
        logs=_signal(environ, "LOGS"),
        metrics=_signal(environ, "METRICS"),
        metric_export_interval_ms=metric_export_interval_ms(environ),
    )


def _signal(environ: Mapping[str, str], signal: str) -> SignalSettings:
    protocol = otlp_protocol(environ, signal)
    var = f"{_PREFIX}{signal}_ENDPOINT" if environ.get(f"{_PREFIX}{signal}_ENDPOINT", "").strip() \
        else f"{_PREFIX}ENDPOINT"
    return SignalSettings(protocol, _parse_endpoint(var, otlp_endpoint(environ, signal, protocol)))


def metric_export_interval_ms(environ: Mapping[str, str]) -> float:
    """OTEL_METRIC_EXPORT_INTERVAL (milliseconds), or otel-oom's default of 15 s."""
    var = "OTEL_METRIC_EXPORT_INTERVAL"
    value = environ.get(var, "").strip()
    if not value:
        return DEFAULT_METRIC_EXPORT_INTERVAL_MS
    try:
        interval = float(value)
    except ValueError:
        interval = math.nan
    if not math.isfinite(interval) or interval <= 0:
        raise ConfigError(f"{var} must be a positive number of milliseconds, got {value!r}")
    return interval
