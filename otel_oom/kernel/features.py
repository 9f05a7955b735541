"""What the running kernel offers: BTF, the mark_victim layout, tracefs, kprobes, privileges.

Facts only, each with the reason when a hook is not offered; `candidate_plans` turns them into the
hook plans `probe.open_probe` tries, in order of preference. Reading BTF goes through libbpf
(`btf.KernelBtf`); everything else is files under /proc and /sys.

Three roles: the victim hook emits one event per victim (tp_btf or the classic tracepoint), the
context hook reads the OOM decision (oom_kill_process), and, only where mark_victim passes just the
pid, the task hook (mark_oom_victim) hands the classic tracepoint the victim's task_struct.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from .btf import KernelBtf
from .source import HookPlan

log = logging.getLogger("otel_oom.kernel")

VICTIM_HOOKS = ("tp_btf", "tracepoint")
CONTEXT_HOOKS = ("fentry", "kprobe", "none")
TASK_HOOKS = ("fentry", "kprobe", "none")
TASK_FUNCTION = "mark_oom_victim"  # fires the mark_victim tracepoint, once per marking, for every victim
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
PRIVILEGE_HINT = "run as root, or with CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)"


@dataclass
class KernelFeatures:
    """What the running kernel offers, each with the reason when it does not."""

    btf: bool
    tp_btf: bool
    tracepoint: bool
    fentry: bool
    kprobe_symbol: Optional[str]
    kprobe_pmu: bool
    mark_victim_args: Optional[list[str]]
    reasons: dict[str, str] = field(default_factory=dict)
    # the task hook (reasons under "task_fentry" / "task_kprobe")
    task_fentry: bool = False
    task_kprobe_symbol: Optional[str] = None

    def available(self, hook: str) -> bool:
        """Victim and context hooks: tp_btf, tracepoint, fentry, kprobe, none."""
        return {
            "tp_btf": self.tp_btf,
            "tracepoint": self.tracepoint,
            "fentry": self.fentry,
            "kprobe": bool(self.kprobe_symbol) and self.kprobe_pmu,
            "none": True,
        }[hook]

    def task_available(self, hook: str) -> bool:
        """Task hooks on mark_oom_victim: fentry, kprobe, none."""
        return {
            "fentry": self.task_fentry,
            "kprobe": bool(self.task_kprobe_symbol) and self.kprobe_pmu,
            "none": True,
        }[hook]


def find_tracefs(mount_if_missing: bool = True) -> Optional[str]:
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    if mount_if_missing:
        # libbpf resolves classic tracepoints through tracefs; mount it where the kernel expects it
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mount(b"nodev", TRACEFS_CANDIDATES[0].encode(), b"tracefs", 0, None) == 0:
                log.info("mounted tracefs at %s", TRACEFS_CANDIDATES[0])
                return TRACEFS_CANDIDATES[0]
        except OSError:
            pass
    return None


def find_kprobe_symbols(kallsyms: str = "/proc/kallsyms",
                        names: tuple[str, ...] = ("oom_kill_process", TASK_FUNCTION)) -> dict[str, Optional[str]]:
    """For each function, the symbol kprobes can attach to: the name itself, or a compiler clone
    such as `name.constprop.0` / `name.isra.0` (never the `.cold` split-off part). One regular
    expression over the whole file: kallsyms has 100,000+ lines, too many to split one by one."""
    try:
        with open(kallsyms) as f:
            text = f.read()
    except OSError:
        return {n: None for n in names}
    pattern = re.compile(r"^\S+ \S+ (" + "|".join(map(re.escape, names)) + r")((?:\.\w+)*)(?:\s|$)", re.M)
    found: dict[str, list[str]] = {n: [] for n in names}
    for m in pattern.finditer(text):
        if not m.group(2).endswith(".cold"):
            found[m.group(1)].append(m.group(1) + m.group(2))
    return {n: n if n in found[n] else (found[n][0] if found[n] else None) for n in names}


def tp_btf_gets_the_task(mark_victim_args: Optional[list[str]]) -> bool:
    """tp_btf/mark_victim is only useful where the tracepoint passes the victim's task (6.9+, and the
    2025 stable backports); before, it passes a pid (`int`) and the classic tracepoint is as good."""
    return bool(mark_victim_args) and mark_victim_args is not None and mark_victim_args[0] == "struct task_struct *"


def detect_features(kallsyms: str = "/proc/kallsyms", mount_tracefs: bool = True) -> KernelFeatures:
    reasons: dict[str, str] = {}
    btf_ok = os.path.exists(VMLINUX_BTF)
    args = None
    fentry = task_fentry = False
    if btf_ok:
        try:
            with KernelBtf() as kbtf:
                args = kbtf.mark_victim_args()
                fentry = kbtf.has_func("oom_kill_process")
                task_fentry = kbtf.has_func(TASK_FUNCTION)
        except OSError as e:
            btf_ok = False
            reasons["btf"] = f"cannot read /sys/kernel/btf/vmlinux: {e.strerror}"
    else:
        reasons["btf"] = "no /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)"
    tp_btf = tp_btf_gets_the_task(args)
    if not btf_ok:
        reasons["tp_btf"] = reasons["fentry"] = "needs kernel BTF"
    elif args is None:
        reasons["tp_btf"] = "the kernel has no mark_victim tracepoint"
    elif not tp_btf:
        reasons["tp_btf"] = f"mark_victim passes ({', '.join(args)}), not the task (kernel before 6.9)"
    if btf_ok and not fentry:
        reasons["fentry"] = "oom_kill_process is not a BTF function (inlined or renamed by the compiler)"
    tracefs = find_tracefs(mount_tracefs)
    tracepoint = bool(tracefs) and os.path.isdir(f"{tracefs}/events/oom/mark_victim")
    if not tracefs:
        reasons["tracepoint"] = "tracefs is not mounted at /sys/kernel/tracing and could not be mounted"
    elif not tracepoint:
        reasons["tracepoint"] = "no oom/mark_victim tracepoint in tracefs"
    pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    # /proc/kallsyms is long (~30 ms to scan before `ready`): only read where kprobes exist
    symbols = find_kprobe_symbols(kallsyms) if pmu else {"oom_kill_process": None, TASK_FUNCTION: None}
    symbol, task_symbol = symbols["oom_kill_process"], symbols[TASK_FUNCTION]
    if not pmu:
        reasons["kprobe"] = "the kernel has no kprobes (CONFIG_KPROBES off)"
    elif not symbol:
        reasons["kprobe"] = "oom_kill_process not in /proc/kallsyms"
    task_fentry, task_symbol = _task_hooks(reasons, btf_ok, tp_btf, args, task_fentry, task_symbol, pmu)
    return KernelFeatures(btf_ok, tp_btf, tracepoint, fentry, symbol, pmu, args, reasons,
                          task_fentry=task_fentry, task_kprobe_symbol=task_symbol)


def _task_hooks(reasons: dict[str, str], btf_ok: bool, tp_btf: bool, args: Optional[list[str]], in_btf: bool,
                symbol: Optional[str], pmu: bool) -> tuple[bool, Optional[str]]:
    """Whether a task hook is offered (fentry, kprobe symbol), with the reasons when not: only where
    the tracepoint passes just the pid, since tp_btf reads the task everywhere else."""
    if tp_btf or (args and args[0] == "struct task_struct *"):
        reasons["task_fentry"] = reasons["task_kprobe"] = \
            "mark_victim passes the task on this kernel: tp_btf reads it, no task hook needed"
        return False, None
    if not btf_ok:
        reasons["task_fentry"] = "needs kernel BTF"
    elif not in_btf:
        reasons["task_fentry"] = f"{TASK_FUNCTION} is not a BTF function (inlined or renamed by the compiler)"
    if not pmu:  # (kallsyms is then not read)
        reasons["task_kprobe"] = "the kernel has no kprobes (CONFIG_KPROBES off)"
    elif not symbol:
        reasons["task_kprobe"] = f"{TASK_FUNCTION} not in /proc/kallsyms (inlined)"
    return btf_ok and in_btf, symbol if pmu else None


def candidate_plans(features: KernelFeatures, victim: str = "auto", context: str = "auto",
                    task: str = "auto") -> list[HookPlan]:
    """Hook plans in order of preference, restricted to what the kernel offers and the user asked.
    A task hook goes only with the classic tracepoint (tp_btf has the task already)."""
    victims = VICTIM_HOOKS if victim == "auto" else (victim,)
    if task not in ("auto", "none") and victim == "auto":
        victims = ("tracepoint",)  # a task hook was asked for: it serves only the classic tracepoint
    contexts = CONTEXT_HOOKS if context == "auto" else (context,)
    tasks = TASK_HOOKS if task == "auto" else (task,)
    plans = []
    for v in victims:
        if not features.available(v):
            continue
        for c in contexts:
            if not features.available(c):
                continue
            for t in tasks if v == "tracepoint" else ("none",):
                if features.task_available(t):
                    plans.append(HookPlan(v, c, features.kprobe_symbol if c == "kprobe" else None, t,
                                          features.task_kprobe_symbol if t == "kprobe" else None))
    return plans


CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_capabilities(status: str = "/proc/self/status") -> int:
    with open(status) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(status: str = "/proc/self/status") -> list[str]:
    """The capabilities loading and attaching need that this process lacks (empty: enough)."""
    caps = effective_capabilities(status)
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    return [name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not caps & (1 << bit)]
