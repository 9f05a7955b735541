"""Which backend loads the hooks: libbpf (the CO-RE object, needs kernel BTF) or bcc (compiled at
start against the kernel headers, for kernels without BTF). Both give a `SampleSource` of the same
`struct oom_event` samples, so nothing after this module knows which one ran.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

from .features import VMLINUX_BTF
from .source import SampleSource

if TYPE_CHECKING:
    from .probe import Extras

log = logging.getLogger("otel_oom.kernel")


def choose_backend(requested: str = "auto") -> tuple[str, str]:
    """(backend, why): auto is libbpf when the kernel has BTF, else bcc."""
    if requested != "auto":
        return requested, "asked for"
    if os.path.exists(VMLINUX_BTF):
        return "libbpf", f"{VMLINUX_BTF} present: CO-RE object"
    return "bcc", f"no {VMLINUX_BTF}: CO-RE cannot relocate, compiling against the kernel headers"


def open_source(on_sample: Callable[[bytes], None], backend: str = "auto", victim: str = "auto",
                context: str = "auto", task: str = "auto", ring_bytes: int = 4 << 20,
                bcc_buffer: str = "auto", extras: "Extras | None" = None) -> SampleSource:
    """`extras`: the optional programs around the kill (both backends build them from the same
    source, bpf/kill_logic.h)."""
    chosen, _why = choose_backend(backend)
    if chosen == "bcc":
        from .bcc import open_bcc_probe

        return open_bcc_probe(on_sample, victim, context, task, bcc_buffer, ring_bytes, extras=extras)
    from .probe import Extras, open_probe

    return open_probe(on_sample, victim, context, ring_bytes=ring_bytes, task=task, extras=extras or Extras())
