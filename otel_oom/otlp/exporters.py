"""The SDK's OTLP metric exporter, built for the protocol, endpoint and headers `env.resolve_otlp` settled on.

Only the protocol in use is imported (the gRPC stack alone costs ~30 MB). Log records and spans do
not use an SDK exporter (see `transport.py`).
"""
from __future__ import annotations

import os
from typing import Any

from .env import SignalSettings


def _http_session() -> Any:
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

