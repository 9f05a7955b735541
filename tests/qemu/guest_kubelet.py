"""A standalone kubelet (no API server) in a cgroup v2 test guest, with the systemd cgroup driver.

With no kubeconfig the kubelet runs its static pods only: it reads a manifest from its
`staticPodPath`, lays out kubepods.slice and the pod's slice through systemd itself (its own cgroup
manager, not crictl's parent names), and asks containerd over the CRI for the sandbox and the
container with its own labels and metadata. It runs inside the namespace systemd's `launcher`, so it
reaches systemd on /run/systemd/private as runc does. The pod uses the host network (no CNI).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Optional

from testing.containerd import IMAGE, Containerd, pids_of

POD_NAME = "checkout-kubelet"
NODE_NAME = "otel-oom-cgv2-node"


class Kubelet:
    def __init__(self, binary: str, workdir: Path, containerd_socket: str, launcher: tuple[str, ...]) -> None:
        self.binary, self.dir, self.socket, self.launcher = binary, workdir, containerd_socket, launcher
        self._proc: Optional[subprocess.Popen] = None

    def _config(self) -> dict:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "systemd", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "staticPodPath": str(self.dir / "manifests"), "fileCheckFrequency": "2s", "syncFrequency": "5s",
            "address": "127.0.0.1", "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            # image garbage collection would delete the locally imported images (no registry to pull from)
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "resolvConf": "", "oomScoreAdj": 0,
        }

    def __enter__(self) -> "Kubelet":
        (self.dir / "manifests").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "kubelet.json"
        conf.write_text(json.dumps(self._config()))
        self._log = open(self.dir / "kubelet.log", "wb")
        self._proc = subprocess.Popen([*self.launcher, self.binary, f"--config={conf}",
                                       f"--root-dir={self.dir / 'root'}", f"--cert-dir={self.dir / 'pki'}",
                                       f"--hostname-override={NODE_NAME}", "--v=1"],
                                      stdout=self._log, stderr=self._log)
        return self

    def run_static_pod(self, container: str, command: list[str], memory_bytes: int, namespace: str,
                       containerd: Containerd, timeout: float = 240) -> tuple[str, str]:
        """Write the manifest, wait until the kubelet's container runs; its pod sandbox id and container id."""
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD_NAME, "namespace": namespace},
               "spec": {"hostNetwork": True, "restartPolicy": "Never", "containers": [{
                   "name": container, "image": IMAGE, "imagePullPolicy": "Never", "command": command,
                   "resources": {"limits": {"memory": str(memory_bytes)}}}]}}
        (self.dir / "manifests" / f"{POD_NAME}.json").write_text(json.dumps(pod))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"the kubelet exited {self._proc.returncode}:\n{self.log_tail()}")
            r = containerd.crictl("ps", "--namespace", namespace, "--name", f"^{container}$", "--state", "running",
                                  "-o", "json", check=False)
            found = json.loads(r.stdout or "{}").get("containers") or []
            if found:
                return found[0]["podSandboxId"], found[0]["id"]
            time.sleep(0.5)
        raise RuntimeError(f"the kubelet's container did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join((self.dir / "kubelet.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __exit__(self, *exc: object) -> None:
        # nsenter forks to enter the PID namespace: signal the kubelet itself, found by its own config path
        for pid in pids_of(b"kubelet", str(self.dir / "kubelet.json")):
            os.kill(pid, 15)
        if self._proc is not None:
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
