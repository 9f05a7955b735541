"""Real OTLP receivers for tests and benchmarks: gRPC and HTTP/protobuf, with TLS and faults.

Both speak the real protocol (opentelemetry-proto's generated services and messages), keep every
request, and flatten what they got into plain dicts that tests can assert on:

    with OtlpGrpcReceiver() as r:                  # or OtlpHttpReceiver()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = r.endpoint
        ...
        r.wait_for_logs(1)
        rec = r.log_records()[0]                   # {resource, scope, event_name, body, attributes, ...}
        r.wait_for_metric("oom.kills", lambda pts: ...)

Fault injection: `fail_with(code, count=None, signal=None, retry_after=None)` answers with an
error (a grpc.StatusCode, or an HTTP status for the HTTP receiver) instead of accepting,
`delay(seconds)` answers late, and `stop()` / `start()` take the port down and bring it back on
the same port. `reject_records(predicate, code)` refuses every request holding a log record for
which predicate(flattened record) is true (a collector refusing bad data: INVALID_ARGUMENT, 400),
`max_records(n, code)` refuses requests of more than n records (413, or RESOURCE_EXHAUSTED with
gRPC's "larger than max" text), and `partial_success(rejected, message)` accepts but answers that
`rejected` records were dropped. A request that is delayed is still kept even if the client gave up waiting, as a
real collector would have kept it: expect duplicates after a client timeout.

`make_test_pki(dir)` makes a CA, a server certificate (SAN 127.0.0.1 and localhost) and a
client certificate with the openssl CLI, for TLS and mutual TLS tests.
"""
from __future__ import annotations

import gzip
import http.server
import secrets
import socket
import ssl
import subprocess
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

SIGNALS = ("logs", "metrics", "traces")
_REQUEST_TYPES: dict[str, Any] = {"logs": logs_service_pb2.ExportLogsServiceRequest,
                  "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
                  "traces": trace_service_pb2.ExportTraceServiceRequest}
_RESPONSE_TYPES: dict[str, Any] = {"logs": logs_service_pb2.ExportLogsServiceResponse,
                   "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
                   "traces": trace_service_pb2.ExportTraceServiceResponse}


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM files); with client_ca, clients must present a cert it signed."""
    cert: str
    key: str
    client_ca: Optional[str] = None


@dataclass(frozen=True)
class TestPki:
    __test__ = False  # not a pytest test class despite the name
    directory: Path
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def server_tls(self, mutual: bool = False) -> TlsConfig:
        return TlsConfig(self.server_cert, self.server_key, self.ca_cert if mutual else None)


# ---- protobuf -> plain Python -------------------------------------------------------------------

def any_value(v) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return key_values(v.kvlist_value.values)
    return getattr(v, kind)


def key_values(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _scope(s) -> dict[str, Any]:
    return {"name": s.name, "version": s.version, "attributes": key_values(s.attributes)}


def flatten_logs(request, received_ns: int) -> list[dict[str, Any]]:
    out = []
    for rl in request.resource_logs:
        resource = key_values(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = _scope(sl.scope)
            for lr in sl.log_records:
                out.append({
                    "resource": resource,
                    "scope": scope,
                    "time_unix_nano": lr.time_unix_nano,
                    "observed_time_unix_nano": lr.observed_time_unix_nano,
                    "severity_number": lr.severity_number,
                    "severity_text": lr.severity_text,
                    "event_name": lr.event_name,
                    "body": any_value(lr.body),
                    "attributes": key_values(lr.attributes),
                    "dropped_attributes_count": lr.dropped_attributes_count,
                    "trace_id": lr.trace_id.hex(),
                    "span_id": lr.span_id.hex(),
                    "received_ns": received_ns,
                })
    return out


def flatten_spans(request, received_ns: int) -> list[dict[str, Any]]:
    out = []
    for rs in request.resource_spans:
        resource = key_values(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = _scope(ss.scope)
            for sp in ss.spans:
                out.append({
                    "resource": resource, "scope": scope, "name": sp.name, "kind": sp.kind,
                    "trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex(),
                    "parent_span_id": sp.parent_span_id.hex(),
                    "start_time_unix_nano": sp.start_time_unix_nano, "end_time_unix_nano": sp.end_time_unix_nano,
                    "attributes": key_values(sp.attributes), "status_code": sp.status.code,
                    "events": [{"name": e.name, "time_unix_nano": e.time_unix_nano,
                                "attributes": key_values(e.attributes)} for e in sp.events],
                    "received_ns": received_ns,
                })
    return out


def _number(p) -> Union[int, float, None]:
    kind = p.WhichOneof("value")
    return getattr(p, kind) if kind else None


def flatten_metrics(request, received_ns: int) -> list[dict[str, Any]]:
    out = []
    for rm in request.resource_metrics:
        resource = key_values(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = _scope(sm.scope)
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if not kind:
                    continue
                data = getattr(m, kind)
                for p in data.data_points:
                    point: dict[str, Any] = {
                        "name": m.name, "unit": m.unit, "kind": kind, "resource": resource, "scope": scope,
                        "attributes": key_values(p.attributes),
                        "start_time_unix_nano": p.start_time_unix_nano, "time_unix_nano": p.time_unix_nano,
                        "received_ns": received_ns,
                    }
                    if kind in ("sum", "gauge"):
                        point["value"] = _number(p)
                        if kind == "sum":
                            point["is_monotonic"] = data.is_monotonic
                            point["temporality"] = data.aggregation_temporality
                    elif kind == "histogram":
                        point.update(count=p.count, sum=p.sum, bucket_counts=list(p.bucket_counts),
                                     explicit_bounds=list(p.explicit_bounds), temporality=data.aggregation_temporality,
                                     min=p.min if p.HasField("min") else None,
                                     max=p.max if p.HasField("max") else None)
                    elif kind == "exponential_histogram":
                        point.update(count=p.count, sum=p.sum, scale=p.scale, zero_count=p.zero_count,
                                     positive={"offset": p.positive.offset,
                                               "bucket_counts": list(p.positive.bucket_counts)},
                                     negative={"offset": p.negative.offset,
                                               "bucket_counts": list(p.negative.bucket_counts)},
                                     temporality=data.aggregation_temporality)
                    elif kind == "summary":
                        point.update(count=p.count, sum=p.sum,
                                     quantiles={q.quantile: q.value for q in p.quantile_values})
                    out.append(point)
    return out


def _freeze(d: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


# ---- what both receivers share -----------------------------------------------------------------

class _Receiver:
    def __init__(self, host: str, port: int, tls: Optional[TlsConfig]) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self._cond = threading.Condition()
        self._raw: dict[str, list[tuple[int, Any]]] = {s: [] for s in SIGNALS}
        self._flat: dict[str, list[dict]] = {s: [] for s in SIGNALS}
        self._flattened = {s: 0 for s in SIGNALS}
        self.requests: list[dict[str, Any]] = []  # every request, accepted or not: signal, metadata, outcome
        self._faults: list[dict[str, Any]] = []
        self._rules: list[Callable[[str, Any], Optional[dict]]] = []
        self._partial: Optional[dict[str, Any]] = None
        self._delay = {s: 0.0 for s in SIGNALS}
        self.running = False

    # -- lifecycle --
    def start(self) -> "_Receiver":
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    # -- faults --
    def fail_with(self, code, count: Optional[int] = None, signal: Optional[str] = None,
                  retry_after: Optional[float] = None) -> None:
        """Answer the next `count` requests (all, if None) of `signal` (both, if None) with `code`.

        code None clears every injected failure. retry_after (seconds) is sent as gRPC RetryInfo
        or as an HTTP Retry-After header.
        """
        with self._cond:
            if code is None:
                self._faults.clear()
                self._rules.clear()
                self._partial = None
                return
            self._faults.append({"code": code, "count": count, "signal": signal, "retry_after": retry_after})

    def reject_records(self, predicate: Callable[[dict], bool], code) -> None:
        """Refuse (with `code`) every logs request that holds a record matching `predicate`."""
        def rule(signal: str, request) -> Optional[dict]:
            if signal == "logs" and any(predicate(r) for r in flatten_logs(request, 0)):
                return {"code": code, "retry_after": None, "message": "record refused by the test receiver"}
            return None
        with self._cond:
            self._rules.append(rule)

    def max_records(self, n: int, code) -> None:
        """Refuse (with `code`) every logs request of more than `n` records, as a size limit would."""
        def rule(signal: str, request) -> Optional[dict]:
            count = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
            if signal == "logs" and count > n:
                return {"code": code, "retry_after": None,
                        "message": f"grpc: received message larger than max ({count} records > {n})"}
            return None
        with self._cond:
            self._rules.append(rule)

    def partial_success(self, rejected: int, message: str = "", count: Optional[int] = None) -> None:
        """Accept the next `count` logs requests (all if None) but answer that `rejected` records were dropped."""
        with self._cond:
            self._partial = {"rejected": rejected, "message": message, "count": count}

    def _take_partial(self) -> Optional[dict]:
        with self._cond:
            p = self._partial
            if p is not None and p["count"] is not None:
                p["count"] -= 1
                if p["count"] <= 0:
                    self._partial = None
            return p

    def _response(self, signal: str):
        response = _RESPONSE_TYPES[signal]()
        p = self._take_partial() if signal == "logs" else None
        if p is not None:
            response.partial_success.rejected_log_records = p["rejected"]
            response.partial_success.error_message = p["message"]
        return response

    def delay(self, seconds: float, signal: Optional[str] = None) -> None:
        """Hold every answer (of `signal`, or both) for `seconds` before replying."""
        with self._cond:
            for s in ([signal] if signal else SIGNALS):
                self._delay[s] = seconds

    def _take_fault(self, signal: str) -> Optional[dict]:
        with self._cond:
            for f in self._faults:
                if f["signal"] in (None, signal):
                    if f["count"] is not None:
                        f["count"] -= 1
                        if f["count"] <= 0:
                            self._faults.remove(f)
                    return f
        return None

    # -- the request path, shared by both transports --
    def _handle(self, signal: str, request, metadata: dict[str, str], peer_cn: Optional[str]) -> Optional[dict]:
        """Returns the fault to answer with, or None after keeping the request."""
        received = time.time_ns()
        delay = self._delay[signal]
        if delay:
            time.sleep(delay)
        fault = next(filter(None, (rule(signal, request) for rule in list(self._rules))), None) \
            or self._take_fault(signal)
        with self._cond:
            self.requests.append({"signal": signal, "metadata": metadata, "peer_cn": peer_cn,
                                  "received_ns": received, "fault": fault["code"] if fault else None})
            if fault is None:
                self._raw[signal].append((received, request))
            self._cond.notify_all()
        return fault

    # -- reading what arrived --
    def _records(self, signal: str) -> list[dict]:
        with self._cond:
            flatten = {"logs": flatten_logs, "metrics": flatten_metrics, "traces": flatten_spans}[signal]
            raw = self._raw[signal]
            for received, request in raw[self._flattened[signal]:]:
                self._flat[signal].extend(flatten(request, received))
            self._flattened[signal] = len(raw)
            return list(self._flat[signal])

    def log_records(self) -> list[dict]:
        """Every log record accepted so far, in arrival order, flattened."""
        return self._records("logs")

    def spans(self) -> list[dict]:
        """Every span accepted so far, in arrival order, flattened."""
        return self._records("traces")

    def wait_for_spans(self, predicate: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
        return self._wait("spans matching the predicate", self.spans, predicate, timeout)

    def log_count(self) -> int:
        """How many log records were accepted (cheap: nothing is flattened)."""
        with self._cond:
            return sum(len(sl.log_records) for _, req in self._raw["logs"]
                       for rl in req.resource_logs for sl in rl.scope_logs)

    def metric_points(self, name: str, latest: bool = False) -> list[dict]:
        """Data points of metric `name` from every export; latest=True keeps only the newest per series."""
        points = [p for p in self._records("metrics") if p["name"] == name]
        if not latest:
            return points
        newest: dict[tuple, dict] = {}
        for p in points:
            newest[(_freeze(p["resource"]), _freeze(p["attributes"]))] = p
        return list(newest.values())

    def metric_names(self) -> set[str]:
        return {p["name"] for p in self._records("metrics")}

    def metadata(self, signal: Optional[str] = None) -> list[dict[str, str]]:
        """Request metadata (gRPC) or headers (HTTP), lower-case keys, of every request received."""
        with self._cond:
            return [r["metadata"] for r in self.requests if signal in (None, r["signal"])]

    def clear(self) -> None:
        with self._cond:
            for s in SIGNALS:
                self._raw[s].clear()
                self._flat[s].clear()
                self._flattened[s] = 0
            self.requests.clear()

    def _wait(self, what: str, get: Callable[[], Any], done: Callable[[Any], bool], timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            value = get()
            if done(value):
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                shown = value if len(repr(value)) < 4000 else f"{repr(value)[:4000]}..."
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; have: {shown}")
            with self._cond:
                self._cond.wait(min(remaining, 0.2))

    def wait_for_logs(self, predicate_or_count: Union[int, Callable[[list[dict]], bool]] = 1,
                      timeout: float = 10.0) -> list[dict]:
        """Wait until at least N records arrived, or predicate(records) is true; returns the records."""
        if callable(predicate_or_count):
            done = predicate_or_count
            what = "log records matching the predicate"
        else:
            n = predicate_or_count
            done = lambda recs: len(recs) >= n  # noqa: E731
            what = f"{n} log record(s)"
        return self._wait(what, self.log_records, done, timeout)

    def wait_for_metric(self, name: str, predicate: Optional[Callable[[list[dict]], bool]] = None,
                        timeout: float = 10.0) -> list[dict]:
        """Wait until metric `name` has points and predicate(points) is true; returns the points."""
        return self._wait(f"metric {name!r}", lambda: self.metric_points(name),
                          lambda pts: bool(pts) and (predicate is None or predicate(pts)), timeout)


# ---- gRPC ----------------------------------------------------------------------------------------

def _peer_cn_grpc(context) -> Optional[str]:
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


class OtlpGrpcReceiver(_Receiver):
    """OTLP/gRPC (LogsService and MetricsService) on host:port; port 0 picks a free one, kept for restarts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: Optional[TlsConfig] = None,
                 max_workers: int = 16) -> None:
        super().__init__(host, port, tls)
        self.max_workers = max_workers
        self._server: Optional[grpc.Server] = None

    def _service(self, signal: str):
        receiver = self

        def export(request, context):
            metadata = {k.lower(): (v if isinstance(v, str) else v.hex()) for k, v in context.invocation_metadata()}
            fault = receiver._handle(signal, request, metadata, _peer_cn_grpc(context))
            if fault is not None:
                if fault["retry_after"] is not None:
                    secs = float(fault["retry_after"])
                    info = RetryInfo(retry_delay=Duration(seconds=int(secs), nanos=int(secs % 1 * 1e9)))
                    context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
                context.abort(fault["code"], fault.get("message") or f"injected by the test receiver: {fault['code'].name}")
            return receiver._response(signal)

        if signal == "logs":
            class Logs(logs_service_pb2_grpc.LogsServiceServicer):
                def Export(self, request, context):  # noqa: N802 - generated name
                    return export(request, context)
            return Logs()
        if signal == "traces":
            class Traces(trace_service_pb2_grpc.TraceServiceServicer):
                def Export(self, request, context):  # noqa: N802
                    return export(request, context)
            return Traces()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802
                return export(request, context)
        return Metrics()

    def start(self) -> "OtlpGrpcReceiver":
        if self.running:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="otlp-rx"),
                             options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 64 << 20)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self._service("logs"), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self._service("metrics"), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._service("traces"), server)
        address = f"{self.host}:{self.port}"
        try:
            if self.tls:
                key, cert = Path(self.tls.key).read_bytes(), Path(self.tls.cert).read_bytes()
                ca = Path(self.tls.client_ca).read_bytes() if self.tls.client_ca else None
                creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                    require_client_auth=ca is not None)
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from None
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        self.port = port
        server.start()
        self._server = server
        self.running = True
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Close the port (clients see UNAVAILABLE); start() listens again on the same port."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        self.running = False


# ---- HTTP/protobuf ---------------------------------------------------------------------------------

class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    def close_connections(self) -> None:
        """Drop kept-alive connections too: an outage must not leave a pooled connection answering."""
        with self.lock:
            for conn in self.open_connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open_connections.clear()

    def handle_error(self, request, client_address) -> None:
        # a failed TLS handshake (say, a client without a certificate) is an expected test outcome
        import sys

        self.receiver.connection_errors.append(repr(sys.exc_info()[1]))  # type: ignore[attr-defined]


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects
    server: _HttpServer

    def setup(self) -> None:
        with self.server.lock:
            self.server.open_connections.add(self.request)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in the connection's thread, not in accept()
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.open_connections.discard(self.request)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/x-protobuf",
               headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        receiver: OtlpHttpReceiver = self.server.receiver  # type: ignore[attr-defined]
        signal = {"/v1/logs": "logs", "/v1/metrics": "metrics", "/v1/traces": "traces"}.get(self.path.split("?")[0])
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if signal is None:
            return self._reply(404, b"unknown OTLP path", "text/plain")
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                return self._reply(415, f"unsupported Content-Encoding {encoding}".encode(), "text/plain")
        except (OSError, zlib.error, EOFError):
            return self._reply(400, b"bad compressed body", "text/plain")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-protobuf":
            return self._reply(415, b"only application/x-protobuf is supported", "text/plain")
        request = _REQUEST_TYPES[signal]()
        try:
            request.ParseFromString(body)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError
            return self._reply(400, b"undecodable protobuf", "text/plain")
        metadata = {k.lower(): v for k, v in self.headers.items()}
        metadata["content-encoding"] = encoding
        peer_cn = None
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert()
            if cert:
                peer_cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn  # type: ignore[str-unpack]
                                if k == "commonName"), None)
        fault = receiver._handle(signal, request, metadata, peer_cn)
        if fault is not None:
            headers = {}
            if fault["retry_after"] is not None:
                headers["Retry-After"] = str(int(fault["retry_after"]))
            status = Status(code=14, message=fault.get("message") or f"injected by the test receiver: HTTP {fault['code']}")
            return self._reply(int(fault["code"]), status.SerializeToString(), headers=headers)
        self._reply(200, receiver._response(signal).SerializeToString())


class OtlpHttpReceiver(_Receiver):
    """OTLP/HTTP with protobuf bodies at /v1/logs and /v1/metrics; gzip and deflate bodies decoded.

    fail_with() takes an HTTP status (429, 503, ...); retry_after becomes a Retry-After header.
    `endpoint` is the base URL the exporters append /v1/logs and /v1/metrics to.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: Optional[TlsConfig] = None) -> None:
        super().__init__(host, port, tls)
        self._server: Optional[_HttpServer] = None
        self._thread: Optional[threading.Thread] = None
        self.connection_errors: list[str] = []

    def start(self) -> "OtlpHttpReceiver":
        if self.running:
            return self
        server = _HttpServer((self.host, self.port), _HttpHandler)
        server.receiver = self  # type: ignore[attr-defined]
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
            if self.tls.client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.tls.client_ca)
            server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-http-rx", daemon=True)
        self._thread.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Close the port (clients see connection refused); start() listens again on the same port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.running = False


# ---- test certificates -------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def _issue(directory: Path, name: str, cn: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=directory)
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-sha256",
             "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)


def make_test_pki(directory: Union[str, Path]) -> TestPki:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert (CN otel-oom-client)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-sha256", "-subj", "/CN=otel-oom test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=d)
    common = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nauthorityKeyIdentifier=keyid,issuer\n"
    _issue(d, "server", "localhost", common + "extendedKeyUsage=serverAuth\n"
                                              "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _issue(d, "client", "otel-oom-client", common + "extendedKeyUsage=clientAuth\n")
    return TestPki(d, str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"),
                   str(d / "client.crt"), str(d / "client.key"))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for "collector down from the start" tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
