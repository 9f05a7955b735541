"""`otel-oom check`: can `otel-oom run` work on this host, and with which hooks?

Every line is a fact read from the host; the verdict comes from really loading and attaching the
plan `run` would pick (then detaching it), not from guessing.
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import TextIO

from . import __version__
from .attribution.cgroups import CgroupError, detect_memory_hierarchy
from .kernel import libbpf as L
from .kernel.features import candidate_plans, detect_features, effective_capabilities, find_tracefs, missing_capabilities
from .kernel.probe import DEFAULT_OBJECT, Probe, ProbeError


def tracepoint_layout(tracefs: str | None) -> str:
    if not tracefs:
        return "unknown"
    try:
        fmt = Path(f"{tracefs}/events/oom/mark_victim/format").read_text()
    except OSError:
        return "unknown"
    return "rich (pid, comm, rss, uid, ...)" if "total_vm" in fmt else "pid only (kernel before 6.9)"


def run_check(out: TextIO, victim: str = "auto", context: str = "auto",
              object_path: Path = DEFAULT_OBJECT) -> int:
    problems: list[str] = []

    def line(key: str, value: str) -> None:
        out.write(f"  {key:<28} {value}\n")

    out.write(f"otel-oom {__version__} preflight\n")
    line("kernel", f"{platform.release()} {platform.machine()}")
    line("libbpf", L.version())
    L.route_messages_to_logging()
    # the refusals are summarised below; libbpf's own account of them is for --log-level debug
    logging.getLogger("otel_oom.libbpf").setLevel(logging.ERROR)
    features = detect_features()
    if features.btf:
        line("BTF", "ok (/sys/kernel/btf/vmlinux)")
    else:
        line("BTF", f"MISSING: {features.reasons['btf']}")
        problems.append("the kernel has no BTF")
    missing = missing_capabilities()
    caps = effective_capabilities()
    if missing:
        line("privileges", f"MISSING {', '.join(missing)} (CapEff {caps:#x}): run as root or grant them")
        problems.append("missing privileges")
    else:
        line("privileges", "ok" + (" (root)" if os.geteuid() == 0 else f" (CapEff {caps:#x})"))
    try:
        h = detect_memory_hierarchy()
        line("memory cgroup", f"v{h.version} at {h.mount}" if h else "not found: kills are reported without cgroups")
    except (CgroupError, OSError) as e:
        line("memory cgroup", f"unusable: {e}")
    tracefs = find_tracefs(mount_if_missing=False)
    line("tracefs", tracefs or "not mounted (run mounts it when it may)")

    out.write("  hooks:\n")
    for hook, label in (("tp_btf", "tp_btf/mark_victim"), ("tracepoint", "tracepoint/oom/mark_victim"),
                        ("fentry", "fentry/oom_kill_process"), ("kprobe", "kprobe/oom_kill_process")):
        if features.available(hook):
            extra = ""
            if hook == "tracepoint":
                extra = f", layout {tracepoint_layout(tracefs)}"
            if hook == "kprobe":
                extra = f", symbol {features.kprobe_symbol}"
            line(f"  {label}", f"offered{extra}" if hook != "fentry" else "in the kernel's BTF")
        else:
            line(f"  {label}", f"not offered: {features.reasons.get(hook, 'unavailable')}")

    chosen = None
    if features.btf and not missing:
        tried = []
        for plan in candidate_plans(features, victim, context):
            try:
                with Probe(plan, lambda _b: None, object_path, 1 << 16):
                    chosen = plan
                    break
            except ProbeError as e:
                tried.append(f"{plan.describe()}: {e}")
        for t in tried:
            line("refused", t)
        if chosen:
            line("will use", chosen.describe())
        else:
            problems.append("no hook plan loads and attaches")
    if problems:
        out.write(f"result: NOT READY: {'; '.join(problems)}\n")
        return 1
    out.write("result: ready: `otel-oom run` can work on this host\n")
    return 0
