"""The runtime clients against recorded-shaped answers of runtimes that cannot run here.

No CRI-O exists on this machine and its docker is 20.10 (docs/runtimes.md): a real HTTP server on
a unix socket answers with documents shaped like docker 27's (a cri-dockerd pod container among
them), and a real gRPC server on a unix socket answers like a CRI-O or an old containerd that
serves only `runtime.v1alpha2`, with kubelet-made containers whose spec holds the image id. Both
are fixtures: the same clients run against real podman, docker and containerd in the other
test_runtimes_* files.
"""
from __future__ import annotations

import json
import socketserver
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler

import grpc
import pytest

from otel_oom.attribution.runtime.cri import CriClient, M
from otel_oom.attribution.runtime.engine_api import EngineApiClient
from otel_oom.attribution.runtime.names import RuntimeUnavailable

C1, C2 = "1" * 64, "2" * 64
UID = "0f6b0d5c-3b53-4a67-9a1e-7c2f2f3e6c11"

DOCKER_LIST = [
    {"Id": C1, "Names": ["/web-1"], "Image": "nginx:1.27", "ImageID": "sha256:" + "a" * 64,
     "Command": "nginx -g 'daemon off;'", "Created": 1733000000, "Labels": {"com.docker.compose.service": "web"},
     "State": "running", "Status": "Up 2 hours", "HostConfig": {"NetworkMode": "bridge"}},
    {"Id": C2, "Names": ["/k8s_api_checkout-7d9f_shop_" + UID + "_3"], "Image": "sha256:" + "b" * 64,
     "ImageID": "sha256:" + "b" * 64, "State": "exited",
     "Labels": {"io.kubernetes.pod.name": "checkout-7d9f", "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.pod.uid": UID, "io.kubernetes.container.name": "api",
                "annotation.io.kubernetes.container.restartCount": "3"}},
    {"Names": ["/no-id"]},  # malformed entry: skipped
]
DOCKER_INSPECT = {C1: {"Id": C1, "Name": "/web-1", "Image": "sha256:" + "a" * 64, "RestartCount": 4,
                       "Config": {"Image": "nginx:1.27", "Labels": {}}}}


class _UnixHttp(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _docker_handler(answers: dict):
    class Handler(BaseHTTPRequestHandler):
        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.startswith("/events?filters="):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                for cid in (C1, C2):  # docker 27's shape of a container event
                    self.wfile.write(json.dumps({
                        "status": "start", "id": cid, "from": "nginx:1.27", "Type": "container", "Action": "start",
                        "Actor": {"ID": cid, "Attributes": {"image": "nginx:1.27", "name": "web-1"}},
                        "scope": "local", "time": 1733000000, "timeNano": 1733000000000000000}).encode() + b"\n")
                    self.wfile.flush()
                    time.sleep(0.3)  # a stream that stays open, partly written
                return
            status, body = answers.get(self.path, (404, b'{"message":"No such container"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    return Handler


@pytest.fixture
def docker_socket(tmp_path):
    path = str(tmp_path / "docker.sock")
    answers = {"/containers/json?all=1": (200, json.dumps(DOCKER_LIST).encode()),
               f"/containers/{C1}/json": (200, json.dumps(DOCKER_INSPECT[C1]).encode())}
    server = _UnixHttp(path, _docker_handler(answers))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, answers
    server.shutdown()
    server.server_close()


def test_docker_list_and_inspect(docker_socket):
    path, _ = docker_socket
    client = EngineApiClient("docker", path)
    listed = {n.container_id: n for n in client.list()}
    assert set(listed) == {C1, C2}
    web = listed[C1]
    assert (web.runtime, web.name, web.image, web.pod_name, web.restart_count) == ("docker", "web-1", "nginx:1.27",
                                                                                   None, None)
    pod = listed[C2]
    assert (pod.pod_name, pod.pod_namespace, pod.pod_uid, pod.k8s_container_name, pod.restart_count) == (
        "checkout-7d9f", "shop", UID, "api", 3)
    inspected = client.get(C1)
    assert (inspected.name, inspected.image, inspected.image_id) == ("web-1", "nginx:1.27", "sha256:" + "a" * 64)
    assert client.get("f" * 64) is None  # 404: the runtime does not know it


def test_docker_events_name_each_started_container(docker_socket):
    path, _ = docker_socket
    seen: list[str] = []
    connected = []
    EngineApiClient("docker", path).events(seen.append, lambda: len(seen) >= 2, lambda: connected.append(1))
    assert seen == [C1, C2] and connected == [1]


def test_docker_answers_that_are_not_names_are_faults(docker_socket, tmp_path):
    path, answers = docker_socket
    answers["/containers/json?all=1"] = (200, b"<html>proxy error</html>")
    with pytest.raises(RuntimeUnavailable, match="not JSON"):
        EngineApiClient("docker", path).list()
    answers["/containers/json?all=1"] = (500, b'{"message":"boom"}')
    with pytest.raises(RuntimeUnavailable, match="HTTP 500"):
        EngineApiClient("docker", path).list()
    with pytest.raises(RuntimeUnavailable):
        EngineApiClient("docker", str(tmp_path / "absent.sock")).list()


def _cri_server(path: str, api: str, runtime_name: str):
    pod = M["PodSandbox"](id="p" * 64, metadata=M["PodSandboxMetadata"](name="checkout-7d9f", uid=UID,
                                                                        namespace="shop", attempt=0))
    image_id = "sha256:" + "c" * 64
    containers = [
        # as the kubelet creates them: the spec holds the image id, the name is in ListImages
        M["Container"](id=C1, pod_sandbox_id=pod.id, metadata=M["ContainerMetadata"](name="api", attempt=5),
                       image=M["ImageSpec"](image=image_id), image_ref=image_id, labels={"io.kubernetes.pod.name": "x"}),
        # kubelet 1.30+: the name the pod spec gave travels along
        M["Container"](id=C2, pod_sandbox_id=pod.id, metadata=M["ContainerMetadata"](name="side"),
                       image=M["ImageSpec"](image=image_id, user_specified_image="quay.io/team/side:2")),
    ]
    images = [M["Image"](id=image_id, repo_tags=["registry.example/shop/checkout:1.4.2"])]

    def version(req, ctx):
        return M["VersionResponse"](version="0.1.0", runtime_name=runtime_name, runtime_version="1.31.0",
                                    runtime_api_version="v1alpha2")

    def list_pods(req, ctx):
        return M["ListPodSandboxResponse"](items=[p for p in [pod] if not req.filter.id or p.id == req.filter.id])

    def list_containers(req, ctx):
        return M["ListContainersResponse"](containers=[c for c in containers
                                                       if not req.filter.id or c.id == req.filter.id])

    def list_images(req, ctx):
        return M["ListImagesResponse"](images=images)

    def handler(fn, req, resp):
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=M[req].FromString,
                                                   response_serializer=lambda m: m.SerializeToString())
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(f"{api}.RuntimeService", {
            "Version": handler(version, "VersionRequest", "VersionResponse"),
            "ListPodSandbox": handler(list_pods, "ListPodSandboxRequest", "ListPodSandboxResponse"),
            "ListContainers": handler(list_containers, "ListContainersRequest", "ListContainersResponse")}),
        grpc.method_handlers_generic_handler(f"{api}.ImageService", {
            "ListImages": handler(list_images, "ListImagesRequest", "ListImagesResponse")}),
    ])
    server.add_insecure_port(f"unix://{path}")
    server.start()
    return server


def test_a_cri_o_that_serves_only_v1alpha2_and_kubelet_shaped_containers(tmp_path):
    path = str(tmp_path / "crio.sock")
    server = _cri_server(path, "runtime.v1alpha2", "cri-o")
    client = CriClient(path)
    try:
        listed = {n.container_id: n for n in client.list()}
        assert client.runtime_name == "cri-o" and client._api == "runtime.v1alpha2"
        api = listed[C1]
        assert (api.pod_name, api.pod_namespace, api.pod_uid) == ("checkout-7d9f", "shop", UID)  # sandbox wins over labels
        assert (api.name, api.k8s_container_name, api.restart_count) == ("api", "api", 5)
        assert api.image == "registry.example/shop/checkout:1.4.2" and api.image_id == "sha256:" + "c" * 64
        assert listed[C2].image == "quay.io/team/side:2"
        assert client.get(C2).name == "side"
        assert client.get("p" * 64).pod_name == "checkout-7d9f"
    finally:
        client.close()
        server.stop(0)


def test_a_cri_socket_that_answers_nothing_is_unavailable(tmp_path):
    with pytest.raises(RuntimeUnavailable):
        CriClient(str(tmp_path / "absent.sock"), timeout=0.5).list()
