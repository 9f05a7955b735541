"""The Pod Event is best effort, the kill record is not (issue 20 item 4), on a real node:

- an agent restart that replays a kill's record (the Collector was away: the record waited in the
  spool, the next agent sends it with the same oom.event.id) posts no second Event;
- an API server that refuses the Event (RBAC without create events) loses no kill: the record
  reaches VictoriaLogs, the Event is counted in otel_oom.events.dropped{reason=k8s_event_forbidden};
- an API server that is down at the kill loses no kill either, and the Event follows once it is back.
"""
from __future__ import annotations

import json

import kube_fixtures as kf
import pytest

from testing.kube import chart
from testing.kube.layout import NAMESPACE, RELEASE

# the first test of a session starts the node (and may rebuild the image): minutes on a loaded machine
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]
KILLED = "sleep 3; exec dd if=/dev/zero of=/dev/null bs=20M"
AWAY = "otel-oom-test/collector-away"


@pytest.fixture(scope="module")
def cluster(request):
    yield kf.shared_cluster(request)
    kf.done_with(request)


@pytest.fixture
def ns(cluster):
    name = kf.test_namespace(cluster, "evfail")
    yield name
    cluster.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def killed_pod(cluster, ns: str, name: str) -> dict:
    cluster.kubectl.apply(kf.pod(name, ns, [kf.busybox_container("app", KILLED, "16Mi")]))
    return cluster.kubectl.wait_until(f"{name} OOMKilled", lambda: (lambda p: p if p["status"].get("phase") == "Failed"
                                                                    else None)(kf.get_pod(cluster, name, ns)),
                                      timeout=240, interval=2)


def collector_away(cluster, away: bool) -> None:
    """The Collector's pods off the node (a nodeSelector no node has), or back."""
    value = json.dumps({"spec": {"template": {"spec": {"nodeSelector": {AWAY: "yes" if away else None}}}}})
    cluster.kubectl.run("patch", "daemonset", f"{RELEASE}-collector", "-n", NAMESPACE, "-p", value)
    if away:
        cluster.kubectl.wait_until("the Collector's pods to be gone",
                                   lambda: not chart.pods(cluster, chart.COLLECTOR_SELECTOR), timeout=180)


def test_an_agent_restart_that_replays_the_kill_posts_no_second_event(cluster, ns):
    collector_away(cluster, True)
    try:
        p = killed_pod(cluster, ns, "replayed")
        uid = p["metadata"]["uid"]
        (event,) = kf.wait_agent_events(cluster, ns, uid, 1)   # posted while the record waits in the spool
        kill_id = event["metadata"]["annotations"]["otel-oom/event-id"]
        assert kf.LogsQL(cluster.node).query(kf.kills_of(uid)) == []
        old = chart.agent_pod(cluster)["metadata"]["name"]
        cluster.kubectl.run("delete", "pod", old, "-n", NAMESPACE, "--wait=true", timeout=180)
    finally:
        collector_away(cluster, False)
    chart.wait_ready(cluster)
    assert chart.agent_pod(cluster)["metadata"]["name"] != old
    # the new agent sent what the old one had spooled: the same kill, the same id
    (rec,) = kf.wait_kills(cluster, uid, 1, timeout=240)
    assert rec["oom.event.id"] == kill_id
    logs = cluster.kubectl.run("logs", "-n", NAMESPACE, "-l", chart.AGENT_SELECTOR, "--tail=-1").stdout
    assert "ready in" in logs
    # ... and posted no Event for it: still the one, posted once
    events = kf.agent_events(cluster, ns, uid)
    assert [(e["metadata"]["name"], e["count"]) for e in events] == [(event["metadata"]["name"], 1)]


def events_rule(role: dict) -> int:
    (i,) = [i for i, r in enumerate(role["rules"]) if "events" in r["resources"]]
    return i


def test_an_api_server_that_refuses_the_event_loses_no_kill_and_counts_the_drop(cluster, ns):
    k = cluster.kubectl
    role_name = f"{RELEASE}-events"
    role = k.get("clusterrole", role_name, namespace=None)
    assert role is not None and role["rules"][events_rule(role)]["verbs"] == ["create"]
    account = f"system:serviceaccount:{NAMESPACE}:{chart.agent_pod(cluster)['spec']['serviceAccountName']}"
    dropped = 'otel_oom_events_dropped_total{reason="k8s_event_forbidden"}'
    before = kf.prometheus_sum(cluster, dropped)
    k.run("patch", "clusterrole", role_name, "--type=json",
          "-p", json.dumps([{"op": "remove", "path": f"/rules/{events_rule(role)}"}]))
    try:
        k.wait_until("RBAC to refuse the agent's Events", lambda: k.run(
            "auth", "can-i", "create", "events", "-n", ns, f"--as={account}", check=False).stdout.strip() == "no")
        p = killed_pod(cluster, ns, "refused")
        uid = p["metadata"]["uid"]
        (rec,) = kf.wait_kills(cluster, uid, 1)              # the kill is delivered as ever
        kf.assert_names(rec, p, "app", kf.bare_id(kf.status_of(p, "app")["containerID"]))
        k.wait_until(f"{dropped} to count it", lambda: kf.prometheus_sum(cluster, dropped) >= before + 1,
                     timeout=240, interval=5)
        assert kf.agent_events(cluster, ns, uid) == []
        logs = k.run("logs", "-n", NAMESPACE, "-l", chart.AGENT_SELECTOR, "--tail=-1").stdout
        assert "Kubernetes Event not posted (forbidden" in logs
        # the kubelet cross-check needs only get pods, which stayed
        (check,) = kf.kubelet_records(cluster, rec["oom.event.id"])
        assert check["oom.kubelet.reported"] == "oom_killed"
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            role["metadata"].pop(key, None)
        k.run("replace", "-f", "-", input=json.dumps(role))


def test_an_api_server_that_is_down_at_the_kill_loses_nothing_and_the_event_follows(cluster, ns):
    """The API server stopped, a container killed meanwhile (the kubelet and containerd run on):
    the record reaches VictoriaLogs while the API is away; once it is back the Event is posted
    (retried with backoff, within 120 s of the kill), once."""
    k = cluster.kubectl
    script = "while [ ! -e /trigger/go ]; do sleep 0.2; done; exec dd if=/dev/zero of=/dev/null bs=20M"
    c = kf.busybox_container("app", script, "16Mi")
    c["volumeMounts"] = [{"name": "trigger", "mountPath": "/trigger"}]
    k.apply(kf.pod("while-away", ns, [c], volumes=[{"name": "trigger", "emptyDir": {}}]))
    p = k.wait_until("the container to run", lambda: (lambda p: p if kf.is_running(p, "app") else None)(
        kf.get_pod(cluster, "while-away", ns)), timeout=180)
    uid, cid = p["metadata"]["uid"], kf.bare_id(kf.status_of(p, "app")["containerID"])
    init_pid = kf.container_init_pid(cluster, cid)
    apiserver = cluster.daemons()["kube-apiserver"]
    apiserver.stop()
    try:
        assert k.run("get", "--raw=/readyz", check=False, timeout=30).returncode != 0
        with open(f"/proc/{init_pid}/root/trigger/go", "w"):   # the container's own emptyDir, from the host
            pass
        (rec,) = kf.wait_kills(cluster, uid, 1)                # delivered while the API server is down
        kf.assert_names(rec, p, "app", cid)                    # names from the runtime, not the API
        assert not apiserver.running()
    finally:
        apiserver.start()
        k.wait_until("the API server back", lambda: k.run("get", "--raw=/readyz", check=False).returncode == 0,
                     timeout=180)
    (event,) = kf.wait_agent_events(cluster, ns, uid, 1, timeout=180)
    assert event["metadata"]["annotations"]["otel-oom/event-id"] == rec["oom.event.id"]
    assert f"(pid {rec['process.pid']}, the container's main process)" in event["message"]
    chart.wait_ready(cluster)
