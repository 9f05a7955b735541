"""The SDK's OTLP metric exporter, built for the protocol, endpoint and headers `env.resolve_otlp` settled on.

Only the protocol in use is imported (the gRPC stack alone costs ~30 MB). Log records and spans do
not use an SDK exporter (see `transport.py`).
"""
from __future__ import annotations

import os
from typing import Any

from .env import SignalSettings
from .transport import explicit_ca_session


def _http_session() -> Any:
    """The session for the HTTP metric exporter (`transport.explicit_ca_session`), or None when a
    credential-provider session is configured instead."""
    if any(v.startswith("OTEL_PYTHON_EXPORTER_OTLP_HTTP") and v.endswith("CREDENTIAL_PROVIDER") for v in os.environ):
        return None
    return explicit_ca_session()


def metric_exporter(signal: SignalSettings) -> Any:
    """The SDK's OTLP metric exporter for the resolved protocol, endpoint and headers (validated and
    without user info: a user:password@ was turned into an authorization header); the exporter reads
    TLS, timeout and compression from the standard environment itself."""
    headers = dict(signal.headers) or None
    if signal.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=signal.endpoint.without_credentials, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter(endpoint=signal.endpoint.without_credentials, headers=headers,
                              session=_http_session())

