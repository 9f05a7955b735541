"""A real docker engine for tests: Debian's dockerd 20.10 with directories, socket and daemon of its own.

`make dockerd` unpacks Debian's docker.io package into /var/cache/otel-oom-dockerd-<version>
(unpacked, not installed: its init script would start a system-wide daemon). Here dockerd runs with
its data root, exec root (and the containerd it manages there), pid file and API socket under one
temp dir, no iptables, no bridge and the cgroupfs driver (systemd is not PID 1), so nothing it
does reaches the host's network or another runtime. `close()` removes its containers and stops it.
"""
from __future__ import annotations

import glob
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, Optional

from .containerd import pids_of, remove_cgroup_chain
from .images import build_rootfs, remove_tree, rootfs_tar

IMAGE = "localhost/otel-oom-wt12-victim:1"


def dockerd_root() -> Optional[Path]:
    """Where `make dockerd` unpacked docker.io (the newest version there), or None."""
    found = sorted(glob.glob("/var/cache/otel-oom-dockerd-*/usr/sbin/dockerd"))
    return Path(found[-1]).parent.parent.parent if found else None


class Docker:
    def __init__(self, workdir: Path, root: Path, cgroup_driver: str = "cgroupfs",
                 launcher: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.root = root
        self.cgroup_driver = cgroup_driver
        self.launcher = launcher  # nsenter into a namespace whose systemd owns the cgroups (systemd_ns)
        self.socket = str(workdir / "docker.sock")
        self._proc: Optional[subprocess.Popen] = None
        self._log: Optional[BinaryIO] = None

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.root / "usr/bin/docker"), "-H", f"unix://{self.socket}", *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def start(self) -> "Docker":
        d = self.dir
        env = {**os.environ, "PATH": f"{self.root}/usr/bin:{self.root}/usr/sbin:{os.environ.get('PATH', '')}"}
        self._log = open(d / "dockerd.log", "wb")
        self._proc = subprocess.Popen(
            [*self.launcher, str(self.root / "usr/sbin/dockerd"), "--host", f"unix://{self.socket}",
             "--data-root", f"{d}/data", "--exec-root", f"{d}/exec", "--pidfile", f"{d}/docker.pid",
             "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none",
             "--exec-opt", f"native.cgroupdriver={self.cgroup_driver}", "--storage-driver=overlay2",
             "--log-level=warn"], env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket) or self.cli("version", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("dockerd did not start: " + (d / "dockerd.log").read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        root = build_rootfs(d / "rootfs")
        tar = d / "rootfs.tar"
        tar.write_bytes(rootfs_tar(root))
        self.cli("import", "--change", 'CMD ["/victim", "pause"]', str(tar), IMAGE)
        return self

    @staticmethod
    def unique_name(what: str) -> str:
        return f"otel-oom-wt12-{what}-{secrets.token_hex(3)}"

    def exists(self, name: str) -> bool:
        return self.cli("inspect", name, check=False).returncode == 0

    def close(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                ids = self.cli("ps", "-aq", check=False).stdout.split()
                if ids:
                    self.cli("rm", "-f", *ids, check=False)
        finally:
            if self._proc is not None and self._proc.poll() is None:
                # dockerd stops the containerd it manages; with a launcher (nsenter), dockerd is its
                # child, and its pid file holds the namespace's pid: find it by its socket
                for pid in pids_of(b"dockerd", self.socket) if self.launcher else [self._proc.pid]:
                    os.kill(pid, 15)
                try:
                    self._proc.wait(20)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._log is not None:
                self._log.close()
            remove_cgroup_chain("/docker")  # the cgroupfs driver's parent, once no container is left
            remove_tree(self.dir)

