"""Soak: kills for a long time (default 10 minutes) against a real agent and collector, sampling the
agent's RSS and open file descriptors every 10 s. A flat line is the result; nothing is asserted here
(tests/test_hostile.py checks file descriptors after a hundred kills).

    python -m bench.soak [--minutes 10] [--kills-per-minute 60]
"""
from __future__ import annotations

import argparse
import os
import time

from otel_oom.trigger import trigger_oom
from testing.agent_process import AgentProcess, agent_env
from testing.otlp_receiver import OtlpGrpcReceiver


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--kills-per-minute", type=int, default=60)
    args = ap.parse_args()
    with OtlpGrpcReceiver() as rx:
        agent = AgentProcess(["--oom-score-adj=keep", "--spool-dir=/tmp/otel-oom-soak-spool"],
                             agent_env(rx.endpoint))
        pid, t0, kills, last_sample = agent.proc.pid, time.monotonic(), 0, 0.0
        print("seconds  kills  delivered  rss_kib  fds")
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                trigger_oom(limit_bytes=16 << 20)
                kills += 1
                time.sleep(max(0.0, 60 / args.kills_per_minute - 0.2))
                if time.monotonic() - last_sample >= 10:
                    last_sample = time.monotonic()
                    print(f"{last_sample - t0:7.0f}  {kills:5d}  {rx.log_count():9d}  {rss_kib(pid):7d}  "
                          f"{len(os.listdir(f'/proc/{pid}/fd')):3d}", flush=True)
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
