"""Renders the benchmark results (the dict `python -m bench` collects) as the Markdown report."""
from __future__ import annotations

from typing import Any, Optional


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _profile(p: Optional[dict], top: int = 5) -> str:
    if not p:
        return "_(no profile: py-spy not installed; `pip install py-spy`)_"
    rows = []
    for name, t in p["threads"].items():
        if "error" in t:
            rows.append([name, "–", "–", "py-spy: " + " ".join(t["error"])])
            continue
        if t["samples"] < 5:
            continue
        stages = "; ".join(f"{stage} {pct:.0f}%" for stage, pct in t["top"][:top])
        rows.append([name, t["cpu_s"], f"{t['samples'] / (p['seconds'] * p['rate_hz']) * 100:.0f}%", stages])
    return (f"py-spy, {p['rate_hz']} Hz, {p['seconds']} s, non-blocking. *CPU s* is the thread's CPU time "
            "(/proc); *busy* is the share of samples in which py-spy saw the thread running or in a "
            "system call (fdatasync, the gRPC call), i.e. not waiting for work.\n\n"
            + _table(["thread", "CPU s", "busy", "where its samples are (share of the thread's samples)"], rows))


def render(r: dict) -> str:
    out: list[str] = ["# otel-oom benchmarks", ""]
    out.append("Figures, not pass/fail. Produced by `python3 -m bench` (as root, from the repository root); "
               f"the whole run took {r.get('total_seconds', 0):.0f} s.")
    out.append("")
    out.append(_table(["machine", ""], [[k, v] for k, v in r["machine"].items()]))
    out.append("")
    sm = r.get("summary")
    if sm:
        flat = []
        for k, v in sm.items():
            flat += [[f"{k}.{q}", x] for q, x in v.items()] if isinstance(v, dict) else [[k, v]]
        out += ["## Summary (bench/report.json `summary`)", "", _table(["figure", "value"], flat), ""]

    s = r.get("startup")
    if s:
        out += ["## Start-up and idle", "",
                "`otel-oom run` (OTLP gRPC, then http/protobuf, to a local receiver, spool on disk, default metric "
                "interval) against "
                f"`bpftrace -e '{s.get('oneliner', '')}'`. Start-up: exec to attached (the agent's `ready` line; "
                "bpftrace's program on the tracepoint in `bpftool perf list`). Idle: over "
                f"{s['idle_seconds']:.0f} s after start-up. Both then reported one real kill: "
                f"otel-oom {s['otel-oom'].get('saw_the_kill')}, bpftrace {s.get('bpftrace', {}).get('saw_the_kill')}.", ""]
        a, b, h = s["otel-oom"], s.get("bpftrace", {}), s.get("otel-oom-http", {})
        ratio = s.get("ratios (otel-oom / bpftrace)", {})
        rows = [[label, a.get(k), h.get(k), b.get(k), ratio.get(k)] for label, k in
                (("start-up (ms)", "startup_ms"), ("idle RSS (MiB)", "idle_rss_mib"),
                 ("peak RSS, VmHWM (MiB)", "peak_rss_mib"), ("idle CPU (% of one core)", "idle_cpu_pct"),
                 ("kills elsewhere on the host during the idle window", "kills_during_idle"))]
        out += [_table(["", "otel-oom (gRPC)", "otel-oom (http/protobuf)", b.get("version", "bpftrace"),
                        "ratio otel-oom (gRPC) / bpftrace"], rows), ""]

    lat = r.get("latency")
    if lat:
        L = lat["latency_ms"]
        out += ["## Latency of real OOM kills", "",
                f"{lat['kills']} real kills (`trigger_oom`, 16 MiB memcg limit, one after another, "
                f"{lat['kill_rate_per_s']} kills/s), default settings (spool on disk with fdatasync, gRPC). "
                "From the kernel's stamp in `mark_victim` (CLOCK_BOOTTIME converted to wall clock: the record's "
                "`time_unix_nano`) to the export request's arrival at a real OTLP gRPC receiver. "
                f"Delivered: {lat['delivered']} of {lat['kills']}.", "",
                _table(["p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)"],
                       [[L.get("p50"), L.get("p90"), L.get("p99"), L.get("max")]]), ""]

    ss = r.get("storm")
    if ss:
        out += ["## Synthetic storm through the real ring buffer", "",
                f"{ss['rate_per_s']:,} events/s for {ss['seconds']:.0f} s, paced by the clock, written by the bench-only "
                "`synthetic_events` program into the agent's own ring buffer (bench/synthetic_storm.py); agent at "
                "default settings, spool on disk. The agent falls behind on purpose: what must hold is that every "
                "event is delivered or counted as dropped (`ringbuf_full` in the kernel, `queue_full` at the "
                "byte-bounded sample queue) and that its memory stays bounded. The drop counters cover every event "
                "on the host (other kills too), so *unaccounted* may be slightly negative.", "",
                _table(["caused", "delivered", "counted drops", "by reason", "unaccounted", "agent CPU",
                        "RSS before", "peak RSS", "drain after the storm"],
                       [[ss["caused"], ss["delivered"], ss["counted_drops"],
                         ", ".join(f"{k} {v:,}" for k, v in sorted(ss["dropped"].items())) or "none",
                         ss["unaccounted"], f"{ss['agent_cpu_s']} s", f"{ss['rss_before_mib']} MiB",
                         f"{ss['peak_rss_mib']} MiB", f"{ss['drain_after_storm_s']} s"]]), ""]

    st = r.get("kill_storm")
    if st:
        out += ["## OOM storm of real kills", "",
                f"`trigger_storm(cgroups={st.get('cgroups', 8)}, kills={st.get('kills_requested', 800)})`: real kills "
                f"in {st.get('cgroups', 8)} throwaway memcgs (4 MiB limit), as fast "
                f"as this machine forks them ({st['storm_seconds']:.1f} s, {st['kill_rate_per_s']} kills/s). "
                "Agent at default settings except a 1 s metric interval (so the unobserved gauge is read "
                "seconds after the storm, not 15 s).", "",
                _table(["kills caused (kernel)", "delivered", "oom.kills.unobserved", "drops", "agent CPU",
                        "agent CPU per kill", "peak RSS (VmHWM)", "drain after the storm"],
                       [[st["kills_caused"], st["delivered"], st["unobserved_gauge"], st["drops"] or 0,
                         f"{st['agent_cpu_s']} s ({st['agent_cpu_pct_of_storm']}% of one core)",
                         f"{st['agent_cpu_us_per_kill']} µs", f"{st['peak_rss_mib']} MiB",
                         f"{st['drain_after_storm_s'] * 1000:.0f} ms"]]), "",
                "Profile of the agent during the storm:", "", _profile(st.get("profile")), ""]

    t = r.get("throughput")
    if t:
        out += ["## Bridge throughput (synthetic kernel events)", "",
                f"{t['events']:,} synthetic events written by the bench-only `synthetic_events` BPF program "
                "(BPF_PROG_TEST_RUN, 64 per run) into the agent's ring buffer, from a process in a "
                "kubepods-shaped memcg (so every record carries a container id and pod uid), with at most "
                "2,048 events in flight (the ring buffer holds 2,833: nothing is dropped); rate = events / "
                "(first run → last record at the receiver). The SDK baseline emits the same number of "
                "records built with `log_attributes`/`log_body` from one OomKill through LoggerProvider + "
                "BatchLogRecordProcessor (queue sized to the run) + the OTLP gRPC exporter, to the same kind "
                "of receiver, in a process of its own.", ""]
        rows = []
        for key in ("agent_disk", "agent_tmpfs", "agent_nospool", "sdk"):
            x = t.get(key)
            if not x:
                continue
            q = x.get("queue_latency_ms") or {}
            rows.append([x["label"], x.get("spool", "–"), x["delivered"], x["events_per_s"],
                         x.get("agent_cpu_us_per_event"), x.get("records_per_export"),
                         q.get("p50"), q.get("p99")])
        out += [_table(["pipeline", "spool", "delivered", "events/s", "agent CPU µs/event", "records per export",
                        "kernel→receiver p50 (ms)", "p99 (ms)"], rows), ""]
        out.append(f"**Ratio otel-oom (spool on disk, default settings) / OTel SDK alone: "
                   f"{t['ratio_agent_to_sdk']:.3f}** (the SDK alone keeps nothing on disk, acknowledges nothing "
                   "and drops a batch the collector refuses).")
        out.append("")
        if t.get("bound"):
            out += ["**What bounds it:** " + t["bound"], ""]
        if t.get("agent_profiled"):
            out += [f"Profile of the agent during a throughput run ({t['agent_profiled']['events']:,} events, "
                    f"{t['agent_profiled']['events_per_s']} events/s under py-spy):", "",
                    _profile(t["agent_profiled"].get("profile")), ""]

    sp = r.get("spool")
    if sp:
        out += ["## Spool alone", "", f"`bench/bench_spool.py` on {sp['filesystem']} ({sp['payload_bytes']} "
                "byte OomKill JSON payloads), in-process, no agent:", "",
                _table(["operation", "events/s", "µs/event"],
                       [[k, v["events_per_s"], v["us_per_event"]] for k, v in sp.items() if isinstance(v, dict)]), ""]

    k = r.get("kernel")
    if k:
        out += ["## Kernel side", "",
                "Run time per event of each BPF program from the kernel's own accounting "
                "(`kernel.bpf_stats_enabled`, run_time_ns / run_cnt of these program ids) where it counts "
                "the runs, else as the *method* column says. The synthetic program runs in a tight loop "
                "(hot caches); real kills run on the OOM path.", "",
                _table(["program", "events", "ns per event", "method"],
                       [[name, v.get("events"), v.get("ns_per_event"), v.get("method", "kernel run_time_ns")]
                        if "error" not in v else [name, "–", v["error"], "–"]
                        for name, v in k.items()]), ""]

    if r.get("fleet"):
        from .fleet.section import markdown as fleet_markdown

        out += fleet_markdown(r["fleet"])

    if r.get("errors"):
        out += ["## Benchmarks that failed", ""] + [f"- {k}: {v}" for k, v in r["errors"].items()] + [""]
    return "\n".join(out).rstrip() + "\n"
