"""The kill told on the Pod (issue 20 items 4 and 5), on a real node with the chart's agent: a
Kubernetes Event per kill, read back through the real API server, and what the real kubelet
reported for the killed container (the oom.kubelet record in VictoriaLogs, oom.kills.kubelet in
Prometheus), for the two kinds of victim: the container's main process (PID 1: the container
ends, the kubelet says OOMKilled) and a worker (the container keeps running, the kubelet says
nothing)."""
from __future__ import annotations

import kube_fixtures as kf
import pytest

from otel_oom.schema.pod_event import human_size

# the first test of a session starts the node (and may rebuild the image): minutes on a loaded machine
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]
DD = "dd if=/dev/zero of=/dev/null bs=20M"


@pytest.fixture(scope="module")
def cluster(request):
    yield kf.shared_cluster(request)
    kf.done_with(request)


@pytest.fixture
def ns(cluster):
    name = kf.test_namespace(cluster, "events")
    yield name
    cluster.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def assert_event(event: dict, p: dict, rec: dict, main: bool) -> None:
    """One Event on that Pod, naming the process, main or not, the container, the limit and the memory."""
    meta = p["metadata"]
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": meta["namespace"],
                                       "name": meta["name"], "uid": meta["uid"]}
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "OOMKilled", 1)
    assert event["metadata"]["annotations"]["otel-oom/event-id"] == rec["oom.event.id"]
    who = "the container's main process" if main else "not the container's main process"
    rss = int(rec["oom.victim.memory.rss"])
    assert rss > 0
    expected = (f"Container app: process dd (pid {rec['process.pid']}, {who}) OOM-killed; "
                f"the pod's memory limit (16.0 MiB) was hit; it held {human_size(rss)} "
                f"(anon {human_size(int(rec['oom.victim.memory.anon_rss']))}, ")
    assert event["message"].startswith(expected), event["message"]
    assert event["message"].endswith(f"oom.event.id={rec['oom.event.id']}")


def test_main_process_and_worker_kills_each_post_one_event_and_the_kubelets_report(cluster, ns):
    main_c = kf.busybox_container("app", f"sleep 3; exec {DD}", "16Mi")
    worker_c = kf.busybox_container("app", f"sleep 3; {DD}; echo worker-exit=$?; exec sleep 86400", "16Mi")
    cluster.kubectl.apply(kf.pod("main-victim", ns, [main_c]), kf.pod("worker-victim", ns, [worker_c]))

    def ended_and_killed():
        m, w = kf.get_pod(cluster, "main-victim", ns), kf.get_pod(cluster, "worker-victim", ns)
        logs = cluster.kubectl.run("logs", "worker-victim", "-n", ns, check=False).stdout
        return (m, w) if m["status"].get("phase") == "Failed" and "worker-exit=" in logs else None

    main_pod, worker_pod = cluster.kubectl.wait_until("the main process's pod to fail, the worker to die",
                                                      ended_and_killed, timeout=240, interval=2)
    # what the kubelet reports, as the API server has it
    ms, ws = kf.status_of(main_pod, "app"), kf.status_of(worker_pod, "app")
    assert (ms["state"]["terminated"]["reason"], ms["state"]["terminated"]["exitCode"]) == ("OOMKilled", 137)
    assert "running" in ws["state"] and ws["restartCount"] == 0 and not ws.get("lastState")
    assert "worker-exit=137" in cluster.kubectl.run("logs", "worker-victim", "-n", ns).stdout
    worker_cid = kf.bare_id(ws["containerID"])
    init_pid = kf.container_init_pid(cluster, worker_cid)

    (main_rec,) = kf.wait_kills(cluster, main_pod["metadata"]["uid"], 1)
    (worker_rec,) = kf.wait_kills(cluster, worker_pod["metadata"]["uid"], 1)
    kf.assert_names(main_rec, main_pod, "app", kf.bare_id(ms["containerID"]))
    kf.assert_names(worker_rec, worker_pod, "app", worker_cid)
    assert int(worker_rec["process.pid"]) != init_pid and kf.alive(init_pid)

    (main_event,) = kf.wait_agent_events(cluster, ns, main_pod["metadata"]["uid"], 1)
    (worker_event,) = kf.wait_agent_events(cluster, ns, worker_pod["metadata"]["uid"], 1)
    assert_event(main_event, main_pod, main_rec, main=True)
    assert_event(worker_event, worker_pod, worker_rec, main=False)
    # the agent's node, as the kubelet's Events name it
    assert main_event["source"]["host"] == main_pod["spec"]["nodeName"]

    # the cross-check: what the kubelet reported, joined to the kill by its id
    (main_check,) = kf.kubelet_records(cluster, main_rec["oom.event.id"])
    (worker_check,) = kf.kubelet_records(cluster, worker_rec["oom.event.id"])
    assert (main_check["oom.kubelet.reported"], main_check["oom.kubelet.reason"],
            main_check["oom.kubelet.exit_code"], main_check["oom.victim.main"]) == ("oom_killed", "OOMKilled", "137", "true")
    assert (worker_check["oom.kubelet.reported"], worker_check["oom.victim.main"]) == ("running", "false")
    assert "oom.kubelet.reason" not in worker_check
    for check, p in ((main_check, main_pod), (worker_check, worker_pod)):
        assert (check["k8s.pod.uid"], check["k8s.pod.name"], check["oom.memcg.scope"]) == (
            p["metadata"]["uid"], p["metadata"]["name"], "pod")
    # ... and as the metric
    for reported, main in (("oom_killed", "true"), ("running", "false")):
        query = f'oom_kills_kubelet_total{{oom_kubelet_reported="{reported}",oom_victim_main="{main}"}}'
        cluster.kubectl.wait_until(f"{query} in Prometheus", lambda q=query: kf.prometheus_sum(cluster, q) >= 1,
                                   timeout=240, interval=5)
