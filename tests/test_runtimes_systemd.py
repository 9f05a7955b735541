"""containerd's systemd cgroup driver, for real: pods in kubepods.slice, containers in
cri-containerd-<id>.scope, created by a real systemd and OOM-killed for real.

systemd is not PID 1 here, so `testing.systemd_ns` boots one as PID 1 of a private namespace rooted
at a throwaway cgroup, and containerd (SystemdCgroup = true) runs inside it; the agent runs on the
host and sees the systemd driver's layout below that cgroup (as on a kind node). See docs/runtimes.md.
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import require, require_root_bpf, require_tool

from testing.containerd import CRICTL, Containerd
from testing.images import VICTIM_COMM
from testing.otlp_receiver import OtlpGrpcReceiver
from testing.systemd_ns import SystemdNamespace

pytestmark = pytest.mark.root
MiB = 1 << 20
NAMESPACE = "otel-oom-wt12-shop"


@pytest.fixture(scope="module")
def systemd_containerd():
    require_root_bpf()
    for tool in ("containerd", "ctr", "runc", "nsenter", "unshare", "systemctl", "clang"):
        require_tool(tool)
    require(Path("/lib/systemd/systemd").exists(), "needs systemd (the binary; it need not be PID 1)")
    require(CRICTL.exists(), f"needs crictl {CRICTL} (make crictl)")
    workdir = Path(tempfile.mkdtemp(prefix="otel-oom-wt12-systemd-"))
    ns = SystemdNamespace(workdir).start()
    c = Containerd(workdir / "containerd", systemd_cgroup=True, launcher=ns.launcher)
    c.dir.mkdir()
    try:
        yield ns, c.start()
    finally:
        try:
            c.close()
        finally:
            ns.close()


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
        receiver.wait_for_logs(lambda recs: any(r["attributes"].get("container.id") == cid for r in recs), 20)
        containerd.remove_pod(pod)  # right after the kill
        a = next(r for r in receiver.log_records() if r["attributes"].get("container.id") == cid)["attributes"]
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
