"""The built tools the node needs, from the project's cached build recipes in tools/.

`find(build=False)` (tests) only looks: a tool not built yet is reported, never built in the
middle of a test run. `find(build=True)` (`make kube-up`) builds what is missing.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .images import AGENT_IMAGE
from .layout import podman_env, repo_path

KUBE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet",
                 "kubectl")
DEBIAN_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "nsenter", "unshare",
                   "openssl", "busybox", "prometheus", "podman")
CRICTL = Path("/var/cache/otel-oom-crictl-v1.37.0/crictl")  # `make crictl` (testing/containerd.py)


class MissingTool(Exception):
    pass


@dataclass(frozen=True)
class Tools:
    kube_bin: Path          # etcd, kube-* and kubectl
    helm: str
    victorialogs: str
    collector: str
    agent_image: str

    def bin(self, name: str) -> str:
        return str(self.kube_bin / name)


def _script(path: Path, build: bool, what: str) -> str:
    r = subprocess.run([str(path), *([] if build else ["--check"])], capture_output=True, text=True,
                       timeout=3600 if build else 60)
    if r.returncode != 0 or not r.stdout.strip():
        hint = r.stderr.strip()[-2000:] if build else f"not built: run make {what}"
        raise MissingTool(f"{what}: {hint}")
    return r.stdout.strip().splitlines()[-1]


def agent_image(build: bool) -> str:
    if build:
        return _script(repo_path("tools", "image", "build.sh"), True, "image")
    r = subprocess.run(["podman", "image", "exists", AGENT_IMAGE], env=podman_env(), timeout=60)
    if r.returncode != 0:
        raise MissingTool(f"image: {AGENT_IMAGE} not built: run make image")
    return AGENT_IMAGE


def find(build: bool = False, build_image: Optional[bool] = None) -> Tools:
    """build_image: run `make image`'s recipe even when not building the rest (a cache hit unless
    the checkout changed: the node then runs this checkout's agent, as tests/test_image.py does)."""
    missing = [c for c in DEBIAN_COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if missing:
        raise MissingTool(f"missing commands {' '.join(missing)}: make test-packages (apt)")
    kube_bin = Path(_script(repo_path("tools", "kube", "build.sh"), build, "kube"))
    absent = [b for b in KUBE_BINARIES if not (kube_bin / b).exists()]
    if absent:
        raise MissingTool(f"kube: {kube_bin} lacks {' '.join(absent)}")
    return Tools(
        kube_bin=kube_bin,
        helm=_script(repo_path("tools", "helm", "build.sh"), build, "helm"),
        victorialogs=_script(repo_path("tools", "victorialogs", "build.sh"), build, "victorialogs"),
        collector=_script(repo_path("tools", "collector", "build.sh"), build, "collector"),
        agent_image=agent_image(build if build_image is None else build_image),
    )
