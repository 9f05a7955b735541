"""The Dockerfile, built for real with podman and run with exactly the DaemonSet's privileges.

The image is built (`make image`, tools/image/build.sh) from a base made here (debootstrap +
`podman import`; no registry is reachable). The agent container gets the pod spec of
deploy/daemonset.yaml translated field by field into podman flags (testing/daemonset_podman.py: host PID,
the securityContext, every hostPath read-only as in the manifest, the spool hostPath writable);
the one deviation is the network: host network instead of a pod network, so it reaches a
receiver on this machine's loopback. A second, ordinary container with a 64 MiB memory limit is
then OOM-killed by the kernel, and the agent must report that kill, attributed to that container.

seccomp `RuntimeDefault`: Debian 12's podman 4.3 default profile allows bpf() and
perf_event_open() only with CAP_SYS_ADMIN (it predates CAP_BPF and CAP_PERFMON); containerd's
and Docker's current default profiles allow them with CAP_BPF / CAP_PERFMON. So the agent is run
once with podman's profile as it is (it must refuse to start with one clear line, as
docs/deploy.md says), and then with that same profile amended the way current runtimes amend
theirs (testing/daemonset_podman.py), standing for the RuntimeDefault of a current node.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import require, require_root_bpf

from testing.agent_process import REPO
from testing.daemonset_podman import IMAGE_PREFIX, pod_security_args, podman, seccomp_default_with_bpf_caps
from testing.otlp_receiver import OtlpGrpcReceiver, free_port

MiB = 1 << 20
CAPS = {"BPF": 39, "PERFMON": 38, "SYSLOG": 34}
pytestmark = pytest.mark.root


def _build(script: str) -> str:
    r = subprocess.run([str(REPO / "tools" / "image" / script)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def images() -> tuple[str, str]:
    """(agent image, base image); built by `make image` before the tests, a cache hit here."""
    require_root_bpf()
    import shutil
    require(shutil.which("podman") is not None and shutil.which("debootstrap") is not None,
            "needs podman and debootstrap (apt-get install podman debootstrap)")
    return _build("build.sh"), _build("build-base.sh")


def manifest_pod() -> dict:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "daemonset.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]


def test_the_image_is_small_and_ships_no_build_tools(images):
    agent, _ = images
    info = json.loads(podman("image", "inspect", agent).stdout)[0]
    cfg = info["Config"]
    assert cfg["Entrypoint"] == ["otel-oom"] and cfg["Cmd"] == ["run"]
    assert cfg.get("User", "root") in ("root", "0", "")
    assert any(e.startswith("PATH=/opt/otel-oom/bin:") for e in cfg["Env"])
    print(f"\nimage {agent}: {info['Size']} bytes ({info['Size'] / MiB:.0f} MiB)")
    found = podman("run", "--rm", "--network=none", "--entrypoint=/bin/sh", agent, "-c",
                   "for t in clang llc gcc cc make bpftool pip pip3; do command -v $t; done; "
                   "ls /opt/otel-oom/lib/python3*/site-packages/otel_oom/bpf/oomkill.*.bpf.o", check=False)
    lines = found.stdout.split()
    # no build tool, and the objects for both architectures (the loader picks by uname -m)
    assert sorted(line.rsplit("/", 1)[1] for line in lines) == ["oomkill.aarch64.bpf.o", "oomkill.x86_64.bpf.o"], (
        found.stdout + found.stderr)
    version = podman("run", "--rm", "--network=none", agent, "--version", check=False)
    assert version.returncode == 0 and "0.1.0" in version.stdout + version.stderr, version


def test_with_this_podmans_own_seccomp_default_auto_falls_back_to_the_kernel_log_and_says_why(images, tmp_path):
    agent_image, _ = images
    name = f"{IMAGE_PREFIX}agent-eperm-{secrets.token_hex(3)}"
    pod = manifest_pod()
    security = pod_security_args(pod, host_paths={"/var/lib/otel-oom": str(tmp_path / "node")})
    args = [a if not a.startswith("--listen=") else f"--listen=127.0.0.1:{free_port()}"
            for a in pod["containers"][0]["args"]]
    try:
        pinned = podman("run", "--rm", "--network=none", *security, agent_image, *args, "--no-otlp",
                        "--backend=libbpf", check=False, timeout=120)
        podman("run", "-d", f"--name={name}", "--network=none", *security, agent_image, *args, "--no-otlp")
        deadline = time.monotonic() + 120
        while " ready in " not in (logs := podman("logs", name, check=False).stderr) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert podman("stop", "--time=15", name).returncode == 0
        code = json.loads(podman("inspect", name).stdout)[0]["State"]["ExitCode"]
    finally:
        podman("rm", "-f", name, check=False)
    # libbpf asked for: one line saying why, exit 1
    assert pinned.returncode != 0, pinned
    last = pinned.stderr.strip().splitlines()[-1]
    assert last.startswith("otel-oom: error: every hook plan failed") and "EPERM" in last, pinned.stderr
    # auto: the kernel log instead, with one warning saying why, and a clean stop
    warnings = [line for line in logs.splitlines() if "eBPF cannot be used on this node" in line]
    assert len(warnings) == 1 and "every hook plan failed" in warnings[0] and "EPERM" in warnings[0], logs
    assert "backend kmsg (no BPF)" in logs and code == 0, logs
    assert "Traceback" not in logs + pinned.stderr

def _memory_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    raise AssertionError(f"pid {pid} has no memory cgroup (v1) line")


def _wait_for_worker(memcg: Path, main_pid: int, timeout: float = 20) -> int:
    """The host pid of the container's python3 worker (the one that will be killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in map(int, (memcg / "cgroup.procs").read_text().split()):
            try:
                if pid != main_pid and Path(f"/proc/{pid}/comm").read_text().strip() == "python3":
                    return pid
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no python3 worker appeared in {memcg}")


def _mount_options(pid: int) -> dict[str, set[str]]:
    """mount point -> its per-mount options, as the process sees them (/proc/<pid>/mountinfo)."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = set(fields[5].split(","))
    return out


def _cap_eff(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def test_the_agent_container_catches_a_kill_in_another_container(images, tmp_path):
    agent_image, base_image = images
    suffix = secrets.token_hex(3)
    agent_name, victim_name = f"{IMAGE_PREFIX}agent-{suffix}", f"{IMAGE_PREFIX}victim-{suffix}"
    pod = manifest_pod()
    (c,) = pod["containers"]
    spool = tmp_path / "node-var-lib-otel-oom"
    security = pod_security_args(pod, host_paths={"/var/lib/otel-oom": str(spool)},
                                 runtime_default_seccomp=seccomp_default_with_bpf_caps(tmp_path / "seccomp.json"))
    port = free_port()
    args = [a if not a.startswith("--listen=") else f"--listen=127.0.0.1:{port}" for a in c["args"]] + ["--json"]
    with OtlpGrpcReceiver() as receiver:
        env = {"K8S_NODE_NAME": "node-image-test", "HOST_IP": "127.0.0.1", "POD_IP": "127.0.0.1",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_RESOURCE_ATTRIBUTES": "k8s.node.name=node-image-test",
               "OTEL_OOM_RUNTIME_ROOT": "/host"}
        assert set(env) == {e["name"] for e in c["env"]}, "the manifest's env changed: update this test"
        try:
            run = podman("run", "-d", f"--name={agent_name}", "--network=host", *security,
                         *(f"--env={k}={v}" for k, v in env.items()), agent_image, *args)
            agent_id = run.stdout.strip()
            ready = _wait_ready(f"http://127.0.0.1:{port}/readyz", agent_name)
            assert ready, podman("logs", agent_name, check=False).stderr
            # the privileges it really has: exactly the three capabilities, no new privileges
            agent_pid = int(podman("inspect", "--format={{.State.Pid}}", agent_name).stdout)
            assert _cap_eff(agent_pid) == sum(1 << bit for bit in CAPS.values())
            assert "NoNewPrivs:\t1" in Path(f"/proc/{agent_pid}/status").read_text()
            ro = podman("exec", agent_name, "python3", "-c", "open('/x', 'w')", check=False)
            assert ro.returncode != 0 and "Read-only file system" in ro.stderr, ro
            mounts = _mount_options(agent_pid)
            for path in ("/", "/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing", "/dev/kmsg",
                         "/etc/machine-id", "/host/run"):
                assert "ro" in mounts[path], (path, mounts[path])
            assert "rw" in mounts["/var/lib/otel-oom"] and "rw" in mounts["/tmp"]

            victim_id, victim_pid = _oom_kill_in_a_container(base_image, victim_name)

            receiver.wait_for_logs(lambda recs: any(r["attributes"].get("process.pid") == victim_pid for r in recs), 20)
            rec = next(r for r in receiver.log_records() if r["attributes"].get("process.pid") == victim_pid)
            a = rec["attributes"]
            assert a["container.id"] == victim_id
            assert a["container.runtime.name"] == "podman"
            assert a["process.executable.name"] == "python3"
            assert a["oom.constraint"] == "memcg" and a["oom.memcg.limit"] == 64 * MiB
            assert a["oom.victim.cgroup.path"].endswith(f"libpod-{victim_id}")
            assert "k8s.pod.uid" not in a
            assert rec["resource"]["k8s.node.name"] == "node-image-test"
            # the same kill on the agent's stdout (--json), and in its spool on the "node"
            out = podman("logs", agent_name).stdout
            assert any(json.loads(line).get("process.pid") == victim_pid for line in out.splitlines()
                       if line.startswith("{")), out
            assert (spool / "spool").is_dir() and any((spool / "spool").iterdir())
            stop = podman("stop", "--time=15", agent_name)
            assert stop.returncode == 0
            code = json.loads(podman("inspect", agent_name).stdout)[0]["State"]["ExitCode"]
            logs = podman("logs", agent_name).stderr
            assert code == 0, logs
            assert "Traceback" not in logs and "hooks victim=" in logs, logs
        finally:
            podman("rm", "-f", agent_name, victim_name, check=False)
    assert agent_id


def _oom_kill_in_a_container(base_image: str, victim_name: str) -> tuple[str, int]:
    """An ordinary container, 64 MiB limit, no swap: its main process (sh) keeps running while a
    worker process in it allocates past the limit -- the kill Kubernetes does not report, since the
    container does not die. Returns (container id, the killed worker's host pid)."""
    victim = podman("run", "-d", f"--name={victim_name}", "--network=none", "--memory=64m",
                    "--memory-swap=64m", base_image, "sh", "-c",
                    "python3 -c \"import time; time.sleep(3); chunks = []\n"
                    "while True: chunks.append(bytearray(1 << 20)); chunks[-1][::4096] = b'x' * 256\"; "
                    "exec sleep 600")
    victim_id = victim.stdout.strip()
    main_pid = int(podman("inspect", "--format={{.State.Pid}}", victim_name).stdout)
    memcg = Path("/sys/fs/cgroup/memory") / _memory_cgroup(main_pid).lstrip("/")
    victim_pid = _wait_for_worker(memcg, main_pid)
    deadline = time.monotonic() + 90
    while Path(f"/proc/{victim_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # the kernel's own count for that container's memory cgroup: one OOM kill
    assert "oom_kill 1" in (memcg / "memory.oom_control").read_text().splitlines()
    assert podman("inspect", "--format={{.State.Running}}", victim_name).stdout.strip() == "true"
    return victim_id, victim_pid


def _wait_ready(url: str, name: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if podman("inspect", "--format={{.State.Running}}", name, check=False).stdout.strip() != "true":
            return False
        time.sleep(0.3)
    return False


def chart_pod(*values: str) -> dict:
    """The agent's pod spec as the Helm chart renders it with `values`."""
    helm = subprocess.run([str(REPO / "tools" / "helm" / "build.sh"), "--check"], capture_output=True, text=True)
    require(helm.returncode == 0, "needs helm: make helm")
    chart = str(REPO / "deploy" / "helm" / "otel-oom")
    out = subprocess.run([helm.stdout.strip().splitlines()[-1], "template", "otel-oom", chart, *values],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    ds = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]


def test_the_charts_kmsg_mode_catches_a_kill_where_bpf_is_refused(images, tmp_path):
    """agent.backend=kmsg under this podman's own seccomp default, which refuses bpf() without
    CAP_SYS_ADMIN: the image runs, with CAP_SYSLOG as its only capability, and reports a kill in
    another container from the kernel log, attributed to that container."""
    agent_image, base_image = images
    suffix = secrets.token_hex(3)
    agent_name, victim_name = f"{IMAGE_PREFIX}agent-kmsg-{suffix}", f"{IMAGE_PREFIX}victim-kmsg-{suffix}"
    pod = chart_pod("--set", "agent.backend=kmsg")
    (c,) = pod["containers"]
    spool = tmp_path / "node-var-lib-otel-oom"
    security = pod_security_args(pod, host_paths={"/var/lib/otel-oom": str(spool)})
    port = free_port()
    args = [a if not a.startswith("--listen=") else f"--listen=127.0.0.1:{port}" for a in c["args"]]
    assert "--backend=kmsg" in args
    with OtlpGrpcReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
               "OTEL_RESOURCE_ATTRIBUTES": "k8s.node.name=node-kmsg-test", "OTEL_OOM_RUNTIME_ROOT": "/host"}
        try:
            podman("run", "-d", f"--name={agent_name}", "--network=host", *security,
                   *(f"--env={k}={v}" for k, v in env.items()), agent_image, *args)
            assert _wait_ready(f"http://127.0.0.1:{port}/readyz", agent_name), podman("logs", agent_name,
                                                                                     check=False).stderr
            agent_pid = int(podman("inspect", "--format={{.State.Pid}}", agent_name).stdout)
            assert _cap_eff(agent_pid) == 1 << CAPS["SYSLOG"]
            # bpf() really is refused in there (EPERM from the seccomp profile, EINVAL if it were allowed)
            probe = podman("exec", agent_name, "python3", "-c",
                           "import ctypes, errno, platform; libc = ctypes.CDLL(None, use_errno=True); "
                           "nr = {'x86_64': 321, 'aarch64': 280}[platform.machine()]; "
                           "libc.syscall(nr, 0, 0, 0); print(errno.errorcode[ctypes.get_errno()])")
            assert probe.stdout.strip() == "EPERM", probe
            victim_id, victim_pid = _oom_kill_in_a_container(base_image, victim_name)
            receiver.wait_for_logs(lambda recs: any(r["attributes"].get("process.pid") == victim_pid for r in recs), 30)
            rec = next(r for r in receiver.log_records() if r["attributes"].get("process.pid") == victim_pid)
            a = rec["attributes"]
            assert (a["oom.hook"], a["container.id"], a["process.executable.name"]) == ("kmsg", victim_id, "python3")
            assert a["oom.victim.cgroup.path"].endswith(f"libpod-{victim_id}")
            assert podman("stop", "--time=15", agent_name).returncode == 0
            code = json.loads(podman("inspect", agent_name).stdout)[0]["State"]["ExitCode"]
            logs = podman("logs", agent_name).stderr
            assert code == 0, logs
            assert "Traceback" not in logs and "backend kmsg (no BPF)" in logs, logs
        finally:
            podman("rm", "-f", agent_name, victim_name, check=False)
