"""Shared by the tests in tests/e2e/kube: one real single-node cluster per test session.

No conftest.py here on purpose: a second conftest module would shadow tests/conftest.py for every
`from conftest import require`. Each test module instead declares

    @pytest.fixture(scope="module")
    def cluster(request):
        yield kube_fixtures.shared_cluster(request)
        kube_fixtures.done_with(request)

The first call starts the node (testing/kube, what `make kube-up` runs: node Ready, the chart
installed with the node-local Collector, VictoriaLogs and Prometheus); it is stopped, asserting
that it left nothing behind, after the last module that uses it, so the rest of a `make test`
session runs without it (and at the session's end at the latest).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Optional

from conftest import require, require_root_bpf

from testing.kube import chart, tools
from testing.kube.backends import LogsQL
from testing.kube.cluster import Cluster
from testing.kube.images import BUSYBOX_IMAGE
from testing.kube.layout import Node

MiB = 1 << 20
NODE = Node("e2e")
_shared: dict = {}


def found_tools() -> tools.Tools:
    require_root_bpf()
    try:
        return tools.find(build=False, build_image=True)
    except tools.MissingTool as e:
        require(False, f"needs the single-node Kubernetes' tools: {e}")
        raise


def shared_cluster(request) -> Cluster:
    require(Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists(),
            "these tests read cgroup v1 memory files (/sys/fs/cgroup/memory)")
    if "failed" in _shared:
        raise RuntimeError(f"the session's node did not start: {_shared['failed']}")
    if "cluster" not in _shared:
        cluster = Cluster(NODE, found_tools())
        request.session.addfinalizer(cluster.down)   # down() raises if anything is left behind
        try:
            cluster.up()
            chart.install(cluster)
        except BaseException as e:
            _shared["failed"] = e
            raise
        _shared["cluster"] = cluster
    cluster = _shared["cluster"]
    if not chart.installed(cluster):   # a failed chart test left it uninstalled
        chart.install(cluster)
    return cluster


def done_with(request) -> None:
    """Stop the shared node if no test after this module's uses it."""
    items = request.session.items
    mine = [i for i, item in enumerate(items) if item.path == request.path]
    later = items[max(mine) + 1:] if mine else []
    if "cluster" in _shared and not any(item.path.parent == request.path.parent and "cluster" in item.fixturenames
                                        for item in later):
        _shared.pop("cluster").down()


def test_namespace(cluster: Cluster, prefix: str) -> str:
    """A fresh namespace for one test's pods (deleted by the test, or with the node)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})  # retried if slow
    # the API server refuses pods until the controller manager made the namespace's default service
    # account (a moment later, longer on a loaded machine): wait for it, as upstream's e2e framework does
    cluster.kubectl.wait_until(f"the default service account of {name}",
                               lambda: cluster.kubectl.get("serviceaccount", "default", namespace=name), timeout=180)
    return name


def busybox_container(name: str, script: str, memory: Optional[str]) -> dict:
    """upstream's OOM target container (test/e2e_node/oomkiller_linux_test.go): busybox as uid 999,
    every capability dropped, RuntimeDefault seccomp; requests = limits = `memory` if given."""
    c: dict = {
        "name": name, "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", script],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "allowPrivilegeEscalation": False,
                            "runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if memory:
        c["resources"] = {"requests": {"memory": memory}, "limits": {"memory": memory}}
    return c


def pod(name: str, namespace: str, containers: list[dict], init: Optional[list[dict]] = None,
        restart: str = "Never", volumes: Optional[list[dict]] = None) -> dict:
    spec: dict = {"restartPolicy": restart, "containers": containers, "terminationGracePeriodSeconds": 1}
    if init:
        spec["initContainers"] = init
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def get_pod(cluster: Cluster, name: str, namespace: str) -> dict:
    p = cluster.kubectl.get("pod", name, namespace)
    assert p is not None, f"pod {namespace}/{name} is gone"
    return p


def status_of(p: dict, container: str) -> dict:
    statuses = p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", [])
    found = [s for s in statuses if s["name"] == container]
    assert found, (container, json.dumps(p["status"])[:2000])
    return found[0]


def reported_status(p: dict, container: str) -> dict:
    """For probes: the container's status, or {} while the kubelet has not reported it yet (a pod
    just scheduled has no containerStatuses until its sandbox is up: a loaded node takes a while)."""
    statuses = p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", [])
    return next((s for s in statuses if s["name"] == container), {})


def is_running(p: dict, container: str) -> bool:
    return "running" in reported_status(p, container).get("state", {})


def bare_id(container_id: str) -> str:
    """containerd://<64 hex> -> <64 hex>"""
    return container_id.split("://", 1)[1]


def kills_of(pod_uid: str) -> str:
    """LogsQL: the pod's kill records (oom.event.id is on kill records only)."""
    return f'k8s.pod.uid:="{pod_uid}" oom.event.id:*'


def wait_kills(cluster: Cluster, pod_uid: str, count: int, timeout: float = 120.0) -> list[dict]:
    LogsQL(cluster.node).wait_for(kills_of(pod_uid), lambda r: len(r) >= count, timeout)
    # a moment more: a record beyond the expected count would be a wrong count, not a late one
    time.sleep(3)
    return LogsQL(cluster.node).query(kills_of(pod_uid))


def assert_names(rec: dict, p: dict, container: str, container_id: str) -> None:
    """The record names the victim exactly as the API server has it."""
    meta = p["metadata"]
    got = {k: rec.get(k) for k in ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.container.name",
                                   "container.id")}
    assert got == {"k8s.namespace.name": meta["namespace"], "k8s.pod.name": meta["name"], "k8s.pod.uid": meta["uid"],
                   "k8s.container.name": container, "container.id": container_id}, rec


def pod_cgroup(cluster: Cluster, p: dict) -> str:
    qos = p["status"]["qosClass"].lower()
    base = f"{cluster.node.cgroup_root}/kubepods"
    return f"{base}/pod{p['metadata']['uid']}" if qos == "guaranteed" else f"{base}/{qos}/pod{p['metadata']['uid']}"


def memory_limit(container: dict) -> Optional[str]:
    return container.get("resources", {}).get("limits", {}).get("memory")


def limit_hit(cluster: Cluster, p: dict, container_id: str) -> str:
    """The memory cgroup whose limit an over-limit container hits first, from the pod's spec.

    With a memory limit on every container the kubelet limits the pod's cgroup too, to the sum
    (cgroup v1 and v2): for a pod of one container that equals the container's own limit, and the
    pod's usage (the container's plus the sandbox's pause process) reaches it first, so the kernel
    names the pod's cgroup. With a container without a limit the pod has none, and the container's
    own limit is hit. Without any limit, only the node-allocatable cgroup (kubepods) has one."""
    spec = p["spec"]
    app = [memory_limit(c) for c in spec["containers"]]
    init = [memory_limit(c) for c in spec.get("initContainers", [])]
    if all(app) and all(init):
        return pod_cgroup(cluster, p)
    if not any(app + init):
        return f"{cluster.node.cgroup_root}/kubepods"
    return f"{pod_cgroup(cluster, p)}/{container_id}"


def kernel_oom_memcg(pid: int) -> Optional[str]:
    """What the kernel printed as oom_memcg for this victim, if its report was not rate-limited
    (10 reports per 5 s machine-wide, and other tests kill too)."""
    from otel_oom.reconcile.kmsg import read_kmsg

    for r in read_kmsg():
        if r.message.startswith("oom-kill:") and f",pid={pid}," in r.message:
            fields = dict(kv.split("=", 1) for kv in r.message[len("oom-kill:"):].split(",") if "=" in kv)
            return fields.get("oom_memcg")
    return None


def container_init_pid(cluster: Cluster, container_id: str) -> int:
    """The container's init process on the host, from containerd's task list."""
    from testing.kube.images import ctr

    out = ctr(cluster.node, "tasks", "ls").stdout.decode()
    for line in out.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == container_id:
            return int(pid)
    raise AssertionError(f"no task {container_id} in:\n{out}")


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def agent_events(cluster: Cluster, namespace: str, pod_uid: str) -> list[dict]:
    """The Events the agent posted on a Pod, as the API server lists them (From: otel-oom)."""
    items = cluster.kubectl.json("get", "events", "-n", namespace,
                                 "--field-selector", f"involvedObject.uid={pod_uid}")["items"]
    return [e for e in items if (e.get("source") or {}).get("component") == "otel-oom"]


def wait_agent_events(cluster: Cluster, namespace: str, pod_uid: str, count: int, timeout: float = 120.0) -> list[dict]:
    cluster.kubectl.wait_until(f"{count} otel-oom Event(s) on pod {pod_uid}",
                               lambda: len(agent_events(cluster, namespace, pod_uid)) >= count, timeout)
    time.sleep(3)   # as wait_kills: one more would be a wrong count, not a late one
    return agent_events(cluster, namespace, pod_uid)


def kubelet_records(cluster: Cluster, kill_event_id: str, timeout: float = 150.0) -> list[dict]:
    """The agent's oom.kubelet record(s) for one kill, from VictoriaLogs (the check waits up to 30 s)."""
    query = f'event_name:="oom.kubelet" oom.kill.event.id:="{kill_event_id}"'
    return LogsQL(cluster.node).wait_for(query, bool, timeout)


def prometheus_sum(cluster: Cluster, promql: str) -> float:
    from testing.kube.backends import PromQL

    return sum(float(s["value"][1]) for s in PromQL(cluster.node).query(promql))
