"""Run time per event of each BPF program, from the kernel's own accounting (bpf_stats_enabled).

For each victim hook this machine offers, the object is loaded as the agent loads it, real kills
are caused (`trigger_oom`), and the synthetic program is run; the kernel's run_time_ns / run_cnt of
exactly these programs (looked up by id, not by name: other agents may be loaded at the same
time) gives the cost per event. Other programs running meanwhile are unaffected by the counter.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

from otel_oom import libbpf as L
from otel_oom.probe import PROGRAMS, SYNTHETIC, ProbeError, open_probe
from otel_oom.trigger import trigger_oom

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
EVENTS_PER_SYNTHETIC_RUN = 64

# int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
_get_info = L.lib.bpf_obj_get_info_by_fd
_get_info.restype = ctypes.c_int
_get_info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]


def _prog_id(obj, name: str) -> int:
    prog = L.bpf_object__find_program_by_name(obj, name.encode())
    buf = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint32(ctypes.sizeof(buf))
    if not prog or _get_info(L.bpf_program__fd(prog), buf, ctypes.byref(size)) != 0:
        return 0
    return int.from_bytes(bytes(buf[4:8]), "little")  # struct bpf_prog_info: __u32 type; __u32 id; ...


def _run_stats(prog_id: int) -> tuple[int, int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True, text=True)
    info = json.loads(out.stdout or "{}")
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def run(kills: int = 20, synthetic_runs: int = 200) -> dict:
    old = STATS.read_text().strip()
    STATS.write_text("1")
    pin = f"/sys/fs/bpf/otel-oom-bench-kernel-{os.getpid()}"
    results = {}
    try:
        for victim in ("tp_btf", "tracepoint"):
            got: list[bytes] = []
            try:
                probe = open_probe(got.append, victim=victim, context="none", bench_pin=pin)
            except ProbeError as e:
                results[victim] = {"error": str(e)}
                continue
            with probe:
                prog_name = PROGRAMS[victim][0]
                ids = {prog_name: _prog_id(probe._obj, prog_name), SYNTHETIC: _prog_id(probe._obj, SYNTHETIC)}
                base = {n: _run_stats(i) for n, i in ids.items()}
                for _ in range(kills):
                    trigger_oom(limit_bytes=16 << 20)
                    probe.poll(50)
                fd = L.bpf_obj_get(pin.encode())
                opts = L.BpfTestRunOpts(sz=ctypes.sizeof(L.BpfTestRunOpts))
                for _ in range(synthetic_runs):
                    L.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
                    while probe.poll(0):
                        pass
                os.close(fd)
                after = {n: _run_stats(i) for n, i in ids.items()}
            ns, cnt = (after[prog_name][0] - base[prog_name][0], after[prog_name][1] - base[prog_name][1])
            # the victim hook sees every kill on the host: other test runs' kills count too, per event
            results[f"{prog_name} ({victim}, real kills)"] = {
                "events": cnt, "ns_per_event": round(ns / cnt) if cnt else None}
            ns, cnt = (after[SYNTHETIC][0] - base[SYNTHETIC][0], after[SYNTHETIC][1] - base[SYNTHETIC][1])
            results[f"{SYNTHETIC} (same object as {victim})"] = {
                "events": cnt * EVENTS_PER_SYNTHETIC_RUN,
                "ns_per_event": round(ns / (cnt * EVENTS_PER_SYNTHETIC_RUN)) if cnt else None}
    finally:
        STATS.write_text(old)
    return results
