"""Run time per event of each BPF program, from the kernel's own accounting (bpf_stats_enabled)."""
from __future__ import annotations

import ctypes
import json
import subprocess
import tempfile
import time
from pathlib import Path

from otel_oom import libbpf as L
from otel_oom.probe import open_probe
from otel_oom.trigger import trigger_oom

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PIN = "/sys/fs/bpf/otel-oom-bench-kernel"


def _prog_stats() -> dict[str, tuple[int, int]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in json.loads(out)
            if p.get("name") in ("mark_victim_btf", "mark_victim_tp", "synthetic_events")}


def run(kills: int = 20, synthetic_runs: int = 200) -> dict:
    old = STATS.read_text().strip()
    STATS.write_text("1")
    results = {}
    try:
        for victim in ("tp_btf", "tracepoint"):
            got = []
            with open_probe(got.append, victim=victim, context="none", bench_pin=PIN) as probe:
                for _ in range(kills):
                    trigger_oom(limit_bytes=16 << 20)
                    probe.poll(50)
                fd = L.bpf_obj_get(PIN.encode())
                opts = L.BpfTestRunOpts(sz=ctypes.sizeof(L.BpfTestRunOpts))
                for _ in range(synthetic_runs):
                    L.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
                    while probe.poll(0):
                        pass
                stats = _prog_stats()
            name = "mark_victim_btf" if victim == "tp_btf" else "mark_victim_tp"
            ns, cnt = stats.get(name, (0, 0))
            results[f"{victim} (real kills)"] = {"runs": cnt, "ns_per_event": ns / cnt if cnt else None,
                                                 "events_received": len(got)}
            sns, scnt = stats.get("synthetic_events", (0, 0))
            # one run of the synthetic program writes 64 events through bpf_loop
            results[f"synthetic via {victim} object"] = {"runs": scnt, "ns_per_event": sns / (scnt * 64) if scnt else None}
    finally:
        STATS.write_text(old)
    return results
