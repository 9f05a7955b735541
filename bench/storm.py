"""An OOM storm: 800 real kills in 8 throwaway memory cgroups as fast as the machine allows.

Reports what the kernel counted, what reached the receiver, what the agent says it did not
observe (`oom.kills.unobserved`), the agent's CPU and peak RSS, the time from the end of the
storm until the last record arrived, and a py-spy profile of the agent during the storm.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from testing.storm import trigger_storm

from .common import (
    DISK_DIR,
    OtlpGrpcReceiver,
    RecordCounter,
    cpu_seconds,
    latest_metric,
    remove,
    rss_kib,
    spool_dir,
    start_agent,
    wait_until,
)
from .profile import profile_or_none


def run(cgroups: int = 8, kills: int = 800, profile_to: Optional[Path] = None, log=print) -> dict:
    base = spool_dir(DISK_DIR)
    prefix = f"/otel-oom-storm-{os.getpid()}-"
    try:
        with OtlpGrpcReceiver() as rcv:
            # the unobserved gauge compares with a kernel snapshot one refresh (5 s) old: a 1 s metric
            # interval reports it a few seconds after the storm instead of 15 s
            agent = start_agent([], rcv.endpoint, os.path.join(base, "spool"), OTEL_METRIC_EXPORT_INTERVAL="1000")
            try:
                pid = agent.proc.pid
                delivered = RecordCounter(rcv, "oom.victim.cgroup.path", lambda v: v.startswith(prefix))
                prof = profile_or_none(pid, profile_to) if profile_to else None
                cpu0 = cpu_seconds(pid)
                t0 = time.time_ns()
                storm = trigger_storm(cgroups=cgroups, kills=kills)
                t_end = time.time_ns()
                wait_until(lambda: delivered() >= storm.kills_caused, 120, 0.02)
                cpu = cpu_seconds(pid) - cpu0
                profile = prof.stop() if prof else None
                peak = rss_kib(pid, "VmHWM") / 1024
                log(f"  storm: {storm.kills_caused} kills in {storm.seconds:.1f} s, {delivered()} delivered")
                # two reconciler refreshes (5 s apart) and one metric export after the last kill
                time.sleep(11)
                unobserved = latest_metric(rcv, "oom.kills.unobserved")
                dropped = {p["attributes"]["reason"]: p["value"]
                           for p in rcv.metric_points("otel_oom.events.dropped", latest=True) if p["value"]}
            finally:
                agent.stop()
    finally:
        remove(base)
    out = {
        "cgroups": cgroups, "kills_requested": kills,
        "kills_caused": storm.kills_caused, "storm_seconds": round(storm.seconds, 2),
        "kill_rate_per_s": round(storm.kills_caused / storm.seconds),
        "delivered": delivered.count, "unobserved_gauge": unobserved, "drops": dropped,
        "agent_cpu_s": round(cpu, 2),
        "agent_cpu_pct_of_storm": round(100 * cpu / ((max(delivered.last_ns, t_end) - t0) / 1e9), 1),
        "agent_cpu_us_per_kill": round(cpu / max(1, delivered.count) * 1e6),
        "peak_rss_mib": round(peak, 1),
        "drain_after_storm_s": round(max(0, delivered.last_ns - t_end) / 1e9, 3),
    }
    if profile:
        out["profile"] = profile
    return out
