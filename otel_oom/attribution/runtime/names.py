"""What a container runtime tells about one container (`ContainerNames`), and the label conventions.

Everything here comes from outside the agent (whoever created the container chose the names and
labels): it is kept as given and escaped only at each output, through `otel_oom.text`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

# labels the kubelet puts on every container it creates (dockershim, cri-dockerd, and CRI
# runtimes keep them too); a runtime's own metadata wins over them where it has its own
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
LABEL_RESTART_COUNT = "annotation.io.kubernetes.container.restartCount"  # cri-dockerd's label form
ANNOTATION_RESTART_COUNT = "io.kubernetes.container.restartCount"

NAME_MAX = 1024  # longer strings from a runtime are cut: a name, not a payload


class RuntimeUnavailable(Exception):
    """The runtime did not answer: no socket, refused, timed out, an RPC error or a malformed answer."""


@dataclass(frozen=True)
class ContainerNames:
    container_id: str                       # the runtime's full id (64 hex for every runtime here)
    runtime: Optional[str] = None           # "containerd" | "cri-o" | "docker" | "podman"
    name: Optional[str] = None              # container.name
    image: Optional[str] = None             # image reference, e.g. "registry:5000/team/app:1.2"
    image_id: Optional[str] = None          # e.g. "sha256:..."
    pod_name: Optional[str] = None
    pod_namespace: Optional[str] = None
    pod_uid: Optional[str] = None
    k8s_container_name: Optional[str] = None
    restart_count: Optional[int] = None


def clip(value: object) -> Optional[str]:
    """A runtime-supplied string, or None for empty/missing; cut at NAME_MAX characters."""
    if not isinstance(value, str) or value == "":
        return None
    return value[:NAME_MAX]


def count(value: object) -> Optional[int]:
    """A non-negative integer from a label or a field, or None."""
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return n if 0 <= n < 1 << 31 else None


def k8s_from_labels(labels: Mapping[str, str]) -> dict[str, object]:
    """The kubelet's labels as ContainerNames fields (only those present)."""
    fields = {"pod_name": clip(labels.get(LABEL_POD_NAME)),
              "pod_namespace": clip(labels.get(LABEL_POD_NAMESPACE)),
              "pod_uid": clip(labels.get(LABEL_POD_UID)),
              "k8s_container_name": clip(labels.get(LABEL_CONTAINER_NAME)),
              "restart_count": count(labels.get(LABEL_RESTART_COUNT, labels.get(ANNOTATION_RESTART_COUNT)))}
    return {k: v for k, v in fields.items() if v is not None}


def split_image(ref: str) -> tuple[str, Optional[str]]:
    """("registry:5000/team/app", "1.2") from "registry:5000/team/app:1.2@sha256:...".

    semconv puts the name without tag or digest in `container.image.name` and the tag in
    `container.image.tags`. A colon before the last "/" is a registry port, not a tag.
    """
    base = ref.split("@", 1)[0]
    colon = base.rfind(":")
    if colon > base.rfind("/"):
        return base[:colon], base[colon + 1:] or None
    return base, None
