"""Start-up and idle footprint: `otel-oom run` against the equivalent bpftrace one-liner.

Start-up is the time from exec to attached: for the agent, to its `ready` line (logged once the
probe is attached and the pipeline runs); for bpftrace, to the moment `bpftool perf list` shows
its program on the oom:mark_victim tracepoint (it prints "Attaching 1 probe..." before
attaching). Idle RSS and CPU are then measured over `idle_s` seconds, and one real kill checks
that both really report it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

from otel_oom.trigger import trigger_oom
from testing.otlp_receiver import OtlpHttpReceiver

from .common import DISK_DIR, OtlpGrpcReceiver, cpu_seconds, remove, rss_kib, spool_dir, start_agent, wait_until
from .common import run as run_cmd

# bpftrace 0.17 wants args->field; newer versions also accept args.field
BPFTRACE_ONELINER = 'tracepoint:oom:mark_victim { printf("%d %s\\n", args->pid, str(args->comm)); }'
MiB = 1 << 20


def _attached(pid: int) -> bool:
    out = run_cmd(["bpftool", "-j", "perf", "list"]).stdout
    try:
        return any(e.get("pid") == pid and e.get("tracepoint") == "mark_victim" for e in json.loads(out or "[]"))
    except ValueError:
        return False


def _bpftrace(idle_s: float) -> dict:
    t0 = time.monotonic()
    p = subprocess.Popen(["bpftrace", "-e", BPFTRACE_ONELINER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[bytes] = []
    threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, b"")), daemon=True).start()
    try:
        if not wait_until(lambda: _attached(p.pid) or p.poll() is not None, 60, 0.01) or p.poll() is not None:
            raise RuntimeError(f"bpftrace did not attach: {b''.join(lines).decode(errors='replace').strip()}")
        startup = time.monotonic() - t0
        time.sleep(1.0)
        cpu0, seen0 = cpu_seconds(p.pid), len(lines)
        time.sleep(idle_s)
        out = {"startup_ms": round(startup * 1000), "idle_rss_mib": round(rss_kib(p.pid) / 1024, 1),
               "peak_rss_mib": round(rss_kib(p.pid, "VmHWM") / 1024, 1),
               "idle_cpu_pct": round((cpu_seconds(p.pid) - cpu0) / idle_s * 100, 3),
               "kills_during_idle": len(lines) - seen0}
        victim = trigger_oom(limit_bytes=16 * MiB).victim_pid
        time.sleep(0.5)
    finally:
        p.terminate()
        p.wait(10)
    time.sleep(0.2)
    out["saw_the_kill"] = any(line.split(b" ", 1)[0] == str(victim).encode() for line in lines)
    out["version"] = run_cmd(["bpftrace", "--version"]).stdout.strip()
    return out


def _agent(idle_s: float, protocol: str = "grpc") -> dict:
    base = spool_dir(DISK_DIR)
    receiver = OtlpGrpcReceiver if protocol == "grpc" else OtlpHttpReceiver
    try:
        with receiver() as rcv:
            a = start_agent([], rcv.endpoint, os.path.join(base, "spool"), OTEL_METRIC_EXPORT_INTERVAL="15000",
                            OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
            try:
                startup = a.ready_at - a.started
                time.sleep(1.0)
                cpu0, seen0 = cpu_seconds(a.proc.pid), rcv.log_count()
                time.sleep(idle_s)
                out = {"startup_ms": round(startup * 1000), "idle_rss_mib": round(rss_kib(a.proc.pid) / 1024, 1),
                       "peak_rss_mib": round(rss_kib(a.proc.pid, "VmHWM") / 1024, 1),
                       "idle_cpu_pct": round((cpu_seconds(a.proc.pid) - cpu0) / idle_s * 100, 3),
                       # kills elsewhere on the host (other test runs) are not idle: say how many there were
                       "kills_during_idle": rcv.log_count() - seen0}
                victim = trigger_oom(limit_bytes=16 * MiB).victim_pid
                out["saw_the_kill"] = wait_until(lambda: any(r["attributes"].get("process.pid") == victim
                                                             for r in rcv.log_records()), 10)
            finally:
                a.stop()
    finally:
        remove(base)
    return out


def run(idle_s: float = 30.0) -> dict:
    """Both measured in turn (never at once, so neither idles next to the other's start-up)."""
    agent = _agent(idle_s)
    result = {"idle_seconds": idle_s, "otel-oom": agent, "otel-oom-http": _agent(idle_s, "http/protobuf")}
    if shutil.which("bpftrace") and shutil.which("bpftool"):
        bt = _bpftrace(idle_s)
        result["bpftrace"] = bt
        result["ratios (otel-oom / bpftrace)"] = {
            k: round(agent[k] / bt[k], 2) if bt[k] else None
            for k in ("startup_ms", "idle_rss_mib", "peak_rss_mib", "idle_cpu_pct")}
    else:
        raise RuntimeError("bpftrace or bpftool not on PATH: run `make bench`, which installs them")
    return result
