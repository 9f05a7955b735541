"""Latency of real OOM kills: the kernel's stamp of the kill to its arrival at a real OTLP receiver.

Kills are caused one after another with `trigger_oom` (each in its own throwaway memory cgroup
with a small limit). The record's `time_unix_nano` is the kernel's CLOCK_BOOTTIME stamp taken in
`mark_victim`, converted to wall-clock time; `received_ns` is the receiver's wall clock when the
export request arrived. Default settings: spool on disk (fdatasync per event), gRPC, default
metric interval.
"""
from __future__ import annotations

import os
import time

from otel_oom.trigger import trigger_oom

from .common import DISK_DIR, OtlpGrpcReceiver, percentiles, remove, spool_dir, start_agent, wait_until

MiB = 1 << 20


def run(kills: int = 250, limit_bytes: int = 16 * MiB, log=print) -> dict:
    base = spool_dir(DISK_DIR)
    try:
        with OtlpGrpcReceiver() as rcv:
            agent = start_agent([], rcv.endpoint, os.path.join(base, "spool"), OTEL_METRIC_EXPORT_INTERVAL="15000")
            try:
                pids = set()
                t0 = time.monotonic()
                for i in range(kills):
                    pids.add(trigger_oom(limit_bytes=limit_bytes).victim_pid)
                    if (i + 1) % 50 == 0:
                        log(f"  {i + 1} kills")
                seconds = time.monotonic() - t0
                mine = lambda: [r for r in rcv.log_records() if r["attributes"].get("process.pid") in pids]  # noqa: E731
                wait_until(lambda: len(mine()) >= len(pids), 30, 0.2)
                recs = mine()
            finally:
                agent.stop()
    finally:
        remove(base)
    lat = percentiles([(r["received_ns"] - r["time_unix_nano"]) / 1e6 for r in recs])
    return {"kills": len(pids), "delivered": len(recs), "kill_rate_per_s": round(len(pids) / seconds, 1),
            "latency_ms": {k: (round(v, 2) if k != "n" else v) for k, v in lat.items()}}
