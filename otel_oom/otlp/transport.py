"""One OTLP export attempt of a serialized request (logs, traces or metrics), so the caller learns what the
collector said.

Why not the SDK's exporters (1.45, read in their source): they return only SUCCESS or FAILURE.
The gRPC exporter discards the response, so a partial success (`rejected_log_records`,
`rejected_spans`) is never seen, and retries inside its own deadline; the HTTP exporter never
parses the response body; neither tells a permanent rejection (gRPC INVALID_ARGUMENT, HTTP 400) or
a request too large (HTTP 413) from an outage, and a sender that cannot tell them apart resends a
rejected batch forever.

So the request (`requests.py`; for metrics `metric_exporter.py`) is carried by a gRPC channel (the
services' Export methods, called with the request already serialized) or one HTTP POST to
/v1/<signal> (`http_connection.py`), configured from `env.SignalSettings`, which resolves the
standard variables per signal as the SDK does (TLS files, insecure, headers, compression, timeout,
and for HTTP the proxy). The answer is parsed with opentelemetry-proto's generated response
messages. One attempt per call: retrying, backing off, splitting and parking are the sender's job
(for metrics, the metric exporter's), the same for every signal.
"""
from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Optional

from .. import __version__
from .env import SignalSettings

log = logging.getLogger("otel_oom.otlp")

ACCEPTED, RETRY, REJECTED, TOO_LARGE = "accepted", "retry", "rejected", "too_large"
USER_AGENT = f"otel-oom/{__version__}"
# gRPC codes the OTLP specification calls retryable; everything else but INVALID_ARGUMENT is kept and
# retried too (a wrong credential is fixed by an operator, and the kills must still be there then)
_GRPC_RETRYABLE = {"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "OUT_OF_RANGE",
                   "UNAVAILABLE", "DATA_LOSS"}
_HTTP_RETRYABLE = {429, 502, 503, 504}
# An export answer is a few bytes (a partial success with a message at most); what a collector sends
# beyond this is not read (gRPC's own default limit, applied to HTTP too).
MAX_ANSWER_BYTES = 4 << 20


@dataclass(frozen=True)
class ExportResult:
    """What became of one request: accepted (maybe with `rejected` records), retry, rejected, too_large."""
    outcome: str
    rejected: int = 0              # partial success: records the collector says it rejected
    message: str = ""              # the collector's message or the error; no credentials in it
    retry_after: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.outcome == ACCEPTED

    def bounded(self, sent: int) -> "ExportResult":
        """This result with `rejected` within 0..sent: a partial success is the collector's word about
        this request, and a negative or larger count (an int64 on the wire) would move the drop counter
        backwards or past every kill there ever was. Out of range: all rejected, or none if negative."""
        if 0 <= self.rejected <= sent:
            return self
        taken = 0 if self.rejected < 0 else sent
        note = f"the collector said {self.rejected} of {sent} rejected, taken as {taken}"
        return ExportResult(self.outcome, taken, f"{self.message}; {note}" if self.message else note, self.retry_after)


def _grpc_credentials(s: SignalSettings) -> Any:
    import grpc

    def read(path: Optional[str]) -> Optional[bytes]:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    if not s.certificate:
        return grpc.ssl_channel_credentials()  # the system's CAs; the SDK sends no client certificate then
    return grpc.ssl_channel_credentials(root_certificates=read(s.certificate), private_key=read(s.client_key),
                                        certificate_chain=read(s.client_certificate))


_GRPC_METHODS = {"logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                 "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                 "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"}


def _response_type(signal: str) -> Any:
    if signal == "logs":
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

        return ExportLogsServiceResponse
    if signal == "metrics":
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

        return ExportMetricsServiceResponse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    return ExportTraceServiceResponse


def _accepted(signal: str, response: Any) -> ExportResult:
    """A success answer; its partial success says how many records (spans, data points) were rejected."""
    ps = response.partial_success
    field = {"logs": "rejected_log_records", "traces": "rejected_spans", "metrics": "rejected_data_points"}[signal]
    rejected = getattr(ps, field)
    return ExportResult(ACCEPTED, rejected=rejected, message=ps.error_message)


class GrpcTransport:
    def __init__(self, s: SignalSettings, signal: str) -> None:
        import grpc

        self._settings = s
        self._signal = signal
        options = [("grpc.primary_user_agent", USER_AGENT), ("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
        compression = grpc.Compression.Gzip if s.compression == "gzip" else grpc.Compression.NoCompression
        target = s.endpoint.authority
        if s.insecure:
            self._channel = grpc.insecure_channel(target, options=options, compression=compression)
        else:
            self._channel = grpc.secure_channel(target, _grpc_credentials(s), options=options, compression=compression)
        # no request serializer: the request is already the serialized message
        self._export = self._channel.unary_unary(_GRPC_METHODS[signal], request_serializer=None,
                                                 response_deserializer=_response_type(signal).FromString)

    def export(self, request: bytes, timeout_s: float) -> ExportResult:
        import grpc

        try:
            response = self._export(request, metadata=self._settings.headers, timeout=max(0.05, timeout_s))
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and e.code() is not None else "UNKNOWN"
            details = (e.details() if hasattr(e, "details") else "") or ""
            message = f"{code}: {details}"
            if code == "INVALID_ARGUMENT":
                return ExportResult(REJECTED, message=message)
            if code == "RESOURCE_EXHAUSTED" and "larger than max" in details.lower():
                if "CLIENT:" in details:
                    # our own receive limit, on the answer: the collector took the request and said
                    # so at length (only a handler that returned sends a message); its partial
                    # success is unreadable. Not "too large": that would split and park accepted kills.
                    log.warning("the collector's %s answer exceeded the %d-byte receive limit (%s); the "
                                "request was accepted, its partial success not read", self._signal,
                                MAX_ANSWER_BYTES, details[:200])
                    return ExportResult(ACCEPTED, message=message)
                return ExportResult(TOO_LARGE, message=message)  # the server's grpc.max_recv_msg_size
            return ExportResult(RETRY, message=message, retry_after=_retry_info(e) if code in _GRPC_RETRYABLE else None)
        return _accepted(self._signal, response)

    def close(self) -> None:
        self._channel.close()  # also cancels an RPC in flight


def _retry_info(error: Any) -> Optional[float]:
    from google.rpc.error_details_pb2 import RetryInfo

    try:
        raw = dict(error.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
    except Exception:  # noqa: BLE001 - metadata is optional; no hint then
        return None
    if raw is None:
        return None
    info = RetryInfo()
    info.ParseFromString(raw)
    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9


class HttpTransport:
    def __init__(self, s: SignalSettings, signal: str) -> None:
        from .http_connection import HttpConnection

        self._settings = s
        self._signal = signal
        self._connection = HttpConnection(s)  # user:password@ became an authorization header
        # the body's framing is the transport's: a configured Content-Length or Transfer-Encoding could only
        # corrupt the request
        configured = {k: v for k, v in s.headers if k.lower() not in ("content-length", "transfer-encoding")}
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT, **configured}
        if s.compression:
            self._headers["Content-Encoding"] = s.compression

    def export(self, request: bytes, timeout_s: float) -> ExportResult:
        body = request
        if self._settings.compression == "gzip":
            body = gzip.compress(body)
        elif self._settings.compression == "deflate":
            body = zlib.compress(body)
        try:
            r = self._connection.post(body, self._headers, max(0.05, timeout_s), MAX_ANSWER_BYTES)
        except Exception as e:  # noqa: BLE001 - socket, TLS and HTTP protocol errors alike: the collector is not there
            return ExportResult(RETRY, message=describe_request_error(e))
        content = r.content
        if 200 <= r.status < 300:
            if len(content) > MAX_ANSWER_BYTES:
                log.warning("the collector's %s answer exceeded %d bytes; the request was accepted, its partial "
                            "success not read", self._signal, MAX_ANSWER_BYTES)
                return ExportResult(ACCEPTED, message="answer too large to read")
            try:
                response = _response_type(self._signal).FromString(content)
            except Exception:  # noqa: BLE001 - a 2xx without a protobuf body (a proxy) still accepted the batch
                return ExportResult(ACCEPTED)
            return _accepted(self._signal, response)
        message = f"HTTP {r.status} {r.reason}".strip()
        if r.status == 413:
            return ExportResult(TOO_LARGE, message=message)
        if r.status == 400:
            return ExportResult(REJECTED, message=message + _status_message(content[:MAX_ANSWER_BYTES]))
        retry_after = _retry_after(r.retry_after) if r.status in _HTTP_RETRYABLE else None
        return ExportResult(RETRY, message=message, retry_after=retry_after)

    def close(self) -> None:
        self._connection.close()


def describe_request_error(error: BaseException) -> str:
    """The kind of failure and its root cause, without a URL that str() of an HTTP library's error may show:
    `SSLError: certificate verify failed: unable to get local issuer certificate`, not `SSLError`."""
    import ssl

    seen: set[int] = set()
    todo: list[Any] = [error]
    reason = ""
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            reason = f"certificate verify failed: {e.verify_message}"
            break
        if isinstance(e, ssl.SSLError):
            reason = f"TLS {e.reason or e.strerror or 'error'}"
            break
        # closed, or reset while the request was still going out (RemoteDisconnected is a reset too)
        if isinstance(e, (ConnectionResetError, BrokenPipeError)) and not reason:
            reason = "the collector closed the connection without an answer (plaintext to a TLS port?)"
        if isinstance(e, OSError) and not e.strerror and str(e).startswith("Tunnel connection failed") and not reason:
            reason = f"the proxy refused the tunnel ({str(e).partition(': ')[2][:100]})"  # http.client's CONNECT answer
        if isinstance(e, OSError) and e.strerror and not reason:
            reason = e.strerror  # connection refused, reset, no route: kept unless a TLS cause comes later
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
    return f"{_kind(error)}: {reason}" if reason else _kind(error)


def _kind(error: BaseException) -> str:
    """A stable word for the kind of failure, whichever class raised it."""
    import http.client
    import ssl

    if isinstance(error, ssl.SSLError):
        return "SSLError"
    if isinstance(error, TimeoutError):  # socket.timeout too
        return "Timeout"
    if isinstance(error, (OSError, http.client.HTTPException)):  # refused, reset, closed, a garbled answer
        return "ConnectionError"
    return type(error).__name__


def _status_message(content: bytes) -> str:
    from google.rpc.status_pb2 import Status

    status = Status()
    try:
        status.ParseFromString(content or b"")
    except Exception:  # noqa: BLE001 - not a google.rpc.Status body
        return ""
    return f": {status.message}" if status.message else ""


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: the sender's own backoff then


def transport(s: SignalSettings, signal: str) -> "GrpcTransport | HttpTransport":
    """The transport of `signal` ("logs", "traces" or "metrics") for its resolved settings."""
    return GrpcTransport(s, signal) if s.protocol == "grpc" else HttpTransport(s, signal)
