"""Start-up and idle footprint: `otel-oom run` against an equivalent bpftrace one-liner."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time

from .common import OtlpGrpcReceiver, cpu_seconds, rss_kib, start_agent

BPFTRACE_ONELINER = 'tracepoint:oom:mark_victim { printf("%d %s\\n", args.pid, str(args.comm)); }'


def _bpftrace(idle_s: float) -> dict:
    t0 = time.monotonic()
    p = subprocess.Popen(["bpftrace", "-e", BPFTRACE_ONELINER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = threading.Event()

    def pump():
        for line in iter(p.stdout.readline, b""):
            if b"Attaching" in line or b"attached" in line.lower():
                ready.set()
    threading.Thread(target=pump, daemon=True).start()
    ready.wait(60)
    startup = time.monotonic() - t0
    time.sleep(1.0)  # bpftrace prints "Attaching" just before attaching
    cpu0 = cpu_seconds(p.pid)
    time.sleep(idle_s)
    out = {"startup_ms": startup * 1000, "idle_rss_mib": rss_kib(p.pid) / 1024,
           "idle_cpu_pct": (cpu_seconds(p.pid) - cpu0) / idle_s * 100}
    p.terminate()
    p.wait(10)
    return out


def _agent(idle_s: float) -> dict:
    with OtlpGrpcReceiver() as rcv, tempfile.TemporaryDirectory() as spool:
        a = start_agent([], rcv.endpoint, spool)
        startup = a.ready_at - a.started
        cpu0 = cpu_seconds(a.proc.pid)
        time.sleep(idle_s)
        out = {"startup_ms": startup * 1000, "idle_rss_mib": rss_kib(a.proc.pid) / 1024,
               "peak_rss_mib": rss_kib(a.proc.pid, "VmHWM") / 1024,
               "idle_cpu_pct": (cpu_seconds(a.proc.pid) - cpu0) / idle_s * 100}
        a.stop()
        return out


def run(idle_s: float = 30.0) -> dict:
    agent = _agent(idle_s)
    result = {"otel-oom": agent}
    if shutil.which("bpftrace"):
        bt = _bpftrace(idle_s)
        result["bpftrace"] = bt
        result["ratios (otel-oom / bpftrace)"] = {
            k: agent[k] / bt[k] if bt[k] else float("nan") for k in ("startup_ms", "idle_rss_mib", "idle_cpu_pct")}
    return result
