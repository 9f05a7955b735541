"""Which backend reports the kills: libbpf (the CO-RE object, needs kernel BTF), bcc (compiled at
start against the kernel headers, for kernels without BTF), or kmsg (the kernel's own report in
/dev/kmsg, for nodes where no BPF program may be loaded). The BPF backends give a `SampleSource` of
the same `struct oom_event` samples; the kmsg backend gives `LoggedKill`s, attributed the same way.

`auto` is libbpf with BTF, else bcc; when that cannot load (bpf() refused by seccomp or an LSM,
missing CAP_BPF/CAP_PERFMON, no BTF and no BCC, ...) it falls back to kmsg with one warning that
says why and what this mode cannot see.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import AgentError
from .features import VMLINUX_BTF
from .source import Sample, SampleSource

if TYPE_CHECKING:
    from ..cgroupfs.hierarchy import MemoryHierarchy
    from .probe import Extras

log = logging.getLogger("otel_oom.kernel")

# what the kmsg backend cannot see, in the words of docs/coverage.md
KMSG_BLIND_SPOTS = ("kills by user-space OOM killers, reclaim times, tasks only marked while exiting, the OOM "
                    "decision's badness and domain size, group members the log does not name; the trigger "
                    "and the OOMing memcg when the kernel rate-limited the report's header; times are "
                    "printk's clock")


@dataclass(frozen=True)
class KernelLog:
    """What the kmsg backend reads: the log, where the reconciler's start-up reading of it ended
    (`after`: kills up to there are recovery's), and the kill counters for kills without a summary
    line (/proc/vmstat under `proc_root`, every memory cgroup of `hierarchy`)."""

    path: str = "/dev/kmsg"
    after: Optional[int] = None
    hierarchy: Optional["MemoryHierarchy"] = None
    proc_root: str = "/proc"


def choose_backend(requested: str = "auto") -> tuple[str, str]:
    """(backend, why): auto is libbpf when the kernel has BTF, else bcc (kmsg only if they fail to load)."""
    if requested != "auto":
        return requested, "asked for"
    if os.path.exists(VMLINUX_BTF):
        return "libbpf", f"{VMLINUX_BTF} present: CO-RE object"
    return "bcc", f"no {VMLINUX_BTF}: CO-RE cannot relocate, compiling against the kernel headers"


def open_source(on_sample: Callable[[Sample], None], backend: str = "auto", victim: str = "auto",
                context: str = "auto", task: str = "auto", ring_bytes: int = 4 << 20,
                bcc_buffer: str = "auto", extras: "Extras | None" = None,
                kernel_log: KernelLog = KernelLog()) -> SampleSource:
    """`extras`: the optional programs around the kill (both BPF backends build them from the same
    source, bpf/kill_logic.h); `kernel_log`: what the kmsg backend reads."""
    chosen, _why = choose_backend(backend)
    if chosen == "kmsg":
        if extras is not None and (extras.signals or extras.reclaim):
            log.info("the kmsg backend reports the kills of the kernel's OOM killer; not seen in this mode: %s",
                     KMSG_BLIND_SPOTS)
        return _open_kmsg(on_sample, kernel_log)
    try:
        return _open_bpf(on_sample, chosen, victim, context, task, ring_bytes, bcc_buffer, extras)
    except AgentError as e:
        if backend != "auto":
            raise
        bpf_error = e
    try:
        source = _open_kmsg(on_sample, kernel_log)
    except AgentError as e:
        raise AgentError(f"{bpf_error}; and the kernel-log backend cannot be used either: {e}") from None
    log.warning("eBPF cannot be used on this node (%s): following the kernel log %s instead (backend kmsg; "
                "--backend kmsg chooses it without this warning). Every kill the kernel's OOM killer prints is "
                "reported; not seen in this mode: %s (docs/coverage.md)", bpf_error, kernel_log.path,
                KMSG_BLIND_SPOTS)
    return source


def _open_bpf(on_sample: Callable[[Sample], None], chosen: str, victim: str, context: str, task: str,
              ring_bytes: int, bcc_buffer: str, extras: "Extras | None") -> SampleSource:
    if chosen == "bcc":
        from .bcc import open_bcc_probe

        return open_bcc_probe(on_sample, victim, context, task, bcc_buffer, ring_bytes, extras=extras)
    from .probe import Extras, open_probe

    return open_probe(on_sample, victim, context, ring_bytes=ring_bytes, task=task, extras=extras or Extras())


def _open_kmsg(on_sample: Callable[[Sample], None], kernel_log: KernelLog) -> SampleSource:
    from .kill_counters import for_hierarchy
    from .kmsg_source import open_kmsg_source

    try:
        return open_kmsg_source(on_sample, kernel_log.path, kernel_log.after,
                                for_hierarchy(kernel_log.hierarchy, kernel_log.proc_root))
    except OSError as e:  # reconcile.kmsg.KmsgError: its message says what to do
        raise AgentError(f"{e} (the kmsg backend follows the kernel log; mount /dev/kmsg into the container "
                         "and grant CAP_SYSLOG)") from None
