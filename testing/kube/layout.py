"""Where one node lives: its names, addresses and directories, all derived from its name.

Two nodes with different names share nothing (state directory, network namespace, addresses,
cgroup root, interface names), so the tests' node and a developer's `make kube-up` node can run
side by side on one machine. Everything on the host is named with the `otel-oom-kube-` prefix
(the host side of the veth `okube-<name>`, at most 15 characters).
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..agent_process import REPO

PREFIX = "otel-oom-kube-"
# the state directory is outside /var/lib: inside the node's mount namespace /var/lib is the node's own
STATE_ROOT = Path("/var/tmp")
NAMESPACE = "otel-oom"          # the chart's namespace, as docs/deploy.md creates it
RELEASE = "otel-oom"
VICTORIALOGS_PORT = 9428        # the backends listen on the node's address, inside its network namespace
PROMETHEUS_PORT = 9090
APISERVER_PORT = 6443


@dataclass(frozen=True)
class Node:
    name: str

    def __post_init__(self) -> None:
        if not self.name.isalnum() or not self.name.islower() or len(self.name) > 9:
            raise ValueError(f"node name {self.name!r}: 1-9 lowercase letters or digits")

    @property
    def index(self) -> int:
        """1..250, the third octet of every address of this node."""
        return zlib.crc32(self.name.encode()) % 250 + 1

    # ---- names ------------------------------------------------------------------------------
    @property
    def node_name(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot: pods live in <this>/kubepods/..., in every hierarchy."""
        return f"/{PREFIX}{self.name}"

    @property
    def host_veth(self) -> str:
        return f"okube-{self.name}"

    # ---- addresses: 10.213.<i>.0/30 node<->host link, 10.214.<i>.0/24 pods, 10.215.<i>.0/24 services
    @property
    def node_ip(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def host_ip(self) -> str:
        return f"10.213.{self.index}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.214.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.215.{self.index}.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        return f"10.215.{self.index}.1"

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.node_ip}:{APISERVER_PORT}"

    @property
    def victorialogs_url(self) -> str:
        return f"http://{self.node_ip}:{VICTORIALOGS_PORT}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.node_ip}:{PROMETHEUS_PORT}"

    # ---- directories ------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return STATE_ROOT / f"{PREFIX}{self.name}"

    @property
    def ns_dir(self) -> Path:
        """Bind-mounted on itself and private, holding the pinned namespaces `net` and `mnt`."""
        return self.state / "ns"

    @property
    def netns(self) -> Path:
        return self.ns_dir / "net"

    @property
    def mntns(self) -> Path:
        return self.ns_dir / "mnt"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    def enter(self) -> list[str]:
        """The command prefix that runs the rest in the node's namespaces (absolute paths only:
        nsenter --mount resets the working directory)."""
        return ["nsenter", f"--net={self.netns}", f"--mount={self.mntns}", "--"]


def repo_path(*parts: str) -> Path:
    return REPO.joinpath(*parts)


def podman_env() -> dict[str, str]:
    """podman as `make image` runs it (tools/image/containers.conf), so its images are found."""
    return {**os.environ, "CONTAINERS_CONF": str(repo_path("tools", "image", "containers.conf"))}
