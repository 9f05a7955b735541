"""The `fleet` section of `python -m bench` (figures under `fleet` in bench/report.json) and its
Markdown. The simulation runs as a child process (`python -m bench.fleet`): it enters a network
namespace of its own, which must not happen to the bench's process."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .stack import REPO

# the larger run: a gateway SIGKILLed and a storage node restarted during the rollout (the busiest
# minute), static resolver; then, smaller, the shipped dns resolver moving a dead gateway's nodes to
# the other one, and a crash of a storage node (SIGKILL), to show what that loses
MAIN = {"nodes": 100, "minutes": 3, "kill_gateway_at": 130, "kill_storage_at": 150, "storage_signal": "TERM"}
DNS = {"nodes": 50, "minutes": 2, "kill_gateway_at": 75, "kill_storage_at": None, "down": 30, "resolver": "dns"}
CRASH = {"nodes": 50, "minutes": 2, "kill_gateway_at": None, "kill_storage_at": 95, "storage_signal": "KILL"}
QUICK = {"nodes": 20, "minutes": 1, "kill_gateway_at": 35, "kill_storage_at": 45, "storage_signal": "TERM"}


def simulate(nodes: int, minutes: float, kill_gateway_at: Any, kill_storage_at: Any, storage_signal: str = "TERM",
             down: int = 15, resolver: str = "static") -> dict:
    argv = [sys.executable, "-m", "bench.fleet", "--nodes", str(nodes), "--minutes", str(minutes),
            "--storage-signal", storage_signal, "--down-seconds", str(down), "--resolver", resolver]
    if kill_gateway_at is not None:
        argv += ["--kill-gateway-at", str(kill_gateway_at)]
    if kill_storage_at is not None:
        argv += ["--kill-storage-at", str(kill_storage_at)]
    r = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} exited with {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    result = simulate(**(QUICK if quick else MAIN))
    if not quick:
        result["gateway_failover_dns"] = simulate(**DNS)
        result["storage_crash"] = simulate(**CRASH)
    return result


def _row(name: str, t: dict) -> list:
    return [name, t["processes"], t["cores"], t["per_1000_nodes"]["cores"], t["idle_rss_mib"], t["peak_rss_mib"],
            t["per_1000_nodes"]["peak_rss_mib"]]


def markdown(f: dict) -> list[str]:
    """The report's fleet section (docs/scale.md explains it)."""
    from ..markdown import _table

    lat = f["latency"]
    out = ["## Fleet: node Collectors -> gateways -> VictoriaLogs cluster (bench/fleet)", "",
           f"{f['nodes']} node Collectors, 2 gateways, vlinsert + vlselect + 2 vlstorage, Prometheus; "
           f"{f['minutes']} min of records (a calm hour compressed, then a rollout killing a pod on every node). "
           f"Faults: {json.dumps(f['faults'])}.", "",
           _table(["sent", "kills", "stored distinct", "lost", "duplicates", "p50 ms", "p99 ms", "max ms"],
                  [[f["sent"], f["sent_kills"], f["stored_distinct"], f["lost"], f["duplicates"],
                    round(lat["p50_ms"] or 0), round(lat["p99_ms"] or 0), round(lat["max_ms"] or 0)]]), "",
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
    crash = f.get("storage_crash")
    if crash:
        out += [f"A vlstorage crash (SIGKILL) in a {crash['nodes']}-node run: {crash['sent']} sent, "
                f"{crash['lost']} lost ({crash['lost_kills']} kills), {crash['duplicates']} duplicates "
                "(what it had acknowledged since its last flush to disk; docs/scale.md).", ""]
    return out
