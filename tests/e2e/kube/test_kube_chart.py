"""The Helm chart on a real node: installed as docs/deploy.md says (the session's node has it, with
the node-local Collector), the agent's pod Ready with exactly the chart's privileges, the
Collector's k8s_attributes naming a kill from the real API server through the chart's RBAC, and
helm upgrade / uninstall / install again."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kube_fixtures as kf
import pytest
import yaml

from testing.kube import chart
from testing.kube.images import ctr
from testing.kube.layout import NAMESPACE, RELEASE
from testing.kube.leftovers import bpf_programs_of, bpf_programs_present

# the first test of a session starts the node (and may rebuild the image): minutes on a loaded machine
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]
MiB = 1 << 20
CAPS = {"SYSLOG": 34, "PERFMON": 38, "BPF": 39}
COLLECTOR_SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-collector"
AGENT_SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def cluster(request):
    yield kf.shared_cluster(request)
    kf.done_with(request)


def rendered_agent_pod(cluster) -> dict:
    out = chart.helm(cluster, "template", RELEASE, str(chart.CHART), "-n", NAMESPACE, *chart.node_values(cluster)).stdout
    ds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet" and d["metadata"]["name"] == RELEASE]
    return ds[0]["spec"]["template"]["spec"]


def agent_process(cluster, p: dict) -> int:
    return kf.container_init_pid(cluster, kf.bare_id(p["status"]["containerStatuses"][0]["containerID"]))


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def mount_options(pid: int) -> dict[str, set[str]]:
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = set(fields[5].split(","))
    return out


def test_the_agent_pod_is_ready_with_exactly_the_charts_privileges(cluster):
    live = chart.agent_pod(cluster)
    want = rendered_agent_pod(cluster)
    spec = live["spec"]
    # what the API server stored is what the chart rendered: nothing added, nothing refused
    assert spec["hostPID"] is True and not spec.get("hostNetwork") and not spec.get("hostIPC")
    # testing/kube/values.yaml turns Pod Events on (events.enabled): the one reason for an API token
    assert spec["automountServiceAccountToken"] is want["automountServiceAccountToken"] is True
    assert spec["serviceAccountName"] == want["serviceAccountName"] == RELEASE
    assert spec.get("securityContext", {}) == want.get("securityContext", {})
    assert spec["containers"][0]["securityContext"] == want["containers"][0]["securityContext"]
    # the API server adds the token's projected volume (events.enabled): read-only, nothing else added
    token = [m for m in spec["containers"][0]["volumeMounts"] if m["name"].startswith("kube-api-access-")]
    assert [(m["mountPath"], m.get("readOnly")) for m in token] == [(SA_DIR, True)]
    assert [m for m in spec["containers"][0]["volumeMounts"] if m not in token] == want["containers"][0]["volumeMounts"]
    assert [v for v in spec["volumes"] if "hostPath" in v] == [v for v in want["volumes"] if "hostPath" in v]
    # and the kernel's view of the running agent
    pid = agent_process(cluster, live)
    st = proc_status(pid)
    caps = sum(1 << bit for bit in CAPS.values())
    assert {k: int(st[k], 16) for k in ("CapPrm", "CapEff", "CapBnd", "CapInh", "CapAmb")} == {
        "CapPrm": caps, "CapEff": caps, "CapBnd": caps, "CapInh": 0, "CapAmb": 0}
    assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2"   # no_new_privs; a seccomp filter
    assert st["Uid"].split()[:2] == ["0", "0"]
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")            # hostPID
    assert os.readlink(f"/proc/{pid}/ns/net") not in cluster.ns_ids | {os.readlink("/proc/self/ns/net")}
    mounts = mount_options(pid)
    for path in ("/", "/sys/fs/cgroup", "/sys/kernel/btf", "/host/run", "/etc/machine-id"):
        assert "ro" in mounts[path], (path, mounts[path])
    assert "rw" in mounts["/var/lib/otel-oom"]
    # the API token (Pod Events), read-only (the image's /var/run is a link to /run)
    (token_mount,) = [m for m in mounts if m.endswith("/secrets/kubernetes.io/serviceaccount")]
    assert "ro" in mounts[token_mount]
    assert bpf_programs_of([pid]), "the agent holds no BPF program"
    logs = cluster.kubectl.run("logs", "-n", NAMESPACE, live["metadata"]["name"]).stdout
    assert " ready in " in logs, logs[-2000:]


def test_the_charts_rbac_lets_the_collector_read_pods_and_the_agent_create_events(cluster):
    def can(user: str, *what: str) -> str:
        return cluster.kubectl.run("auth", "can-i", *what, f"--as={user}", check=False).stdout.strip()

    assert can(COLLECTOR_SA, "watch", "pods", "-A") == "yes"
    assert can(COLLECTOR_SA, "list", "replicasets.apps", "-A") == "yes"
    assert can(COLLECTOR_SA, "create", "pods", "-A") == "no"
    assert can(COLLECTOR_SA, "get", "secrets", "-A") == "no"
    # the agent (events.enabled, kubeletCheck): create Events, read one Pod at a time, nothing more
    assert can(AGENT_SA, "create", "events", "-A") == "yes"
    assert can(AGENT_SA, "get", "pods", "-A") == "yes"
    for verb, what in (("list", "pods"), ("watch", "pods"), ("get", "events"), ("patch", "events"),
                       ("delete", "events"), ("create", "events.events.k8s.io"), ("get", "secrets"),
                       ("create", "pods")):
        assert can(AGENT_SA, verb, what, "-A") == "no", (verb, what)


def test_k8s_attributes_names_a_deployments_kill_from_the_api_server(cluster):
    """A Deployment's worker killed: the Collector's k8s_attributes (the chart's ServiceAccount and
    ClusterRole, the real API server) lifts namespace, pod and container names onto the record's
    resource (VictoriaLogs' stream fields) and adds the Deployment, which only it can know."""
    ns = kf.test_namespace(cluster, "web")
    try:
        script = "sleep 2; dd if=/dev/zero of=/dev/null bs=48M count=1; echo worker-exit=$?; exec sleep 86400"
        c = kf.busybox_container("app", script, "32Mi")
        cluster.kubectl.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
                               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                                        "template": {"metadata": {"labels": {"app": "web"}},
                                                     "spec": {"containers": [c], "terminationGracePeriodSeconds": 1}}}})
        p = cluster.kubectl.wait_until("the Deployment's pod", lambda: (cluster.kubectl.json(
            "get", "pods", "-n", ns, "-l", "app=web")["items"] or [None])[0], timeout=120)
        rows = kf.wait_kills(cluster, p["metadata"]["uid"], 1)
        assert len(rows) == 1, rows
        p = kf.get_pod(cluster, p["metadata"]["name"], ns)
        rec, cid = rows[0], kf.bare_id(kf.status_of(p, "app")["containerID"])
        kf.assert_names(rec, p, "app", cid)
        assert rec["k8s.deployment.name"] == "web"
        stream = rec["_stream"]
        for key, value in (("k8s.namespace.name", ns), ("k8s.pod.name", p["metadata"]["name"]),
                           ("k8s.container.name", "app"), ("k8s.pod.uid", p["metadata"]["uid"])):
            assert f'{key}="{value}"' in stream, stream
        collector = chart.collector_pod(cluster)["metadata"]["name"]
        collector_logs = cluster.kubectl.run("logs", "-n", NAMESPACE, collector).stdout
        assert "forbidden" not in collector_logs.lower(), collector_logs[-3000:]
    finally:
        cluster.kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def release_containers(cluster) -> list[str]:
    out = ctr(cluster.node, "containers", "ls", "-q", f'labels."io.kubernetes.pod.namespace"=={NAMESPACE}').stdout
    return out.decode().split()


def test_helm_upgrade_to_otlp_http_rolls_both_and_uninstall_leaves_nothing_of_it_on_the_node(cluster):
    """helm upgrade switching the agent to OTLP/HTTP: the agent's endpoint follows to the
    Collector's port 4318, which the Collector then opens on the node, and kills keep arriving
    (before the chart's fix the agent kept sending to the gRPC port 4317 and delivered nothing);
    then helm uninstall, and nothing of the release is left on the node."""
    k = cluster.kubectl
    old = chart.agent_pod(cluster)
    chart.upgrade(cluster, "--set", "agent.logLevel=debug", "--set", "otlp.protocol=http/protobuf")
    new = chart.agent_pod(cluster)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert "--log-level=debug" in new["spec"]["containers"][0]["args"]
    env = {e["name"]: e.get("value") for e in new["spec"]["containers"][0]["env"]}
    assert (env["OTEL_EXPORTER_OTLP_PROTOCOL"], env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == (
        "http/protobuf", "http://$(HOST_IP):4318")
    ports = chart.collector_pod(cluster)["spec"]["containers"][0]["ports"]
    assert {p["name"]: p.get("hostPort") for p in ports}["otlp-http"] == 4318
    ns = kf.test_namespace(cluster, "http")
    try:
        script = "sleep 2; dd if=/dev/zero of=/dev/null bs=48M count=1; exec sleep 86400"
        cluster.kubectl.apply(kf.pod("worker", ns, [kf.busybox_container("app", script, "32Mi")]))
        p = cluster.kubectl.wait_until("the pod to run", lambda: kf.get_pod(cluster, "worker", ns)
                                       if kf.get_pod(cluster, "worker", ns)["status"].get("phase") == "Running" else None)
        rows = kf.wait_kills(cluster, p["metadata"]["uid"], 1)
        assert len(rows) == 1, rows
        kf.assert_names(rows[0], p, "app", kf.bare_id(kf.status_of(p, "app")["containerID"]))
    finally:
        cluster.kubectl.run("delete", "namespace", ns, "--wait=false", check=False)
    pods = [new, chart.collector_pod(cluster)]
    programs = bpf_programs_of([agent_process(cluster, new)])
    assert programs
    cgroups = [Path("/sys/fs/cgroup/memory" + kf.pod_cgroup(cluster, p)) for p in pods]
    assert all(c.is_dir() for c in cgroups)
    old_cgroup = Path("/sys/fs/cgroup/memory" + kf.pod_cgroup(cluster, old))
    k.wait_until("the replaced pod's cgroup to go", lambda: not old_cgroup.exists(), timeout=120)

    chart.uninstall(cluster)
    assert not chart.installed(cluster)
    for kind, name, namespace in (("daemonset", RELEASE, NAMESPACE), ("daemonset", f"{RELEASE}-collector", NAMESPACE),
                                  ("configmap", RELEASE, NAMESPACE), ("serviceaccount", RELEASE, NAMESPACE),
                                  ("clusterrole", f"{RELEASE}-collector", None),
                                  ("clusterrolebinding", f"{RELEASE}-collector", None)):
        assert k.get(kind, name, namespace) is None, (kind, name)
    # on the node: no container, pod cgroup, BPF program or hostPort rule of the release
    k.wait_until("the release's containers to be removed", lambda: not release_containers(cluster), timeout=120)
    k.wait_until("the release's pod cgroups to go", lambda: not any(c.exists() for c in cgroups), timeout=120)
    assert bpf_programs_present(programs) == set()
    nat = node_nat_rules(cluster)   # the portmap plugin's DNAT went with the pod
    assert ":4317" not in nat and "dport 4317" not in nat, nat

    chart.install(cluster)                       # as the other tests expect it
    assert chart.agent_pod(cluster)["status"]["phase"] == "Running"


def node_nat_rules(cluster) -> str:
    return subprocess.run([*cluster.node.enter(), "iptables-save", "-t", "nat"], capture_output=True, text=True,
                          timeout=60).stdout
