"""The seam between the kernel side and the rest of the agent: a source of kernel samples.

A sample is what one backend caught of one event, in the form that backend caught it:
- `bytes`: a ring-buffer sample of the BPF backends (`probe.Probe` with libbpf, `bcc.BccProbe`),
  a `struct oom_event` or `struct oom_reclaim_event` that `wire.py` / `reclaim_wire.py` decode;
- `LoggedKill`: a kill the kernel's own report told (`kmsg_source.KmsgSource`, the kmsg backend
  for nodes where no BPF program may be loaded), parsed from its lines by `reconcile.oom_report`.
The pipeline attributes both the same way (`pipeline.Pipeline.handle_samples`); neither pretends to
be the other. The agent only needs what `SampleSource` names, so its pipeline can run in-process
without BPF (tests use a test double that hands over encoded events). This module imports neither
libbpf nor ctypes, so importing it never needs the kernel side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Union

if TYPE_CHECKING:
    from ..reconcile.oom_report import LoggedKill

Sample = Union[bytes, "LoggedKill"]


@dataclass(frozen=True)
class HookPlan:
    """Which program runs on which hook: a victim hook, an optional context hook and, with the
    classic tracepoint on kernels whose mark_victim passes only the pid, an optional task hook;
    and which backend loads them (libbpf: the CO-RE object; bcc: compiled at run time). The kmsg
    backend loads nothing: its plan is victim "kmsg" (the kernel log), context "none"."""

    victim: str                        # "tp_btf" | "tracepoint" | "kmsg"
    context: str                       # "fentry" | "kprobe" | "none"
    kprobe_symbol: Optional[str] = None
    task: str = "none"                 # "fentry" | "kprobe" | "none": mark_oom_victim
    task_symbol: Optional[str] = None  # the kallsyms name of mark_oom_victim, for the kprobe
    backend: str = "libbpf"            # "libbpf" | "bcc" | "kmsg"

    def describe(self) -> str:
        if self.backend == "kmsg":
            return "the kernel log /dev/kmsg (backend=kmsg, no BPF)"
        ctx = self.context if self.context != "kprobe" else f"kprobe:{self.kprobe_symbol}"
        text = f"victim={self.victim} context={ctx}"
        if self.victim == "tracepoint":
            text += " task=" + (self.task if self.task != "kprobe" else f"kprobe:{self.task_symbol}")
        return text if self.backend == "libbpf" else f"{text} backend={self.backend}"


class SampleSource(Protocol):
    """Hands samples (`Sample`) to the callback given when it was opened, from `poll()` only."""

    plan: HookPlan

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms, deliver the samples that arrived; return how many."""
        ...

    def stats(self) -> dict[str, int]:
        """Kernel-side counters ("submitted", "ringbuf_full", "decisions"; the kmsg backend's
        "kmsg_overrun", "kmsg_malformed"); valid after close too."""
        ...

    def close(self) -> None:
        """Detach and free; harmless to call twice."""
        ...


# opens a source that calls on_sample(sample) for each sample: (on_sample) -> SampleSource
SourceFactory = Callable[[Callable[[Sample], None]], SampleSource]
