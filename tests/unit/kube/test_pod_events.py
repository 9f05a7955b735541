"""The Pod Events sink against a test double of the API server (testing/kube_api_double.py, over
HTTPS with a CA of its own, or HTTP): what it posts, once, and every way it can fail, counted.
The real API server: tests/e2e/kube/test_kube_pod_events.py."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import require

from otel_oom.kube.api import ApiClient, Connection
from otel_oom.kube.pod_events import PodEvents
from otel_oom.schema.pod_event import event_name
from otel_oom.schema.records import OomKill
from testing.kube_api_double import ApiDouble, openssl_available

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "4f0c3b2a1e9d" + "0" * 52


def kill(pid: int = 4242, **over) -> OomKill:
    fields = dict(
        event_id=f"boot:1{pid}:{pid}", time_unix_nano=1_780_000_000_123_456_789, boot_time_ns=1, hook="tp_btf",
        context_hook="none", recovered=False, victim_pid=pid, victim_tid=pid, victim_comm="dd",
        anon_rss_bytes=15 << 20, file_rss_bytes=92 << 10, shmem_rss_bytes=0, constraint="memcg",
        cgroup_path=f"/kubepods/burstable/pod{UID}/{CID}", memcg_path=f"/kubepods/burstable/pod{UID}",
        memcg_limit_bytes=16 << 20, container_runtime="containerd", container_id=CID, pod_uid=UID,
        pod_name="checkout-7d9f", pod_namespace="shop", k8s_container_name="api")
    fields.update(over)
    return OomKill(**fields)


@pytest.fixture
def api():
    a = ApiDouble()
    yield a
    a.close()


def sink(api: ApiDouble, token: str = "t0ken", **kw) -> tuple[PodEvents, Counter]:
    conn = Connection(api.scheme, "127.0.0.1", api.port, token=token)
    drops: Counter = Counter()
    kw.setdefault("backoff", 0.05)
    kw.setdefault("max_backoff", 0.2)
    timeout = kw.pop("timeout", 2.0)
    events = PodEvents(lambda: ApiClient(conn, timeout=timeout), "node-1", drops=drops, **kw)
    events.start()
    return events, drops


def settle(events: PodEvents, done) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, (events.posted, events.existed, events.drops.by_kind)
        time.sleep(0.02)


def test_one_event_per_kill_as_kubectl_shows_it_over_https_with_the_ca_and_token(tmp_path: Path):
    require(openssl_available(), "needs openssl to make the double's certificate")
    api = ApiDouble(tls_dir=tmp_path)
    try:
        conn = Connection("https", "127.0.0.1", api.port, ca_file=str(api.ca), token="s3cret")
        events = PodEvents(lambda: ApiClient(conn), "node-1")
        events.start()
        k = kill()
        events.notify(k, True)
        settle(events, lambda: events.posted == 1)
        events.close(2)
    finally:
        api.close()
    ((method, path, auth, body),) = api.requests
    assert (method, path, auth) == ("POST", "/api/v1/namespaces/shop/events", "Bearer s3cret")
    assert body["metadata"] == {"name": event_name(k), "namespace": "shop", "annotations": {"otel-oom/event-id": k.event_id}}
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "checkout-7d9f",
                                      "uid": UID}
    assert (body["type"], body["reason"], body["count"]) == ("Warning", "OOMKilled", 1)
    assert body["source"] == {"component": "otel-oom", "host": "node-1"}
    assert (body["reportingComponent"], body["reportingInstance"]) == ("otel-oom", "node-1")
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-05-28T20:26:40Z"
    assert body["message"] == (
        "Container api: process dd (pid 4242, the container's main process) OOM-killed; the pod's memory limit "
        f"(16.0 MiB) was hit; it held 15.1 MiB (anon 15.0 MiB, file 92.0 KiB, shmem 0 B). oom.event.id={k.event_id}")


def test_the_same_kill_twice_is_sent_once_and_a_409_counts_as_done(api):
    events, drops = sink(api)
    k = kill()
    events.notify(k, None)
    events.notify(k, None)                       # handed over twice: not even sent twice
    settle(events, lambda: events.posted == 1)
    assert events.deduplicated == 1
    again, _ = sink(api)                         # a new agent (its memory empty) posts it again: 409
    again.notify(k, None)
    settle(again, lambda: again.existed == 1)
    assert len(api.events) == 1 and len(api.posts()) == 2
    assert events.drops.total == again.drops.total == 0 and not drops
    events.close(1)
    again.close(1)


def test_a_timeout_whose_request_did_arrive_is_retried_and_answered_409(api):
    """The at-least-once case: the first POST created the Event but its answer came too late."""
    api.script(("slow", 1.5))
    events, drops = sink(api, timeout=0.5)
    events.notify(kill(), False)
    settle(events, lambda: events.existed == 1)
    # the first POST created it; a retry (more than one on a loaded machine) was told it exists
    assert len(api.posts()) >= 2 and len(api.events) == 1
    assert events.posted == 0 and events.drops.total == 0
    events.close(1)


def test_server_errors_are_retried_with_backoff(api):
    api.script(503, 500, 429)
    events, drops = sink(api)
    events.notify(kill(), True)
    settle(events, lambda: events.posted == 1)
    assert len(api.posts()) == 4 and events.drops.total == 0
    events.close(1)


def test_forbidden_is_not_retried_counted_and_logged_once(api, caplog):
    api.script(403, 403)
    events, drops = sink(api)
    with caplog.at_level(logging.WARNING, logger="otel_oom.kube"):
        events.notify(kill(1), True)
        events.notify(kill(2), True)
        settle(events, lambda: events.drops.total == 2)
    assert len(api.posts()) == 2 and not api.events
    assert events.drops.by_kind == {"forbidden": 2} and drops == {"k8s_event_forbidden": 2}
    lines = [r.getMessage() for r in caplog.records if "not posted" in r.getMessage()]
    assert len(lines) == 1 and "forbidden" in lines[0] and "HTTP 403" in lines[0], lines
    events.close(1)


@pytest.mark.parametrize("code,kind", [(404, "not_found"), (422, "invalid"), (400, "invalid"), (418, "invalid")])
def test_refusals_are_not_retried(api, code, kind):
    api.script(code)
    events, drops = sink(api)
    events.notify(kill(), None)
    settle(events, lambda: events.drops.total == 1)
    assert events.drops.by_kind == {kind: 1} and len(api.posts()) == 1
    events.close(1)


def test_a_server_that_keeps_failing_is_given_up_after_the_bound_and_counted(api):
    api.script(*[503] * 1000)
    events, drops = sink(api, max_age_s=1.0)
    events.notify(kill(), True)
    settle(events, lambda: events.drops.total == 1)
    assert events.drops.by_kind == {"server_error": 1} and drops == {"k8s_event_server_error": 1}
    assert 2 <= len(api.posts()) and not api.events
    events.close(1)


def test_an_unreachable_api_server_is_counted(api):
    conn = Connection("http", "127.0.0.1", api.port, token="t")
    api.close()                                   # nothing listens there any more
    drops: Counter = Counter()
    events = PodEvents(lambda: ApiClient(conn, timeout=0.5), "n", backoff=0.05, max_backoff=0.1, max_age_s=0.5,
                       drops=drops)
    events.start()
    events.notify(kill(), True)
    settle(events, lambda: events.drops.total == 1)
    assert events.drops.by_kind == {"unreachable": 1} and drops == {"k8s_event_unreachable": 1}
    events.close(1)


def test_a_connection_closed_without_an_answer_is_retried(api):
    api.script(("close",))
    events, _ = sink(api)
    events.notify(kill(), True)
    settle(events, lambda: events.posted == 1)
    assert len(api.posts()) == 2
    events.close(1)


def test_401_reads_a_rotated_token_again(api, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("old-token\n")
    api.script(401)
    conn = Connection("http", "127.0.0.1", api.port, token_file=str(token))
    events = PodEvents(lambda: ApiClient(conn), "n", backoff=0.3, max_backoff=0.3)
    events.start()
    events.notify(kill(), True)
    time.sleep(0.1)
    token.write_text("new-token\n")              # the kubelet rotates the projected token
    settle(events, lambda: events.posted == 1)
    assert [r[2] for r in api.posts()] == ["Bearer old-token", "Bearer new-token"]
    events.close(1)


def test_a_kill_outside_a_pod_or_a_mark_gets_no_event(api):
    events, drops = sink(api)
    events.notify(kill(pod_uid=None, pod_name=None, pod_namespace=None), None)   # not a Kubernetes pod
    events.notify(kill(pod_name=None, pod_namespace=None), None)                 # no names from the runtime
    events.notify(kill(killed=False), None)                                      # marked, not killed
    events.close(2)
    assert api.requests == [] and events.drops.total == 0


def test_the_queue_is_bounded_and_what_is_left_at_the_stop_is_counted(api):
    api.script(("slow", 1.0))
    events, drops = sink(api, queue_max=2, timeout=5.0)
    for pid in range(1, 6):
        events.notify(kill(pid), True)           # one in flight, two queued, two over the bound
    settle(events, lambda: events.drops.by_kind["queue_full"] >= 2)
    events.close(0.1)                            # the queued ones never get their turn
    assert events.posted + events.existed + events.drops.total == 5
    assert sum(n for r, n in drops.items() if r.startswith("k8s_event_")) == events.drops.total >= 2
    assert set(drops) <= {"k8s_event_queue_full", "k8s_event_shutdown"}, drops


def test_the_rate_limit_spaces_a_burst(api):
    events, _ = sink(api, rate=20.0, burst=2)
    t0 = time.monotonic()
    for pid in range(1, 7):
        events.notify(kill(pid), None)
    settle(events, lambda: events.posted == 6)
    assert len(api.events) == 6
    # 2 at once, then 4 at 20/s: at least 0.15 s (a lower bound, never a budget)
    assert time.monotonic() - t0 >= 0.15
    events.close(1)
