"""Inside a throwaway cgroup v2 QEMU guest: a real container under the systemd cgroup driver, OOM-killed,
named by the agent through the real CRI; judged by tests/qemu/test_cri_v2_qemu.py on the host.

`python3 -m tests.qemu.cri_v2_case --images DIR --out FILE` runs as root in a guest booted by
`harness.boot(cgroup="v2")` (the guest's cgroup2 root has every controller enabled, as a systemd
node's has). It:

1. boots Debian's systemd as PID 1 of new PID and mount namespaces (`GuestSystemd`). It needs no
   cgroup namespace: the guest is a throwaway, so systemd owns the guest's real cgroup2 root, moves
   itself into /init.scope and creates kubepods.slice and the scopes at the top of the hierarchy,
   exactly where a node's systemd does. runc's systemd driver reaches it as root over its private
   D-Bus socket, /run/systemd/private (no dbus-daemon: runc as root dials systemd directly);
2. starts Debian's containerd 1.6 (`testing.containerd`) inside those namespaces with runc's
   `SystemdCgroup = true`, and imports the images the host built (no registry);
3. has started, before all that, one real agent (libbpf backend, `--no-otlp --json`: the gRPC exporter's imports cost ~6 s
   under TCG; the CRI client is the agent's own, over containerd's socket, which appears after the
   agent started) in the guest's initial namespaces, as a DaemonSet with hostPID runs;
4. through crictl, with the kubelet's labels, runs a pod sandbox in a burstable pod slice and a
   container with a 32 MiB limit whose process sleeps, then allocates until the kernel kills it;
5. writes the agent's records, the container's scope (found in cgroupfs), the pid of its process
   there and that pid's NSpid chain, `crictl inspect`/`inspectp` and the scope's memory files.

Processes inside the namespace have two pids: the agent and the kernel report the guest's (initial
namespace) pid, crictl the one containerd sees; /proc/PID/status's NSpid links them.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from testing.agent_process import AgentProcess, agent_env
from testing.containerd import Containerd, pids_of
from tests.qemu.guest_cases import _refuse_outside_a_test_guest, progress

MiB = 1 << 20
NAMESPACE = "otel-oom-cgv2-shop"
POD_NAME = "checkout-v2"
CONTAINER_NAME = "api"
LIMIT = 32 * MiB
VICTIM_DELAY_MS = 5000  # the victim sleeps this long before allocating: its pid is read meanwhile
TARGET = "otel-oom-cgv2.target"

_SYSTEMD = r"""set -e
mount --make-rprivate /
mount -t proc proc /proc
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system
printf '[Unit]\nDescription=otel-oom cgroup v2 test target\nDefaultDependencies=no\n' > /run/systemd/system/{target}
export container=otel-oom-cgv2
exec /lib/systemd/systemd --unit={target} --log-target=console --show-status=no
"""


class GuestSystemd:
    """Debian's systemd as PID 1 of its own PID and mount namespaces, managing the guest's cgroup2 root.

    It starts only an empty target of ours (no unit of the host tree). `launcher` runs a command in
    its namespaces (nsenter with -r: the guest's command runs chrooted, and entering a mount namespace
    alone would land at the initramfs root)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.pid: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None

    @property
    def launcher(self) -> tuple[str, ...]:
        return ("nsenter", "-t", str(self.pid), "-m", "-p", "-r", "-w", "--")

    def start(self, timeout: float = 120) -> "GuestSystemd":
        script = self.dir / "systemd.sh"
        script.write_text(_SYSTEMD.format(target=TARGET))
        self._log = open(self.dir / "systemd.log", "wb")
        self._proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "sh", str(script)],
                                      stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while True:
            found = pids_of(b"systemd", f"--unit={TARGET}")
            if found:
                self.pid = found[0]
                r = subprocess.run([*self.launcher, "systemctl", "is-system-running"], capture_output=True, text=True)
                if r.stdout.strip() in ("running", "degraded"):
                    return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("systemd did not come up: " + self.log_tail())
            time.sleep(0.2)

    def log_tail(self) -> str:
        return (self.dir / "systemd.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)  # PID 1 of the namespace: the kernel ends everything inside
            except OSError:
                pass
        if self._proc is not None:
            self._proc.wait(30)
            self._log.close()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return f"<{e.strerror}>"


def _scope_of(cid: str) -> str:
    """The container's cgroup directory, found in cgroupfs (not built from what the driver should name it)."""
    hits = glob.glob(f"/sys/fs/cgroup/**/*{cid}*", recursive=True)
    if len(hits) != 1:
        raise RuntimeError(f"expected one cgroup named after container {cid}, found {hits}")
    return hits[0]


def _kill_record(agent: AgentProcess, pid: int) -> Optional[dict]:
    for line in list(agent.stdout_lines):
        doc = json.loads(line)
        if doc.get("event_name") == "oom.kill" and doc.get("process.pid") == pid:
            return doc
    return None


def _crictl_pod(containerd: Containerd, agent: AgentProcess) -> dict:
    """A pod made by crictl as the kubelet would make it (its cgroup parent, its metadata)."""
    uid = str(uuid.uuid4())
    pod_slice = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    pod = containerd.run_pod(POD_NAME, NAMESPACE, uid, pod_slice)
    cid = containerd.create_container(pod, CONTAINER_NAME, ["/victim", "alloc", str(VICTIM_DELAY_MS)], LIMIT)
    containerd.crictl("start", cid)
    doc = _observe(containerd, agent, pod, cid)
    doc.update(uid=uid, pod_slice=pod_slice)
    containerd.remove_pod(pod)
    return doc


def _observe(containerd: Containerd, agent: AgentProcess, pod: str, cid: str) -> dict:
    """A started container's scope and pid, what crictl says of it, the agent's record of its kill."""
    scope = _scope_of(cid)
    procs = [int(p) for p in _read(f"{scope}/cgroup.procs").split()]
    if len(procs) != 1:
        raise RuntimeError(f"expected the victim alone in {scope}, found pids {procs}")
    pid = procs[0]
    doc = dict(pod_id=pod, container_id=cid, pid=pid, scope=scope.removeprefix("/sys/fs/cgroup"),
               memory_max=_read(f"{scope}/memory.max").strip(),
               oom_group=_read(f"{scope}/memory.oom.group").strip(),
               pod_memory_max=_read(f"{os.path.dirname(scope)}/memory.max").strip(),
               nspid=[int(p) for p in _read(f"/proc/{pid}/status").split("NSpid:")[1].splitlines()[0].split()],
               inspect=json.loads(containerd.crictl("inspect", cid).stdout),
               inspectp=json.loads(containerd.crictl("inspectp", pod).stdout))
    progress(f"container {cid[:12]} pid {pid} in {doc['scope']}")
    deadline = time.monotonic() + 120
    while (rec := _kill_record(agent, pid)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    doc["record"] = rec
    doc["kills_of_pid"] = sum(1 for line in agent.stdout_lines if json.loads(line).get("process.pid") == pid
                              and json.loads(line).get("event_name") == "oom.kill")
    # the scope goes with its last process; the pod's slice counts its containers' kills (v2 events are
    # hierarchical)
    doc["pod_memory_events"] = _read(f"{os.path.dirname(scope)}/memory.events")
    deadline = time.monotonic() + 60  # containerd learns of the exit from the shim a moment later
    while (after := containerd.crictl("inspect", cid).stdout) and \
            json.loads(after)["status"]["state"] == "CONTAINER_RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    doc["inspect_after"] = json.loads(after)
    return doc


def run(images: str, out: str, kubelet: Optional[str] = None) -> dict:
    work = Path("/var/tmp/otel-oom-cgv2")
    work.mkdir(parents=True, exist_ok=True)
    doc: dict = {"release": os.uname().release, "cgroup_fs": _read("/proc/self/mountinfo")}
    t0 = time.monotonic()
    # the agent first, as a DaemonSet often is: it waits for containerd's socket to appear, and its
    # start-up (imports, BPF load) overlaps systemd's and containerd's
    pending = ThreadPoolExecutor(1).submit(
        AgentProcess, ["--backend", "libbpf", "--no-otlp", "--json", f"--cri-socket={work}/containerd/containerd.sock",
                       "--docker-socket=none", "--podman-socket=none", "--spool-dir", str(work / "spool")],
        agent_env(), ready_timeout=240)
    systemd = GuestSystemd(work).start()
    progress(f"systemd up as pid {systemd.pid}: {_read(f'/proc/{systemd.pid}/cgroup').strip()}")
    doc["systemd_version"] = subprocess.run([*systemd.launcher, "systemctl", "--version"], capture_output=True,
                                            text=True).stdout.splitlines()[0]
    containerd = Containerd(work / "containerd", systemd_cgroup=True, launcher=systemd.launcher)
    agent: Optional[AgentProcess] = None
    try:
        containerd.start(images=False)
        for archive in sorted(Path(images).glob("*.tar")):
            containerd.ctr("images", "import", str(archive))
        progress("containerd up, images imported")
        agent = pending.result()
        progress("agent ready")
        doc["crictl"] = _crictl_pod(containerd, agent)
        if kubelet:
            from tests.qemu.guest_kubelet import Kubelet

            with Kubelet(kubelet, work / "kubelet", containerd.socket, systemd.launcher) as k:
                pod, cid = k.run_static_pod(CONTAINER_NAME, ["/victim", "alloc", str(VICTIM_DELAY_MS)], LIMIT,
                                            NAMESPACE, containerd)
                progress("the kubelet's pod is up")
                doc["kubelet"] = _observe(containerd, agent, pod, cid)
                doc["kubelet"]["log"] = k.log_tail()
    except Exception as e:  # noqa: BLE001 - reported to the host test with the logs it needs
        doc["error"] = f"{type(e).__name__}: {e}"
    finally:
        if agent is not None:
            agent.stop()
            doc["agent_stderr"] = agent.stderr[-6000:]
            doc["agent_stdout"] = agent.stdout[-6000:]
        doc["containerd_log"] = containerd.log_tail(60)
        containerd.close()
        doc["systemd_log"] = systemd.log_tail()
        systemd.close()
    doc["seconds"] = round(time.monotonic() - t0, 1)
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(out + ".tmp", out)
    return doc


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.qemu.cri_v2_case", description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="directory of OCI archives to import (the victim and pause)")
    ap.add_argument("--out", required=True, help="where to write the JSON result (in the share dir)")
    ap.add_argument("--kubelet", help="also run this kubelet standalone (no API server) with a static pod")
    args = ap.parse_args(argv)
    why = _refuse_outside_a_test_guest()
    if why:
        print(f"cri_v2_case: error: {why}", file=sys.stderr)
        return 2
    doc = run(args.images, args.out, args.kubelet)
    print(json.dumps({"seconds": doc["seconds"], "error": doc.get("error")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
