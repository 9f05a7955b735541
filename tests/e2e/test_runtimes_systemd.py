"""The systemd cgroup driver, for real, with containerd (pods in kubepods.slice, containers in
cri-containerd-<id>.scope), docker (system.slice/docker-<id>.scope) and podman
(machine.slice/libpod-<id>.scope): scopes created by a real systemd, processes OOM-killed for real.

systemd is not PID 1 here, so `testing.systemd_ns` boots one as PID 1 of a private namespace rooted
at a throwaway cgroup, and the runtimes run inside it; the agent runs on the host and sees the
systemd driver's layout below that cgroup (as on a kind node). See docs/runtimes.md.
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import require, require_root_bpf, require_tool

from testing.containerd import CRICTL, Containerd
from testing.docker import IMAGE as DOCKER_IMAGE
from testing.docker import Docker, dockerd_root
from testing.images import VICTIM_COMM
from testing.otlp_receiver import OtlpGrpcReceiver
from testing.podman import IMAGE as PODMAN_IMAGE
from testing.podman import Podman
from testing.systemd_ns import SystemdNamespace

pytestmark = pytest.mark.root
MiB = 1 << 20
NAMESPACE = "otel-oom-wt12-shop"


@pytest.fixture(scope="module")
def systemd():
    require_root_bpf()
    for tool in ("containerd", "runc", "nsenter", "unshare", "systemctl", "clang"):
        require_tool(tool)
    require(Path("/lib/systemd/systemd").exists(), "needs systemd (the binary; it need not be PID 1)")
    ns = SystemdNamespace(Path(tempfile.mkdtemp(prefix="otel-oom-wt12-systemd-"))).start()
    try:
        yield ns
    finally:
        ns.close()


def _inside(ns: SystemdNamespace, what: str) -> Path:
    d = ns.dir / what
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def systemd_containerd(systemd):
    require_tool("ctr")
    require(CRICTL.exists(), f"needs crictl {CRICTL} (make crictl)")
    c = Containerd(_inside(systemd, "containerd"), systemd_cgroup=True, launcher=systemd.launcher)
    try:
        yield systemd, c.start()
    finally:
        c.close()


def _kill(rec: dict, cid: str) -> bool:
    """The container's oom.kill (not the records around it: pressure in its cgroup, the reclaim)."""
    return rec["event_name"] == "oom.kill" and rec["attributes"].get("container.id") == cid


def _record_for_container(receiver, cid: str, timeout: float = 20.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(_kill(r, cid) for r in recs), timeout)
    return next(r for r in receiver.log_records() if _kill(r, cid))


def test_a_pod_under_the_systemd_driver_is_named_from_the_cri(systemd_containerd, start_agent):
    ns, containerd = systemd_containerd
    with OtlpGrpcReceiver() as receiver:
        start_agent([f"--cri-socket={containerd.socket}", "--docker-socket=none", "--podman-socket=none"],
                    receiver.endpoint)
        uid = str(uuid.uuid4())
        slice_ = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        pod = containerd.run_pod("checkout-sd", NAMESPACE, uid, slice_)
        cid = containerd.create_container(pod, "api", ["/victim", "alloc", "2500"], 32 * MiB)
        containerd.crictl("start", cid)
        receiver.wait_for_logs(lambda recs: any(_kill(r, cid) for r in recs), 20)
        containerd.remove_pod(pod)  # right after the kill
        a = next(r for r in receiver.log_records() if _kill(r, cid))["attributes"]
        assert a["oom.victim.cgroup.path"] == (f"{ns.cgroup_prefix()}/kubepods.slice/kubepods-burstable.slice/"
                                               f"{slice_}/cri-containerd-{cid}.scope")
        assert a["container.runtime.name"] == "containerd"
        assert a["k8s.pod.uid"] == uid
        assert a["oom.victim.pod.qos_class"] == "burstable"
        assert (a["k8s.pod.name"], a["k8s.namespace.name"], a["k8s.container.name"]) == ("checkout-sd", NAMESPACE,
                                                                                       "api")
        assert a["container.name"] == "api"
        assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
        assert a["oom.names.source"] == "cache"
        assert a["process.executable.name"] == VICTIM_COMM
        assert a["oom.memcg.limit"] == 32 * MiB  # the limit runc set through systemd's scope


def test_docker_under_the_systemd_driver(systemd, start_agent):
    root = dockerd_root()
    require(root is not None, "needs dockerd unpacked by `make dockerd`")
    docker = Docker(_inside(systemd, "docker"), root, cgroup_driver="systemd",  # type: ignore[arg-type]
                    launcher=systemd.launcher)
    try:
        docker.start()
        with OtlpGrpcReceiver() as receiver:
            start_agent([f"--docker-socket={docker.socket}", "--cri-socket=none", "--podman-socket=none"],
                        receiver.endpoint)
            name = docker.unique_name("sd")
            cid = docker.cli("run", "-d", "--rm", "--name", name, "--memory", "32m", "--memory-swap", "32m",
                             "--network", "none", DOCKER_IMAGE, "/victim", "alloc", "2000").stdout.strip()
            a = _record_for_container(receiver, cid)["attributes"]
            assert a["oom.victim.cgroup.path"] == f"{systemd.cgroup_prefix()}/system.slice/docker-{cid}.scope"
            assert (a["container.runtime.name"], a["container.name"]) == ("docker", name)
            assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
            assert a["oom.names.source"] == "cache"
            assert a["oom.memcg.limit"] == 32 * MiB
    finally:
        docker.close()


def test_podman_under_the_systemd_driver(systemd, start_agent):
    require_tool("podman")
    podman = Podman(_inside(systemd, "podman"), cgroup_manager="systemd", launcher=systemd.launcher)
    try:
        podman.start()
        with OtlpGrpcReceiver() as receiver:
            start_agent([f"--podman-socket={podman.socket}", "--cri-socket=none", "--docker-socket=none"],
                        receiver.endpoint)
            name = podman.unique_name("sd")
            cid = podman.run("run", "-d", "--rm", "--name", name, "--memory", "32m", "--memory-swap", "32m",
                             "--network", "none", PODMAN_IMAGE, "/victim", "alloc", "2000").stdout.strip()
            a = _record_for_container(receiver, cid)["attributes"]
            assert a["oom.victim.cgroup.path"] == f"{systemd.cgroup_prefix()}/machine.slice/libpod-{cid}.scope"
            assert (a["container.runtime.name"], a["container.name"]) == ("podman", name)
            assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
            assert a["oom.names.source"] == "cache"
            assert a["oom.memcg.limit"] == 32 * MiB
    finally:
        podman.close()
