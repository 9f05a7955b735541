"""Run every otel-oom benchmark, print the figures as they come, and write a Markdown report.

    sudo python3 -m bench [--output bench/report.md] [--json bench/report.json]
                          [--only startup,latency,storm,kill_storm,throughput,spool,kernel,fleet] [--quick]
    python3 -m bench --readme      # rewrite README.md's performance table from bench/report.json

`make bench` installs what it needs (bpftrace from apt, py-spy into the venv, the BPF objects) and
mounts bpffs. Needs root, BPF, bpftrace, bpftool and py-spy: a missing one, or a section that
fails, is one line on stderr and a non-zero exit. About 6-8 minutes on 2 cores. Every OOM kill it
causes is confined to a throwaway memory cgroup with a small limit. The `fleet` section (bench/fleet:
100 node Collectors, two gateways, a VictoriaLogs cluster, with faults; docs/scale.md) adds about
7 minutes (two runs) and needs Prometheus and the Collector and VictoriaLogs builds, not BPF.

bench/report.json holds every figure; its top-level keys `startup_ms`, `startup_ms_bpftrace`,
`idle_rss_mib` (gRPC), `idle_rss_mib_http`, `latency_ms` (`p50`, `p99`), `bridge_events_per_s`,
`sdk_events_per_s`, `bridge_ratio` and `storm` (`caused`, `delivered`, ...) are the summary (dotted
names in the issue are nested objects here); the sections' own figures are under `sections`.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

from . import bench_spool, kernel_side, latency, startup, storm, synthetic_storm, throughput
from .common import DISK_DIR, REPO, machine
from .fleet import section as fleet
from .markdown import render

SECTIONS = ("startup", "latency", "storm", "kill_storm", "throughput", "spool", "kernel", "fleet")
DEFAULT_OUTPUT = REPO / "bench" / "report.md"

DEFAULT_JSON = REPO / "bench" / "report.json"
README = REPO / "README.md"


def _bound(t: dict) -> str:
    d, s = t["agent_disk"], t["sdk"]
    us = lambda x: 1e6 / x["events_per_s"]  # noqa: E731 - wall time per event at the sustained rate
    parts = [f"per event, {us(d):.0f} µs with the spool on disk ({d['records_per_export']} records per export)"]
    if t.get("agent_tmpfs"):
        m = t["agent_tmpfs"]
        parts.append(f"{us(m):.0f} µs with the spool on tmpfs, where fdatasync is free "
                     f"({m['records_per_export']} per export): the disk's flushes cost {us(d) - us(m):.0f} µs "
                     f"({(us(d) - us(m)) / us(d) * 100:.0f}% of the time on disk)")
    if t.get("agent_nospool"):
        n = t["agent_nospool"]
        parts.append(f"{us(n):.0f} µs without a spool ({n['records_per_export']} per export, "
                     f"{n['agent_cpu_us_per_event']} µs of agent CPU per event: decode, enrich, protobuf encoding, "
                     "gRPC)")
    parts.append(f"{us(s):.0f} µs for the SDK alone ({s['records_per_export']:.0f} records per export)")
    return "; ".join(parts) + "."


def _get(r: dict, *path: str):
    for k in path:
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r


def summary(results: dict) -> dict:
    """The report's top-level figures (see the module docstring), from the sections' results."""
    st = results.get("startup", {})
    return {
        "startup_ms": _get(st, "otel-oom", "startup_ms"),
        "startup_ms_bpftrace": _get(st, "bpftrace", "startup_ms"),
        "startup_ratio": _get(st, "ratios (otel-oom / bpftrace)", "startup_ms"),
        "idle_rss_mib": _get(st, "otel-oom", "idle_rss_mib"),
        "idle_rss_mib_http": _get(st, "otel-oom-http", "idle_rss_mib"),
        "idle_rss_mib_bpftrace": _get(st, "bpftrace", "idle_rss_mib"),
        "latency_ms": {q: _get(results, "latency", "latency_ms", q) for q in ("p50", "p90", "p99", "max")},
        "bridge_events_per_s": _get(results, "throughput", "agent_disk", "events_per_s"),
        "sdk_events_per_s": _get(results, "throughput", "sdk", "events_per_s"),
        "bridge_ratio": _get(results, "throughput", "ratio_agent_to_sdk"),
        "storm": {k: _get(results, "storm", k) for k in
                  ("rate_per_s", "seconds", "caused", "delivered", "counted_drops", "unaccounted", "peak_rss_mib")},
    }


README_BEGIN = "<!-- bench:performance:begin (generated from bench/report.json by `python3 -m bench --readme`) -->"
README_END = "<!-- bench:performance:end -->"


def readme_table(report: dict) -> str:
    """The README's performance table: every figure from bench/report.json, nothing typed in by hand."""
    s = report["summary"]

    def f(v, fmt="{:,}", unit=""):
        return "–" if v is None else fmt.format(v) + unit

    lat, storm = s["latency_ms"], s["storm"]
    m = report.get("machine", {})
    rows = [
        ("start-up, exec to `ready` (probes attached, spool open)", f(s["startup_ms"], unit=" ms"),
         f"bpftrace one-liner: {f(s['startup_ms_bpftrace'], unit=' ms')} (ratio {f(s['startup_ratio'])})"),
        ("idle RSS, OTLP gRPC / http/protobuf", f"{f(s['idle_rss_mib'], unit=' MiB')} / "
         f"{f(s['idle_rss_mib_http'], unit=' MiB')}", f"bpftrace: {f(s['idle_rss_mib_bpftrace'], unit=' MiB')}"),
        ("real kill → collector, p50 / p99", f"{f(lat['p50'], '{:.2f}', ' ms')} / {f(lat['p99'], '{:.2f}', ' ms')}", ""),
        ("durable bridge, ring buffer → collector, spool on disk", f(s["bridge_events_per_s"], unit=" events/s"),
         f"OTel SDK alone: {f(s['sdk_events_per_s'], unit=' events/s')} (ratio {f(s['bridge_ratio'], '{:.3f}')})"),
        (f"synthetic storm, {f(storm['rate_per_s'])} events/s for {f(storm['seconds'])} s",
         f"{f(storm['caused'])} caused, {f(storm['delivered'])} delivered, {f(storm['counted_drops'])} counted as "
         f"dropped, {f(storm['unaccounted'])} unaccounted", f"peak RSS {f(storm['peak_rss_mib'], unit=' MiB')}"),
    ]
    lines = [README_BEGIN, "",
             f"Measured by `make bench` on {m.get('date', '?')} ({m.get('cpu', '?')}, kernel {m.get('kernel', '?')}, "
             f"spool disk {m.get('disk (spool)', '?')}); every figure and its method: [bench/report.md](bench/report.md).",
             "", "| | otel-oom | for comparison |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines + ["", README_END])


def rewrite_readme(report: dict, readme: Path = README) -> None:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"python -m bench: error: {readme} has no {README_BEGIN!r} ... {README_END!r} block")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + readme_table(report) + tail)


def preflight(only: set[str]) -> Optional[str]:
    """What the bench needs and does not have, as one line (None: everything is there)."""
    if only <= {"fleet"}:  # Collectors and backends only: no BPF tools
        return None if shutil.which("prometheus") else "missing prometheus: run `make test-packages`"
    missing = [t for t in ("bpftrace", "bpftool", "py-spy") if not shutil.which(t)
               and not (t == "py-spy" and (Path(sys.executable).parent / "py-spy").exists())]
    if missing:
        return f"missing {', '.join(missing)}: run `make bench` (installs bpftrace from apt, py-spy into the venv)"
    if not os.path.ismount("/sys/fs/bpf"):
        r = subprocess.run(["mount", "-t", "bpf", "bpffs", "/sys/fs/bpf"], capture_output=True, text=True)
        if r.returncode != 0:
            return f"bpffs is not mounted at /sys/fs/bpf and mounting it failed: {r.stderr.strip()}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"Markdown report (default {DEFAULT_OUTPUT})")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"the results as JSON (default {DEFAULT_JSON})")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="fewer kills and events (a smoke run; figures are noisier)")
    ap.add_argument("--profile-dir", type=Path, help="keep py-spy's raw stacks here (default: a temporary directory)")
    ap.add_argument("--readme", action="store_true",
                    help="only rewrite README.md's performance table from the --json report, run nothing")
    args = ap.parse_args(argv)
    if args.readme:
        try:
            report = json.loads(args.json.read_text())
        except (OSError, ValueError) as e:
            print(f"python -m bench: error: cannot read {args.json}: {e}; run the benchmarks first", file=sys.stderr)
            return 2
        rewrite_readme(report)
        print(f"README.md: performance table rewritten from {args.json}")
        return 0
    if os.geteuid() != 0:
        print("python -m bench: error: needs root (BPF, memory cgroups); run it with sudo", file=sys.stderr)
        return 2
    from otel_oom.kernel.probe import DEFAULT_OBJECT

    if not DEFAULT_OBJECT.exists():
        print("python -m bench: error: BPF object not built; run `make bench` (or `make -C bpf`)", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"python -m bench: error: unknown section(s) {', '.join(sorted(unknown))}; "
              f"choose from {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    problem = preflight(only)
    if problem:
        print(f"python -m bench: error: {problem}", file=sys.stderr)
        return 2
    # the agent under test starts from byte-compiled modules, as an installed package does
    compileall.compile_dir(str(REPO / "otel_oom"), quiet=1)
    quick = args.quick
    profile_dir = args.profile_dir or Path(tempfile.mkdtemp(prefix="otel-oom-bench-profiles-"))
    profile_dir.mkdir(parents=True, exist_ok=True)

    t_start = time.monotonic()
    results: dict = {"machine": machine(), "quick": quick, "errors": {}}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()), flush=True)

    def section(name: str, fn):
        if name not in only:
            return
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed benchmark must not lose the others' figures
            traceback.print_exc()
            results["errors"][name] = f"{type(e).__name__}: {e}"
            return
        shown = {k: v for k, v in results[name].items() if k != "profile"}
        print(json.dumps(shown, indent=1, default=str)[:4000], flush=True)
        print(f"({time.monotonic() - t0:.0f} s)", flush=True)

    def spool_figures():
        base = tempfile.mkdtemp(prefix="otel-oom-bench-spool-", dir=DISK_DIR)
        try:
            return bench_spool.figures(base, seconds=1.0 if quick else 2.0)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def startup_figures():
        r = startup.run(idle_s=5.0 if quick else 20.0)
        r["oneliner"] = startup.BPFTRACE_ONELINER
        return r

    def throughput_figures():
        r = throughput.run(events=4000 if quick else 20000, profile_dir=profile_dir)
        r["bound"] = _bound(r)
        return r

    section("startup", startup_figures)
    section("latency", lambda: latency.run(kills=40 if quick else 250))
    section("storm", lambda: synthetic_storm.run(rate=10_000, seconds=3.0 if quick else 10.0))
    section("kill_storm", lambda: storm.run(kills=200 if quick else 800, profile_to=profile_dir / "storm.pyspy.txt"))
    section("throughput", throughput_figures)
    section("spool", spool_figures)
    section("kernel", lambda: kernel_side.run(kills=5 if quick else 20, synthetic_runs=50 if quick else 200))
    section("fleet", lambda: fleet.run(quick=quick))

    results["total_seconds"] = time.monotonic() - t_start
    missing = [n for n in SECTIONS if n in only and n not in results and n not in results["errors"]]
    for n in missing:
        results["errors"][n] = "did not run"
    if not results["errors"]:
        del results["errors"]
    report = {"summary": summary(results), **results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(report))
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print("\nsummary: " + json.dumps(report["summary"], default=str))
    print(f"report: {args.output}; results: {args.json}; py-spy stacks: {profile_dir} "
          f"({results['total_seconds']:.0f} s in all)")
    if report.get("errors"):
        for name, why in report["errors"].items():
            print(f"python -m bench: error: section {name} failed: {why}", file=sys.stderr)
        return 1
    if only == set(SECTIONS) and not quick:
        rewrite_readme(report)
        print("README.md: performance table rewritten from the report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
