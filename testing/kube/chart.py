"""The project's Helm chart on the node, installed as docs/deploy.md tells a user to.

    chart.install(cluster)       # namespace labelled privileged, helm install, agent and Collector Ready
    chart.upgrade(cluster, "--set", "agent.logLevel=debug")
    chart.uninstall(cluster)     # helm uninstall, every pod of the release gone

The values: testing/kube/values.yaml (images imported into the node, pullPolicy Never, the
Collector on), plus the node-dependent ones set here (Collector image tag, backend URLs).
helm's cache, config and data go to the node's state directory, not the user's home.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Optional

from .cluster import Cluster
from .kubectl import pod_ready
from .layout import NAMESPACE, PROMETHEUS_PORT, RELEASE, VICTORIALOGS_PORT, repo_path

CHART = repo_path("deploy", "helm", "otel-oom")
VALUES = repo_path("testing", "kube", "values.yaml")
AGENT_SELECTOR = f"app.kubernetes.io/name=otel-oom,app.kubernetes.io/instance={RELEASE}"
COLLECTOR_SELECTOR = f"app.kubernetes.io/name=otel-collector,app.kubernetes.io/instance={RELEASE}"


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    s = cluster.node.state
    env = {**os.environ, "KUBECONFIG": str(cluster.node.admin_kubeconfig), "KUBECACHEDIR": str(s / "kubectl-cache"),
           "HELM_CACHE_HOME": str(s / "helm" / "cache"), "HELM_CONFIG_HOME": str(s / "helm" / "config"),
           "HELM_DATA_HOME": str(s / "helm" / "data")}
    r = subprocess.run([cluster.tools.helm, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])}: {r.stderr.strip()}")
    return r


def node_values(cluster: Cluster) -> list[str]:
    n = cluster.node
    tag = cluster.collector_image.rsplit(":", 1)[-1]
    return ["-f", str(VALUES), "--set", f"collector.image.tag={tag}",
            "--set", f"collector.logsEndpoint=http://{n.node_ip}:{VICTORIALOGS_PORT}/insert/opentelemetry",
            "--set", f"collector.remoteWriteUrl=http://{n.node_ip}:{PROMETHEUS_PORT}/api/v1/write"]


def install(cluster: Cluster, *extra: str, timeout: float = 300) -> None:
    k = cluster.kubectl
    if k.get("namespace", NAMESPACE, namespace=None) is None:
        k.run("create", "namespace", NAMESPACE)
    # hostPID, hostPath and added capabilities are beyond the baseline Pod Security level
    k.run("label", "--overwrite", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=privileged")
    helm(cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, *node_values(cluster), *extra)
    wait_ready(cluster, timeout)


def upgrade(cluster: Cluster, *extra: str, timeout: float = 300) -> None:
    helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, *node_values(cluster), *extra)
    wait_ready(cluster, timeout)


def uninstall(cluster: Cluster, timeout: float = 180) -> None:
    helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", f"--timeout={int(timeout)}s", timeout=timeout + 30)
    cluster.kubectl.wait_until("the release's pods to be gone", lambda: not pods(cluster, AGENT_SELECTOR)
                               and not pods(cluster, COLLECTOR_SELECTOR), timeout)


def installed(cluster: Cluster) -> bool:
    r = helm(cluster, "list", "-n", NAMESPACE, "-o", "json")
    return any(rel["name"] == RELEASE for rel in json.loads(r.stdout or "[]"))


def pods(cluster: Cluster, selector: str) -> list[dict]:
    return cluster.kubectl.json("get", "pods", "-n", NAMESPACE, "-l", selector)["items"]


def daemonset_ready(cluster: Cluster, name: str) -> bool:
    ds = cluster.kubectl.get("daemonset", name, NAMESPACE)
    if ds is None:
        return False
    st = ds.get("status", {})
    return (st.get("observedGeneration") == ds["metadata"]["generation"]
            and st.get("desiredNumberScheduled", 0) >= 1
            and st.get("updatedNumberScheduled") == st["desiredNumberScheduled"]
            and st.get("numberReady") == st["desiredNumberScheduled"]
            and st.get("numberAvailable") == st["desiredNumberScheduled"])


def wait_ready(cluster: Cluster, timeout: float = 300) -> None:
    """Both DaemonSets rolled out and exactly one Ready pod of each (an old one may be terminating)."""
    def ready() -> bool:
        for name, selector in ((RELEASE, AGENT_SELECTOR), (f"{RELEASE}-collector", COLLECTOR_SELECTOR)):
            live = [p for p in pods(cluster, selector) if not p["metadata"].get("deletionTimestamp")]
            if not daemonset_ready(cluster, name) or len(live) != 1 or not pod_ready(live[0]):
                return False
        return True

    cluster.kubectl.wait_until("the agent and the Collector to be Ready", ready, timeout, describe=lambda: describe(cluster))


def agent_pod(cluster: Cluster) -> dict:
    return _one(cluster, AGENT_SELECTOR)


def collector_pod(cluster: Cluster) -> dict:
    return _one(cluster, COLLECTOR_SELECTOR)


def _one(cluster: Cluster, selector: str) -> dict:
    live = [p for p in pods(cluster, selector) if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in live]
    return live[0]


def describe(cluster: Cluster, namespace: Optional[str] = NAMESPACE) -> str:
    """What to read when a wait timed out: pods, events, the agent's and the Collector's logs."""
    k = cluster.kubectl
    out = [k.run("get", "pods", "-A", "-o", "wide", check=False).stdout,
           k.run("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout[-4000:]]
    for selector in (AGENT_SELECTOR, COLLECTOR_SELECTOR):
        out.append(k.run("logs", "-n", str(namespace), "-l", selector, "--tail=30", "--all-containers", check=False).stdout)
    out.append(cluster.logs(15))
    return "\n".join(out)
