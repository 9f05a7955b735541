"""End to end downstream, all real but the Kubernetes API (a test double):

real `otel-oom run` -> real Collector running collector-config/agent.yaml as shipped (only its
listen ports, queue directory and Kubernetes auth type overridden; endpoints through its
`${env:...}` variables) -> real VictoriaLogs (queried with LogsQL) and a real Prometheus (remote
write in, PromQL out). The OOM kills are real, in throwaway memory cgroups shaped like a
kubelet's (cgroupfs driver), so the agent attributes them to a pod UID and a container ID.
"""
from __future__ import annotations

import json
import re
import signal
import time
import uuid

import pytest
from conftest import require, require_root_bpf

from otel_oom.trigger import trigger_oom
from testing.agent_process import AgentProcess, agent_env
from testing.collector_process import collector_binary
from testing.downstream import NODE, DownstreamStack, kube_cgroup, new_container_id, shop_pod
from testing.victorialogs import victorialogs_binary

MiB = 1 << 20
pytestmark = pytest.mark.root


def binaries() -> tuple[str, str]:
    require_root_bpf()
    col, vl = collector_binary(), victorialogs_binary()
    require(col is not None, "needs the Collector build: make collector")
    require(vl is not None, "needs the VictoriaLogs build: make victorialogs")
    return col, vl  # type: ignore[return-value]


def start_agent(stack: DownstreamStack, spool, **env: str) -> AgentProcess:
    return AgentProcess([f"--spool-dir={spool}"], agent_env(stack.agent_endpoint, **env))


def kill_in(pod_uid: str, container_id: str, comm: str = "shop-worker"):
    return trigger_oom(limit_bytes=32 * MiB, cgroup=kube_cgroup(pod_uid, container_id), comm=comm)


def kills_of(pod_uid: str) -> str:
    """The pod's kill records (oom.event.id is on kills only; the pressure and reclaim records around
    them carry the pod too)."""
    return f'k8s.pod.uid:="{pod_uid}" oom.event.id:*'


def by_pod_and_container(pod_uid: str, container_id: str) -> str:
    return f'k8s.pod.uid:="{pod_uid}" container.id:="{container_id}" oom.event.id:*'


def test_a_kill_is_queryable_by_pod_and_container_with_the_names_k8s_attributes_added(tmp_path):
    col, vl = binaries()
    pod_uid, cid = str(uuid.uuid4()), new_container_id()
    with DownstreamStack(col, vl, tmp_path, pods=[shop_pod(pod_uid, cid)]) as stack:
        agent = start_agent(stack, tmp_path / "spool")
        try:
            kill = kill_in(pod_uid, cid, comm="shop-worker")
            rows = stack.vl.wait_for(by_pod_and_container(pod_uid, cid), timeout=120)
        finally:
            agent.stop()
        assert len(rows) == 1, rows
        rec = rows[0]
        # the victim, as the agent reported it
        assert rec["process.pid"] == str(kill.victim_pid)
        assert rec["process.executable.name"] == "shop-worker"
        assert rec["event_name"] == "oom.kill"
        assert f"Killed process {kill.victim_pid} (shop-worker)" in rec["_msg"]
        assert 16 * MiB < int(rec["oom.victim.memory.rss"]) < 48 * MiB
        assert int(rec["oom.memcg.limit"]) == 32 * MiB
        assert rec["oom.victim.cgroup.path"] == kill.cgroup_path
        # lifted to the resource by groupbyattrs: VictoriaLogs makes OTLP resource attributes
        # the log stream's fields, record attributes are not in _stream
        stream = rec["_stream"]
        assert f'k8s.pod.uid="{pod_uid}"' in stream and f'container.id="{cid}"' in stream
        assert "process.pid" not in stream
        # added by k8s_attributes from the API double, matched by k8s.pod.uid
        assert rec["k8s.namespace.name"] == "shop"
        assert rec["k8s.pod.name"] == f"web-7d9f8c6b5-{pod_uid[:5]}"
        assert rec["k8s.container.name"] == "app"
        assert rec["k8s.deployment.name"] == "web"
        assert rec["container.image.name"] == "registry.example/shop/web"
        assert 'k8s.namespace.name="shop"' in stream
        # the reporter stays on the resource too
        assert rec["service.name"] == "otel-oom"
        # the processor watched only this node's pods
        watches = stack.api.pod_requests(watch=True) or stack.api.pod_requests()
        assert watches and all(q["fieldSelector"] == [f"spec.nodeName={NODE}"] for q in watches), watches


def test_kill_counts_by_container_come_from_the_collector_and_answer_promql(tmp_path):
    """The count connector counts oom.kill records by their resource (after groupbyattrs and
    k8s_attributes) into oom_kill_records_total; PromQL sums it by container."""
    col, vl = binaries()
    pod_a, cid_a = str(uuid.uuid4()), new_container_id()
    pod_b, cid_b = str(uuid.uuid4()), new_container_id()   # not served by the API: no names
    with DownstreamStack(col, vl, tmp_path, pods=[shop_pod(pod_a, cid_a)]) as stack:
        agent = start_agent(stack, tmp_path / "spool")
        try:
            kill_in(pod_a, cid_a)
            kill_in(pod_a, cid_a)
            kill_in(pod_b, cid_b)
            q = (f'sum by (container_id) (oom_kill_records_total{{job="otel-oom", '
                 f'container_id=~"{cid_a}|{cid_b}"}})')
            deadline = time.monotonic() + 120
            got: dict = {}
            while time.monotonic() < deadline and got != {cid_a: 2.0, cid_b: 1.0}:
                got = {r["metric"].get("container_id"): float(r["value"][1]) for r in stack.prom.query(q)}
                time.sleep(0.5)
            assert got == {cid_a: 2.0, cid_b: 1.0}, (got, stack.collector_log()[-3000:])
            names = stack.prom.query(
                f'sum by (k8s_namespace_name, k8s_pod_name, k8s_container_name, k8s_pod_uid) '
                f'(oom_kill_records_total{{container_id="{cid_a}"}})')
            assert [(r["metric"], r["value"][1]) for r in names] == [
                ({"k8s_namespace_name": "shop", "k8s_pod_name": f"web-7d9f8c6b5-{pod_a[:5]}",
                  "k8s_container_name": "app", "k8s_pod_uid": pod_a}, "2")]
            unnamed = stack.prom.query(f'oom_kill_records_total{{container_id="{cid_b}"}}')
            assert unnamed[0]["metric"]["k8s_pod_uid"] == pod_b and "k8s_pod_name" not in unnamed[0]["metric"]
            # the agent's own counter arrives by remote write too, with or without per-container
            # attributes (a lower bound: the agent counts every kill on this host)
            assert stack.prom.wait_for('sum(oom_kills_total{job="otel-oom"}) >= 3', timeout=120)
        finally:
            agent.stop()


def log_tail(stack: DownstreamStack) -> str:
    """The Collector's log lines about export retries and drops (for a failure message)."""
    return "".join(line for line in stack.collector_log().splitlines(True)
                   if "retr" in line or "Dropping" in line)[-4000:]


# faster retries than shipped (1 s .. 30 s) so the test does not wait 30 s once the backend is back;
# max_elapsed_time stays as shipped (0: never give up)
FAST_RETRY = {"exporters::otlp_http/logs::retry_on_failure::initial_interval": "200ms",
              "exporters::otlp_http/logs::retry_on_failure::max_interval": "1s"}
# the negative control: the Collector's default behaviour (give up after max_elapsed_time, 300 s
# by default), with the window shrunk to 3 s
SHORT_WINDOW_S = 3


def test_no_kill_is_lost_through_backend_outage_collector_crash_and_agent_restart(tmp_path):
    col, vl = binaries()
    pod_uid, cid = str(uuid.uuid4()), new_container_id()
    spool = tmp_path / "spool"
    pids = []
    with DownstreamStack(col, vl, tmp_path, pods=[shop_pod(pod_uid, cid)], overrides=FAST_RETRY) as stack:
        agent = start_agent(stack, spool)
        try:
            pids.append(kill_in(pod_uid, cid).victim_pid)
            assert len(stack.vl.wait_for(kills_of(pod_uid), timeout=120)) == 1

            # 1. the log backend goes down, for longer than the (shrunk) default retry window
            stack.vl.stop()
            pids += [kill_in(pod_uid, cid).victim_pid for _ in range(2)]
            time.sleep(SHORT_WINDOW_S * 2 + 2)
            assert re.search(r"Exporting failed. Will retry the request after interval", stack.collector_log())

            # the Collector accepted those two (the agent never had to retry): from here on they
            # exist only in the Collector's persistent queue
            assert "did not accept" not in agent.stderr, agent.stderr

            # 2. the Collector crashes mid-outage (SIGKILL: nothing flushed on the way out)
            stack.stop_collector(signal.SIGKILL)
            pids.append(kill_in(pod_uid, cid).victim_pid)   # Collector down: the agent spools it
            deadline = time.monotonic() + 90
            while "did not accept" not in agent.stderr and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "did not accept" in agent.stderr, agent.stderr

            # 3. the agent crashes too, with that kill not yet accepted, and comes back
            agent.stop(signal.SIGKILL)
            agent = start_agent(stack, spool)
            pids.append(kill_in(pod_uid, cid).victim_pid)

            # 4. the Collector comes back on the same queue, still no backend; then the backend
            stack.start_collector()
            time.sleep(3)
            stack.vl.start()
            expected = len(pids)
            rows = stack.vl.wait_for(kills_of(pod_uid) + ' | fields oom.event.id, process.pid',
                                     lambda rs: len({r["oom.event.id"] for r in rs}) >= expected, timeout=180)
        finally:
            agent.stop()
        got_pids = sorted({int(r["process.pid"]) for r in rows})
        assert got_pids == sorted(pids), (got_pids, pids, stack.collector_log()[-4000:])
        assert len({r["oom.event.id"] for r in rows}) == expected
        log = stack.collector_log()
        assert "Dropping data" not in log and "no more retries left" not in log, stack.prom.log_text()


def test_negative_control_the_default_retry_window_drops_a_long_outage(tmp_path):
    """What the shipped max_elapsed_time: 0 prevents: with a finite window (the default is 300 s;
    3 s here) a record still failing when the window closes is dropped, queue or not."""
    col, vl = binaries()
    pod_uid, cid = str(uuid.uuid4()), new_container_id()
    overrides = {**FAST_RETRY, "exporters::otlp_http/logs::retry_on_failure::max_elapsed_time": f"{SHORT_WINDOW_S}s"}
    with DownstreamStack(col, vl, tmp_path, pods=[shop_pod(pod_uid, cid)], overrides=overrides) as stack:
        # a generous export timeout (seconds), so a Collector slowed by a loaded machine is not
        # mistaken for a failure: the agent would then send the record again, and that second
        # copy would start a new retry window
        agent = start_agent(stack, tmp_path / "spool", OTEL_EXPORTER_OTLP_TIMEOUT="60")
        try:
            first = kill_in(pod_uid, cid).victim_pid
            assert len(stack.vl.wait_for(kills_of(pod_uid), timeout=120)) == 1
            stack.vl.stop()
            lost = kill_in(pod_uid, cid).victim_pid
            # the agent reports every kill on this host, other test runs' too, so the first "no
            # more retries" may be another record's: wait out this one's whole window (it opens
            # at most ~1.5 s after the kill: the agent's send and the queue's 200 ms batching)
            # plus the last retry interval
            time.sleep(SHORT_WINDOW_S + 1 + 1.5 + 2)
            deadline = time.monotonic() + 90
            while "no more retries left" not in stack.collector_log() and time.monotonic() < deadline:
                time.sleep(0.5)
            stack.vl.start()
            after = kill_in(pod_uid, cid).victim_pid
            rows = stack.vl.wait_for(kills_of(pod_uid), lambda rs: len(rs) >= 2, timeout=120)
            time.sleep(3)
            rows = stack.vl.query(kills_of(pod_uid) + ' | fields process.pid')
        finally:
            agent.stop()
        # each record was handed over once: the drop below is the Collector's, not a resend's race
        assert "did not accept" not in agent.stderr, agent.stderr
        assert sorted(int(r["process.pid"]) for r in rows) == sorted([first, after]), (rows, log_tail(stack))
        assert lost not in [int(r["process.pid"]) for r in rows]
        log = stack.collector_log()
        assert "no more retries left" in log and "Dropping data" in log, log[-3000:]
        print(json.dumps({"dropped_kill_pid": lost}))
