"""One fleet simulation from start to teardown: build or find the binaries, enter a network namespace
of its own, start the stack, feed it, break it (faults.py: a gateway SIGKILLed, a storage node
crashed, agents and node Collectors restarted, each brought back), drain, measure, tear down.
Returns the figures as one dict."""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import docqueries, faults
from .faults import Plan
from .feed import Feeder
from .measure import Poller, copies_and_duplicates, kills_by_pod, latency, top_pods_query, wait_all_stored
from .stack import REPO, Stack, node_address
from .usage import Sampler, tiers
from .wire import AgentMetrics, node_resource
from .workload import make_nodes, schedule

CLONE_NEWNET = 0x40000000
TOP_PODS_PROMQL = ('topk(10, sum by (k8s_namespace_name, k8s_pod_name) '
                   '(max_over_time(oom_kill_records_total{job="otel-oom"}[7d])))')


class SetupError(Exception):
    """Something the simulation needs is missing: one line saying what to do."""


def built(script: str) -> str:
    """The binary a tools/ build script prints as its last line (it builds once, then caches)."""
    r = subprocess.run([str(REPO / "tools" / script / "build.sh")], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise SetupError(f"tools/{script}/build.sh failed (needs Go >= 1.26 and the module proxy): "
                         f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout.strip().splitlines()[-1]


def enter_own_network_namespace() -> None:
    """Every process of the run gets a private loopback: fixed ports, nothing left on the host's.
    The namespace has no name and goes away with the last process in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise SetupError(f"cannot create a network namespace ({os.strerror(ctypes.get_errno())}): run as root")
    # `ip link set lo up`, without needing iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))


# a node Collector retries a metrics export at most 30 s apart (node-to-gateway.yaml): a kill-record
# point not in Prometheus after this long without any change was lost, not late
PROMETHEUS_QUIET_S = 45.0


def _prometheus(stack: Stack, kills: list, timeout: float) -> dict:
    prom = stack.prometheus
    kills_sent = len(kills)
    killed_pods = {k.pod_uid for k in kills}
    deadline = time.monotonic() + timeout

    def scalar(q: str) -> float:
        r = prom.query(q)
        return float(r[0]["value"][1]) if r else 0.0

    def kill_series() -> tuple[set, set]:
        """Killed pods (by uid, which every series has) with a kill-record series named by
        k8s_attributes, and with one named by its uid only."""
        series = prom.query("count by (k8s_pod_uid, k8s_pod_name) (oom_kill_records_total)")
        return ({r["metric"].get("k8s_pod_uid") for r in series if r["metric"].get("k8s_pod_name")},
                {r["metric"].get("k8s_pod_uid") for r in series if not r["metric"].get("k8s_pod_name")})

    # a node Collector restarted in the run starts its containers' kill-record series again from
    # 1: their highest value is what they counted (as docs/scale.md's PromQL reads them)
    records = 'sum(max_over_time(oom_kill_records_total{job="otel-oom"}[1h]))'
    # wait for the last exports (the agents' every 15 s; the kill records' as they arrive, later
    # for a node whose export is in a retry): until the agents' counter has every kill and every
    # killed pod has a named series, or nothing changed for PROMETHEUS_QUIET_S. (Not "the records
    # counted reached the kills": replays count twice and make that true with points still out.)
    agent_kills, named, unnamed = 0.0, set(), set()
    state: tuple = ()
    changed = time.monotonic()
    while time.monotonic() < deadline:
        agent_kills = scalar('sum(oom_kills_total{job="otel-oom"})')
        named, unnamed = kill_series()
        now = (agent_kills, scalar(records), frozenset(named), frozenset(unnamed))
        if now != state:
            state, changed = now, time.monotonic()
        if agent_kills >= kills_sent and (killed_pods <= named or time.monotonic() - changed > PROMETHEUS_QUIET_S):
            break
        time.sleep(1.0)

    by_metric = {r["metric"]["__name__"]: int(r["value"][1])
                 for r in prom.query('count by (__name__) ({__name__=~".+"})')}
    return {"series_total": int(scalar('count({__name__=~".+"})')),
            "series_by_metric": dict(sorted(by_metric.items(), key=lambda kv: -kv[1])),
            "series_oom_kill_records": int(scalar("count(oom_kill_records_total)")),
            # killed pods without a kill-record series: their one point was lost (docs/scale.md, "A lost
            # metric point"); and pods with a series their node Collector could not name (none since
            # agent.yaml's k8s_attributes waits for the node's pods: wait_for_metadata); the node each was on
            "pods_missing_in_kill_records": sorted({(k.pod, k.node) for k in kills if k.pod_uid not in named | unnamed}),
            "pods_unnamed_in_kill_records": sorted({(k.pod, k.node) for k in kills if k.pod_uid in unnamed}),
            "kills_by_agent_counter": int(agent_kills),
            # docs/scale.md's PromQL "which pods were OOM-killed most": kill records, not distinct kills
            "top_pods_promql": [{**r["metric"], "kill_records": r["value"][1]} for r in prom.query(TOP_PODS_PROMQL)][:5],
            "kill_records_counted": int(scalar(records))}


def simulate(n_nodes: int, minutes: float, plan: Plan, drain_timeout: float = 300.0, resolver: str = "static",
             log=print) -> dict:
    if os.geteuid() != 0:
        raise SetupError("needs root (a network namespace of its own)")
    if shutil.which("prometheus") is None:
        raise SetupError("needs the `prometheus` binary (Debian: apt-get install prometheus, or make test-packages)")
    collector, victorialogs = built("collector"), built("victorialogs")
    enter_own_network_namespace()
    seconds = minutes * 60
    nodes = make_nodes(n_nodes)
    occurrences = schedule(nodes, seconds)
    result: dict = {"nodes": n_nodes, "minutes": minutes, "resolver": resolver,
                    "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}}
    with tempfile.TemporaryDirectory(prefix="otel-oom-fleet-") as tmp:
        scratch = Path(tmp)
        stack = Stack(collector, victorialogs, nodes, scratch, resolver)
        stop = threading.Event()
        metrics: list[AgentMetrics] = []
        feeder = None
        try:
            t_start = time.monotonic()
            stack.start()
            result["startup_s"] = round(time.monotonic() - t_start, 1)
            log(f"fleet: {n_nodes} node Collectors, 2 gateways, VictoriaLogs cluster (2 copies) up in "
                f"{result['startup_s']} s")
            resources = [node_resource(n.name, n.machine_id, scratch) for n in nodes]
            # the agent's default metric interval (15 s), to its node's Collector
            metrics = [AgentMetrics(r, f"http://{node_address(n.index)}:4318", 15000)
                       for r, n in zip(resources, nodes, strict=True)]
            feeder = Feeder(nodes, resources, metrics, scratch)
            feeder.start()
            sampler = Sampler(stack)
            idle_cpu, idle_rss = sampler.idle()
            poller = Poller(stack.query_url)
            happened: dict = {}
            t0 = time.monotonic()
            for target in (sampler.run, poller.run):
                threading.Thread(target=target, args=(stop,), daemon=True).start()
            fault_threads = faults.launch(plan, stack, feeder, occurrences, t0, stop, happened)
            log(f"fleet: feeding {len(occurrences)} records over {seconds:.0f} s")
            give_up = threading.Event()  # the agents stop retrying when the drain would time out anyway
            give_up_timer = threading.Timer(seconds + drain_timeout, give_up.set)
            give_up_timer.start()
            feeder.run(occurrences, t0, give_up)
            feed_s = time.monotonic() - t0
            for t in fault_threads:
                t.join()  # the faults are over and every process is back
            feeder.drain(give_up)
            give_up_timer.cancel()
            log("fleet: fed; waiting until every record is stored")
            counts, copies = wait_all_stored(stack.query_url, stack.copy_urls, feeder.sent, drain_timeout)
            drained_s = time.monotonic() - t0
            time.sleep(1.5)  # the last kills' first appearance at the poller
            kills = feeder.kills()
            result["prometheus"] = _prometheus(stack, kills, 300.0)
            stop.set()
            sampler.sample()
            run_s = time.monotonic() - t0
            result.update(_tally(feeder, counts, kills, poller))
            result.update(copies_and_duplicates(feeder.sent, copies, set(feeder.sent_twice())))
            result["by_pod"] = kills_by_pod(stack.query_url, kills)
            result["top_pods"] = top_pods_query(stack.query_url)[:5]
            deployments = {p.name: p.deployment for n in nodes for p in n.pods}
            result["doc_queries"] = docqueries.check(stack.query_url, kills, deployments)
            result["faults"] = happened
            if "restarted_wall" in happened.get("gateway", {}):
                happened["gateway"].update(_outage(happened["gateway"], kills, poller.first_seen))
            result["timing"] = {"feed_s": round(feed_s, 1), "drained_s": round(drained_s, 1), "run_s": round(run_s, 1),
                                "records_per_s": round(len(feeder.sent) / feed_s, 2)}
            result["tiers"] = tiers(stack, sampler.cpu(), idle_cpu, idle_rss, sampler, run_s, n_nodes)
            result["prometheus"]["series_per_1000_nodes"] = round(result["prometheus"]["series_total"] * 1000 / n_nodes)
        finally:
            stop.set()
            if feeder is not None:
                feeder.stop()
            for m in metrics:
                m.shutdown()
            stack.stop()
            result.setdefault("machine", {})["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _outage(fault: dict, kills: list, first_seen: dict[str, float]) -> dict:
    """Kills that happened while the gateway was down, and which were queryable before it came back.
    The telling ones are sent once the node Collectors could have re-resolved (a second for the
    endpoints, 5 s hosts cache, 5 s resolver interval: 12 s) and early enough to be stored before the
    restart at the usual pace (15 s): with dns every one of them is queryable before the restart (its
    node's route moved to the other gateway); with static those of the dead gateway's nodes wait."""
    down, back = fault["killed_wall"], fault["restarted_wall"]
    during = [k for k in kills if down <= k.time_ns / 1e9 < back]
    rerouted = [k for k in during if down + faults.ENDPOINTS_DELAY_S + 12.0 <= k.time_ns / 1e9 < back - 15.0]

    def seen_before(ks: list) -> int:
        return len([k for k in ks if first_seen.get(k.id, float("inf")) < back])

    return {"kills_while_down": len(during), "queryable_before_restart": seen_before(during),
            "kills_after_reresolve": len(rerouted), "kills_after_reresolve_queryable_before_restart": seen_before(rerouted)}


def _tally(feeder: Feeder, counts: dict[str, int], kills: list, poller: Poller) -> dict:
    """What vlselect answers about what was sent (both copies together)."""
    sent_ids = set(feeder.sent)
    stored = {i for i in sent_ids if counts.get(i)}
    lat = latency(kills, poller.first_seen)
    refused = poller.refused
    t = feeder.tally
    return {
        "sent": len(sent_ids), "sent_kills": len(kills),
        "stored_distinct": len(stored), "stored_rows": sum(counts.get(i, 0) for i in sent_ids),
        "lost": len(sent_ids - stored), "lost_kills": len([k for k in kills if k.id not in stored]),
        "unexpected_ids": len(set(counts) - sent_ids),
        "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "latency": lat,
        "agent": {"posts": t.posts, "retries": t.retries, "rejected": feeder.rejected(),
                  "undelivered": feeder.undelivered, "sent_twice": len(feeder.sent_twice()),
                  "restarts": len(t.restarts)},
        "vlselect_refused": {"answers_502": len(refused),
                             "window_s": round(refused[-1] - refused[0], 1) if refused else 0.0,
                             "partial_answers": poller.partial_answers,
                             "partial_answers_incomplete": poller.partial_answers_incomplete,
                             "partial_kills_missing_most": poller.partial_kills_missing},
    }


def main_entry(args) -> int:
    """What `python -m bench.fleet` runs; prints progress on stderr and the JSON last on stdout."""
    import json

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        plan = Plan(gateway_at=args.kill_gateway_at, storage_at=args.kill_storage_at,
                    storage_signal=signal.Signals["SIG" + args.storage_signal], down_s=args.down_seconds,
                    agents_at=args.restart_agents_at, agents=args.agents,
                    node_collectors_at=args.kill_node_collectors_at, node_collectors=args.node_collectors)
        result = simulate(args.nodes, args.minutes, plan, resolver=args.resolver, log=log)
    except SetupError as e:
        print(f"python -m bench.fleet: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a component did not start: its log's tail says why
        print(f"python -m bench.fleet: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, default=str), flush=True)
    return 0
