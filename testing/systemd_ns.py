"""A systemd of its own as PID 1 of a private namespace, so containerd's systemd cgroup driver runs.

systemd is not PID 1 on this machine, so runc's systemd driver has nobody to ask for scopes. Here
a real systemd (Debian's, the machine's own binary) boots as PID 1 of new PID, mount and cgroup
namespaces, rooted at a throwaway cgroup `/otel-oom-wt12-systemd-<hex>` in every v1 hierarchy (and
the v2 one); its cgroup hierarchies are mounted afresh inside, so what it creates lands below that
root and nowhere else. It starts only an empty target of ours (no unit of the host), with a private
/run, so runc finds it at /run/systemd/private. Processes that must talk to it (containerd) run
inside through `launcher` (nsenter). Seen from the host, a container's cgroup is then

    /otel-oom-wt12-systemd-<hex>/kubepods.slice/kubepods-burstable.slice/
        kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope

the systemd driver's layout below a prefix, as on a kind node. `close()` kills the namespace's
PID 1 (which ends everything inside) and removes the cgroups.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Optional

from .images import remove_tree

CGROUP_ROOT = Path("/sys/fs/cgroup")
TARGET = "otel-oom-wt12.target"

_INNER = r"""set -e
mount --make-rprivate /
mount -t proc proc /proc
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
printf '[Unit]\nDescription=otel-oom test target\nDefaultDependencies=no\n' > /run/systemd/system/{target}
mount -t tmpfs cgroup_root /sys/fs/cgroup
for c in {controllers}; do mkdir /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done
mkdir /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
mkdir /sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
export container=otel-oom-wt12
exec /lib/systemd/systemd --unit={target} --log-target=console --show-status=no
"""


class SystemdNamespace:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.name = f"otel-oom-wt12-systemd-{secrets.token_hex(3)}"
        self.pid: Optional[int] = None   # the namespace's systemd, as the host sees it
        self._proc: Optional[subprocess.Popen] = None

    @property
    def launcher(self) -> tuple[str, ...]:
        return ("nsenter", "-t", str(self.pid), "-m", "-p", "-C", "--")

    def hierarchies(self) -> list[Path]:
        return [h for h in CGROUP_ROOT.iterdir() if (h / "cgroup.procs").exists()]

    def start(self) -> "SystemdNamespace":
        controllers = [h.name for h in self.hierarchies() if h.name not in ("systemd", "unified")]
        for h in self.hierarchies():
            (h / self.name).mkdir()
            if h.name == "cpuset":  # a v1 cpuset child needs its cpus and mems before it takes a task
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (h / self.name / f).write_text((h / f).read_text())
        script = self.dir / "systemd-ns.sh"
        script.write_text(_INNER.format(target=TARGET, controllers=" ".join(controllers)))
        procs = " ".join(str(h / self.name / "cgroup.procs") for h in self.hierarchies())
        self._log = open(self.dir / "systemd.log", "wb")
        # join the throwaway cgroup everywhere first: it becomes the new cgroup namespace's root
        self._proc = subprocess.Popen(
            ["sh", "-c", f'for p in {procs}; do echo $$ > "$p"; done; '
                         f"exec unshare --mount --pid --fork --cgroup sh {script}"],
            stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while True:
            self.pid = self._find_pid()
            if self.pid is not None:
                r = subprocess.run([*self.launcher, "systemctl", "is-system-running"], capture_output=True, text=True)
                if r.stdout.strip() in ("running", "degraded"):
                    return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError("systemd did not come up in its namespace: "
                                     + (self.dir / "systemd.log").read_text(errors="replace")[-2000:])
            time.sleep(0.1)

    def _find_pid(self) -> Optional[int]:
        """The systemd inside: the process in our cgroup's init.scope (or running our target)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/cgroup") as f:
                    cgroups = f.read()
            except OSError:
                continue
            if argv[0].endswith(b"systemd") and f"--unit={TARGET}".encode() in argv and f"/{self.name}" in cgroups:
                return int(entry)
        return None

    def cgroup_prefix(self) -> str:
        return f"/{self.name}"

    def close(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)  # PID 1 of the namespace: the kernel ends everything inside
            except OSError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._log.close()
        deadline = time.monotonic() + 10
        for h in self.hierarchies():
            top = h / self.name
            while top.exists() and time.monotonic() < deadline:
                for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                try:
                    top.rmdir()
                except OSError:
                    time.sleep(0.1)  # tasks still leaving
        remove_tree(self.dir)
