"""What the kubelet reported for the killed container instance, read from a Pod as the API server
returns it (kube/kubelet_check.verdict), and the words of the oom.kubelet record. The statuses are
the shapes the real kubelet wrote on the test node (tests/e2e/kube/test_kube_pod_events.py runs
the whole check there)."""
from __future__ import annotations

import pytest

from otel_oom.kube.kubelet_check import verdict
from otel_oom.schema.kubelet import OomKubelet, kubelet_body
from otel_oom.schema.records import OomKill

UID = "b321316f-ce30-470a-8ed3-ebe2298566f2"
CID = "3c3a2125538760031be4c58f15776812edb0f1e164d207b5e401e4434bf2f607"
OTHER = "ea9920caa56eade5a6ef645a6d3959d528ba9b79644260539a2abfbbc415c2fb"


def kill() -> OomKill:
    return OomKill(event_id="boot:1:7", time_unix_nano=1, boot_time_ns=1, hook="tp_btf", context_hook="none",
                   recovered=False, victim_pid=7, victim_tid=7, victim_comm="dd", constraint="memcg",
                   container_id=CID, pod_uid=UID, pod_name="main-victim", pod_namespace="kev-try",
                   k8s_container_name="app")


def pod(state: dict, last: dict | None = None, cid: str = CID, uid: str = UID, key: str = "containerStatuses",
        restarts: int = 0) -> dict:
    s = {"name": "app", "containerID": f"containerd://{cid}", "state": state, "restartCount": restarts}
    if last is not None:
        s["lastState"] = last
    return {"metadata": {"uid": uid}, "status": {key: [s]}}


def terminated(reason: str, code: int = 137, cid: str = CID) -> dict:
    return {"terminated": {"reason": reason, "exitCode": code, "containerID": f"containerd://{cid}"}}


def test_the_main_process_killed_is_oomkilled_and_final():
    assert verdict(pod(terminated("OOMKilled")), kill()) == (
        "oom_killed", {"restart_count": 0, "state": "terminated", "reason": "OOMKilled", "exit_code": 137}, True)


def test_another_reason_is_terminated_the_misreport():
    reported, facts, final = verdict(pod(terminated("Error")), kill())
    assert (reported, facts["reason"], facts["exit_code"], final) == ("terminated", "Error", 137, True)


@pytest.mark.parametrize("key", ["initContainerStatuses", "ephemeralContainerStatuses"])
def test_init_and_ephemeral_containers_are_read_too(key):
    assert verdict(pod(terminated("OOMKilled"), key=key), kill())[0] == "oom_killed"


def test_a_restarted_container_is_read_from_its_last_state():
    p = pod({"running": {}}, last=terminated("OOMKilled"), cid=OTHER, restarts=1)
    assert verdict(p, kill()) == (
        "oom_killed", {"restart_count": 1, "state": "running", "reason": "OOMKilled", "exit_code": 137}, True)


def test_the_instance_still_running_is_not_final_until_the_wait_ends():
    assert verdict(pod({"running": {}}), kill()) == ("running", {"restart_count": 0, "state": "running"}, False)


def test_a_later_instance_without_ours_in_its_last_state_is_missing():
    assert verdict(pod({"running": {}}, last=terminated("Completed", 0, cid="f" * 64), cid=OTHER), kill())[0] == "missing"


def test_a_pod_deleted_or_replaced_under_the_same_name_is_gone():
    assert verdict(None, kill()) == ("pod_gone", {}, True)
    assert verdict(pod({"running": {}}, uid="another-uid"), kill()) == ("pod_gone", {}, True)


def record(reported: str, main: bool | None, reason: str | None = None) -> OomKubelet:
    return OomKubelet(event_id="boot:1:7:kubelet", time_unix_nano=2, kill_event_id="boot:1:7", reported=reported,
                      delay_ns=1_500_000_000, victim_pid=7, victim_comm="dd", main=main, pod_name="main-victim",
                      pod_namespace="kev-try", k8s_container_name="app", reason=reason, exit_code=137, restart_count=0)


def test_a_main_process_not_reported_oomkilled_is_misreported_a_worker_running_is_not():
    assert not record("oom_killed", True, "OOMKilled").misreported
    assert record("terminated", True, "Error").misreported
    assert record("missing", True).misreported
    assert not record("running", False).misreported
    assert not record("pod_gone", True).misreported


def test_the_body_says_what_the_kubelet_reported():
    assert kubelet_body(record("oom_killed", True, "OOMKilled")) == (
        "Kubelet reported container app of pod kev-try/main-victim OOMKilled (exit code 137, restarts 0) 1.5 s "
        "after the OOM kill of process dd (pid 7, its main process)")
    assert kubelet_body(record("terminated", True, "Error")).startswith(
        "Kubelet reported container app of pod kev-try/main-victim terminated: Error (exit code 137, restarts 0), "
        "not OOMKilled")
