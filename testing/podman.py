"""A real podman for tests: its own storage, its own API service, containers named otel-oom-wt12-*.

Podman 4.3 (Debian) runs here with `--runtime runc` and a containers.conf holding
`default_ulimits = []` and `pids_limit = 0` (root lacks CAP_SYS_RESOURCE; crun rejects the hybrid
cgroup layout), the cgroupfs cgroup manager (systemd is not PID 1) and file events. Storage, run
and tmp directories live under one temp dir, so this podman shares nothing with any other podman
user on the machine, and teardown removes only what it made.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Optional

from .containerd import pids_of
from .images import build_rootfs, remove_tree, rootfs_tar

PREFIX = "otel-oom-wt12-"
IMAGE = "localhost/otel-oom-wt12-victim:1"


class Podman:
    def __init__(self, workdir: Path, cgroup_manager: str = "cgroupfs", launcher: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.launcher = launcher  # nsenter into a namespace whose systemd owns the cgroups (systemd_ns)
        self.socket = str(workdir / "podman.sock")
        self._service: Optional[subprocess.Popen] = None
        conf = workdir / "containers.conf"
        conf.write_text(f"""[containers]
default_ulimits = []
pids_limit = 0
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "{cgroup_manager}"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
tmp_dir = "{workdir}/tmp"
[network]
network_config_dir = "{workdir}/net"
""")
        storage = workdir / "storage.conf"
        storage.write_text(f"""[storage]
driver = "overlay"
graphroot = "{workdir}/graph"
runroot = "{workdir}/run"
""")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        # cwd: conmon drops an empty `oom` marker file in its working directory when a container is
        # OOM-killed; keep it in the workdir, not the checkout
        r = subprocess.run([*self.launcher, "podman", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, cwd=self.dir)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def start(self) -> "Podman":
        root = build_rootfs(self.dir / "rootfs")
        tar = self.dir / "rootfs.tar"
        tar.write_bytes(rootfs_tar(root))
        self.run("import", "--change", 'CMD ["/victim", "pause"]', str(tar), IMAGE)
        self._service = subprocess.Popen([*self.launcher, "podman", "system", "service", "--time=0", f"unix://{self.socket}"],
                                         env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self._service.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("podman system service did not start: "
                                     + (self._service.stderr.read().decode() if self._service.stderr else ""))
            time.sleep(0.05)
        return self

    def stop_service(self) -> None:
        if self._service is not None and self._service.poll() is None:
            # with a launcher (nsenter) the service is its child: signal the service itself
            for pid in pids_of(b"podman", self.socket) if self.launcher else [self._service.pid]:
                os.kill(pid, 15)
            try:
                self._service.wait(10)
            except subprocess.TimeoutExpired:
                self._service.kill()
                self._service.wait()
        if self._service is not None and self._service.stderr is not None:
            self._service.stderr.close()
        self._service = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def close(self) -> None:
        self.stop_service()
        # only this podman's storage: other helpers' containers are in theirs
        self.run("rm", "--all", "--force", "--time", "0", check=False)
        self.run("rmi", "--all", "--force", check=False)
        self.run("system", "reset", "--force", check=False)
        remove_tree(self.dir)

    @staticmethod
    def unique_name(what: str) -> str:
        return f"{PREFIX}{what}-{secrets.token_hex(3)}"

    def container_id(self, name: str) -> str:
        return self.run("inspect", "--format", "{{.Id}}", name).stdout.strip()

    def exists(self, name: str) -> bool:
        return self.run("container", "exists", name, check=False).returncode == 0
