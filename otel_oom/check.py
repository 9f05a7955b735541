"""`otel-oom check`: can `otel-oom run` work on this host, and with which backend and hooks?

Every line is a fact read from the host; the verdict comes from really loading and attaching the
plan `run` would pick (then detaching it), not from guessing. With the bcc backend that means
compiling the program against the kernel headers, as `run` does. The kernel-log backend (kmsg) is
checked too, by reading the log as `run` would: it is what `auto` falls back to when no BPF program
loads, and the report says what each backend gives on this host and which one `run` will use.
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Optional, TextIO

from . import __version__
from .cgroupfs.hierarchy import CgroupError, detect_memory_hierarchy
from .kernel import libbpf as L
from .kernel.backends import choose_backend
from .kernel.features import (
    TASK_FUNCTION,
    KernelFeatures,
    candidate_plans,
    detect_features,
    effective_capabilities,
    find_tracefs,
    missing_capabilities,
)
from .kernel.probe import DEFAULT_OBJECT, Probe, ProbeError, no_plan_reason


def tracepoint_layout(tracefs: str | None) -> str:
    if not tracefs:
        return "unknown"
    try:
        fmt = Path(f"{tracefs}/events/oom/mark_victim/format").read_text()
    except OSError:
        return "unknown"
    return "rich (pid, comm, rss, uid, ...)" if "total_vm" in fmt else "pid only (kernel before 6.9)"


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.problems: list[str] = []

    def line(self, key: str, value: str) -> None:
        self.out.write(f"  {key:<28} {value}\n")


def run_check(out: TextIO, victim: str = "auto", context: str = "auto", object_path: Path = DEFAULT_OBJECT,
              task: str = "auto", backend: str = "auto", bcc_buffer: str = "auto") -> int:
    r = _Report(out)
    out.write(f"otel-oom {__version__} preflight\n")
    r.line("kernel", f"{platform.release()} {platform.machine()}")
    chosen_backend, why = choose_backend(backend)
    r.line("backend", f"{chosen_backend} ({why})")
    if chosen_backend == "libbpf":
        r.line("libbpf", L.version())
        L.route_messages_to_logging()
        # the refusals are summarised below; libbpf's own account of them is for --log-level debug
        logging.getLogger("otel_oom.libbpf").setLevel(logging.ERROR)
    missing = missing_capabilities()
    caps = effective_capabilities()
    if chosen_backend == "kmsg":
        pass  # no BPF: reading the kernel log is the privilege it needs (CAP_SYSLOG), checked below
    elif missing:
        r.line("privileges", f"MISSING {', '.join(missing)} (CapEff {caps:#x}): run as root or grant them")
        r.problems.append("missing privileges")
    else:
        r.line("privileges", "ok" + (" (root)" if os.geteuid() == 0 else f" (CapEff {caps:#x})"))
    try:
        h = detect_memory_hierarchy()
        r.line("memory cgroup", f"v{h.version} at {h.mount}" if h else "not found: kills are reported without cgroups")
    except (CgroupError, OSError) as e:
        r.line("memory cgroup", f"unusable: {e}")
    tracefs = find_tracefs(mount_if_missing=False)
    if chosen_backend != "kmsg":
        r.line("tracefs", tracefs or "not mounted (run mounts it when it may)")
    if chosen_backend == "bcc":
        _check_bcc(r, victim, context, task, bcc_buffer, tracefs, bool(missing))
    elif chosen_backend == "libbpf":
        _check_libbpf(r, victim, context, task, object_path, tracefs, bool(missing))
    kmsg_problem = _check_kmsg(r)
    bpf_problems, r.problems = r.problems, []
    if chosen_backend == "kmsg":
        r.problems = [kmsg_problem] if kmsg_problem else []
        will = "kmsg (asked for)"
    elif not bpf_problems:
        will = f"{chosen_backend}: {BPF_GIVES[chosen_backend]}"
    elif backend == "auto" and kmsg_problem is None:
        will = f"kmsg: eBPF cannot be used here ({'; '.join(bpf_problems)}); `run` falls back to it with a warning"
    else:
        r.problems = bpf_problems + ([kmsg_problem] if backend == "auto" and kmsg_problem else [])
    if not r.problems:
        r.line("will run", will)
    if r.problems:
        out.write(f"result: NOT READY: {'; '.join(r.problems)}\n")
        return 1
    out.write("result: ready: `otel-oom run` can work on this host\n")
    return 0


BPF_GIVES = {
    "libbpf": "every victim read in the kernel as it is marked (task, cgroup chain, trigger, OOMing memcg), "
              "user-space OOM killers' kills and reclaim times",
    "bcc": "the same as libbpf (every victim read in the kernel as it is marked, user-space OOM killers' "
           "kills and reclaim times), compiled at start against the kernel headers",
}


def _check_kmsg(r: _Report) -> Optional[str]:
    """The kernel-log backend, read as `run` reads it: None when it can work, else the problem."""
    from .kernel.backends import KMSG_BLIND_SPOTS
    from .reconcile.kmsg import read_kmsg

    r.out.write("  kernel log (backend kmsg, no BPF):\n")
    try:
        records, how = read_kmsg(), ""
    except OSError as e:
        try:  # a container's device cgroup refuses /dev/kmsg: `run` reads the log through syslog(2) then
            from .kernel.syslog_reader import SyslogReader

            records, how = SyslogReader().read(), f" through syslog(2) (/dev/kmsg: {e.strerror})"
        except OSError as e2:
            r.line("  /dev/kmsg", f"UNREADABLE: {e}; syslog(2): {e2.strerror}")
            return "the kernel log cannot be read (/dev/kmsg nor syslog(2))"
    kernel = sum(1 for rec in records if rec.from_kernel)
    r.line("  /dev/kmsg", f"readable{how}: {len(records)} records held, {kernel} of them the kernel's own")
    r.line("  gives", "every kill the kernel's OOM killer prints: victim pid, name, uid, memory; cgroup, "
                      "trigger, constraint and OOMing memcg from the report's header")
    r.line("  cannot see", KMSG_BLIND_SPOTS)
    return None


def _hook_lines(r: _Report, features: KernelFeatures, tracefs: Optional[str]) -> None:
    r.out.write("  hooks:\n")
    for hook, label in (("tp_btf", "tp_btf/mark_victim"), ("tracepoint", "tracepoint/oom/mark_victim"),
                        ("fentry", "fentry/oom_kill_process"), ("kprobe", "kprobe/oom_kill_process")):
        if features.available(hook):
            extra = ""
            if hook == "tracepoint":
                extra = f", layout {tracepoint_layout(tracefs)}"
            if hook == "kprobe":
                extra = f", symbol {features.kprobe_symbol}"
            r.line(f"  {label}", f"offered{extra}" if hook != "fentry" else "in the kernel's BTF")
        else:
            r.line(f"  {label}", f"not offered: {features.reasons.get(hook, 'unavailable')}")
    for hook in ("fentry", "kprobe"):
        label = f"{hook}/{TASK_FUNCTION}"
        if features.task_available(hook):
            r.line(f"  {label}", "offered (task hook)" + (f", symbol {features.task_kprobe_symbol}" if hook == "kprobe"
                                                          else ", in the kernel's BTF"))
        else:
            r.line(f"  {label}", f"not offered (task hook): {features.reasons.get('task_' + hook, 'unavailable')}")


def _victims_line(r: _Report, victim: str, task: str) -> None:
    """Whether every victim's details come from its task on this plan, said in the words of the record."""
    if victim == "tp_btf":
        r.line("victims", "every victim read from its task_struct (oom.victim.source=task)")
    elif task != "none":
        r.line("victims", f"every victim read from its task_struct through the task hook ({task})")
    else:
        r.line("victims", "NO task hook: a victim other than the trigger or oc->chosen is reported from the "
                          "tracepoint alone (oom.victim.source=tracepoint, or pid on pid-only kernels)")


def _check_libbpf(r: _Report, victim: str, context: str, task: str, object_path: Path, tracefs: Optional[str],
                  missing: bool) -> None:
    features = detect_features()
    if features.btf:
        r.line("BTF", "ok (/sys/kernel/btf/vmlinux)")
    else:
        r.line("BTF", f"MISSING: {features.reasons['btf']}: use --backend bcc")
        r.problems.append("the kernel has no BTF")
    _hook_lines(r, features, tracefs)
    if not features.btf or missing:
        return
    chosen, tried = None, []
    plans = candidate_plans(features, victim, context, task)
    for plan in plans:
        try:
            with Probe(plan, lambda _b: None, object_path, 1 << 16):
                chosen = plan
                break
        except ProbeError as e:
            tried.append(f"{plan.describe()}: {e}")
    for t in tried:
        r.line("refused", t)
    if chosen:
        r.line("will use", chosen.describe())
        _victims_line(r, chosen.victim, chosen.task)
    else:
        r.problems.append("no hook plan loads and attaches" if plans else no_plan_reason(features, victim, context, task))


def _check_bcc(r: _Report, victim: str, context: str, task: str, buffer: str, tracefs: Optional[str],
               missing: bool) -> None:
    from .kernel.bcc import BccError, BccProbe, bcc_plans, detect_bcc_features, import_bcc, no_bcc_plan_reason

    try:
        bcc = import_bcc()
        r.line("BCC", f"{getattr(bcc, '__version__', '?')} ({os.path.dirname(bcc.__file__ or '?')})")
    except BccError as e:
        r.line("BCC", f"MISSING: {e}")
        r.problems.append("BCC is not installed")
        return
    f = detect_bcc_features()
    r.line("kernel headers", f.headers or f"MISSING: {f.reasons['headers']}")
    if not f.headers:
        r.problems.append("no kernel headers for BCC")
    r.line("event buffer", ("ring buffer" if f.ring_buffer else "perf buffer (kernel before 5.8)")
           if buffer == "auto" else f"{buffer} (asked for)")
    r.out.write("  hooks:\n")
    r.line("  tracepoint/oom/mark_victim", f"offered, layout {tracepoint_layout(tracefs)}" if f.tracepoint
           else f"not offered: {f.reasons.get('tracepoint')}")
    for label, symbol, key, role in (("kprobe/oom_kill_process", f.kprobe_symbol, "kprobe", ""),
                                     (f"kprobe/{TASK_FUNCTION}", f.task_symbol, "task_kprobe", " (task hook)")):
        r.line(f"  {label}", f"offered{role}, symbol {symbol}" if symbol else f"not offered{role}: {f.reasons.get(key)}")
    if missing or not f.headers:
        return
    plans = bcc_plans(f, victim, context, task)
    if not plans:
        r.problems.append(no_bcc_plan_reason(f, victim, context, task))
        return
    try:
        with BccProbe(plans[0], lambda _b: None, f, buffer, 1 << 16, bcc) as probe:
            r.line("will use", f"{plans[0].describe()} ({probe.buffer} buffer)")
            _victims_line(r, plans[0].victim, plans[0].task)
    except BccError as e:
        r.line("refused", f"{plans[0].describe()}: {e}")
        r.problems.append("BCC could not compile or attach the program")
