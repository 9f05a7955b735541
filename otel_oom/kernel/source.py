"""The seam between the kernel side and the rest of the agent: a source of ring-buffer samples.

`probe.Probe` is the real one. The agent only needs what `SampleSource` names, so its pipeline can
run in-process without BPF (tests use a test double that hands over encoded events). This module
imports neither libbpf nor ctypes, so importing it never needs the kernel side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol


@dataclass(frozen=True)
class HookPlan:
    """Which program runs on which hook: a victim hook, an optional context hook and, with the
    classic tracepoint on kernels whose mark_victim passes only the pid, an optional task hook;
    and which backend loads them (libbpf: the CO-RE object; bcc: compiled at run time)."""

    victim: str                        # "tp_btf" | "tracepoint"
    context: str                       # "fentry" | "kprobe" | "none"
    kprobe_symbol: Optional[str] = None
    task: str = "none"                 # "fentry" | "kprobe" | "none": mark_oom_victim
    task_symbol: Optional[str] = None  # the kallsyms name of mark_oom_victim, for the kprobe
    backend: str = "libbpf"            # "libbpf" | "bcc"

    def describe(self) -> str:
        ctx = self.context if self.context != "kprobe" else f"kprobe:{self.kprobe_symbol}"
        text = f"victim={self.victim} context={ctx}"
        if self.victim == "tracepoint":
            text += " task=" + (self.task if self.task != "kprobe" else f"kprobe:{self.task_symbol}")
        return text if self.backend == "libbpf" else f"{text} backend={self.backend}"


class SampleSource(Protocol):
    """Hands raw event samples to the callback given when it was opened, from `poll()` only."""

    plan: HookPlan

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms, deliver the samples that arrived; return how many."""
        ...

    def stats(self) -> dict[str, int]:
        """Kernel-side counters ("submitted", "ringbuf_full", "decisions"); valid after close too."""
        ...

    def close(self) -> None:
        """Detach and free; harmless to call twice."""
        ...


# opens a source that calls on_sample(bytes) for each sample: (on_sample) -> SampleSource
SourceFactory = Callable[[Callable[[bytes], None]], SampleSource]
