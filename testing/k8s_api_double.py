"""A Kubernetes API server TEST DOUBLE: just enough of the core/v1 pods API for client-go informers.

No real API server can run on the test machines, so the Collector's `k8s_attributes` processor is
pointed (auth_type kubeConfig, a kubeconfig this double writes) at this plain HTTP server. It
serves what a client-go shared informer asks for, as JSON:

- `GET /api/v1/pods` and `/api/v1/namespaces/<ns>/pods`: a PodList, filtered by the
  `fieldSelector` terms `spec.nodeName=`, `metadata.namespace=`, `metadata.name=` (the only ones
  the processor sends) and by `labelSelector` equality terms;
- the same with `watch=true`: a stream of watch events (one JSON object per line). With
  `sendInitialEvents=true` (client-go's WatchList, on by default since 1.35) it first sends every
  matching pod as ADDED, then the BOOKMARK annotated `k8s.io/initial-events-end`; pods added or
  deleted later (`add_pod`, `delete_pod`) are pushed to open watches;
- `GET /version`; anything else answers 404 with a Status object, as the real server does.

It is not Kubernetes: no authentication, no resourceVersion history (a watch from an old version
gets the current state), no protobuf, no other resources. Every request is recorded
(`requests`) so a test can check what the client asked for.
"""
from __future__ import annotations

import json
import queue
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Sequence

_END_OF_INITIAL_EVENTS = "k8s.io/initial-events-end"


def make_pod(*, uid: str, name: str, namespace: str, node: str,
             containers: Sequence[tuple[str, str, str]], owner: Optional[tuple[str, str]] = None,
             labels: Optional[dict[str, str]] = None, pod_ip: str = "10.244.0.17") -> dict:
    """A running pod as the API returns it. containers: (name, "runtime://<id>", image) each;
    owner: (kind, name), e.g. ("ReplicaSet", "web-7d9f8c6b5")."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {},
                            "creationTimestamp": "2026-01-01T00:00:00Z"}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1" if owner[0] != "Job" else "batch/v1",
                                    "kind": owner[0], "name": owner[1], "uid": str(uuid.uuid4()),
                                    "controller": True}]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": c, "image": img} for c, _, img in containers]},
        "status": {
            "phase": "Running", "podIP": pod_ip, "hostIP": "192.0.2.10",
            "startTime": "2026-01-01T00:00:01Z",
            "containerStatuses": [
                {"name": c, "containerID": cid, "image": img, "imageID": "", "ready": True,
                 "restartCount": 0, "started": True, "state": {"running": {"startedAt": "2026-01-01T00:00:02Z"}}}
                for c, cid, img in containers],
        },
    }


class KubernetesApiDouble:
    """`with KubernetesApiDouble([pod]) as api: env["KUBECONFIG"] = api.write_kubeconfig(dir)`."""

    def __init__(self, pods: Sequence[dict] = ()) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, dict] = {}
        self._version = 1000
        self._watchers: list[tuple[dict, "queue.Queue[Optional[dict]]"]] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        for p in pods:
            self.add_pod(p)
        self._server: Optional[ThreadingHTTPServer] = None

    # -- state ------------------------------------------------------------------------------

    def add_pod(self, pod: dict) -> None:
        self._change("ADDED", pod)

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            pod = self._pods.get(uid)
        if pod is not None:
            self._change("DELETED", pod)

    def _change(self, kind: str, pod: dict) -> None:
        with self._lock:
            self._version += 1
            pod = json.loads(json.dumps(pod))
            pod["metadata"]["resourceVersion"] = str(self._version)
            if kind == "DELETED":
                self._pods.pop(pod["metadata"]["uid"], None)
            else:
                self._pods[pod["metadata"]["uid"]] = pod
            for selector, q in self._watchers:
                if _matches(pod, selector):
                    q.put({"type": kind, "object": pod})

    # -- server -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "KubernetesApiDouble":
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            for _, q in self._watchers:
                q.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "KubernetesApiDouble":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, directory: Path) -> str:
        """A kubeconfig naming this server (plain HTTP, no credentials); returns its path."""
        path = Path(directory) / "kubeconfig-api-double.json"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "api-double",
            "clusters": [{"name": "api-double", "cluster": {"server": self.url}}],
            "users": [{"name": "api-double", "user": {}}],
            "contexts": [{"name": "api-double", "context": {"cluster": "api-double", "user": "api-double"}}],
        }))
        return str(path)

    def pod_requests(self, watch: Optional[bool] = None) -> list[dict[str, list[str]]]:
        """The query of every pods request (list or watch) the client made."""
        return [q for path, q in list(self.requests) if path.endswith("/pods")
                and (watch is None or (q.get("watch") == ["true"]) == watch)]

    # -- request handling -------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        self.requests.append((url.path, query))
        parts = url.path.strip("/").split("/")
        if url.path == "/version":
            return _send_json(h, 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0-api-double"})
        namespace = None
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] == "pods":
            namespace = parts[3]
        elif parts != ["api", "v1", "pods"]:
            return _send_json(h, 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "message": f"the API double does not serve {url.path}",
                                       "reason": "NotFound", "code": 404})
        try:
            selector = _selector(query, namespace)
        except ValueError as e:
            return _send_json(h, 400, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "message": str(e), "reason": "BadRequest", "code": 400})
        if query.get("watch") == ["true"]:
            return self._watch(h, selector, query)
        with self._lock:
            items = [p for p in self._pods.values() if _matches(p, selector)]
            version = str(self._version)
        _send_json(h, 200, {"apiVersion": "v1", "kind": "PodList",
                            "metadata": {"resourceVersion": version}, "items": items})

    def _watch(self, h: BaseHTTPRequestHandler, selector: dict, query: dict[str, list[str]]) -> None:
        q: "queue.Queue[Optional[dict]]" = queue.Queue()
        with self._lock:
            if query.get("sendInitialEvents") == ["true"]:
                for p in self._pods.values():
                    if _matches(p, selector):
                        q.put({"type": "ADDED", "object": p})
                q.put({"type": "BOOKMARK", "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"resourceVersion": str(self._version),
                                 "annotations": {_END_OF_INITIAL_EVENTS: "true"}}}})
            self._watchers.append((selector, q))
        timeout = float(query.get("timeoutSeconds", ["300"])[0])
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            while True:
                try:
                    event = q.get(timeout=timeout)
                except queue.Empty:
                    break
                if event is None:
                    break
                data = json.dumps(event).encode() + b"\n"
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self._watchers = [(s, w) for s, w in self._watchers if w is not q]


def _send_json(h: BaseHTTPRequestHandler, code: int, body: dict) -> None:
    data = json.dumps(body).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _selector(query: dict[str, list[str]], namespace: Optional[str]) -> dict:
    """{"fields": {path: value}, "labels": {key: value}} from the request; unknown terms raise."""
    fields: dict[str, str] = {}
    if namespace:
        fields["metadata.namespace"] = namespace
    for term in filter(None, query.get("fieldSelector", [""])[0].split(",")):
        key, sep, value = term.partition("=")
        key = key.rstrip("=")
        value = value.lstrip("=")
        if not sep or key.endswith("!") or key not in ("spec.nodeName", "metadata.namespace", "metadata.name"):
            raise ValueError(f"field selector term {term!r} is not supported by the API double")
        fields[key] = value
    labels: dict[str, str] = {}
    for term in filter(None, query.get("labelSelector", [""])[0].split(",")):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!"):
            raise ValueError(f"label selector term {term!r} is not supported by the API double")
        labels[key] = value.lstrip("=")
    return {"fields": fields, "labels": labels}


def _matches(pod: dict, selector: dict) -> bool:
    meta, spec = pod["metadata"], pod.get("spec", {})
    values = {"spec.nodeName": spec.get("nodeName", ""), "metadata.namespace": meta.get("namespace", ""),
              "metadata.name": meta.get("name", "")}
    if any(values[k] != v for k, v in selector["fields"].items()):
        return False
    return all(meta.get("labels", {}).get(k) == v for k, v in selector["labels"].items())
