"""The BPF side of the agent: choose hooks, open, check, load, attach, poll, detach.

One `Probe` owns one loaded object and its links and ring buffer, and tears them down in reverse
order (closing twice is harmless). `open_probe` tries hook plans in order of preference and falls
back when the kernel refuses one (a load or attach error), so a missing hook never crashes the
agent. The ring-buffer callback only copies the sample and hands it on.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import libbpf as L
from .btf import KernelBtf, LayoutMismatch, check_event_layout
from .errors import AgentError
from .event import STAT_CONTEXT_SEEN, STAT_RINGBUF_FULL, STAT_SUBMITTED

log = logging.getLogger("otel_oom.probe")

DEFAULT_OBJECT = Path(__file__).with_name("bpf") / "oomkill.bpf.o"
DEFAULT_RING_BYTES = 4 << 20

VICTIM_HOOKS = ("tp_btf", "tracepoint")
CONTEXT_HOOKS = ("fentry", "kprobe", "none")
# program names in bpf/oomkill.bpf.c for each hook
PROGRAMS = {
    "tp_btf": ("mark_victim_btf",),
    "tracepoint": ("mark_victim_tp",),
    "fentry": ("oom_kill_fentry", "oom_kill_fexit"),
    "kprobe": ("oom_kill_kprobe", "oom_kill_kretprobe"),
    "none": (),
}
SYNTHETIC = "synthetic_events"  # bench-only program, see bpf/oomkill.bpf.c
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
REBUILD_HINT = "rebuild it: `make -C bpf` in the checkout, or reinstall the package (`pip install .`)"
PRIVILEGE_HINT = "run as root, or with CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)"


@dataclass(frozen=True)
class HookPlan:
    victim: str
    context: str
    kprobe_symbol: Optional[str] = None

    def describe(self) -> str:
        ctx = self.context if self.context != "kprobe" else f"kprobe:{self.kprobe_symbol}"
        return f"victim={self.victim} context={ctx}"


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

    def available(self, hook: str) -> bool:
        return {
            "tp_btf": self.tp_btf,
            "tracepoint": self.tracepoint,
            "fentry": self.fentry,
            "kprobe": bool(self.kprobe_symbol) and self.kprobe_pmu,
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


def find_kprobe_symbol(kallsyms: str = "/proc/kallsyms", name: str = "oom_kill_process") -> Optional[str]:
    """The symbol kprobes can attach to: `name` itself, or a compiler clone such as
    `name.constprop.0` / `name.isra.0` (never the `.cold` split-off part)."""
    clones = []
    try:
        with open(kallsyms) as f:
            for line in f:
                sym = line.split()[2] if line.count(" ") >= 2 else ""
                if sym == name:
                    return name
                if sym.startswith(name + ".") and not sym.endswith(".cold"):
                    clones.append(sym)
    except OSError:
        return None
    return clones[0] if clones else None


def tp_btf_gets_the_task(mark_victim_args: Optional[list[str]]) -> bool:
    """tp_btf/mark_victim is only useful where the tracepoint passes the victim's task (6.9+, and the
    2025 stable backports); before, it passes a pid (`int`) and the classic tracepoint is as good."""
    return bool(mark_victim_args) and mark_victim_args[0] == "struct task_struct *"


def detect_features(kallsyms: str = "/proc/kallsyms", mount_tracefs: bool = True) -> KernelFeatures:
    reasons: dict[str, str] = {}
    btf_ok = os.path.exists("/sys/kernel/btf/vmlinux")
    args = None
    fentry = False
    if btf_ok:
        try:
            with KernelBtf() as kbtf:
                args = kbtf.mark_victim_args()
                fentry = kbtf.has_func("oom_kill_process")
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
    symbol = find_kprobe_symbol(kallsyms)
    pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    if not symbol:
        reasons["kprobe"] = "oom_kill_process not in /proc/kallsyms"
    elif not pmu:
        reasons["kprobe"] = "the kernel has no kprobes (CONFIG_KPROBES off)"
    return KernelFeatures(btf_ok, tp_btf, tracepoint, fentry, symbol, pmu, args, reasons)


def candidate_plans(features: KernelFeatures, victim: str = "auto", context: str = "auto") -> list[HookPlan]:
    """Hook plans in order of preference, restricted to what the kernel offers and the user asked."""
    victims = VICTIM_HOOKS if victim == "auto" else (victim,)
    contexts = CONTEXT_HOOKS if context == "auto" else (context,)
    plans = []
    for v in victims:
        if not features.available(v):
            continue
        for c in contexts:
            if features.available(c):
                plans.append(HookPlan(v, c, features.kprobe_symbol if c == "kprobe" else None))
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


def _permission_hint() -> str:
    if missing_capabilities():
        return PRIVILEGE_HINT
    return "the kernel refuses this program type although the process is privileged (lockdown, LSM or hypervisor policy)"


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, err)} ({os.strerror(err)})"


class ProbeError(AgentError):
    pass


def raise_memlock_limit() -> None:
    # kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memcg, so a
    # refusal here (no CAP_SYS_RESOURCE) is harmless and never fatal
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        log.debug("could not raise RLIMIT_MEMLOCK; fine on kernels 5.11+")


class Probe:
    """A loaded and attached object. `on_sample(bytes)` is called from `poll()`; it must not block."""

    def __init__(self, plan: HookPlan, on_sample: Callable[[bytes], None],
                 object_path: Path = DEFAULT_OBJECT, ring_bytes: int = DEFAULT_RING_BYTES,
                 bench_pin: Optional[str] = None) -> None:
        self.plan = plan
        self._on_sample = on_sample
        self._obj = None
        self._links: list[int] = []
        self._rb = None
        self._sample_error: Optional[BaseException] = None
        self._stats_fd = -1
        self._pinned: Optional[str] = None
        # kept referenced for as long as the ring buffer may call it
        self._callback = L.SAMPLE_FN(self._sample)
        try:
            self._open(object_path, ring_bytes, bench_pin)
        except BaseException:
            self.close()
            raise

    def _open(self, object_path: Path, ring_bytes: int, bench_pin: Optional[str]) -> None:
        if not object_path.exists():
            raise ProbeError(f"BPF object {object_path} is missing; {REBUILD_HINT}")
        # CO-RE relocations against vmlinux's BTF only: without this, a type the running kernel lacks
        # (our flavours for older kernels) makes libbpf 1.1 search kernel modules' BTF, which needs
        # CAP_SYS_ADMIN, and every plan would fail with EPERM under CAP_BPF + CAP_PERFMON
        self._open_opts = L.BpfObjectOpenOpts(sz=ctypes.sizeof(L.BpfObjectOpenOpts))
        if os.path.exists(VMLINUX_BTF):
            self._open_opts.btf_custom_path = VMLINUX_BTF.encode()
        obj = L.bpf_object__open_file(str(object_path).encode(), ctypes.byref(self._open_opts))
        if not obj:
            err = ctypes.get_errno()
            raise ProbeError(f"cannot open BPF object {object_path}: {_errno_text(err)}; {REBUILD_HINT}")
        self._obj = obj
        btf = L.bpf_object__btf(obj)
        if not btf:
            raise ProbeError(f"BPF object {object_path} has no BTF; {REBUILD_HINT}")
        try:
            check_event_layout(btf)
        except LayoutMismatch as e:
            raise ProbeError(f"BPF object {object_path} is stale (event layout differs: {e}); {REBUILD_HINT}")

        wanted = set(PROGRAMS[self.plan.victim]) | set(PROGRAMS[self.plan.context])
        prog = L.bpf_object__next_program(obj, None)
        while prog:
            name = L.bpf_program__name(prog).decode()
            L.bpf_program__set_autoload(prog, name in wanted or (bench_pin is not None and name == SYNTHETIC))
            prog = L.bpf_object__next_program(obj, prog)

        events = L.bpf_object__find_map_by_name(obj, b"events")
        if ring_bytes != DEFAULT_RING_BYTES:
            rc = L.bpf_map__set_max_entries(events, ring_bytes)
            if rc < 0:
                raise ProbeError(f"ring buffer size {ring_bytes} refused: {_errno_text(-rc)} "
                                 "(it must be a power of two multiple of the page size)")
        raise_memlock_limit()
        rc = L.bpf_object__load(obj)
        if rc < 0:
            err = -rc
            hint = _permission_hint() if err in (errno.EPERM, errno.EACCES) else "see the libbpf messages logged above"
            raise ProbeError(f"loading BPF programs ({self.plan.describe()}) failed: {_errno_text(err)}; {hint}",
                             errno_value=err)

        for name in sorted(wanted):
            self._attach(name)
        if bench_pin:
            # benchmarks drive this program with BPF_PROG_TEST_RUN through the pinned path
            if os.path.exists(bench_pin):
                os.unlink(bench_pin)
            rc = L.bpf_program__pin(L.bpf_object__find_program_by_name(obj, SYNTHETIC.encode()), bench_pin.encode())
            if rc < 0:
                raise ProbeError(f"cannot pin the benchmark program at {bench_pin}: {_errno_text(-rc)} "
                                 "(it must be on a mounted bpffs, e.g. /sys/fs/bpf)")
            self._pinned = bench_pin

        self._stats_fd = L.bpf_map__fd(L.bpf_object__find_map_by_name(obj, b"stats"))
        self._rb = L.ring_buffer__new(L.bpf_map__fd(events), self._callback, None, None)
        if not self._rb:
            raise ProbeError(f"cannot set up the ring buffer: {_errno_text(ctypes.get_errno())}")

    def _attach(self, name: str) -> None:
        prog = L.bpf_object__find_program_by_name(self._obj, name.encode())
        if name.startswith("oom_kill_k"):
            # attach by the name kallsyms really has (clones carry a suffix the SEC name cannot know)
            link = L.bpf_program__attach_kprobe(prog, name.endswith("kretprobe"), self.plan.kprobe_symbol.encode())
        else:
            link = L.bpf_program__attach(prog)
        if not link:
            err = ctypes.get_errno() or errno.EINVAL
            hint = _permission_hint() if err in (errno.EPERM, errno.EACCES) else "the kernel refused this hook"
            raise ProbeError(f"attaching {name} ({self.plan.describe()}) failed: {_errno_text(err)}; {hint}",
                             errno_value=err)
        self._links.append(link)

    def _sample(self, _ctx: int, data: int, size: int) -> int:
        # copy and hand on; never let an exception unwind into libbpf's C frame
        try:
            self._on_sample(ctypes.string_at(data, size))
        except BaseException as e:  # noqa: BLE001 - re-raised after the poll
            self._sample_error = e
            return -1
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for samples and deliver them; returns how many were consumed."""
        n = L.ring_buffer__poll(self._rb, timeout_ms)
        if self._sample_error is not None:
            err, self._sample_error = self._sample_error, None
            raise err
        if n < 0 and n != -errno.EINTR:
            raise ProbeError(f"ring buffer poll failed: {_errno_text(-n)}")
        return max(n, 0)

    def stats(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs."""
        ncpu = L.libbpf_num_possible_cpus()
        values = (ctypes.c_uint64 * ncpu)()
        out = {}
        for idx, name in ((STAT_SUBMITTED, "submitted"), (STAT_RINGBUF_FULL, "ringbuf_full"),
                          (STAT_CONTEXT_SEEN, "decisions")):
            key = ctypes.c_uint32(idx)
            if L.bpf_map_lookup_elem(self._stats_fd, ctypes.byref(key), values) == 0:
                out[name] = sum(values)
        return out

    def close(self) -> None:
        if self._pinned:
            try:
                os.unlink(self._pinned)
            except OSError:
                pass
            self._pinned = None
        if self._rb:
            L.ring_buffer__free(self._rb)
            self._rb = None
        while self._links:
            L.bpf_link__destroy(self._links.pop())
        if self._obj:
            L.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def open_probe(on_sample: Callable[[bytes], None], victim: str = "auto", context: str = "auto",
               object_path: Path = DEFAULT_OBJECT, ring_bytes: int = DEFAULT_RING_BYTES,
               features: Optional[KernelFeatures] = None, bench_pin: Optional[str] = None) -> Probe:
    """Load the best hook plan the kernel accepts; raise ProbeError saying why none worked."""
    L.route_messages_to_logging()
    features = features or detect_features()
    if not features.btf:
        raise ProbeError(f"{features.reasons['btf']}: otel-oom needs a kernel with BTF (5.5+, "
                         "CONFIG_DEBUG_INFO_BTF=y; most distributions ship it)")
    missing = missing_capabilities()
    if missing:
        raise ProbeError(f"missing privileges ({', '.join(missing)}): {PRIVILEGE_HINT}")
    plans = candidate_plans(features, victim, context)
    if not plans:
        asked = [h for h in (victim, context) if h not in ("auto", "none")]
        why = "; ".join(f"{h}: {features.reasons.get(h, 'unavailable')}" for h in (asked or VICTIM_HOOKS))
        raise ProbeError(f"no usable OOM hook on this kernel ({why})")
    failures = []
    refused: list[tuple[int, str]] = []  # libbpf's account of the plans the kernel refused
    for plan in plans:
        # a refused plan is an expected fallback: what libbpf said about it is detail (debug level),
        # unless no plan works at all
        L.captured = []
        try:
            probe = Probe(plan, on_sample, object_path, ring_bytes, bench_pin)
        except ProbeError as e:
            refused.extend(L.captured)
            if "stale" in str(e) or "missing" in str(e):
                _replay(refused)
                raise  # no other plan can fix these
            # with the privileges checked above, EPERM means the kernel refuses this hook
            # (fentry under some lockdown/hypervisor setups): try the next plan
            log.info("hook plan %s not usable: %s", plan.describe(), e)
            failures.append(f"{plan.describe()}: {e}")
            continue
        finally:
            messages, L.captured = L.captured, None
        _replay(refused, logging.DEBUG)
        _replay(messages)
        return probe
    _replay(refused)
    raise ProbeError("every hook plan failed: " + " | ".join(failures))


def _replay(messages: list[tuple[int, str]], level: Optional[int] = None) -> None:
    for msg_level, text in messages:
        L.log.log(level if level is not None else msg_level, "%s", text)
