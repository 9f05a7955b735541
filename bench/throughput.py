"""Bridge throughput: synthetic kernel events from the ring buffer to a real OTLP gRPC receiver.

The agent runs as shipped; a driver process inside a kubepods-shaped memory cgroup (no limit) loads
the bench-only `synthetic_events` program against the agent's own ring buffer (bench/synthetic.py)
and runs it with BPF_PROG_TEST_RUN, 64 events per run, into the very ring buffer real kills use.
The driver keeps at most `window` events between the ring buffer and the receiver, less than the
ring buffer holds, so the kernel never drops one and the figure is the pipeline's sustained rate, not a burst into buffers.

The same run measures the OpenTelemetry SDK alone (LoggerProvider + BatchLogRecordProcessor +
OTLP gRPC exporter, `logger.emit` of records built from one OomKill) to the same receiver.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .common import (
    DISK_DIR,
    KUBEPODS_PATH,
    REPO,
    OtlpGrpcReceiver,
    RecordCounter,
    cpu_seconds,
    fs_type,
    latest_metric,
    percentiles,
    remove,
    rss_kib,
    spool_dir,
    start_agent,
    wait_until,
)
from .profile import profile_or_none
from .synthetic import build as build_synthetic

EVENTS_PER_RUN = 64
RING_EVENTS = (4 << 20) // (1728 + 8)  # default ring buffer / (event + ring record header)
WINDOW = 2048                           # < RING_EVENTS: the kernel can never find the ring full


class KubepodsCgroup:
    """A memory cgroup shaped like a containerd container of a burstable pod, under a bench-owned
    top-level cgroup; no limit is set on it (nothing here is meant to be OOM-killed)."""

    def __init__(self) -> None:
        from otel_oom.cgroupfs.hierarchy import detect_memory_hierarchy

        h = detect_memory_hierarchy()
        if h is None:
            raise RuntimeError("no memory cgroup hierarchy")
        self.top = os.path.join(h.mount, f"otel-oom-bench-{os.getpid()}")
        self.rel = f"/otel-oom-bench-{os.getpid()}{KUBEPODS_PATH}"
        self.leaf = h.mount + self.rel
        os.makedirs(self.leaf)

    def remove(self) -> None:
        path = self.leaf
        deadline = time.monotonic() + 5
        while len(path) >= len(self.top):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                return
            path = os.path.dirname(path)


def drive(agent_pid: int, events: int, count_received, window: int = WINDOW) -> dict:
    """Write `events` synthetic events (rounded up to 64) through the agent; returns when all arrived."""
    build_synthetic()
    cg = KubepodsCgroup()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.driver", str(agent_pid), os.path.join(cg.leaf, "cgroup.procs")],
                            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("synthetic event driver did not start")
        runs = -(-events // EVENTS_PER_RUN)
        total = runs * EVENTS_PER_RUN
        base = count_received()
        sent = 0
        t0 = time.time_ns()
        while sent < total:
            chunk = min(4, (total - sent) // EVENTS_PER_RUN)
            inflight = sent - (count_received() - base)
            if inflight + chunk * EVENTS_PER_RUN > window:
                time.sleep(0.002)
                continue
            proc.stdin.write(f"{chunk}\n")
            proc.stdin.flush()
            proc.stdout.readline()
            sent += chunk * EVENTS_PER_RUN
        t_sent = time.time_ns()
        ok = wait_until(lambda: count_received() - base >= total, timeout=120, interval=0.01)
        return {"events": total, "t0_ns": t0, "t_sent_ns": t_sent, "complete": ok,
                "received": count_received() - base}
    finally:
        proc.stdin.close()
        proc.wait(10)
        cg.remove()


def _last_received_ns(rcv: OtlpGrpcReceiver) -> int:
    with rcv._cond:
        return max((ts for ts, _ in rcv._raw["logs"]), default=0)


def agent_run(label: str, spool_base: Optional[str], events: int, profile_to: Optional[Path] = None,
              extra_args: Optional[list[str]] = None, extra_env: Optional[dict] = None) -> dict:
    """One agent, one receiver, `events` synthetic events; spool_base None means --no-spool."""
    base = spool_dir(spool_base) if spool_base else None
    try:
        with OtlpGrpcReceiver() as rcv:
            agent = start_agent(extra_args or [], rcv.endpoint, os.path.join(base, "spool") if base else None,
                                OTEL_METRIC_EXPORT_INTERVAL="1000", **(extra_env or {}))
            try:
                pid = agent.proc.pid
                prof = profile_or_none(pid, profile_to) if profile_to else None
                cpu0 = cpu_seconds(pid)
                counter = RecordCounter(rcv, "oom.hook", lambda v: v == "synthetic")
                d = drive(pid, events, counter)
                cpu = cpu_seconds(pid) - cpu0
                profile = prof.stop() if prof else None
                peak = rss_kib(pid, "VmHWM") / 1024
                wait_until(lambda: latest_metric(rcv, "otel_oom.events.dropped", {"reason": "ringbuf_full"})
                           is not None, 5)
                t_last = counter.last_ns
                recs = rcv.log_records()
            finally:
                agent.stop()
            drops = {p["attributes"]["reason"]: p["value"] for p in rcv.metric_points("otel_oom.events.dropped",
                                                                                    latest=True) if p["value"]}
    finally:
        if base:
            remove(base)
    synthetic = [r for r in recs if r["attributes"].get("oom.hook") == "synthetic"]
    seconds = (t_last - d["t0_ns"]) / 1e9
    lat = percentiles([(r["received_ns"] - r["time_unix_nano"]) / 1e6 for r in synthetic])
    batches = sorted({r["received_ns"] for r in synthetic})
    out = {
        "label": label,
        "spool": (f"{fs_type(spool_base)} ({spool_base})" if spool_base else "none (--no-spool)"),
        "events": d["events"], "delivered": len(synthetic), "complete": d["complete"],
        "seconds": round(seconds, 2), "events_per_s": round(len(synthetic) / seconds) if seconds > 0 else None,
        "agent_cpu_s": round(cpu, 2), "agent_cpu_us_per_event": round(cpu / max(1, len(synthetic)) * 1e6, 1),
        "peak_rss_mib": round(peak, 1), "exports": len(batches),
        "records_per_export": round(len(synthetic) / max(1, len(batches)), 1),
        "queue_latency_ms": {k: round(v, 1) for k, v in lat.items()},
        "drops": drops,
        "sample_attributes": {k: synthetic[0]["attributes"].get(k) for k in
                              ("container.id", "k8s.pod.uid", "container.runtime.name")} if synthetic else {},
    }
    if profile:
        out["profile"] = profile
    return out


SDK_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from bench.common import typical_kill
from otel_oom.schema.mapping import EVENT_NAME, log_attributes, log_body
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from otel_oom.otlp.resource import build_resource

n = int(sys.argv[1])
kill = typical_kill()
attrs, body = log_attributes(kill), log_body(kill)
provider = LoggerProvider(resource=build_resource(), shutdown_on_exit=False)
# queue sized to the run: with the default 2048 the processor drops whatever it cannot queue
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=sys.argv[2], insecure=True),
                                                          max_queue_size=n))
logger = provider.get_logger("otel_oom")
t0 = time.time_ns()
for i in range(n):
    logger.emit(timestamp=time.time_ns(), severity_number=SeverityNumber.ERROR, severity_text="ERROR",
                body=body, attributes=attrs, event_name=EVENT_NAME)
t_emitted = time.time_ns()
provider.force_flush(120_000)
t_flushed = time.time_ns()
provider.shutdown()
print(json.dumps({"t0_ns": t0, "t_emitted_ns": t_emitted, "t_flushed_ns": t_flushed}))
"""


def sdk_run(events: int) -> dict:
    with OtlpGrpcReceiver() as rcv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        p = subprocess.run([sys.executable, "-c", SDK_SCRIPT, str(events), rcv.endpoint, str(REPO)],
                           capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=300,
                           cwd=REPO)
        if p.returncode != 0:
            raise RuntimeError(f"SDK baseline failed: {p.stderr.strip().splitlines()[-1:]}")
        t = json.loads(p.stdout.strip().splitlines()[-1])
        wait_until(lambda: rcv.log_count() >= events, 30)
        delivered = rcv.log_count()
        t_last = _last_received_ns(rcv)
        exports = len(rcv._raw["logs"])
    seconds = (t_last - t["t0_ns"]) / 1e9
    return {"label": "OTel SDK alone (BatchLogRecordProcessor, emit)", "events": events, "delivered": delivered,
            "seconds": round(seconds, 2), "events_per_s": round(delivered / seconds),
            "emit_per_s": round(events / ((t["t_emitted_ns"] - t["t0_ns"]) / 1e9)),
            "exports": exports, "records_per_export": round(delivered / max(1, exports), 1)}


def run(events: int = 20000, profile_dir: Optional[Path] = None, variants: bool = True, log=print) -> dict:
    results: dict = {"events": events}
    disk = agent_run("otel-oom, spool on disk (default settings)", DISK_DIR, events)
    log(f"  agent, spool on {disk['spool']}: {disk['events_per_s']} events/s")
    results["agent_disk"] = disk
    sdk = sdk_run(events)
    log(f"  OTel SDK alone: {sdk['events_per_s']} events/s")
    results["sdk"] = sdk
    results["ratio_agent_to_sdk"] = round(disk["events_per_s"] / sdk["events_per_s"], 3)
    if variants:
        shm = agent_run("otel-oom, spool on tmpfs (fsync free)", "/dev/shm", events)
        log(f"  agent, spool on tmpfs: {shm['events_per_s']} events/s")
        results["agent_tmpfs"] = shm
        mem = agent_run("otel-oom, --no-spool (memory)", None, events)
        log(f"  agent, --no-spool: {mem['events_per_s']} events/s")
        results["agent_nospool"] = mem
    if profile_dir is not None:
        prof = agent_run("otel-oom, spool on disk, under py-spy", DISK_DIR, events // 2,
                         profile_to=profile_dir / "throughput.pyspy.txt")
        log(f"  agent under py-spy: {prof['events_per_s']} events/s")
        results["agent_profiled"] = prof
    return results
