"""A real docker engine (Debian's dockerd 20.10): containers OOM-killed for real, named from its API.

Also a container made the way cri-dockerd makes a pod's (kubelet labels, the pod's cgroup parent):
the agent takes the pod's names from the labels. See docs/runtimes.md.
"""
from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import require, require_root_bpf, require_tool

from testing.docker import IMAGE, Docker, dockerd_root
from testing.images import VICTIM_COMM
from testing.otlp_receiver import OtlpGrpcReceiver

pytestmark = pytest.mark.root
NO_OTHER_RUNTIMES = ["--cri-socket=none", "--podman-socket=none"]


@pytest.fixture(scope="module")
def docker():
    require_root_bpf()
    for tool in ("containerd", "runc", "clang"):
        require_tool(tool)
    root = dockerd_root()
    require(root is not None, "needs dockerd unpacked by `make dockerd`")
    d = Docker(Path(tempfile.mkdtemp(prefix="otel-oom-wt12-docker-")), root)  # type: ignore[arg-type]
    try:
        yield d.start()
    finally:
        d.close()


def _kill(rec: dict, cid: str) -> bool:
    """The container's oom.kill (not the records around it: pressure in its cgroup, the reclaim)."""
    return rec["event_name"] == "oom.kill" and rec["attributes"].get("container.id") == cid


def _record_for_container(receiver, cid: str, timeout: float = 20.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(_kill(r, cid) for r in recs), timeout)
    return next(r for r in receiver.log_records() if _kill(r, cid))


def test_docker_containers_are_named_and_a_cri_dockerd_pod_by_its_labels(docker, start_agent):
    with OtlpGrpcReceiver() as receiver:
        agent = start_agent(["--console", f"--docker-socket={docker.socket}", *NO_OTHER_RUNTIMES], receiver.endpoint)
        name = docker.unique_name("web")
        cid = docker.cli("run", "-d", "--rm", "--name", name, "--memory", "32m", "--memory-swap", "32m",
                         "--network", "none", IMAGE, "/victim", "alloc", "2000").stdout.strip()
        uid = str(uuid.uuid4())
        pod_name = f"k8s_api_checkout-7d9f_otel-oom-wt12-shop_{uid}_2"
        labels = {"io.kubernetes.pod.name": "checkout-7d9f", "io.kubernetes.pod.namespace": "otel-oom-wt12-shop",
                  "io.kubernetes.pod.uid": uid, "io.kubernetes.container.name": "api",
                  "annotation.io.kubernetes.container.restartCount": "2"}
        pod_cid = docker.cli("run", "-d", "--name", pod_name, "--memory", "32m", "--memory-swap", "32m",
                             "--network", "none", "--cgroup-parent", f"/kubepods/burstable/pod{uid}",
                             *[f"--label={k}={v}" for k, v in labels.items()],
                             IMAGE, "/victim", "alloc", "2000").stdout.strip()
        try:
            a = _record_for_container(receiver, cid)["attributes"]
            assert (a["container.id"], a["container.runtime.name"], a["container.name"]) == (cid, "docker", name)
            assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
            assert a["oom.names.source"] == "cache"
            assert a["oom.victim.cgroup.path"] == f"/docker/{cid}"
            assert a["process.executable.name"] == VICTIM_COMM
            deadline = time.monotonic() + 60
            while docker.exists(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not docker.exists(name), "docker --rm did not remove the container"

            p = _record_for_container(receiver, pod_cid)["attributes"]
            assert p["oom.victim.cgroup.path"] == f"/kubepods/burstable/pod{uid}/{pod_cid}"
            assert p["container.runtime.name"] == "docker"  # not in a cgroupfs path: from the socket that knew it
            assert (p["k8s.pod.name"], p["k8s.namespace.name"], p["k8s.pod.uid"]) == (
                "checkout-7d9f", "otel-oom-wt12-shop", uid)
            assert (p["k8s.container.name"], p["k8s.container.restart_count"]) == ("api", 2)
            assert p["container.name"] == pod_name
            out = agent.wait_stdout(lambda s: "pod=otel-oom-wt12-shop/checkout-7d9f" in s)
            assert "Names:   pod=otel-oom-wt12-shop/checkout-7d9f container=api restarts=2" in out
        finally:
            docker.cli("rm", "-f", pod_name, check=False)
            from testing.containerd import remove_cgroup_chain

            remove_cgroup_chain(f"/kubepods/burstable/pod{uid}")
