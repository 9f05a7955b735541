"""Run time per event of each BPF program, from the kernel's own accounting (bpf_stats_enabled).

For each victim hook this machine offers, the object is loaded as the agent loads it, real kills
are caused (`trigger_oom`), and the synthetic program is run; the kernel's run_time_ns / run_cnt of
exactly these programs (looked up by id, not by name: other agents may be loaded at the same
time) gives the cost per event. Other programs running meanwhile are unaffected by the counter.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from otel_oom.kernel import libbpf as L
from otel_oom.kernel.probe import PROGRAMS, ProbeError, open_probe
from otel_oom.trigger import trigger_oom

from .synthetic import EVENTS_PER_RUN, SyntheticProgram, agent_maps, build, obj_id
from .synthetic import PROGRAM as SYNTHETIC

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _prog_id(obj, name: str) -> int:
    return obj_id(L.bpf_program__fd(L.bpf_object__find_program_by_name(obj, name.encode())))


def _run_stats(prog_id: int) -> tuple[int, int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True, text=True)
    info = json.loads(out.stdout or "{}")
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def run(kills: int = 20, synthetic_runs: int = 200) -> dict:
    old = STATS.read_text().strip()
    STATS.write_text("1")
    build()
    results = {}
    try:
        for victim in ("tp_btf", "tracepoint"):
            got: list[bytes] = []
            try:
                probe = open_probe(got.append, victim=victim, context="none")
            except ProbeError as e:
                results[victim] = {"error": str(e)}
                continue
            with probe:
                prog_name = PROGRAMS[victim][0]
                # the synthetic program writes into this probe's own ring buffer and stats (found by map id)
                synthetic = SyntheticProgram(agent_maps(os.getpid()))
                ids = {prog_name: _prog_id(probe._obj, prog_name), SYNTHETIC: synthetic.id}
                base = {n: _run_stats(i) for n, i in ids.items()}
                for _ in range(kills):
                    trigger_oom(limit_bytes=16 << 20)
                    probe.poll(50)
                test_run_ns = 0  # the kernel's run_time_ns does not count BPF_PROG_TEST_RUN of raw_tp here
                for _ in range(synthetic_runs):
                    t0 = time.perf_counter_ns()
                    synthetic.run()
                    test_run_ns += time.perf_counter_ns() - t0
                    while probe.poll(0):
                        pass
                synthetic.close()
                after = {n: _run_stats(i) for n, i in ids.items()}
            ns, cnt = (after[prog_name][0] - base[prog_name][0], after[prog_name][1] - base[prog_name][1])
            # the victim hook sees every kill on the host: other test runs' kills count too, per event
            results[f"{prog_name} ({victim}, real kills)"] = {
                "events": cnt, "ns_per_event": round(ns / cnt) if cnt else None}
            ns, cnt = (after[SYNTHETIC][0] - base[SYNTHETIC][0], after[SYNTHETIC][1] - base[SYNTHETIC][1])
            if cnt:
                row = {"events": cnt * EVENTS_PER_RUN, "ns_per_event": round(ns / (cnt * EVENTS_PER_RUN)),
                       "method": "kernel run_time_ns"}
            else:  # wall clock of the test-run syscall, so an upper bound of the program's own cost
                events = synthetic_runs * EVENTS_PER_RUN
                row = {"events": events, "ns_per_event": round(test_run_ns / events),
                       "method": "wall clock of BPF_PROG_TEST_RUN (syscall included)"}
            results[f"{SYNTHETIC} (same object as {victim})"] = row
    finally:
        STATS.write_text(old)
    return results
