"""Container and pod names from a CRI runtime (containerd, CRI-O) over its gRPC unix socket.

The Kubernetes CRI (`runtime.v1.RuntimeService`, `runtime.v1.ImageService`) is protobuf over gRPC.
No .proto file or generated code of the CRI is vendored or shipped: the agent declares, as data
below, only the messages and fields it reads (field numbers and types from the CRI specification,
k8s.io/cri-api `pkg/apis/runtime/v1/api.proto`), builds their descriptors at import with protobuf's
own `descriptor_pb2`, and gets message classes from `message_factory`. protobuf decodes by field
number, so the fields it leaves out are skipped as unknown fields, and a newer runtime's additions
cannot break it. gRPC calls are plain unary calls on a `grpc` channel to `unix://<socket>`.

Enums (container and sandbox state) are declared as int32: the same varint on the wire. Runtimes
that only serve the pre-1.0 `runtime.v1alpha2` services (containerd before 1.5, old CRI-O) have the
same messages under another package name; the client falls back to it on UNIMPLEMENTED.

Calls used: Version (which runtime answers), ListPodSandbox and ListContainers (every pod and
container, or one by id through their filters), ListImages (image names for containers whose spec
holds only an image id, as the kubelet's do); with --k8s-events or --k8s-kubelet-check, also
ListContainers of the running ones and ContainerStatus (verbose) for the pid of each one's main
process (kube/main_process.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .names import ContainerNames, RuntimeUnavailable, clip, count, k8s_from_labels

if TYPE_CHECKING:
    import grpc
    from google.protobuf import descriptor_pb2

# message -> [(field, number, type)]; type "map" is map<string, string>, "[]x" is repeated x,
# a capitalised type is one of these messages. Only what the agent reads or sends.
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "VersionRequest": [("version", 1, "string")],
    "VersionResponse": [("version", 1, "string"), ("runtime_name", 2, "string"),
                        ("runtime_version", 3, "string"), ("runtime_api_version", 4, "string")],
    "PodSandboxMetadata": [("name", 1, "string"), ("uid", 2, "string"), ("namespace", 3, "string"),
                           ("attempt", 4, "uint32")],
    "PodSandboxFilter": [("id", 1, "string")],
    "PodSandbox": [("id", 1, "string"), ("metadata", 2, "PodSandboxMetadata"), ("state", 3, "int32"),
                   ("created_at", 4, "int64"), ("labels", 5, "map"), ("annotations", 6, "map")],
    "ListPodSandboxRequest": [("filter", 1, "PodSandboxFilter")],
    "ListPodSandboxResponse": [("items", 1, "[]PodSandbox")],
    "ContainerMetadata": [("name", 1, "string"), ("attempt", 2, "uint32")],
    "ImageSpec": [("image", 1, "string"), ("annotations", 2, "map"), ("user_specified_image", 18, "string")],
    "ContainerStateValue": [("state", 1, "int32")],
    "ContainerFilter": [("id", 1, "string"), ("state", 2, "ContainerStateValue"), ("pod_sandbox_id", 3, "string")],
    "Container": [("id", 1, "string"), ("pod_sandbox_id", 2, "string"), ("metadata", 3, "ContainerMetadata"),
                  ("image", 4, "ImageSpec"), ("image_ref", 5, "string"), ("state", 6, "int32"),
                  ("created_at", 7, "int64"), ("labels", 8, "map"), ("annotations", 9, "map")],
    "ListContainersRequest": [("filter", 1, "ContainerFilter")],
    "ListContainersResponse": [("containers", 1, "[]Container")],
    # ContainerStatus with verbose: its info map holds the runtime's own JSON, with the pid of the
    # process it started while the container runs (0 once it exited); for kube/main_process.py
    "ContainerStatusRequest": [("container_id", 1, "string"), ("verbose", 2, "bool")],
    "ContainerStatus": [("id", 1, "string"), ("state", 3, "int32")],
    "ContainerStatusResponse": [("status", 1, "ContainerStatus"), ("info", 2, "map")],
    "ImageFilter": [("image", 1, "ImageSpec")],
    "Image": [("id", 1, "string"), ("repo_tags", 2, "[]string"), ("repo_digests", 3, "[]string")],
    "ListImagesRequest": [("filter", 1, "ImageFilter")],
    "ListImagesResponse": [("images", 1, "[]Image")],
}
# our own package name: these descriptors live in a private pool and never meet generated CRI code
_PACKAGE = "otel_oom.cri"


def _file_descriptor() -> "descriptor_pb2.FileDescriptorProto":
    from google.protobuf import descriptor_pb2

    _F = descriptor_pb2.FieldDescriptorProto  # noqa: N806 - the protobuf class, by its usual short name
    types = {"string": _F.TYPE_STRING, "uint32": _F.TYPE_UINT32, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
             "uint64": _F.TYPE_UINT64, "bool": _F.TYPE_BOOL}
    fd = descriptor_pb2.FileDescriptorProto(name="otel_oom/cri_subset.proto", package=_PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for field, number, kind in fields:
            f = msg.field.add(name=field, number=number, label=_F.LABEL_OPTIONAL)
            if kind.startswith("[]"):
                f.label = _F.LABEL_REPEATED
                kind = kind[2:]
            if kind == "map":
                entry = msg.nested_type.add(name="".join(p.title() for p in field.split("_")) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
                entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
                f.label, f.type, f.type_name = _F.LABEL_REPEATED, _F.TYPE_MESSAGE, f".{_PACKAGE}.{name}.{entry.name}"
            elif kind in types:
                f.type = types[kind]
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
    return fd


def _classes() -> dict[str, Any]:
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in MESSAGES}


_messages: Optional[dict[str, Any]] = None


def _m() -> dict[str, Any]:
    """The message classes, built on first use; grpc too is imported only once a socket answers,
    so an agent on a host without a CRI runtime never loads the gRPC stack (~20 MB) for it."""
    global _messages
    if _messages is None:
        _messages = _classes()
    return _messages


def __getattr__(name: str) -> Any:
    if name == "M":  # `from .cri import M`: the message classes by name
        return _m()
    raise AttributeError(name)


# (service, method) -> (request, response); the service is prefixed with the API version's package
_CALLS = {
    ("RuntimeService", "Version"): ("VersionRequest", "VersionResponse"),
    ("RuntimeService", "ListPodSandbox"): ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    ("RuntimeService", "ListContainers"): ("ListContainersRequest", "ListContainersResponse"),
    ("RuntimeService", "ContainerStatus"): ("ContainerStatusRequest", "ContainerStatusResponse"),
    ("ImageService", "ListImages"): ("ListImagesRequest", "ListImagesResponse"),
}
CONTAINER_RUNNING = 1  # runtime.v1 ContainerState
API_VERSIONS = ("runtime.v1", "runtime.v1alpha2")
_RUNTIME_NAMES = {"containerd": "containerd", "cri-o": "cri-o", "crio": "cri-o"}


class CriClient:
    """One CRI runtime at `path`. Every call has a deadline of `timeout` seconds."""

    kind = "cri"

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self.runtime_name: Optional[str] = None   # from Version: "containerd", "cri-o", ...
        self._api: Optional[str] = None
        self._channel: Optional[grpc.Channel] = None
        self._images: dict[str, str] = {}          # image id -> a repo tag

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _call(self, service: str, method: str, request: Any) -> Any:
        import grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.path}", options=[
                ("grpc.max_receive_message_length", 64 << 20), ("grpc.enable_retries", 0)])
        if self._api is None:
            self._negotiate()
        _, resp_type = _CALLS[(service, method)]
        try:
            return self._rpc(self._api or API_VERSIONS[0], service, method, request, _m()[resp_type])
        except RuntimeUnavailable:
            self._api = None  # the runtime may come back as another version (or another runtime)
            raise

    def _rpc(self, api: str, service: str, method: str, request: Any, response_type: Any) -> Any:
        import grpc

        assert self._channel is not None
        stub = self._channel.unary_unary(f"/{api}.{service}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response_type.FromString)
        try:
            return stub(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            raise RuntimeUnavailable(f"{method}: {getattr(code, 'name', code)}: {_details(e)}") from None

    def _negotiate(self) -> None:
        """Find the API version the runtime serves and the runtime's name."""
        last: Optional[RuntimeUnavailable] = None
        for api in API_VERSIONS:
            try:
                v = self._rpc(api, "RuntimeService", "Version", _m()["VersionRequest"](version="v1"),
                              _m()["VersionResponse"])
            except RuntimeUnavailable as e:
                last = e
                if "UNIMPLEMENTED" in str(e):
                    continue
                raise
            self._api = api
            name = v.runtime_name.lower()
            self.runtime_name = _RUNTIME_NAMES.get(name, clip(name))
            return
        raise last or RuntimeUnavailable("Version: no CRI API version answered")

    # ---- what the cache uses --------------------------------------------------------------
    def list(self) -> list[ContainerNames]:
        """Every pod sandbox and container the runtime knows, with their names."""
        pods = {p.id: p for p in self._call("RuntimeService", "ListPodSandbox", _m()["ListPodSandboxRequest"]()).items}
        containers = self._call("RuntimeService", "ListContainers", _m()["ListContainersRequest"]()).containers
        self._learn_images(containers)
        return [self._sandbox(p) for p in pods.values()] + [self._container(c, pods.get(c.pod_sandbox_id))
                                                            for c in containers]

    def get(self, container_id: str) -> Optional[ContainerNames]:
        """One container (or pod sandbox) by its full id; None when the runtime does not know it."""
        found = self._call("RuntimeService", "ListContainers",
                           _m()["ListContainersRequest"](filter=_m()["ContainerFilter"](id=container_id))).containers
        found = [c for c in found if c.id == container_id]
        if found:
            c = found[0]
            self._learn_images(found)
            return self._container(c, self._pod(c.pod_sandbox_id))
        pod = self._pod(container_id)
        return self._sandbox(pod) if pod is not None else None

    def running(self) -> tuple[str, ...]:
        """The ids of the containers running now (not the pod sandboxes)."""
        request = _m()["ListContainersRequest"](filter=_m()["ContainerFilter"](
            state=_m()["ContainerStateValue"](state=CONTAINER_RUNNING)))
        return tuple(c.id for c in self._call("RuntimeService", "ListContainers", request).containers)

    def main_pid(self, container_id: str) -> Optional[int]:
        """The host pid of the process the runtime started for a running container (its main
        process: PID 1 of its pid namespace, unless the pod shares one); None once the container
        exited (the runtime then reports 0), for an unknown id, or when the runtime does not say."""
        import json

        request = _m()["ContainerStatusRequest"](container_id=container_id, verbose=True)
        try:
            r = self._call("RuntimeService", "ContainerStatus", request)
        except RuntimeUnavailable as e:
            if "NOT_FOUND" in str(e):
                return None
            raise
        if r.status.state != CONTAINER_RUNNING:
            return None
        try:
            pid = json.loads(dict(r.info).get("info") or "{}").get("pid")
        except (ValueError, AttributeError):
            return None
        return pid if isinstance(pid, int) and pid > 0 else None

    def _pod(self, sandbox_id: str) -> Any:
        if not sandbox_id:
            return None
        items = self._call("RuntimeService", "ListPodSandbox",
                           _m()["ListPodSandboxRequest"](filter=_m()["PodSandboxFilter"](id=sandbox_id))).items
        return next((p for p in items if p.id == sandbox_id), None)

    def _learn_images(self, containers: Any) -> None:
        # the kubelet creates containers with the image id, not the name the pod spec gave
        wanted = {c.image.image for c in containers if _is_image_id(c.image.image) and not c.image.user_specified_image}
        if not wanted - self._images.keys():
            return
        try:
            images = self._call("ImageService", "ListImages", _m()["ListImagesRequest"]()).images
        except RuntimeUnavailable:
            return  # names without the image are still worth having
        self._images = {i.id: (list(i.repo_tags) or list(i.repo_digests) or [i.id])[0] for i in images}
        for gone in wanted - self._images.keys():
            self._images[gone] = gone  # deleted under a running container: named by its id, not asked again

    def _image(self, c: Any) -> Optional[str]:
        spec = c.image
        if spec.user_specified_image:
            return clip(spec.user_specified_image)
        if _is_image_id(spec.image):
            return clip(self._images.get(spec.image) or self._images.get(c.image_ref) or spec.image)
        return clip(spec.image)

    def _container(self, c: Any, pod: Any) -> ContainerNames:
        labels = dict(c.labels)
        k8s = k8s_from_labels({**dict(c.annotations), **labels})
        name = clip(c.metadata.name)
        if pod is not None:
            k8s.update(pod_name=clip(pod.metadata.name), pod_namespace=clip(pod.metadata.namespace),
                       pod_uid=clip(pod.metadata.uid))
        image_id = c.image_ref if c.image_ref else (c.image.image if _is_image_id(c.image.image) else None)
        return ContainerNames(
            container_id=c.id, runtime=self.runtime_name, name=name, image=self._image(c), image_id=clip(image_id),
            pod_name=k8s.get("pod_name"), pod_namespace=k8s.get("pod_namespace"),  # type: ignore[arg-type]
            pod_uid=k8s.get("pod_uid"), k8s_container_name=name or k8s.get("k8s_container_name"),  # type: ignore[arg-type]
            restart_count=count(c.metadata.attempt) if c.HasField("metadata") else k8s.get("restart_count"),  # type: ignore[arg-type]
        )

    def _sandbox(self, p: Any) -> ContainerNames:
        # the sandbox's own (pause) container: the pod is known, there is no k8s container
        return ContainerNames(container_id=p.id, runtime=self.runtime_name, pod_name=clip(p.metadata.name),
                              pod_namespace=clip(p.metadata.namespace), pod_uid=clip(p.metadata.uid))


def _is_image_id(ref: str) -> bool:
    return ref.startswith("sha256:") or (len(ref) == 64 and all(ch in "0123456789abcdef" for ch in ref))


def _details(e: grpc.RpcError) -> str:
    details = e.details() if hasattr(e, "details") else str(e)
    return (details or "").splitlines()[0][:200] if details else ""
