"""Upstream's OOM cases (kubernetes test/e2e_node/oomkiller_linux_test.go, v1.34) on a real node,
as acceptance tests of the agent installed by the chart: each kill is queried back from
VictoriaLogs (real agent -> real Collector -> real VictoriaLogs) and must name the victim exactly
as the API server has it, name the limit that was hit, and agree with what the kubelet reports.

Upstream's pods, adapted: busybox as uid 999 with every capability dropped; limits 16-32 Mi
(upstream 15Mi); `dd bs=20M` over the limit. This machine has cgroup v1, where memory.oom.group
does not exist (it is cgroup v2 only): the kernel kills one process per OOM, so upstream's
"multi process container" is a container whose workers are each killed while it keeps running
(on v2 the kubelet sets memory.oom.group and the whole container goes, OOMKilled).
"""
from __future__ import annotations

from pathlib import Path

import kube_fixtures as kf
import pytest

from testing.kube.configs import KUBEPODS_MEMORY

# the first test of a session starts the node (and may rebuild the image): minutes on a loaded machine
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]
MiB = 1 << 20
DD = "dd if=/dev/zero of=/dev/null bs=20M"   # upstream's: a 20M block, over a 16Mi limit


@pytest.fixture(scope="module")
def cluster(request):
    yield kf.shared_cluster(request)
    kf.done_with(request)


@pytest.fixture
def ns(cluster):
    name = kf.test_namespace(cluster, "oom")
    yield name
    cluster.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def wait_pod(cluster, name, ns, what, probe, timeout=240.0):
    def check():
        p = kf.get_pod(cluster, name, ns)
        return p if probe(p) else None

    return cluster.kubectl.wait_until(what, check, timeout, interval=2.0,
                                      describe=lambda: cluster.kubectl.run("get", "pod", name, "-n", ns, "-o", "yaml",
                                                                           check=False).stdout[-3000:])


def worker_lines(cluster, name, ns):
    """What the container's shell said of its workers' exits (it also prints "Killed" for each)."""
    out = cluster.kubectl.run("logs", name, "-n", ns).stdout
    return [line for line in out.split() if line.startswith("worker")]


def container_memcg(cluster, p, container_id):
    return f"{kf.pod_cgroup(cluster, p)}/{container_id}"


def assert_kill(rec, cluster, p, container, container_id, limit):
    """Names as the API server has them; the limit hit is the one the pod's spec makes the kernel
    hit first (kf.limit_hit), and the kernel's own report agrees where it was printed."""
    kf.assert_names(rec, p, container, container_id)
    assert rec["event_name"] == "oom.kill"
    assert rec["process.executable.name"] == "dd"
    assert rec["oom.constraint"] == "memcg"
    assert rec["oom.memcg.path"] == kf.limit_hit(cluster, p, container_id)
    assert int(rec["oom.memcg.limit"]) == limit
    assert rec["oom.victim.cgroup.path"] == container_memcg(cluster, p, container_id)
    kernel = kf.kernel_oom_memcg(int(rec["process.pid"]))
    assert kernel in (None, rec["oom.memcg.path"])


def test_single_process_container_over_its_limit_each_kill_and_restart(cluster, ns):
    """upstream "single process container", restarted: killed twice (a counter in an emptyDir),
    then it runs; the kubelet's restartCount 2 and OOMKilled/137 match two records, one per
    container instance."""
    name = "oomkill-single-target-container"
    script = ("n=$(cat /state/kills 2>/dev/null || echo 0); echo $((n+1)) > /state/kills; "
              f'if [ "$n" -lt 2 ]; then sleep 1; exec {DD}; fi; exec sleep 86400')
    c = kf.busybox_container(name, script, "16Mi")
    c["volumeMounts"] = [{"name": "state", "mountPath": "/state"}]
    cluster.kubectl.apply(kf.pod("oomkill-target-pod", ns, [c], restart="OnFailure",
                                 volumes=[{"name": "state", "emptyDir": {}}]))
    p = wait_pod(cluster, "oomkill-target-pod", ns, "two restarts, then running",
                 lambda p: kf.reported_status(p, name).get("restartCount", 0) >= 2 and kf.is_running(p, name))
    s = kf.status_of(p, name)
    assert s["restartCount"] == 2
    assert s["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert s["lastState"]["terminated"]["exitCode"] == 137
    rows = kf.wait_kills(cluster, p["metadata"]["uid"], 2)
    assert len(rows) == 2, rows
    killed = {r["container.id"] for r in rows}
    assert len(killed) == 2                                             # one kill per container instance
    assert kf.bare_id(s["lastState"]["terminated"]["containerID"]) in killed
    assert kf.bare_id(s["containerID"]) not in killed                    # the running one was never killed
    for rec in rows:
        cid = rec["container.id"]
        assert_kill(rec, cluster, p, name, cid, 16 * MiB)


def test_init_container_over_its_limit(cluster, ns):
    """upstream "init container": the pod fails, its init container OOMKilled with 137."""
    name = "oomkill-target-init-container"
    init = kf.busybox_container(name, f"sleep 1 && {DD}", "16Mi")
    main = kf.busybox_container("busybox", "sleep 86400", None)
    cluster.kubectl.apply(kf.pod("initcontainer-oomkill-target-pod", ns, [main], init=[init]))
    p = wait_pod(cluster, "initcontainer-oomkill-target-pod", ns, "the pod to fail",
                 lambda p: p["status"].get("phase") == "Failed")
    s = kf.status_of(p, name)
    assert s["state"]["terminated"]["reason"] == "OOMKilled"
    assert s["state"]["terminated"]["exitCode"] == 137
    assert s["restartCount"] == 0
    rows = kf.wait_kills(cluster, p["metadata"]["uid"], 1)
    assert len(rows) == 1, rows
    cid = kf.bare_id(s["state"]["terminated"]["containerID"])
    assert_kill(rows[0], cluster, p, name, cid, 16 * MiB)
    assert "running" not in kf.status_of(p, "busybox")["state"]           # the app container never ran


def test_multi_process_container_each_killed_worker_reported_while_it_runs(cluster, ns):
    """upstream "multi process container" on cgroup v1: two workers over the limit, each killed
    by its own OOM; the container keeps running and the kubelet reports no termination at all."""
    name = "oomkill-multi-target-container"
    script = (f"sleep 1; {DD} count=1 & a=$!; {DD} count=1 & b=$!; "
              "wait $a; echo worker-a=$?; wait $b; echo worker-b=$?; exec sleep 86400")
    cluster.kubectl.apply(kf.pod("oomkill-multi-pod", ns, [kf.busybox_container(name, script, "16Mi")]))
    wait_pod(cluster, "oomkill-multi-pod", ns, "both workers' exits in the log",
             lambda p: "worker-b=" in cluster.kubectl.run("logs", "oomkill-multi-pod", "-n", ns, check=False).stdout)
    assert worker_lines(cluster, "oomkill-multi-pod", ns) == ["worker-a=137", "worker-b=137"]
    p = kf.get_pod(cluster, "oomkill-multi-pod", ns)
    s = kf.status_of(p, name)
    assert "running" in s["state"] and s["restartCount"] == 0 and not s.get("lastState")
    rows = kf.wait_kills(cluster, p["metadata"]["uid"], 2)
    assert len(rows) == 2, rows
    assert len({r["process.pid"] for r in rows}) == 2
    cid = kf.bare_id(s["containerID"])
    for rec in rows:
        assert_kill(rec, cluster, p, name, cid, 16 * MiB)


def test_pod_without_limits_over_node_allocatable_hits_kubepods(cluster, ns):
    """upstream "pod using more memory than node allocatable": no limits; the limit hit is the
    node-allocatable cgroup's (kubepods, capacity minus kubeReserved: small here, see configs.py).
    upstream allocates 10 x 1024G under the kubelet's vm.overcommit_memory=1; the host keeps its
    own overcommit here, so one 1G block (more than kubepods' limit, far below the machine's)."""
    kubepods = f"{cluster.node.cgroup_root}/kubepods"
    limit = int(Path(f"/sys/fs/cgroup/memory{kubepods}/memory.limit_in_bytes").read_text())
    assert KUBEPODS_MEMORY - 4096 <= limit <= KUBEPODS_MEMORY
    name = "oomkill-nodeallocatable-container"
    c = kf.busybox_container(name, "sleep 1 && dd if=/dev/zero of=/dev/null bs=1G count=1", None)
    cluster.kubectl.apply(kf.pod("oomkill-nodeallocatable-pod", ns, [c]))
    p = wait_pod(cluster, "oomkill-nodeallocatable-pod", ns, "the pod to fail",
                 lambda p: p["status"].get("phase") == "Failed")
    assert p["status"]["qosClass"] == "BestEffort"
    s = kf.status_of(p, name)
    assert s["state"]["terminated"]["exitCode"] == 137
    assert s["state"]["terminated"]["reason"] == "OOMKilled"
    rows = kf.wait_kills(cluster, p["metadata"]["uid"], 1)
    assert len(rows) == 1, rows
    cid = kf.bare_id(s["state"]["terminated"]["containerID"])
    assert rows[0]["oom.memcg.path"] == kubepods
    assert_kill(rows[0], cluster, p, name, cid, limit)


def test_non_pid1_worker_killed_while_its_container_keeps_running(cluster, ns):
    """A worker (not the container's PID 1) over the limit: the kernel kills it, PID 1 carries on,
    the container stays Running with no restart: the kubelet reports nothing, the record is the
    only trace of the kill."""
    name = "app"
    script = "sleep 1; dd if=/dev/zero of=/dev/null bs=48M count=1; echo worker-exit=$?; exec sleep 86400"
    cluster.kubectl.apply(kf.pod("worker-killed-pod", ns, [kf.busybox_container(name, script, "32Mi")]))
    wait_pod(cluster, "worker-killed-pod", ns, "the worker's exit in the log",
             lambda p: "worker-exit=" in cluster.kubectl.run("logs", "worker-killed-pod", "-n", ns, check=False).stdout)
    assert worker_lines(cluster, "worker-killed-pod", ns) == ["worker-exit=137"]
    p = kf.get_pod(cluster, "worker-killed-pod", ns)
    s = kf.status_of(p, name)
    assert "running" in s["state"] and s["restartCount"] == 0 and not s.get("lastState")
    assert p["status"]["phase"] == "Running"
    cid = kf.bare_id(s["containerID"])
    init_pid = kf.container_init_pid(cluster, cid)
    rows = kf.wait_kills(cluster, p["metadata"]["uid"], 1)
    assert len(rows) == 1, rows
    assert_kill(rows[0], cluster, p, name, cid, 32 * MiB)
    assert int(rows[0]["process.pid"]) != init_pid and kf.alive(init_pid)
