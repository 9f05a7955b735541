"""A real containerd for tests, with its CRI plugin; pods and containers made through the CRI.

containerd (Debian) runs with its root, state, sockets and config under one temp dir, so it shares
nothing with any other containerd on the machine; `close()` removes every pod it made and stops it.
Pods are created with crictl (`sigs.k8s.io/cri-tools`, built from the Go module proxy by
`make crictl` into `CRICTL`), the kubelet's own client library, so the CRI requests the agent reads
back were not written by the agent's code. Images are made locally (`testing.images`) and imported
with `ctr`; the sandbox (pause) image is the victim image's `pause` mode under the name the
config gives containerd. Pods use the host network (no CNI here).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, Optional

from .images import build_rootfs, oci_archive, remove_tree, rootfs_tar

CRICTL_VERSION = "v1.37.0"
CRICTL = Path(f"/var/cache/otel-oom-crictl-{CRICTL_VERSION}/crictl")
IMAGE = "localhost/otel-oom-wt12-victim:1"
PAUSE_IMAGE = "localhost/otel-oom-wt12-pause:1"
NAMESPACE_MODE_NODE = 2  # CRI NamespaceMode NODE: the host's network namespace


class Containerd:
    def __init__(self, workdir: Path, systemd_cgroup: bool = False, launcher: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.launcher = launcher  # e.g. nsenter into the namespace of a systemd that owns the cgroups
        self.socket = str(workdir / "containerd.sock")
        self.systemd_cgroup = systemd_cgroup
        self._proc: Optional[subprocess.Popen] = None
        self._log: Optional[BinaryIO] = None
        self.pods: dict[str, Path] = {}   # pod sandbox id -> its config (crictl create needs it)
        self.cgroup_dirs: list[str] = []  # pod-level cgroups made for cgroupfs pods, removed at close

    def _config(self) -> str:
        d = self.dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
[{cri}.cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/conf"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  SystemdCgroup = {"true" if self.systemd_cgroup else "false"}
"""

    def start(self, images: bool = True) -> "Containerd":
        for sub in ("cni/bin", "cni/conf", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        conf = self.dir / "config.toml"
        conf.write_text(self._config())
        self._log = open(self.dir / "containerd.log", "wb")
        self._proc = subprocess.Popen([*self.launcher, "containerd", "--config", str(conf)],
                                      stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket) or self.crictl("version", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"containerd did not start; its log:\n{self.log_tail()}")
            time.sleep(0.1)
        if images:
            self.import_images()
        return self

    def import_images(self) -> None:
        root = build_rootfs(self.dir / "rootfs")
        layer = rootfs_tar(root)
        for name, cmd in ((IMAGE, ["/victim", "pause"]), (PAUSE_IMAGE, ["/victim", "pause"])):
            archive = oci_archive(layer, name, self.dir / f"{secrets.token_hex(4)}.tar", cmd)
            self.ctr("images", "import", str(archive))

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.dir / "containerd.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["ctr", "--address", self.socket, "--namespace", "k8s.io", *args],
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def crictl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        endpoint = f"unix://{self.socket}"
        r = subprocess.run([str(CRICTL), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                            "--timeout", "20s", *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed: {r.stderr.strip()}\ncontainerd:\n{self.log_tail()}")
        return r

    # ---- pods, the way the kubelet lays out their cgroups ----------------------------------
    def run_pod(self, name: str, namespace: str, uid: str, cgroup_parent: str, attempt: int = 0) -> str:
        config = {"metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": attempt},
                  "log_directory": str(self.dir / "logs" / uid),
                  "linux": {"cgroup_parent": cgroup_parent,
                            "security_context": {"namespace_options": {"network": NAMESPACE_MODE_NODE}}}}
        path = self.dir / f"pod-{uid}.json"
        path.write_text(json.dumps(config))
        if not self.systemd_cgroup:
            self.cgroup_dirs.append(cgroup_parent)
        pod_id = self.crictl("runp", str(path)).stdout.strip()
        self.pods[pod_id] = path
        return pod_id

    def create_container(self, pod_id: str, name: str, command: list[str], memory_bytes: int,
                         attempt: int = 0) -> str:
        config = {"metadata": {"name": name, "attempt": attempt}, "image": {"image": IMAGE},
                  "command": command, "log_path": f"{name}.log",
                  "linux": {"resources": {"memory_limit_in_bytes": memory_bytes}}}
        path = self.dir / f"ctr-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(config))
        return self.crictl("create", "--no-pull", pod_id, str(path), str(self.pods[pod_id])).stdout.strip()

    def container_state(self, cid: str) -> str:
        return json.loads(self.crictl("inspect", cid).stdout)["status"]["state"]

    def remove_pod(self, pod_id: str) -> None:
        self.crictl("stopp", pod_id, check=False)
        self.crictl("rmp", "--force", pod_id, check=False)

    def close(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                for pod_id in self.pods:
                    self.remove_pod(pod_id)
        finally:
            if self._proc is not None and self._proc.poll() is None:
                # with a launcher (nsenter) the daemon is its child: signal the daemon itself
                for pid in pids_of(b"containerd", str(self.dir / "config.toml")) or [self._proc.pid]:
                    _signal(pid, 15)
                try:
                    self._proc.wait(15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._log is not None:
                self._log.close()
            for pid in pids_of(b"containerd-shim-runc-v2", self.socket):  # shims outlive containerd by design
                _signal(pid, 15)
            for parent in self.cgroup_dirs:
                remove_cgroup_chain(parent)
            remove_tree(self.dir)


def pids_of(program: bytes, marker: str) -> list[int]:
    """Pids of `program` whose command line holds `marker` (an instance's own config or socket path):
    the processes a test started, found by id, never by a broad name."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(program) and any(marker.encode() in a for a in argv):
            pids.append(int(entry))
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def remove_cgroup_chain(path: str) -> None:
    """rmdir the pod cgroup in every v1 hierarchy, then its parents while they are empty."""
    root = Path("/sys/fs/cgroup")
    for hierarchy in root.iterdir():
        parts = path.strip("/").split("/")
        while parts:
            try:
                os.rmdir(hierarchy / "/".join(parts))
            except OSError:
                break  # not there, or not empty (another pod, another user of /kubepods)
            parts.pop()
