"""Latency of real OOM kills: the kernel's stamp of the kill to its arrival at a real OTLP receiver.

Kills are caused one after another with `trigger_oom` (each in its own throwaway memory cgroup
with a small limit). The record's `time_unix_nano` is the kernel's CLOCK_BOOTTIME stamp taken in
`mark_victim`, converted to wall-clock time; `received_ns` is the receiver's wall clock when the
export request arrived. Default settings: spool on disk (fdatasync), gRPC, default metric interval.

A second, shorter run times each stage inside the agent (bench/stages/sitecustomize.py wraps the
functions at the stages' boundaries; the package itself is unchanged): kernel stamp -> ring-buffer
callback (the poll thread's wake-up), -> worker (the queue hand-off), -> attributed (decode and
enrich), -> stored (reconciler state, encoding, the spool write with its fdatasync), -> export started
(the sender's wake-up, spool read), -> export returned (the request, the gRPC round trip).
"""
from __future__ import annotations

import os
import time

from otel_oom.trigger import trigger_oom

from .common import DISK_DIR, REPO, OtlpGrpcReceiver, percentiles, remove, spool_dir, start_agent, wait_until

STAGES = (("ring buffer wake (kernel stamp -> callback)", "kernel", "callback"),
          ("queue hand-off (callback -> worker)", "callback", "worker"),
          ("decode + attribution", "worker", "attributed"),
          ("spool (reconciler state + encoding + write + fdatasync)", "attributed", "stored"),
          ("sender wake-up, spool read", "stored", "send"),
          ("export call (request + gRPC round trip)", "send", "sent"))

MiB = 1 << 20


def run(kills: int = 250, limit_bytes: int = 16 * MiB, log=print, stage_kills: int = 100) -> dict:
    out = _run(kills, limit_bytes, log)
    out.pop("pids")
    if stage_kills:
        out["stages"] = stages(stage_kills, limit_bytes, log)
    return out


def stages(kills: int, limit_bytes: int = 16 * MiB, log=print) -> dict:
    """Per-stage latency percentiles (ms) of `kills` real kills, timed inside the agent."""
    path = os.path.join(spool_dir(DISK_DIR), "stages.jsonl")
    try:
        r = _run(kills, limit_bytes, log, OTEL_OOM_BENCH_STAGES=path,
                 PYTHONPATH=f"{REPO / 'bench' / 'stages'}:{REPO}")
        import json

        with open(path) as f:
            rows = [json.loads(line) for line in f]
    finally:
        remove(os.path.dirname(path))
    pids = r.pop("pids")
    mine = [x for x in rows if x["pid"] in pids]
    result = {label: {k: round(v, 3) if k != "n" else v
                      for k, v in percentiles([(x[b] - x[a]) / 1e6 for x in mine if a in x and b in x]).items()}
              for label, a, b in STAGES}
    result["total (kernel stamp -> export returned)"] = {
        k: round(v, 3) if k != "n" else v for k, v in percentiles([(x["sent"] - x["kernel"]) / 1e6 for x in mine]).items()}
    result["total at the receiver, this run"] = r["latency_ms"]
    return result


def _run(kills: int, limit_bytes: int, log, **env: str) -> dict:
    base = spool_dir(DISK_DIR)
    try:
        with OtlpGrpcReceiver() as rcv:
            agent = start_agent([], rcv.endpoint, os.path.join(base, "spool"), OTEL_METRIC_EXPORT_INTERVAL="15000",
                                **env)
            try:
                pids = set()
                t0 = time.monotonic()
                for i in range(kills):
                    pids.add(trigger_oom(limit_bytes=limit_bytes).victim_pid)
                    if (i + 1) % 50 == 0:
                        log(f"  {i + 1} kills")
                seconds = time.monotonic() - t0
                # the kills only: their oom.reclaim records (issue 13) carry the same process.pid
                mine = lambda: [r for r in rcv.log_records() if r["attributes"].get("process.pid") in pids  # noqa: E731
                                and r.get("event_name") == "oom.kill"]
                wait_until(lambda: len(mine()) >= len(pids), 30, 0.2)
                recs = mine()
            finally:
                agent.stop()
    finally:
        remove(base)
    lat = percentiles([(r["received_ns"] - r["time_unix_nano"]) / 1e6 for r in recs])
    return {"kills": len(pids), "delivered": len(recs), "kill_rate_per_s": round(len(pids) / seconds, 1),
            "latency_ms": {k: (round(v, 2) if k != "n" else v) for k, v in lat.items()}, "pids": pids}
