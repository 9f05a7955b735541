"""Plumbing shared by the benchmarks: the machine, a running agent, a receiver, process figures."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the real OTLP receiver and agent runner live with the tests

from conftest import AgentProcess, agent_env  # noqa: E402
from otlp_receiver import OtlpGrpcReceiver  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    from otel_oom import __version__, libbpf

    import opentelemetry.sdk.version as sdkv

    return {
        "kernel": platform.release(),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem / 2**20:.1f} GiB",
        "python": platform.python_version(),
        "otel-oom": __version__,
        "libbpf": libbpf.version(),
        "opentelemetry-sdk": sdkv.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    q = statistics.quantiles(v, n=100, method="inclusive") if len(v) > 1 else v * 99
    return {"n": len(v), "p50": q[49], "p90": q[89], "p99": q[98], "max": v[-1]}


def start_agent(args: list[str], endpoint: str | None, spool: str, **env: str) -> AgentProcess:
    return AgentProcess([*args, f"--spool-dir={spool}"], agent_env(endpoint, **env), ready_timeout=60)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)
