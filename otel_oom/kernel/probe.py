"""The BPF side of the agent: open, check, load, attach, poll, detach.

One `Probe` owns one loaded object and its links and ring buffer, and tears them down in reverse
order (closing twice is harmless); it is the agent's `SampleSource`. `open_probe` tries the hook
plans `features.candidate_plans` offers, in order of preference, and falls back when the kernel
refuses one (a load or attach error), so a missing hook never crashes the agent. The ring-buffer
callback only copies the sample and hands it on.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import AgentError
from . import libbpf as L
from .btf import LayoutMismatch, check_event_layout
from .features import (
    PRIVILEGE_HINT,
    TASK_FUNCTION,
    VICTIM_HOOKS,
    VMLINUX_BTF,
    KernelFeatures,
    candidate_plans,
    detect_features,
    missing_capabilities,
)
from .source import HookPlan
from .wire import STAT_CONTEXT_SEEN, STAT_RECLAIM, STAT_RINGBUF_FULL, STAT_SIGNAL_KILLS, STAT_SUBMITTED

log = logging.getLogger("otel_oom.probe")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


def object_for(machine: str) -> Path:
    """The CO-RE object built for `machine` (`uname -m`: x86_64, aarch64) by bpf/Makefile, into the
    package (setup.py does the same for a wheel, which carries every architecture's)."""
    return BPF_DIR / f"oomkill.{machine}.bpf.o"


DEFAULT_OBJECT = object_for(platform.machine())
DEFAULT_RING_BYTES = 4 << 20

# program names in bpf/oomkill.bpf.c for each hook
PROGRAMS = {
    "tp_btf": ("mark_victim_btf",),
    "tracepoint": ("mark_victim_tp",),
    "fentry": ("oom_kill_fentry", "oom_kill_fexit"),
    "kprobe": ("oom_kill_kprobe", "oom_kill_kretprobe"),
    "none": (),
}
TASK_PROGRAMS = {"fentry": ("mark_oom_victim_fentry",), "kprobe": ("mark_oom_victim_kprobe",), "none": ()}
REBUILD_HINT = "rebuild it: `make -C bpf` in the checkout, or reinstall the package (`pip install .`)"

# around the kill: optional programs, loaded with any plan; if the kernel refuses them the
# plan is loaded again without them (the kills are what must not fail)
SIGNAL_PROGRAMS = ("signal_generate_btf", "signal_generate_tp")   # preferred first
RECLAIM_PROGRAMS = ("reaper_wake", "reaper_start", "reaper_finish", "reaper_skip", "victim_exit", "victim_mm_freed")
# optional within the optional: a kernel without the tracepoint (exit_mmap is 6.1+) keeps the rest
SOFT_PROGRAMS = ("victim_mm_freed",)
SETTING_EXIT_MMAP = 1 << 0  # OOM_SETTING_EXIT_MMAP


@dataclass(frozen=True)
class Extras:
    """Which optional programs to load: the signal hook (user-space killers, and telling a killed
    victim from an exiting one) with the killers' names, and the reclaim hooks."""

    signals: bool = False
    killers: tuple[str, ...] = ()
    reclaim: bool = False

    def attempts(self) -> list[tuple[str, ...]]:
        """Program sets to try, best first; the last is always none."""
        reclaim = RECLAIM_PROGRAMS if self.reclaim else ()
        out = [(sig, *reclaim) for sig in SIGNAL_PROGRAMS] if self.signals else []
        if reclaim:
            out.append(reclaim)
        return out + [()]


def _permission_hint() -> str:
    if missing_capabilities():
        return PRIVILEGE_HINT
    return "the kernel refuses this program type although the process is privileged (lockdown, LSM or hypervisor policy)"


ENOTSUPP = 524  # the kernel's own "operation not supported" (no trampoline for fentry, e.g. arm64 before 6.4)


def _errno_text(err: int) -> str:
    if err == ENOTSUPP:
        return "ENOTSUPP (not supported by this kernel)"
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
                 extras: tuple[str, ...] = (), killers: tuple[str, ...] = ()) -> None:
        self.plan = plan
        self.extras = extras    # optional programs loaded and attached with the plan (around the kill)
        self._killers = killers
        self._on_sample = on_sample
        self._obj: Optional[int] = None   # struct bpf_object *
        self._links: list[int] = []
        self._rb: Optional[int] = None   # struct ring_buffer *
        self._sample_error: Optional[BaseException] = None
        self._stats_fd = -1
        self._last_stats: dict[str, int] = {}
        # kept referenced for as long as the ring buffer may call it
        self._callback = L.SAMPLE_FN(self._sample)
        try:
            self._open(object_path, ring_bytes)
        except BaseException:
            self.close()
            raise

    def _open(self, object_path: Path, ring_bytes: int) -> None:
        if not object_path.exists():
            raise ProbeError(f"BPF object {object_path} (for {platform.machine()}) is missing; {REBUILD_HINT}")
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

        wanted = (set(PROGRAMS[self.plan.victim]) | set(PROGRAMS[self.plan.context])
                  | set(TASK_PROGRAMS[self.plan.task]) | set(self.extras))
        prog = L.bpf_object__next_program(obj, None)
        while prog:
            name = L.bpf_program__name(prog).decode()
            L.bpf_program__set_autoload(prog, name in wanted)
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

        if self.signals_watched:
            self._fill_killers(obj)
        for name in sorted(wanted):
            if name in SOFT_PROGRAMS:
                try:
                    self._attach(name)
                except ProbeError as e:
                    log.info("%s not attached (%s): reclaim times are taken at the victim's exit", name, e)
                    self.extras = tuple(p for p in self.extras if p != name)
                continue
            self._attach(name)
        if "victim_mm_freed" in self.extras:
            self._set_setting(obj, SETTING_EXIT_MMAP)
        self._stats_fd = L.bpf_map__fd(L.bpf_object__find_map_by_name(obj, b"stats"))
        self._rb = L.ring_buffer__new(L.bpf_map__fd(events), self._callback, None, None)
        if not self._rb:
            raise ProbeError(f"cannot set up the ring buffer: {_errno_text(ctypes.get_errno())}")

    @property
    def signals_watched(self) -> bool:
        """The signal hook runs: user-space killers are reported, and a victim the kernel sent no
        SIGKILL to was marked while already exiting."""
        return any(p in self.extras for p in SIGNAL_PROGRAMS)

    @property
    def reclaim_events(self) -> bool:
        return all(p in self.extras for p in RECLAIM_PROGRAMS if p not in SOFT_PROGRAMS)

    def _set_setting(self, obj: int, bits: int) -> None:
        fd = L.bpf_map__fd(L.bpf_object__find_map_by_name(obj, b"settings"))
        key, value = ctypes.c_uint32(0), ctypes.c_uint32(bits)
        if L.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0) < 0:
            raise ProbeError(f"cannot write the settings map: {_errno_text(ctypes.get_errno())}")

    def _fill_killers(self, obj: int) -> None:
        fd = L.bpf_map__fd(L.bpf_object__find_map_by_name(obj, b"killers"))
        one = ctypes.c_uint8(1)
        for name in self._killers:
            key = ctypes.create_string_buffer(name.encode()[:15], 16)
            if L.bpf_map_update_elem(fd, key, ctypes.byref(one), 0) < 0:
                raise ProbeError(f"cannot set the user-space killer name {name!r}: {_errno_text(ctypes.get_errno())}")

    def _attach(self, name: str) -> None:
        prog = L.bpf_object__find_program_by_name(self._obj, name.encode())
        if name.startswith("oom_kill_k"):
            # attach by the name kallsyms really has (clones carry a suffix the SEC name cannot know)
            symbol = self.plan.kprobe_symbol or "oom_kill_process"
            link = L.bpf_program__attach_kprobe(prog, name.endswith("kretprobe"), symbol.encode())
        elif name == "mark_oom_victim_kprobe":
            symbol = self.plan.task_symbol or TASK_FUNCTION
            link = L.bpf_program__attach_kprobe(prog, False, symbol.encode())
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
        """Kernel-side counters summed over CPUs; after close, their last values (counters never go back)."""
        if not self._obj or self._stats_fd < 0:
            return dict(self._last_stats)
        ncpu = L.libbpf_num_possible_cpus()
        values = (ctypes.c_uint64 * ncpu)()
        out = {}
        for idx, name in ((STAT_SUBMITTED, "submitted"), (STAT_RINGBUF_FULL, "ringbuf_full"),
                          (STAT_CONTEXT_SEEN, "decisions"), (STAT_SIGNAL_KILLS, "signal_kills"),
                          (STAT_RECLAIM, "reclaim_events")):
            key = ctypes.c_uint32(idx)
            if L.bpf_map_lookup_elem(self._stats_fd, ctypes.byref(key), values) == 0:
                out[name] = sum(values)
        self._last_stats = out
        return dict(out)

    def close(self) -> None:
        if self._obj and self._stats_fd >= 0:
            self.stats()  # keep the final counts: the last metric export happens after close
        self._stats_fd = -1
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

    def __exit__(self, *exc: object) -> None:
        self.close()


def no_plan_reason(features: KernelFeatures, victim: str, context: str, task: str) -> str:
    """Why no plan fits what was asked, in the reasons the features give."""
    asked = [h for h in (victim, context) if h not in ("auto", "none")]
    why = [f"{h}: {features.reasons.get(h, 'unavailable')}" for h in (asked or ([] if task not in ("auto", "none")
                                                                             else VICTIM_HOOKS))]
    if task not in ("auto", "none"):
        why.append(f"task hook {task}: {features.reasons.get('task_' + task, 'unavailable')}")
    return f"no usable OOM hook on this kernel ({'; '.join(why)})"


def open_probe(on_sample: Callable[[bytes], None], victim: str = "auto", context: str = "auto",
               object_path: Path = DEFAULT_OBJECT, ring_bytes: int = DEFAULT_RING_BYTES,
               features: Optional[KernelFeatures] = None, task: str = "auto",
               extras: Extras = Extras()) -> Probe:
    """Load the best hook plan the kernel accepts; raise ProbeError saying why none worked."""
    L.route_messages_to_logging()
    features = features or detect_features()
    if not features.btf:
        raise ProbeError(f"{features.reasons['btf']}: the libbpf backend needs a kernel with BTF (5.5+, "
                         "CONFIG_DEBUG_INFO_BTF=y; most distributions ship it); without it use `--backend bcc`")
    missing = missing_capabilities()
    if missing:
        raise ProbeError(f"missing privileges ({', '.join(missing)}): {PRIVILEGE_HINT}")
    plans = candidate_plans(features, victim, context, task)
    if not plans:
        raise ProbeError(no_plan_reason(features, victim, context, task))
    failures = []
    refused: list[tuple[int, str]] = []  # libbpf's account of the plans the kernel refused
    for plan in plans:
        # a refused plan is an expected fallback: what libbpf said about it is detail (debug level),
        # unless no plan works at all
        L.captured = []
        try:
            probe = _with_extras(plan, on_sample, object_path, ring_bytes, extras)
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


def _with_extras(plan: HookPlan, on_sample: Callable[[bytes], None], object_path: Path, ring_bytes: int,
                 extras: Extras) -> Probe:
    """The plan with the most optional programs the kernel accepts; a plan that fails alone raises."""
    attempts = extras.attempts()
    best, fallbacks = attempts[0], attempts[1:-1]
    if not best:
        return Probe(plan, on_sample, object_path, ring_bytes)
    try:
        return Probe(plan, on_sample, object_path, ring_bytes, extras=best, killers=extras.killers)
    except ProbeError as e:
        if "stale" in str(e) or "missing" in str(e) or _refused_own_program(plan):
            raise  # the plan's own program was refused: loading it alone would fail again (one load less)
        why = e
    probe = Probe(plan, on_sample, object_path, ring_bytes)  # raises when the plan itself is refused
    log.info("optional programs %s refused with %s: %s", ",".join(best), plan.describe(), why)
    if fallbacks:
        # only one object may be attached at a time (two would deliver every kill twice): the
        # plan is known to work, so try the smaller sets in its place (a start-up moment unwatched)
        probe.close()
        for programs in fallbacks:
            try:
                return Probe(plan, on_sample, object_path, ring_bytes, extras=programs, killers=extras.killers)
            except ProbeError as e:
                log.info("optional programs %s refused: %s", ",".join(programs), e)
        probe = Probe(plan, on_sample, object_path, ring_bytes)
    log.warning("the kernel refused the hooks for user-space OOM killers and reclaim times: kills are "
                "reported, those records are not")
    return probe


def _refused_own_program(plan: HookPlan) -> bool:
    """libbpf said (in the messages captured for this plan) that one of the plan's programs failed to load."""
    own = set(PROGRAMS[plan.victim]) | set(PROGRAMS[plan.context]) | set(TASK_PROGRAMS[plan.task])
    return any(f"prog '{name}': failed to load" in text for _, text in (L.captured or ()) for name in own)


def _replay(messages: list[tuple[int, str]], level: Optional[int] = None) -> None:
    for msg_level, text in messages:
        L.log.log(level if level is not None else msg_level, "%s", text)
