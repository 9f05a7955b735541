"""A fleet past one node, for real: node Collectors -> two gateways -> a VictoriaLogs cluster and
Prometheus, with a gateway SIGKILLed and a storage node restarted mid-run (bench/fleet, docs/scale.md).

50 simulated nodes, each a real node Collector process (collector-config/agent.yaml +
node-to-gateway.yaml, its own address and Kubernetes pods, k8s_attributes against the API test
double), fed the agent's own records (its record types, OTLP encoding, resource and metrics
code) for one minute: a calm hour compressed, then a rollout that OOM-kills the `shop/checkout`
pod on every node. 50 Collectors start in a few seconds and idle at about 0.06 cores together on
this 2-core machine (measured: docs/scale.md), so CI carries them. The simulation runs as a child
process in a network namespace of its own; its last line is the JSON asserted on here, every
figure of which comes from queries to the cluster's select node (vlselect) and Prometheus.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

REPO = Path(__file__).resolve().parents[2]


def simulate(*args: str) -> dict:
    require(os.geteuid() == 0, "needs root (the simulation's own network namespace)")
    require(shutil.which("prometheus") is not None, "needs prometheus: make test-packages")
    for tool in ("collector", "victorialogs"):
        r = subprocess.run([str(REPO / "tools" / tool / "build.sh"), "--check"], capture_output=True)
        require(r.returncode == 0, f"needs the {tool} build: make {tool}")
    r = subprocess.run([sys.executable, "-m", "bench.fleet", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stderr[-5000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fleet() -> dict:
    return simulate("--nodes", "50", "--minutes", "1", "--kill-gateway-at", "20", "--kill-storage-at", "35",
                    "--down-seconds", "10")


@pytest.mark.timeout(1800)
def test_nothing_is_lost_through_a_gateway_sigkill_and_a_storage_restart(fleet):
    assert fleet["faults"]["gateway"]["signal"] == "SIGKILL" and fleet["faults"]["gateway"]["down_s"] >= 10
    assert fleet["faults"]["storage"]["process"] == "vlstorage-2" and fleet["faults"]["storage"]["down_s"] >= 10
    assert "error" not in fleet["faults"]["gateway"] and "error" not in fleet["faults"]["storage"]
    # the rollout alone kills one pod on each of the 50 nodes
    assert fleet["sent_kills"] >= 50 and fleet["sent"] > fleet["sent_kills"]
    assert fleet["agent"]["rejected"] == 0 and fleet["agent"]["undelivered"] == 0
    assert fleet["lost"] == 0 and fleet["stored_distinct"] == fleet["sent"], fleet
    # at least once: a record may be stored twice, never a record nobody sent
    assert fleet["stored_rows"] == fleet["sent"] + fleet["duplicates"]
    assert fleet["unexpected_ids"] == 0


@pytest.mark.timeout(1800)
def test_every_kill_is_queryable_by_its_pod_at_vlselect(fleet):
    by_pod = fleet["by_pod"]
    assert by_pod["pods_not_matching"] == []
    assert by_pod["kills_queryable_by_pod"] == fleet["sent_kills"]
    assert by_pod["pods_checked"] >= 50
    # the storage node was down for 10 s: vlselect refused full answers meanwhile (502)
    assert fleet["vlselect_refused"]["answers_502"] > 0
    # every kill was seen by the latency poller, and "which pods were killed most" answered
    assert fleet["latency"]["count"] == fleet["sent_kills"]
    top = fleet["top_pods"]
    assert top and int(top[0]["kills"]) >= 1 and top[0]["k8s.pod.name"]


@pytest.mark.timeout(1800)
def test_prometheus_got_every_node_and_bounded_series(fleet):
    prom = fleet["prometheus"]
    # the agents' own counter counts each kill once; the node Collectors' count connector counts records
    assert prom["kills_by_agent_counter"] == fleet["sent_kills"]
    assert prom["kill_records_counted"] >= fleet["sent_kills"]
    # one oom_kill_records_total series per killed container (pod), no more
    assert prom["series_oom_kill_records"] == fleet["by_pod"]["pods_checked"]
    # bounded: the agents' own series per node do not grow with the kills
    per_node = (prom["series_total"] - prom["series_oom_kill_records"]) / fleet["nodes"]
    assert 10 <= per_node <= 80, prom["series_by_metric"]
    for tier in ("node", "gateway", "vlinsert", "vlselect", "vlstorage", "prometheus"):
        assert fleet["tiers"][tier]["peak_rss_mib"] > 0, tier
    assert fleet["tiers"]["node"]["processes"] == 50



@pytest.mark.timeout(1800)
def test_with_the_shipped_dns_resolver_a_dead_gateways_nodes_move_to_the_other():
    """node-to-gateway.yaml as shipped (dns resolver): the simulation plays the endpoints
    controller, dropping the SIGKILLed gateway from the name's records a second later. Every kill
    sent once the node Collectors could re-resolve (12 s) and 15 s or more before the dead gateway
    came back is queryable before it is back: its nodes' routes moved to the other gateway. (With
    the static resolver the dead gateway's nodes wait for it: docs/scale.md.)"""
    f = simulate("--nodes", "30", "--minutes", "1", "--kill-gateway-at", "10", "--down-seconds", "40",
                 "--resolver", "dns")
    assert f["resolver"] == "dns"
    assert f["lost"] == 0 and f["stored_distinct"] == f["sent"], f
    g = f["faults"]["gateway"]
    assert "error" not in g and g["down_s"] >= 40
    assert g["kills_after_reresolve"] > 0, g
    assert g["kills_after_reresolve_queryable_before_restart"] == g["kills_after_reresolve"], g
    assert f["by_pod"]["pods_not_matching"] == [] and f["by_pod"]["kills_queryable_by_pod"] == f["sent_kills"]
