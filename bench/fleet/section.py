"""The `fleet` section of `python -m bench` (figures under `fleet` in bench/report.json) and its
Markdown. The simulation runs as a child process (`python -m bench.fleet`): it enters a network
namespace of its own, which must not happen to the bench's process."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .stack import REPO

# the larger run: during the rollout (the busiest minute) a gateway SIGKILLed (while vlinsert-a
# stalls), a storage node SIGKILLed, five agents crashing between their Collector's answer and their
# spool's ack (while the storage node is down: their copy B waits in vlinsert-b), and node
# Collectors SIGKILLed while the gateways stall; static resolver. Then,
# smaller, the shipped dns resolver moving a dead gateway's nodes to the other one.
MAIN = {"nodes": 100, "minutes": 3, "kill_gateway_at": 130, "kill_storage_at": 150, "restart_agents_at": 155,
        "kill_node_collectors_at": 168}
DNS = {"nodes": 50, "minutes": 2, "kill_gateway_at": 75, "down": 30, "resolver": "dns"}
QUICK = {"nodes": 20, "minutes": 1, "kill_gateway_at": 20, "kill_storage_at": 35, "restart_agents_at": 40,
         "kill_node_collectors_at": 50, "down": 10}


def simulate(nodes: int, minutes: float, down: int = 15, resolver: str = "static", **faults: Any) -> dict:
    argv = [sys.executable, "-m", "bench.fleet", "--nodes", str(nodes), "--minutes", str(minutes),
            "--down-seconds", str(down), "--resolver", resolver]
    for name, value in faults.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    r = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} exited with {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    result = simulate(**(QUICK if quick else MAIN))
    if not quick:
        result["gateway_failover_dns"] = simulate(**DNS)
    return result


def _faults(faults: dict) -> dict:
    """Each fault's what and when, without its timings."""
    keep = ("process", "processes", "signal", "at_s", "nodes")
    return {name: {k: v[k] for k in keep if k in v} for name, v in faults.items()}


def _row(name: str, t: dict) -> list:
    return [name, t["processes"], t["cores"], t["per_1000_nodes"]["cores"], t["idle_rss_mib"], t["peak_rss_mib"],
            t["per_1000_nodes"]["peak_rss_mib"]]


def markdown(f: dict) -> list[str]:
    """The report's fleet section (docs/scale.md explains it)."""
    from ..markdown import _table

    lat = f["latency"]
    hops, refused = f["duplicates_by_hop"], f["vlselect_refused"]
    out = ["## Fleet: node Collectors -> gateways -> VictoriaLogs cluster, two copies (bench/fleet)", "",
           f"{f['nodes']} node Collectors, 2 gateways, vlinsert-a/-b + vlselect + 2 vlstorage (one per copy), "
           f"Prometheus; {f['minutes']} min of records (a calm hour compressed, then a rollout killing a pod on "
           f"every node). Faults: {json.dumps(_faults(f['faults']))}.", "",
           _table(["sent", "kills", "stored distinct", "lost", "in one copy only", "duplicates (kills)",
                   "p50 ms", "p99 ms", "max ms"],
                  [[f["sent"], f["sent_kills"], f["stored_distinct"], f["lost"], f["in_one_copy_only"],
                    f"{f['duplicates']} ({f['duplicates_kills']})", round(lat["p50_ms"] or 0),
                    round(lat["p99_ms"] or 0), round(lat["max_ms"] or 0)]]), "",
           f"Duplicates by where they arose: {hops}. While vlstorage-2 was down vlselect refused full answers "
           f"for {refused['window_s']} s ({refused['answers_502']} answers 502); its {refused['partial_answers']} "
           f"partial answers missed {refused['partial_kills_missing_most']} kills at most.", "",
           _table(["tier", "processes", "cores", "cores / 1,000 nodes", "idle RSS MiB", "peak RSS MiB",
                   "peak RSS MiB / 1,000 nodes"], [_row(k, v) for k, v in f["tiers"].items()]), "",
           f"Prometheus: {f['prometheus']['series_total']} series, {f['prometheus']['series_per_1000_nodes']} per "
           f"1,000 nodes. Load average before/after: {f['machine']['loadavg_before']} / "
           f"{f['machine']['loadavg_after']}.", ""]
    dns = f.get("gateway_failover_dns")
    if dns:
        g, lat = dns["faults"]["gateway"], dns["latency"]
        out += [f"The shipped dns resolver, {dns['nodes']} nodes, gateway-1 SIGKILLed and down "
                f"{g.get('down_s')} s: {dns['lost']} lost, kill -> queryable p99 {round(lat['p99_ms'] or 0)} ms, "
                f"max {round(lat['max_ms'] or 0)} ms; of the {g.get('kills_after_reresolve')} kills sent once the "
                f"nodes could re-resolve, {g.get('kills_after_reresolve_queryable_before_restart')} were queryable "
                "before the dead gateway was back.", ""]
    return out
