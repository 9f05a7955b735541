"""The node's images, made here and imported into containerd's k8s.io namespace (no registry).

- `localhost/busybox:latest`: Debian's busybox-static with a link per applet, one layer;
- `localhost/pause:latest`: the same layer, `sleep infinity` as the sandbox's process (containerd
  stops sandboxes with SIGKILL, so it needs no signal handling); containerd's `sandbox_image`;
- `localhost/otel-oom-collector:<build key>`: one layer holding the binary tools/collector/build.sh
  built (the components of collector-config/agent.yaml);
- `localhost/otel-oom-agent:latest`: the image `make image` built with podman (`podman save`).

Each of ours is a one-layer docker-archive tar (manifest.json, config, layer.tar: what `docker save`
writes), streamed into `ctr images import -`; pods use them with `imagePullPolicy: Never`.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from .configs import CONTAINERD_SOCKET, PAUSE_IMAGE
from .layout import Node, podman_env

BUSYBOX_IMAGE = "localhost/busybox:latest"
AGENT_IMAGE = "localhost/otel-oom-agent:latest"
COLLECTOR_REPOSITORY = "localhost/otel-oom-collector"
COLLECTOR_BINARY = "/otelcol-otel-oom"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


class Layer:
    """An uncompressed layer tar built in memory: entries owned by root, mtime 0."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, 0
        return info

    def dir(self, name: str, mode: int = 0o755) -> "Layer":
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode))
        return self

    def file(self, name: str, data: bytes, mode: int = 0o644) -> "Layer":
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def copy(self, name: str, source: Path, mode: int = 0o755) -> "Layer":
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = source.stat().st_size
        with open(source, "rb") as f:
            self._tar.addfile(info, f)
        return self

    def symlink(self, name: str, target: str) -> "Layer":
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def base_layer() -> Layer:
    layer = Layer()
    for d in ("bin", "dev", "etc", "proc", "sys", "root"):
        layer.dir(d)
    layer.dir("tmp", 0o1777)
    return layer.file("etc/passwd", PASSWD).file("etc/group", GROUP)


def busybox_layer() -> bytes:
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    layer = base_layer().copy("bin/busybox", busybox)
    for applet in sorted(set(applets) - {"busybox"}):
        if "/" not in applet:
            layer.symlink(f"bin/{applet}", "busybox")
    return layer.bytes()


def docker_archive(name: str, layer: bytes, entrypoint: Optional[list[str]] = None,
                   cmd: Optional[list[str]] = None) -> bytes:
    """`docker save`'s format for a one-layer image named `name`."""
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
    }).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for fname, data in ((f"{layer_id}/layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def ctr(node: Node, *args: str, input: Optional[bytes] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """ctr in the node's namespaces, on the kubelet's containerd namespace k8s.io."""
    argv = [*node.enter(), "ctr", "--address", CONTAINERD_SOCKET, "--namespace", "k8s.io", *args]
    r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")
    return r


def import_archive(node: Node, archive: bytes) -> None:
    ctr(node, "images", "import", "-", input=archive)


def collector_image(binary: str) -> tuple[str, bytes]:
    """(name, archive): the tag is the Collector build's cache key, so a new build is a new image."""
    tag = Path(binary).parent.name.rsplit("-", 1)[-1]
    layer = base_layer().copy(COLLECTOR_BINARY.lstrip("/"), Path(binary)).bytes()
    name = f"{COLLECTOR_REPOSITORY}:{tag}"
    return name, docker_archive(name, layer, entrypoint=[COLLECTOR_BINARY])


def import_podman_image(node: Node, image: str) -> None:
    """`podman save` (docker-archive) piped into `ctr images import -`."""
    argv = [*node.enter(), "ctr", "--address", CONTAINERD_SOCKET, "--namespace", "k8s.io", "images", "import", "-"]
    with subprocess.Popen(["podman", "save", "--format", "docker-archive", image], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=podman_env()) as save:
        r = subprocess.run(argv, stdin=save.stdout, capture_output=True, timeout=600)
        _, save_err = save.communicate(timeout=60)
    if save.returncode != 0:
        raise RuntimeError(f"podman save {image}: {save_err.decode(errors='replace').strip()}")
    if r.returncode != 0:
        raise RuntimeError(f"ctr images import ({image}): {r.stderr.decode(errors='replace').strip()}")


def import_all(node: Node, collector_binary: str, agent_image: str = AGENT_IMAGE) -> str:
    """Every image the node needs; returns the Collector image's name. The agent's (the largest,
    from podman) is imported beside the others."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        agent = pool.submit(import_podman_image, node, agent_image)
        layer = busybox_layer()
        import_archive(node, docker_archive(PAUSE_IMAGE, layer, entrypoint=["/bin/sleep", "infinity"]))
        import_archive(node, docker_archive(BUSYBOX_IMAGE, layer, cmd=["sh"]))
        name, archive = collector_image(collector_binary)
        import_archive(node, archive)
        agent.result()
    return name


def images(node: Node) -> set[str]:
    return set(ctr(node, "images", "ls", "-q").stdout.decode().split())
