"""Read the container runtime, container id and Kubernetes pod out of a memory cgroup path.

Pure string parsing (no I/O) of the path relative to the hierarchy mount, for the systemd and
cgroupfs cgroup drivers on v1 and v2. What a workload creates below its own container is its
choice (a nested runtime, or a name made to look like another container's scope), so it never
decides: the outermost pod wins and its container is the component right below it (kubepods nested
in a node container, kind or k3d, is found that way too); with no pod, the outermost container
wins. Anything not recognised exactly yields None: ids are lowercase hex of fixed length, so odd
names are never guessed at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_ID = r"(?P<id>[0-9a-f]{64})"
# (pattern, runtime, is the id the container's) -- conmon is the runtime's monitor process
_SCOPES = [
    (re.compile(rf"docker-{_ID}\.scope"), "docker", True),
    (re.compile(rf"cri-containerd-{_ID}\.scope"), "containerd", True),
    (re.compile(rf"nerdctl-{_ID}\.scope"), "containerd", True),
    (re.compile(rf"crio-conmon-{_ID}(?:\.scope)?"), "cri-o", False),
    (re.compile(rf"crio-{_ID}(?:\.scope)?"), "cri-o", True),
    (re.compile(rf"libpod-conmon-{_ID}(?:\.scope)?"), "podman", False),
    (re.compile(rf"libpod-{_ID}(?:\.scope)?"), "podman", True),
]
_BARE_ID = re.compile(_ID)
# runtimes that name a container's cgroup by its bare id under a fixed parent (cgroupfs driver)
_BARE_PARENTS = {"docker": "docker", "default": "containerd"}  # "default": nerdctl namespace

_QOS = ("burstable", "besteffort")
_UUID = "[0-9a-f]{8}{s}[0-9a-f]{4}{s}[0-9a-f]{4}{s}[0-9a-f]{4}{s}[0-9a-f]{12}"
# static pods use the 32-hex manifest hash as uid; API pods a UUID ("_" for "-" under systemd)
_POD_CGROUPFS = re.compile("pod(?P<uid>" + _UUID.replace("{s}", "-") + "|[0-9a-f]{32})")
_POD_SYSTEMD = re.compile(r"(?P<parent>(?:[a-z0-9_]+-)*kubepods(?:-(?:burstable|besteffort))?)"
                          r"-pod(?P<uid>" + _UUID.replace("{s}", "_") + r"|[0-9a-f]{32})\.slice")


@dataclass(frozen=True)
class Workload:
    runtime: Optional[str] = None       # "docker" | "containerd" | "cri-o" | "podman"
    container_id: Optional[str] = None  # 64 lowercase hex
    pod_uid: Optional[str] = None       # dashed lowercase UUID (or a static pod's 32-hex hash)
    qos_class: Optional[str] = None     # "guaranteed" | "burstable" | "besteffort"


def parse_cgroup_path(path: str) -> Workload:
    """The workload owning the memory cgroup at `path` (e.g. "/kubepods/burstable/pod<uid>/<id>")."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        pod = _pod_at(parts, i)
        if pod is not None:
            container = _container_at(parts, i + 1) if i + 1 < len(parts) else None
            return Workload(*(container or (None, None)), *pod)
    for i in range(1, len(parts)):
        container = _container_at(parts, i)
        if container is not None:
            return Workload(container[0], container[1])
    return Workload()


def _container_at(parts: list[str], i: int) -> Optional[tuple[Optional[str], Optional[str]]]:
    name = parts[i]
    for pattern, runtime, is_container in _SCOPES:
        m = pattern.fullmatch(name)
        if m:
            return runtime, (m["id"] if is_container else None)
    m = _BARE_ID.fullmatch(name)
    if m is None:
        return None
    if parts[i - 1] in _BARE_PARENTS:
        return _BARE_PARENTS[parts[i - 1]], m["id"]
    if _pod_at(parts, i - 1) is not None:
        # containerd, cri-dockerd and others all use the bare id under cgroupfs: runtime unknown
        return None, m["id"]
    return None


def _pod_at(parts: list[str], i: int) -> Optional[tuple[str, str]]:
    """(pod uid, qos class) if parts[i] is a kubelet pod cgroup in its proper place."""
    if i < 1:
        return None
    name, parent = parts[i], parts[i - 1]
    m = _POD_SYSTEMD.fullmatch(name)
    if m:
        # systemd nests slices by name prefix: "a-b-podX.slice" lives in "a-b.slice"
        if parent != m["parent"] + ".slice":
            return None
        qos = m["parent"].rsplit("-", 1)[-1]
        return _canonical(m["uid"]), qos if qos in _QOS else "guaranteed"
    m = _POD_CGROUPFS.fullmatch(name)
    if m:
        if parent == "kubepods":
            return _canonical(m["uid"]), "guaranteed"
        if parent in _QOS and i >= 2 and parts[i - 2] == "kubepods":
            return _canonical(m["uid"]), parent
    return None


def _canonical(uid: str) -> str:
    return uid.replace("_", "-")
