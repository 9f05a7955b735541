"""The bcc backend: the same kill logic and the same records as the CO-RE object, for kernels without BTF.

Where /sys/kernel/btf/vmlinux is missing, libbpf cannot relocate the CO-RE object, so BCC (Debian's
`python3-bpfcc`) compiles `bpf/oomkill.bcc.c` at start-up against the node's own kernel headers
(`/lib/modules/<release>/build`). It is the CO-RE object's logic (`bpf/kill_logic.h`) through BCC's
access layer (`bpf/access_bcc.h`): the classic `oom:mark_victim` tracepoint emits one `struct
oom_event` per victim, a kprobe on `mark_oom_victim` hands it the victim's task, a kprobe/kretprobe
pair on `oom_kill_process` the decision; and, as with libbpf, the programs around the kill
(`Extras`): the classic `signal:signal_generate` tracepoint for user-space OOM killers, the reaper,
exit and `mmap:exit_mmap` tracepoints for the time until a victim's memory is back. Only the
BTF-typed hooks (tp_btf, fentry) have no counterpart here. Records come through the BPF ring buffer
(5.8+) or, on older kernels, a perf buffer. `BccProbe` is a `SampleSource`, so the rest of the
agent is unchanged.

BCC's Python module is Debian's (never from PyPI). The agent usually runs in a virtualenv that
cannot see Debian's dist-packages, so `import_bcc` loads just the `bcc` package from there by path:
nothing else of the system's site-packages enters the agent.
"""
from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import AgentError
from .features import PRIVILEGE_HINT, TASK_FUNCTION, find_kprobe_symbols, find_tracefs, missing_capabilities
from .reclaim_wire import RECLAIM_EVENT_SIZE
from .source import HookPlan
from .wire import (
    EVENT_SIZE,
    STAT_CONTEXT_SEEN,
    STAT_RECLAIM,
    STAT_RINGBUF_FULL,
    STAT_SIGNAL_KILLS,
    STAT_SUBMITTED,
)

if TYPE_CHECKING:
    from .probe import Extras

log = logging.getLogger("otel_oom.bcc")

SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "oomkill.bcc.c"
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)"\s*$')
# the programs around the kill, by the tracepoint each is attached to
SIGNAL_PROGRAM = ("signal:signal_generate", "signal_generate_tp")
RECLAIM_PROGRAMS = (("oom:wake_reaper", "reaper_wake"), ("oom:start_task_reaping", "reaper_start"),
                    ("oom:finish_task_reaping", "reaper_finish"), ("oom:skip_task_reaping", "reaper_skip"),
                    ("sched:sched_process_exit", "victim_exit"))
EXIT_MMAP_PROGRAM = ("mmap:exit_mmap", "victim_mm_freed")  # 6.1+; without it the exit tells
SETTING_EXIT_MMAP = 1 << 0  # OOM_SETTING_EXIT_MMAP
# where Debian's python3-bpfcc puts the module (any Python 3 can import it: it is pure Python + ctypes)
DEBIAN_DIST_PACKAGES = ("/usr/lib/python3/dist-packages",)
INSTALL_HINT = "apt-get install python3-bpfcc (Debian/Ubuntu; not from PyPI)"
RING_BUFFER_KERNEL = (5, 8)
PERF_PAGES_PER_CPU = 64  # 256 KiB per CPU: a group kill of dozens of victims fits


class BccError(AgentError):
    pass


def import_bcc(search: tuple[str, ...] = DEBIAN_DIST_PACKAGES) -> ModuleType:
    """BCC's Python module: importable as is, else Debian's package loaded from its directory."""
    if "bcc" in sys.modules:
        return sys.modules["bcc"]
    try:
        import bcc  # type: ignore[import-not-found]

        return bcc
    except ImportError:
        pass
    for directory in search:
        init = os.path.join(directory, "bcc", "__init__.py")
        if not os.path.isfile(init):
            continue
        spec = importlib.util.spec_from_file_location("bcc", init,
                                                      submodule_search_locations=[os.path.dirname(init)])
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules["bcc"] = module
        try:
            spec.loader.exec_module(module)
        except (ImportError, OSError) as e:  # libbcc.so.0 missing or unloadable
            del sys.modules["bcc"]
            raise BccError(f"BCC's Python module at {os.path.dirname(init)} does not load ({e}): "
                           f"reinstall it: {INSTALL_HINT}") from None
        return module
    raise BccError(f"BCC's Python module is not installed: {INSTALL_HINT}")


def program_text(source: Path = SOURCE) -> str:
    """The bcc program as one text: `source` with the headers it includes from its own directory
    (the access layer, the shared kill logic, the event contract) inlined, each once, under #line
    markers so compile errors name the real file and line. BCC rewrites map operations only in
    its main file: included, the shared logic's would reach the compiler unrewritten."""
    seen: set[str] = set()

    def expand(path: Path) -> list[str]:
        out = [f'#line 1 "{path.name}"']
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = _LOCAL_INCLUDE.match(line)
            if m and (path.parent / m.group(1)).is_file():
                if m.group(1) not in seen:
                    seen.add(m.group(1))
                    out += expand(path.parent / m.group(1))
                    out.append(f'#line {number + 1} "{path.name}"')
                continue
            out.append(line)
        return out

    return "\n".join(expand(source)) + "\n"


def kernel_release() -> str:
    return os.uname().release


def _version(release: str) -> tuple[int, int]:
    parts = release.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def headers_dir(release: Optional[str] = None) -> Optional[str]:
    """The kernel headers BCC compiles against: $BCC_KERNEL_SOURCE, else /lib/modules/<release>/build."""
    explicit = os.environ.get("BCC_KERNEL_SOURCE")
    candidates = [explicit] if explicit else [f"/lib/modules/{release or kernel_release()}/build"]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "Makefile")):
            return os.path.realpath(path)
    return None


@dataclass
class BccFeatures:
    """What the bcc backend can use on this kernel, each with the reason when it cannot."""

    release: str
    headers: Optional[str]
    tracepoint: bool
    rich_tracepoint: bool
    kprobe_symbol: Optional[str]
    task_symbol: Optional[str]
    ring_buffer: bool
    reasons: dict[str, str] = field(default_factory=dict)


def detect_bcc_features(kallsyms: str = "/proc/kallsyms") -> BccFeatures:
    release = kernel_release()
    reasons: dict[str, str] = {}
    headers = headers_dir(release)
    if not headers:
        reasons["headers"] = (f"no kernel headers at /lib/modules/{release}/build: apt-get install "
                              f"linux-headers-{release} (or set BCC_KERNEL_SOURCE)")
    tracefs = find_tracefs()
    fmt = ""
    if tracefs:
        try:
            fmt = Path(f"{tracefs}/events/oom/mark_victim/format").read_text()
        except OSError:
            reasons["tracepoint"] = "no oom/mark_victim tracepoint in tracefs"
    else:
        reasons["tracepoint"] = "tracefs is not mounted at /sys/kernel/tracing and could not be mounted"
    pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    symbols = find_kprobe_symbols(kallsyms)
    kprobe, task = symbols["oom_kill_process"], symbols[TASK_FUNCTION]
    if not pmu:
        reasons["kprobe"] = reasons["task_kprobe"] = "the kernel has no kprobes (CONFIG_KPROBES off)"
        kprobe = task = None
    if pmu and not kprobe:
        reasons["kprobe"] = "oom_kill_process not in /proc/kallsyms"
    if pmu and not task:
        reasons["task_kprobe"] = f"{TASK_FUNCTION} not in /proc/kallsyms (inlined)"
    ring = _version(release) >= RING_BUFFER_KERNEL
    return BccFeatures(release, headers, bool(fmt), "total_vm" in fmt, kprobe, task, ring, reasons)


def bcc_plans(f: BccFeatures, victim: str = "auto", context: str = "auto", task: str = "auto") -> list[HookPlan]:
    """The plans the bcc backend can run, best first: the classic tracepoint, kprobes or nothing."""
    if victim not in ("auto", "tracepoint") or context == "fentry" or task == "fentry" or not f.tracepoint:
        return []
    contexts = [c for c in (("kprobe", "none") if context == "auto" else (context,))
                if c == "none" or f.kprobe_symbol]
    tasks = [t for t in (("kprobe", "none") if task == "auto" else (task,)) if t == "none" or f.task_symbol]
    return [HookPlan("tracepoint", c, f.kprobe_symbol if c == "kprobe" else None, t,
                     f.task_symbol if t == "kprobe" else None, backend="bcc") for c in contexts for t in tasks]


def no_bcc_plan_reason(f: BccFeatures, victim: str, context: str, task: str) -> str:
    if victim == "tp_btf" or "fentry" in (context, task):
        return "the bcc backend has no tp_btf or fentry (both need kernel BTF): use the tracepoint and kprobes"
    why = [f"{h}: {f.reasons[k]}" for h, k in (("tracepoint", "tracepoint"), (f"context {context}", "kprobe"),
                                                (f"task {task}", "task_kprobe")) if k in f.reasons]
    return "no usable OOM hook for the bcc backend (" + ("; ".join(why) or "nothing asked is offered") + ")"


class BccProbe:
    """One BCC module: compiled, attached, polled; a `SampleSource`. close() detaches (twice is fine).

    `extras`: the programs around the kill to attach as well (`probe.Extras`); the kernel refusing
    them never stops the kill hooks (like the libbpf backend, a warning says what is missing)."""

    def __init__(self, plan: HookPlan, on_sample: Callable[[bytes], None], features: BccFeatures,
                 buffer: str = "auto", ring_bytes: int = 4 << 20, bcc: Optional[ModuleType] = None,
                 extras: Optional["Extras"] = None) -> None:
        self.plan = plan
        self.extras: tuple[str, ...] = ()  # the around-the-kill programs attached, by name
        self._on_sample = on_sample
        self._error: Optional[BaseException] = None
        self._delivered = 0
        self._lost = 0
        self._perf_batch: list[bytes] = []
        self._last_stats: dict[str, int] = {}
        self.buffer = ("ring" if features.ring_buffer else "perf") if buffer == "auto" else buffer
        if self.buffer == "ring" and not features.ring_buffer:
            raise BccError(f"kernel {features.release} has no BPF ring buffer (5.8+): use --bcc-buffer perf")
        if not features.headers:
            raise BccError(features.reasons["headers"])
        bcc = bcc or import_bcc()
        cflags = [f"-DOTEL_OOM_RING_PAGES={max(1, ring_bytes // 4096)}"]
        if self.buffer == "perf":
            cflags.append("-DOTEL_OOM_PERF_BUFFER")
        if features.rich_tracepoint:
            cflags.append("-DOTEL_OOM_TP_RICH")
        try:
            self._b: Any = bcc.BPF(text=program_text().encode(), cflags=cflags)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception for compile and load failures
            raise BccError(f"BCC could not compile or load {SOURCE.name} against {features.headers}: {e}") from None
        try:
            self._attach_tracepoint("oom:mark_victim", "mark_victim_tp")
            if plan.context == "kprobe":
                symbol = (plan.kprobe_symbol or "oom_kill_process").encode()
                self._b.attach_kprobe(event=symbol, fn_name=b"oom_kill_kprobe")
                self._b.attach_kretprobe(event=symbol, fn_name=b"oom_kill_kretprobe")
            if plan.task == "kprobe":
                self._b.attach_kprobe(event=(plan.task_symbol or TASK_FUNCTION).encode(),
                                      fn_name=b"mark_oom_victim_kprobe")
            table = self._b[b"events"]
            if self.buffer == "ring":
                table.open_ring_buffer(self._ring_sample)
            else:
                table.open_perf_buffer(self._perf_sample, page_cnt=PERF_PAGES_PER_CPU, lost_cb=self._perf_lost)
        except Exception as e:  # noqa: BLE001
            self.close()
            raise BccError(f"attaching {plan.describe()} failed: {e}") from None
        if extras is not None:
            self._attach_extras(extras)

    def _attach_tracepoint(self, tracepoint: str, program: str) -> None:
        self._b.attach_tracepoint(tp=tracepoint.encode(), fn_name=program.encode())

    def _attach_extras(self, extras: "Extras") -> None:
        """The signal hook and the reclaim hooks, as far as the kernel takes them."""
        refused = []
        if extras.signals:
            try:
                killers = self._b[b"killers"]
                for name in extras.killers:
                    killers[killers.Key(name.encode()[:15])] = killers.Leaf(1)
                self._attach_tracepoint(*SIGNAL_PROGRAM)
                self.extras += (SIGNAL_PROGRAM[1],)
            except Exception as e:  # noqa: BLE001 - BCC raises bare Exception
                refused.append(f"{SIGNAL_PROGRAM[0]}: {e}")
        if extras.reclaim:
            attached: list[str] = []
            try:
                for tracepoint, program in RECLAIM_PROGRAMS:
                    self._attach_tracepoint(tracepoint, program)
                    attached.append(tracepoint)
            except Exception as e:  # noqa: BLE001
                refused.append(f"{tracepoint}: {e}")
                for tp in attached:  # all or none: a victim's reclaim time needs its exit
                    self._b.detach_tracepoint(tp=tp.encode())
            else:
                self.extras += tuple(program for _, program in RECLAIM_PROGRAMS)
                try:
                    self._attach_tracepoint(*EXIT_MMAP_PROGRAM)
                    settings = self._b[b"settings"]
                    settings[settings.Key(0)] = settings.Leaf(SETTING_EXIT_MMAP)
                    self.extras += (EXIT_MMAP_PROGRAM[1],)
                except Exception as e:  # noqa: BLE001
                    log.info("%s not attached (%s): reclaim times are taken at the victim's exit",
                             EXIT_MMAP_PROGRAM[1], e)
        if refused:
            log.warning("the kernel refused the hooks for user-space OOM killers and reclaim times (%s): kills "
                        "are reported, those records are not", "; ".join(refused))

    @property
    def signals_watched(self) -> bool:
        """The signal hook runs: user-space killers are reported."""
        return SIGNAL_PROGRAM[1] in self.extras

    @property
    def reclaim_events(self) -> bool:
        return all(program in self.extras for _, program in RECLAIM_PROGRAMS)

    def _deliver(self, sample: bytes) -> None:
        # an exception must not unwind into BCC's C caller: kept, and raised after the poll
        try:
            self._on_sample(sample)
            self._delivered += 1
        except BaseException as e:  # noqa: BLE001
            self._error = self._error or e

    def _ring_sample(self, _ctx: Any, data: int, size: int) -> int:
        self._deliver(ctypes.string_at(data, size))
        return -1 if self._error is not None else 0

    def _perf_sample(self, _cpu: int, data: int, size: int) -> None:
        # a perf sample is padded to 8 bytes with its 4-byte size: keep the record it holds, whose
        # size tells user space which one it is
        self._perf_batch.append(ctypes.string_at(
            data, next((n for n in (EVENT_SIZE, RECLAIM_EVENT_SIZE) if n <= size < n + 8), size)))

    def _perf_lost(self, count: int) -> None:
        self._lost += count

    def poll(self, timeout_ms: int) -> int:
        before = self._delivered
        if self.buffer == "ring":
            self._b.ring_buffer_poll(timeout_ms)
        else:
            self._b.perf_buffer_poll(timeout_ms)
            # one perf buffer per CPU: put the records back in the kernel's order (each starts with its
            # CLOCK_BOOTTIME stamp), so a victim's reclaim record, written on its own CPU, follows its kill
            batch, self._perf_batch = self._perf_batch, []
            for sample in sorted(batch, key=lambda b: int.from_bytes(b[:8], sys.byteorder)):
                self._deliver(sample)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self._delivered - before

    def stats(self) -> dict[str, int]:
        if getattr(self, "_b", None) is None:
            return dict(self._last_stats)
        table = self._b[b"stats"]
        out = {}
        for idx, name in ((STAT_SUBMITTED, "submitted"), (STAT_RINGBUF_FULL, "ringbuf_full"),
                          (STAT_CONTEXT_SEEN, "decisions"), (STAT_SIGNAL_KILLS, "signal_kills"),
                          (STAT_RECLAIM, "reclaim_events")):
            out[name] = sum(int(v) for v in table[table.Key(idx)])
        out["ringbuf_full"] += self._lost
        self._last_stats = out
        return dict(out)

    def close(self) -> None:
        b = getattr(self, "_b", None)
        if b is None:
            return
        self.stats()  # keep the final counts: the last metric export happens after close
        self._b = None
        b.cleanup()

    def __enter__(self) -> "BccProbe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bcc_probe(on_sample: Callable[[bytes], None], victim: str = "auto", context: str = "auto",
                   task: str = "auto", buffer: str = "auto", ring_bytes: int = 4 << 20,
                   features: Optional[BccFeatures] = None, extras: Optional["Extras"] = None) -> BccProbe:
    """Compile and attach the best plan BCC can run here; raise BccError saying why it cannot."""
    missing = missing_capabilities()
    if missing:
        raise BccError(f"missing privileges ({', '.join(missing)}): {PRIVILEGE_HINT}")
    bcc = import_bcc()
    features = features or detect_bcc_features()
    plans = bcc_plans(features, victim, context, task)
    if not plans:
        raise BccError(no_bcc_plan_reason(features, victim, context, task))
    # BCC compiles once per attempt (seconds): the first plan is the one the kernel offers, so try only
    # the next when attaching it fails
    failures = []
    for plan in plans:
        try:
            return BccProbe(plan, on_sample, features, buffer, ring_bytes, bcc, extras)
        except BccError as e:
            if "compile" in str(e) or "ring buffer" in str(e) or "headers" in str(e):
                raise
            log.info("hook plan %s not usable: %s", plan.describe(), e)
            failures.append(f"{plan.describe()}: {e}")
    raise BccError("every hook plan failed: " + " | ".join(failures))
