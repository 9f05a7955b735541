"""Kill to queryable: how long after a real OOM kill its record can be found in the log backend.

    sudo .venv/bin/python -m bench.downstream [--kills 50] [--json out.json]

The whole chain of tests/test_collector_e2e.py (testing/downstream.py): the real agent, the real
Collector running collector-config/agent.yaml, VictoriaLogs. Kills happen one at a time in a
Kubernetes-shaped throwaway memory cgroup; for each, VictoriaLogs is polled every 20 ms by the
record's pid until the record is returned, and the latency is that moment minus the record's own
timestamp (the kill as the agent timed it: `_time`). Needs `make collector victorialogs`.
Prints p50, p90 and max.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from otel_oom.trigger import trigger_oom
from testing.agent_process import AgentProcess, agent_env
from testing.collector_process import collector_binary
from testing.downstream import DownstreamStack, kube_cgroup, new_container_id, shop_pod
from testing.victorialogs import victorialogs_binary


def _parse_time(text: str) -> float:
    # VictoriaLogs writes RFC 3339 with nanoseconds; datetime takes microseconds
    whole, _, frac = text.rstrip("Z").partition(".")
    base = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def measure(kills: int) -> dict:
    col, vl = collector_binary(), victorialogs_binary()
    if col is None or vl is None:
        sys.exit("bench.downstream: build the Collector and VictoriaLogs first: make collector victorialogs")
    pod_uid, cid = str(uuid.uuid4()), new_container_id()
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="otel-oom-bench-") as tmp, \
            DownstreamStack(col, vl, Path(tmp), pods=[shop_pod(pod_uid, cid)]) as stack:
        agent = AgentProcess([f"--spool-dir={tmp}/spool"], agent_env(stack.agent_endpoint))
        try:
            for _ in range(kills):
                kill = trigger_oom(limit_bytes=32 << 20, cgroup=kube_cgroup(pod_uid, cid), comm="bench-victim")
                deadline = time.monotonic() + 30
                rows: list = []
                while not rows and time.monotonic() < deadline:
                    rows = stack.vl.query(f'process.pid:="{kill.victim_pid}" k8s.pod.uid:="{pod_uid}" oom.event.id:* '
                                          '| fields _time')
                    seen = time.time()
                    if not rows:
                        time.sleep(0.02)
                if not rows:
                    sys.exit(f"bench.downstream: kill of pid {kill.victim_pid} not queryable after 30 s")
                latencies.append(seen - _parse_time(rows[0]["_time"]))
        finally:
            agent.stop()
    ordered = sorted(latencies)
    return {"kills": kills, "p50_s": statistics.median(ordered),
            "p90_s": ordered[int(0.9 * (len(ordered) - 1))], "max_s": ordered[-1], "min_s": ordered[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    result = measure(args.kills)
    print(f"kill -> queryable in VictoriaLogs over {result['kills']} kills: p50 {result['p50_s'] * 1000:.0f} ms, "
          f"p90 {result['p90_s'] * 1000:.0f} ms, max {result['max_s'] * 1000:.0f} ms "
          f"(min {result['min_s'] * 1000:.0f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
