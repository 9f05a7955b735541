"""A pod deleted right after its kill keeps its names on the kill record: the agent takes them from
the container runtime (CRI) at the kill, so they do not depend on the pod still existing when the
record reaches the Collector (whose k8s_attributes forgets a deleted pod after
pod_delete_grace_period, and never knew it after a Collector restart: docs/deploy.md)."""
from __future__ import annotations

import time
from pathlib import Path

import kube_fixtures as kf
import pytest

# the first test of a session starts the node (and may rebuild the image): minutes on a loaded machine
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def cluster(request):
    yield kf.shared_cluster(request)
    kf.done_with(request)


def oom_kills(memcg: Path) -> int:
    """The kernel's kill count in a cgroup v1 memory cgroup (memory.oom_control's oom_kill)."""
    try:
        for line in (memcg / "memory.oom_control").read_text().splitlines():
            key, value = line.split()
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def test_a_pod_deleted_right_after_its_kill_keeps_its_names_on_the_record(cluster):
    ns = kf.test_namespace(cluster, "deleted")
    try:
        name = "worker"
        c = kf.busybox_container(name, "sleep 3; exec dd if=/dev/zero of=/dev/null bs=20M", "16Mi")
        cluster.kubectl.apply(kf.pod("short-lived", ns, [c]))

        def running():
            p = kf.get_pod(cluster, "short-lived", ns)
            return p if kf.reported_status(p, name).get("containerID") else None

        p = cluster.kubectl.wait_until("the container to start", running, timeout=180)
        cid = kf.bare_id(kf.status_of(p, name)["containerID"])
        pod_memcg = Path("/sys/fs/cgroup/memory" + kf.pod_cgroup(cluster, p))
        # watch the kernel's counts (the container's cgroup goes soon after its kill, the pod's stays
        # until the kubelet cleans up), and delete the pod the moment it kills
        deadline = time.monotonic() + 60
        while oom_kills(pod_memcg / cid) == 0 and oom_kills(pod_memcg) == 0:
            assert time.monotonic() < deadline, "the container was not OOM-killed"
            time.sleep(0.01)
        cluster.kubectl.run("delete", "pod", "short-lived", "-n", ns, "--grace-period=0", "--force", "--wait=false")
        cluster.kubectl.wait_until("the pod to be gone", lambda: cluster.kubectl.get("pod", "short-lived", ns) is None,
                                   timeout=120)
        cluster.kubectl.wait_until("the kubelet to remove the pod's cgroup", lambda: not pod_memcg.exists(), timeout=120)

        rows = kf.wait_kills(cluster, p["metadata"]["uid"], 1)
        assert len(rows) == 1, rows
        rec = rows[0]
        kf.assert_names(rec, p, name, cid)
        # taken from the runtime: before the kill (its 1 s refresh) or asked at the kill
        assert rec["oom.names.source"] in ("cache", "lookup"), rec
        assert rec["container.runtime.name"] == "containerd"
    finally:
        cluster.kubectl.run("delete", "namespace", ns, "--wait=false", check=False)
