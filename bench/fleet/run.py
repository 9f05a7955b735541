"""One fleet simulation from start to teardown: build or find the binaries, enter a network namespace
of its own, start the stack, feed it, break it (a gateway SIGKILLed, a storage node killed, both
brought back), drain, measure, tear down. Returns the figures as one dict."""
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
from typing import Optional

from .feed import Feeder
from .measure import Poller, kills_by_pod, latency, top_pods_query, wait_all_stored
from .procs import read_usage
from .stack import GATEWAYS, REPO, Stack, node_address
from .wire import AgentMetrics, node_resource
from .workload import make_nodes, schedule

CLONE_NEWNET = 0x40000000
ENDPOINTS_DELAY_S = 1.0
TIERS = ("node", "gateway", "vlinsert", "vlselect", "vlstorage", "prometheus")
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


class Sampler:
    """CPU and memory of every process each second; per tier the peak of the summed RSS."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_rss: dict[str, int] = {t: 0 for t in TIERS}
        self.prom_cpu = self.prom_hwm = self.prom_rss = 0.0

    def sample(self) -> None:
        rss: dict[str, int] = {t: 0 for t in TIERS}
        for p in self.stack.processes:
            p.sample()
            rss[p.tier] += p.rss_now
        pid = self.stack.prometheus_pid()
        usage = read_usage(pid) if pid else None
        if usage:
            self.prom_cpu, self.prom_rss, hwm = usage
            self.prom_hwm = max(self.prom_hwm, hwm)
            rss["prometheus"] = int(self.prom_rss)
        for t in TIERS:
            self.peak_rss[t] = max(self.peak_rss[t], rss[t])

    def cpu(self) -> dict[str, float]:
        out = {t: 0.0 for t in TIERS}
        for p in self.stack.processes:
            out[p.tier] += p.cpu_s
        out["prometheus"] = self.prom_cpu
        return out

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.sample()


def _fault(stack: Stack, which: str, at: float, down_s: float, sig: int, t0: float,
           stop: threading.Event, out: dict) -> None:
    if stop.wait(max(0.0, t0 + at - time.monotonic())):
        return
    proc = stack.gateways[0] if which == "gateway" else stack.storage[1]
    killed = time.monotonic()
    proc.kill(sig)
    out[which] = {"process": proc.name, "signal": signal.Signals(sig).name, "at_s": round(killed - t0, 2),
                  "killed_wall": time.time()}
    dns = which == "gateway" and stack.resolver == "dns"
    if dns:  # the pod turns not ready and leaves the headless Service's records (about a second)
        stop.wait(ENDPOINTS_DELAY_S)
        stack.set_ready(stack.ready - {GATEWAYS[0]})
        out[which]["left_dns_at_s"] = round(time.monotonic() - t0, 2)
    if stop.wait(max(0.0, killed + down_s - time.monotonic())):
        return
    out[which]["restarted_wall"] = time.time()
    proc.start()
    try:
        ready = proc.wait_healthy(120)
    except RuntimeError as e:
        out[which]["error"] = str(e).splitlines()[0]
        return
    if dns:
        stack.set_ready(stack.ready | {GATEWAYS[0]})
    out[which].update(restarted_at_s=round(killed + down_s - t0, 2),
                      down_s=round(time.monotonic() - killed, 2), healthy_after_restart_s=round(ready, 2))


def _prometheus(stack: Stack, kills_sent: int, timeout: float) -> dict:
    prom = stack.prometheus
    deadline = time.monotonic() + timeout
    agent_kills = 0.0

    def scalar(q: str) -> float:
        r = prom.query(q)
        return float(r[0]["value"][1]) if r else 0.0

    while time.monotonic() < deadline:  # the agents export every 15 s: wait for the last export
        agent_kills = scalar('sum(oom_kills_total{job="otel-oom"})')
        if agent_kills >= kills_sent and scalar('sum(oom_kill_records_total{job="otel-oom"})') >= kills_sent:
            break
        time.sleep(1.0)

    by_metric = {r["metric"]["__name__"]: int(r["value"][1])
                 for r in prom.query('count by (__name__) ({__name__=~".+"})')}
    return {"series_total": int(scalar('count({__name__=~".+"})')),
            "series_by_metric": dict(sorted(by_metric.items(), key=lambda kv: -kv[1])),
            "series_oom_kill_records": int(scalar("count(oom_kill_records_total)")),
            "kills_by_agent_counter": int(agent_kills),
            # docs/scale.md's PromQL "which pods were OOM-killed most": kill records, not distinct kills
            "top_pods_promql": [{**r["metric"], "kill_records": r["value"][1]} for r in prom.query(TOP_PODS_PROMQL)][:5],
            "kill_records_counted": int(scalar('sum(oom_kill_records_total{job="otel-oom"})'))}


def simulate(n_nodes: int, minutes: float, kill_gateway_at: Optional[float], kill_storage_at: Optional[float],
             down_s: float = 15.0, storage_signal: int = signal.SIGKILL, drain_timeout: float = 300.0,
             resolver: str = "static", log=print) -> dict:
    if os.geteuid() != 0:
        raise SetupError("needs root (a network namespace of its own)")
    if shutil.which("prometheus") is None:
        raise SetupError("needs the `prometheus` binary (Debian: apt-get install prometheus, or make test-packages)")
    collector, victorialogs = built("collector"), built("victorialogs")
    enter_own_network_namespace()
    seconds = minutes * 60
    nodes = make_nodes(n_nodes)
    occurrences = schedule(nodes, seconds)
    load_before = os.getloadavg()
    result: dict = {"nodes": n_nodes, "minutes": minutes, "resolver": resolver, "machine": {"cpus": os.cpu_count(),
                                                                   "loadavg_before": [round(x, 2) for x in load_before]}}
    with tempfile.TemporaryDirectory(prefix="otel-oom-fleet-") as tmp:
        scratch = Path(tmp)
        stack = Stack(collector, victorialogs, nodes, scratch, resolver)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        metrics: list[AgentMetrics] = []
        try:
            t_start = time.monotonic()
            stack.start()
            result["startup_s"] = round(time.monotonic() - t_start, 1)
            log(f"fleet: {n_nodes} node Collectors, 2 gateways, VictoriaLogs cluster up in {result['startup_s']} s")
            resources = [node_resource(n.name, n.machine_id, scratch) for n in nodes]
            # the agent's default metric interval (15 s), to its node's Collector
            metrics = [AgentMetrics(r, f"http://{node_address(n.index)}:4318", 15000)
                       for r, n in zip(resources, nodes, strict=True)]
            sampler = Sampler(stack)
            sampler.sample()
            idle_cpu = sampler.cpu()
            idle_rss = {t: 0 for t in TIERS}
            for p in stack.processes:
                idle_rss[p.tier] += p.rss_now
            idle_rss["prometheus"] = int(sampler.prom_rss)
            feeder, poller = Feeder(nodes, resources, metrics), Poller(stack.query_url)
            faults: dict = {}
            t0 = time.monotonic()
            threads = [threading.Thread(target=sampler.run, args=(stop,), daemon=True),
                       threading.Thread(target=poller.run, args=(stop,), daemon=True)]
            if kill_gateway_at is not None:
                threads.append(threading.Thread(target=_fault, args=(stack, "gateway", kill_gateway_at, down_s,
                                                                     signal.SIGKILL, t0, stop, faults), daemon=True))
            if kill_storage_at is not None:
                threads.append(threading.Thread(target=_fault, args=(stack, "storage", kill_storage_at, down_s,
                                                                     storage_signal, t0, stop, faults), daemon=True))
            for t in threads:
                t.start()
            log(f"fleet: feeding {len(occurrences)} records over {seconds:.0f} s")
            give_up = threading.Event()  # the agents stop retrying when the drain would time out anyway
            give_up_timer = threading.Timer(seconds + drain_timeout, give_up.set)
            give_up_timer.start()
            feeder.run(occurrences, t0, give_up)
            give_up_timer.cancel()
            feed_s = time.monotonic() - t0
            for t in threads[2:]:
                t.join()  # the faults are over and both processes are back
            log("fleet: fed; waiting until every record is stored")
            counts = wait_all_stored(stack.query_url, feeder.sent, drain_timeout)
            drained_s = time.monotonic() - t0
            time.sleep(1.5)  # the last kills' first appearance at the poller
            kills = feeder.kills()
            result["prometheus"] = _prometheus(stack, len([k for k in kills]), 60.0)
            stop.set()
            sampler.sample()
            run_s = time.monotonic() - t0
            cpu = sampler.cpu()
            result.update(_tally(feeder, counts, kills, poller))
            result["by_pod"] = kills_by_pod(stack.query_url, kills)
            result["top_pods"] = top_pods_query(stack.query_url)[:5]
            result["faults"] = faults
            if "restarted_wall" in faults.get("gateway", {}):
                faults["gateway"].update(_outage(faults["gateway"], kills, poller.first_seen))
            result["timing"] = {"feed_s": round(feed_s, 1), "drained_s": round(drained_s, 1), "run_s": round(run_s, 1),
                                "records_per_s": round(len(feeder.sent) / feed_s, 2)}
            result["tiers"] = _tiers(stack, cpu, idle_cpu, idle_rss, sampler, run_s, n_nodes)
            result["prometheus"]["series_per_1000_nodes"] = round(result["prometheus"]["series_total"] * 1000 / n_nodes)
        finally:
            stop.set()
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
    rerouted = [k for k in during if down + ENDPOINTS_DELAY_S + 12.0 <= k.time_ns / 1e9 < back - 15.0]

    def seen_before(ks: list) -> int:
        return len([k for k in ks if first_seen.get(k.id, float("inf")) < back])

    return {"kills_while_down": len(during), "queryable_before_restart": seen_before(during),
            "kills_after_reresolve": len(rerouted), "kills_after_reresolve_queryable_before_restart": seen_before(rerouted)}


def _tally(feeder: Feeder, counts: dict[str, int], kills: list, poller: Poller) -> dict:
    sent_ids = set(feeder.sent)
    stored = {i for i in sent_ids if counts.get(i)}
    lat = latency(kills, poller.first_seen)
    refused = poller.refused
    return {
        "sent": len(sent_ids), "sent_kills": len(kills),
        "stored_distinct": len(stored), "stored_rows": sum(counts.get(i, 0) for i in sent_ids),
        "lost": len(sent_ids - stored), "lost_kills": len([k for k in kills if k.id not in stored]),
        "duplicates": sum(counts.get(i, 0) - 1 for i in stored),
        "unexpected_ids": len(set(counts) - sent_ids),
        "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "latency": lat,
        "agent": {"posts": feeder.attempts, "retries": feeder.retries, "rejected": feeder.rejected,
                  "undelivered": feeder.undelivered},
        "vlselect_refused": {"answers_502": len(refused),
                             "window_s": round(refused[-1] - refused[0], 1) if refused else 0.0},
    }


def _tiers(stack: Stack, cpu: dict, idle_cpu: dict, idle_rss: dict, sampler: Sampler, run_s: float,
           n_nodes: int) -> dict:
    count = {t: 0 for t in TIERS}
    hwm = {t: 0 for t in TIERS}
    for p in stack.processes:
        count[p.tier] += 1
        hwm[p.tier] = max(hwm[p.tier], p.hwm)
    count["prometheus"], hwm["prometheus"] = 1, int(sampler.prom_hwm)
    out = {}
    for t in TIERS:
        busy = cpu[t] - idle_cpu[t]
        cores = busy / run_s if run_s else 0.0
        mib = sampler.peak_rss[t] / 2**20
        out[t] = {"processes": count[t], "cpu_s": round(busy, 2), "cores": round(cores, 4),
                  "idle_rss_mib": round(idle_rss[t] / 2**20, 1), "peak_rss_mib": round(mib, 1),
                  "max_process_peak_rss_mib": round(hwm[t] / 2**20, 1),
                  "per_1000_nodes": {"cpu_s": round(busy * 1000 / n_nodes, 1), "cores": round(cores * 1000 / n_nodes, 3),
                                     "peak_rss_mib": round(mib * 1000 / n_nodes, 1)}}
    return out


def main_entry(args) -> int:
    """What `python -m bench.fleet` runs; prints progress on stderr and the JSON last on stdout."""
    import json

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        result = simulate(args.nodes, args.minutes, args.kill_gateway_at, args.kill_storage_at,
                          down_s=args.down_seconds, storage_signal=signal.Signals["SIG" + args.storage_signal],
                          resolver=args.resolver, log=log)
    except SetupError as e:
        print(f"python -m bench.fleet: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a component did not start: its log's tail says why
        print(f"python -m bench.fleet: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, default=str), flush=True)
    return 0
