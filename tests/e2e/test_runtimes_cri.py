"""Real containerd pods (CRI) OOM-killed for real; the agent names them from the CRI socket.

containerd (Debian 1.6, its CRI plugin, runc) gets pods through crictl with the cgroup parents the
kubelet uses for the cgroupfs driver (`/kubepods/burstable/pod<uid>`), and a 32 MiB container whose
static victim allocates until it is OOM-killed. A real agent with `--cri-socket` ships the kill to a
real OTLP receiver; the test asserts the pod name, namespace, uid, container name, image and id
the CRI was given — also when the pod is removed right after the kill. The systemd driver: see
tests/test_runtimes_systemd.py and docs/runtimes.md.
"""
from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import require, require_root_bpf, require_tool

from otel_oom.attribution.runtime.cri import CriClient
from testing.containerd import CRICTL, Containerd
from testing.images import VICTIM_COMM

pytestmark = pytest.mark.root
MiB = 1 << 20
NO_OTHER_RUNTIMES = ["--docker-socket=none", "--podman-socket=none"]
NAMESPACE = "otel-oom-wt12-shop"


@pytest.fixture(scope="module")
def containerd():
    require_root_bpf()
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "clang"):
        require_tool(tool)
    require(CRICTL.exists(), f"needs crictl {CRICTL} (make crictl)")
    c = Containerd(Path(tempfile.mkdtemp(prefix="otel-oom-wt12-containerd-")))
    try:
        yield c.start()
    finally:
        c.close()


def _kill(rec: dict, cid: str) -> bool:
    """The container's oom.kill (not the records around it: pressure in its cgroup, the reclaim)."""
    return rec["event_name"] == "oom.kill" and rec["attributes"].get("container.id") == cid


def _record_for_container(receiver, cid: str, timeout: float = 20.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(_kill(r, cid) for r in recs), timeout)
    return next(r for r in receiver.log_records() if _kill(r, cid))


def _wait_exited(containerd: Containerd, cid: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while containerd.container_state(cid) != "CONTAINER_EXITED":
        assert time.monotonic() < deadline, f"container {cid} still {containerd.container_state(cid)}"
        time.sleep(0.05)


def test_a_killed_pod_container_carries_its_pod_names_even_when_removed_right_after(containerd, receiver,
                                                                                   start_agent):
    agent = start_agent(["--console", f"--cri-socket={containerd.socket}", *NO_OTHER_RUNTIMES], receiver.endpoint)
    uid = str(uuid.uuid4())
    pod_name = f"checkout-{uuid.uuid4().hex[:5]}"
    pod = containerd.run_pod(pod_name, NAMESPACE, uid, f"/kubepods/burstable/pod{uid}")
    cid = containerd.create_container(pod, "api", ["/victim", "alloc", "2500"], 32 * MiB, attempt=3)
    containerd.crictl("start", cid)
    _wait_exited(containerd, cid)
    # the kubelet would now delete the pod: the names must already be on the way
    containerd.remove_pod(pod)
    assert containerd.crictl("ps", "-a", "-q", "--id", cid).stdout.strip() == ""

    rec = _record_for_container(receiver, cid)
    a = rec["attributes"]
    assert a["container.id"] == cid
    assert a["oom.victim.cgroup.path"] == f"/kubepods/burstable/pod{uid}/{cid}"
    assert a["container.runtime.name"] == "containerd"  # the cgroupfs path has none: the CRI's Version says
    assert a["k8s.pod.uid"] == uid
    assert a["oom.victim.pod.qos_class"] == "burstable"
    assert a["k8s.pod.name"] == pod_name
    assert a["k8s.namespace.name"] == NAMESPACE
    assert a["k8s.container.name"] == "api"
    assert a["container.name"] == "api"
    assert a["k8s.container.restart_count"] == 3  # the CRI attempt: the kubelet's restart count
    assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
    assert a["container.image.tags"] == ["1"]
    assert a["container.image.id"].startswith("sha256:")
    assert a["oom.names.source"] == "cache"
    assert a["process.executable.name"] == VICTIM_COMM
    assert a["oom.memcg.path"] == f"/kubepods/burstable/pod{uid}/{cid}"
    out = agent.wait_stdout(lambda s: f"pod={NAMESPACE}/{pod_name}" in s)
    assert f"Names:   pod={NAMESPACE}/{pod_name} container=api restarts=3 image=localhost/otel-oom-wt12-victim:1" in out
    assert agent.stop() == 0


def test_guaranteed_and_besteffort_pods_and_the_lookup_at_the_kill(containerd, receiver, start_agent):
    # refresh far apart: these containers are not listed before their kill; the lookup names them
    start_agent([f"--cri-socket={containerd.socket}", "--runtime-refresh=600", "--runtime-lookup-wait-ms=500",
                 *NO_OTHER_RUNTIMES], receiver.endpoint)
    time.sleep(1.0)
    cases = []
    for qos, parent in (("guaranteed", "/kubepods/pod{uid}"), ("besteffort", "/kubepods/besteffort/pod{uid}")):
        uid = str(uuid.uuid4())
        pod = containerd.run_pod(f"{qos}-job", NAMESPACE, uid, parent.format(uid=uid))
        cid = containerd.create_container(pod, "worker", ["/victim", "alloc", "0"], 32 * MiB)
        containerd.crictl("start", cid)
        cases.append((qos, uid, pod, cid))
    for qos, uid, pod, cid in cases:
        a = _record_for_container(receiver, cid)["attributes"]
        assert a["oom.victim.pod.qos_class"] == qos
        assert (a["k8s.pod.uid"], a["k8s.pod.name"], a["k8s.container.name"]) == (uid, f"{qos}-job", "worker")
        assert a["oom.names.source"] == "lookup"
        containerd.remove_pod(pod)


def test_the_cri_client_lists_what_crictl_created(containerd):
    """The runtime-built CRI messages against a real containerd: every field the agent reads."""
    uid = str(uuid.uuid4())
    pod = containerd.run_pod("lister", NAMESPACE, uid, f"/kubepods/besteffort/pod{uid}", attempt=1)
    cid = containerd.create_container(pod, "sidecar", ["/victim", "pause"], 64 * MiB, attempt=2)
    client = CriClient(containerd.socket)
    try:
        t0 = time.monotonic()
        listed = {n.container_id: n for n in client.list()}
        list_ms = (time.monotonic() - t0) * 1000
        assert client.runtime_name == "containerd"
        c = listed[cid]
        assert (c.pod_name, c.pod_namespace, c.pod_uid) == ("lister", NAMESPACE, uid)
        assert (c.name, c.k8s_container_name, c.restart_count) == ("sidecar", "sidecar", 2)
        assert c.image == "localhost/otel-oom-wt12-victim:1"
        sandbox = listed[pod]
        assert (sandbox.pod_name, sandbox.k8s_container_name) == ("lister", None)
        assert client.get(cid) == c
        assert client.get(pod) == sandbox
        assert client.get("0" * 64) is None
        print(f"CRI list of {len(listed)} entries: {list_ms:.1f} ms")
    finally:
        client.close()
        containerd.remove_pod(pod)
