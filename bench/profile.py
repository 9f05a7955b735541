"""Where the agent spends its time: py-spy samples of a running agent, folded into pipeline stages.

`Profiler(pid)` runs `py-spy record --format raw --threads` against the agent (non-blocking, so
the agent is not paused) and measures each thread's CPU time from /proc/<pid>/task. `stages()`
folds every sampled stack into the one pipeline stage it belongs to (the first rule in `STAGES`
that matches a frame, searching from the innermost frame outwards) and returns, per thread, its
share of the wall clock on CPU and the top stages.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

from .common import CLK_TCK, REPO

# (stage, frame substring), searched innermost frame first: the first rule that matches any frame wins,
# so specific library work (encoding, the gRPC call) is named before the agent function that called it.
STAGES: list[tuple[str, str]] = [
    ("poll: ring buffer -> queue (ctypes callback)", "_sample (otel_oom/kernel/probe.py"),
    ("poll: ring_buffer__poll wait/loop", "poll (otel_oom/kernel/probe.py"),
    ("worker: spool append (write + fdatasync)", "append (otel_oom/delivery/spool.py"),
    ("worker: decode (ctypes -> OomEvent)", "decode (otel_oom/kernel/wire.py"),
    ("worker: enrich (cgroup path, workload, OomKill)", "enrich (otel_oom/attribution/enrich.py"),
    ("worker: record -> OTLP protobuf (schema + encode)", "encode (otel_oom/otlp/spooled.py"),
    ("worker: OomKill.to_json", "to_json (otel_oom/schema/records.py"),
    ("worker: metrics.record_kill (SDK counter+histogram)", "record_kill (otel_oom/otlp/metrics.py"),
    ("worker: reconciler.observed", "observed (otel_oom/reconcile/recovery.py"),
    ("worker: queue.get (waiting for samples)", "_work (otel_oom/agent.py"),
    ("sender: gRPC Export call (round trip)", "grpc/_channel.py"),
    ("sender: request from the spooled messages", "build (otel_oom/otlp/requests.py"),
    ("sender: spool payloads read (and older agents' JSON encoded)", "decode (otel_oom/otlp/spooled.py"),
    ("sender: export (bookkeeping)", "send (otel_oom/otlp/export.py"),
    ("sender: spool.pending (pread + crc)", "pending (otel_oom/delivery/spool.py"),
    ("sender: spool.ack (ack slot + fdatasync)", "ack (otel_oom/delivery/spool.py"),
    ("sender: store (other)", "otel_oom/delivery/store.py"),
    ("sender: loop (incl. letting a burst fill a batch)", "run (otel_oom/delivery/sender.py"),
    ("metrics: periodic export", "opentelemetry/sdk/metrics"),
    ("main: reconciler refresh", "refresh (otel_oom/reconcile/recovery.py"),
]

_LINE = re.compile(r"^thread \(([^)]*)\)(?:: (.*?))?;(.*) (\d+)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


def classify(frames: list[str]) -> str:
    for stage, needle in STAGES:
        for frame in reversed(frames):
            if needle in frame:
                return stage
    leaf = frames[-1] if frames else "?"
    return f"other: {leaf.split(' (')[0]}"


def _thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return out


class Profiler:
    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.cpu0 = _thread_cpu(pid)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
             "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
        time.sleep(0.5)  # py-spy attaches before the load starts

    def stop(self) -> dict:
        self.seconds = time.monotonic() - self.t0
        try:
            cpu1 = _thread_cpu(self.pid)
        except OSError:
            cpu1 = {}
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.thread_cpu = {tid: cpu1[tid] - self.cpu0.get(tid, 0.0) for tid in cpu1}
        return self.summary(err.decode(errors="replace"))

    def summary(self, stderr: str = "", top: int = 6) -> dict:
        per_thread: dict[str, Counter] = defaultdict(Counter)
        tid_name: dict[int, str] = {}
        total = 0
        if self.out.exists():
            for line in self.out.read_text(errors="replace").splitlines():
                m = _LINE.match(line)
                if not m:
                    continue
                tid = int(m[1], 16) if m[1].lower().startswith("0x") else int(m[1])  # 0x...: a pthread id
                name = m[2] or f"thread {tid}"
                tid_name[tid] = name
                n = int(m[4])
                per_thread[name][classify(m[3].split(";"))] += n
                total += n
        threads = {}
        for tid, name in tid_name.items():
            stages = per_thread[name]
            n = sum(stages.values())
            threads[name] = {
                "cpu_s": round(self.thread_cpu.get(tid, 0.0), 2),
                "cpu_pct_of_wall": round(100 * self.thread_cpu.get(tid, 0.0) / self.seconds, 1),
                "samples": n,
                "top": [(stage, round(100 * c / n, 1)) for stage, c in stages.most_common(top)],
            }
        if not total and stderr:
            threads["py-spy"] = {"error": stderr.strip().splitlines()[-1:]}
        return {"seconds": round(self.seconds, 1), "rate_hz": self.rate, "samples": total,
                "threads": dict(sorted(threads.items(), key=lambda kv: -kv[1].get("cpu_s", 0)))}


def profile_or_none(pid: int, out: Path, rate: int = 100) -> Optional[Profiler]:
    return Profiler(pid, out, rate) if available() else None
