"""A synthetic storm: `rate` events/s for `seconds` through the agent's real ring buffer.

The bench-only `synthetic_events` program (bench/synthetic.py, via bench/driver.py) writes the events
into the agent's own ring buffer at a fixed pace (runs of 64 scheduled by the clock, not by what the
agent has taken), far beyond what a node produces, so the agent falls behind on purpose. What must
hold: every event is delivered or counted as dropped under a reason (`ringbuf_full` by the kernel
side, `queue_full` by the agent's byte-bounded sample queue), and the agent's memory stays bounded.
Reports caused, delivered, the counted drops by reason, what is unaccounted for (caused - delivered
- counted: must be 0), the agent's peak RSS and CPU, and how long the backlog took to drain.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from .common import (
    DISK_DIR,
    REPO,
    OtlpGrpcReceiver,
    RecordCounter,
    cpu_seconds,
    remove,
    rss_kib,
    spool_dir,
    start_agent,
    wait_until,
)
from .synthetic import EVENTS_PER_RUN
from .synthetic import build as build_synthetic
from .throughput import KubepodsCgroup


def _dropped(rcv: OtlpGrpcReceiver) -> dict[str, int]:
    return {p["attributes"]["reason"]: int(p["value"])
            for p in rcv.metric_points("otel_oom.events.dropped", latest=True) if p["value"]}


def run(rate: int = 10_000, seconds: float = 10.0, log=print) -> dict:
    build_synthetic()
    base = spool_dir(DISK_DIR)
    cg = KubepodsCgroup()
    try:
        with OtlpGrpcReceiver() as rcv:
            agent = start_agent([], rcv.endpoint, os.path.join(base, "spool"), OTEL_METRIC_EXPORT_INTERVAL="1000")
            try:
                pid = agent.proc.pid
                rss0 = rss_kib(pid) / 1024
                env = {**os.environ, "PYTHONPATH": str(REPO)}
                procs = os.path.join(cg.leaf, "cgroup.procs")
                drv = subprocess.Popen([sys.executable, "-m", "bench.driver", str(pid), procs], cwd=REPO, env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
                try:
                    if drv.stdout.readline().strip() != "ready":
                        raise RuntimeError("synthetic event driver did not start")
                    counter = RecordCounter(rcv, "oom.hook", lambda v: v == "synthetic")
                    cpu0 = cpu_seconds(pid)
                    runs_total = round(rate * seconds / EVENTS_PER_RUN)
                    done, peak_rss = 0, 0.0
                    t0 = time.monotonic()
                    while done < runs_total:
                        due = min(runs_total, int((time.monotonic() - t0) * rate / EVENTS_PER_RUN) + 1)
                        if due > done:
                            drv.stdin.write(f"{due - done}\n")
                            drv.stdin.flush()
                            drv.stdout.readline()
                            done = due
                        else:
                            time.sleep(0.002)
                        peak_rss = max(peak_rss, rss_kib(pid) / 1024)
                    storm_s = time.monotonic() - t0
                finally:
                    drv.stdin.close()
                    drv.wait(10)
                caused = runs_total * EVENTS_PER_RUN
                log(f"  storm: {caused:,} events in {storm_s:.1f} s ({caused / storm_s:,.0f}/s), "
                    f"{counter():,} delivered so far")

                def settled() -> bool:
                    d = _dropped(rcv)
                    return counter() + d.get("ringbuf_full", 0) + d.get("queue_full", 0) >= caused

                t_end = time.monotonic()
                wait_until(lambda: settled() or agent.proc.poll() is not None, 180, 0.05)
                drain_s = time.monotonic() - t_end
                time.sleep(2.5)  # a metric export after the last drop
                cpu = cpu_seconds(pid) - cpu0
                peak_hwm = rss_kib(pid, "VmHWM") / 1024
                delivered = counter()
                dropped = _dropped(rcv)
            finally:
                agent.stop()
    finally:
        cg.remove()
        remove(base)
    counted = sum(dropped.get(k, 0) for k in ("ringbuf_full", "queue_full"))
    return {
        "rate_per_s": rate, "seconds": seconds, "storm_seconds": round(storm_s, 2),
        "caused": caused, "delivered": delivered, "dropped": dropped, "counted_drops": counted,
        "unaccounted": caused - delivered - counted,
        "agent_cpu_s": round(cpu, 2), "agent_cpu_us_per_delivered": round(cpu / max(1, delivered) * 1e6),
        "rss_before_mib": round(rss0, 1), "peak_rss_mib": round(max(peak_rss, peak_hwm), 1),
        "drain_after_storm_s": round(drain_s, 2),
    }
