"""Ring-buffer samples built byte for byte as the BPF program writes them, and a sample source that
hands them to the agent: the test double that lets the whole pipeline run in-process without BPF.

`raw_event` fills the ctypes mirror of `struct oom_event` (held to the compiled object's BTF by
tests/test_layout.py), so what the agent decodes here is what it decodes from the kernel.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable

from otel_oom.kernel import wire as E
from otel_oom.kernel.source import HookPlan
from otel_oom.kernel.wire import RawEvent


def raw_event(chain, trigger_ids, **fields) -> bytes:
    """chain: [(id, name, usage_pages, limit_pages)] leaf first, root last."""
    r = RawEvent()
    r.version = E.OOM_EVENT_VERSION
    r.hook = 1
    r.flags = E.F_VICTIM_TASK | E.F_MM_SIZES | E.F_BOOT_CLOCK
    r.timestamp_ns = 123_456_789
    r.victim_tgid = r.victim_pid = 4242
    r.victim_ppid = 4000
    r.victim_uid = 1000
    r.victim_comm = b"leaky"
    r.trigger_tgid = r.trigger_pid = 4242
    r.trigger_comm = b"leaky"
    r.anon_rss, r.file_rss, r.shmem_rss, r.total_vm = 7000, 500, 12, 9000
    r.pgtables_bytes = 65536
    for i, (cid, name, usage, limit) in enumerate(chain):
        r.victim_memcg[i].id = cid
        r.victim_memcg[i].name = name
        r.victim_memcg[i].usage_pages = usage
        r.victim_memcg[i].limit_pages = limit
    r.victim_memcg_levels = len(chain)
    for i, cid in enumerate(trigger_ids):
        r.trigger_memcg_ids[i] = cid
    r.trigger_memcg_levels = len(trigger_ids)
    for k, v in fields.items():
        setattr(r, k, v)
    return bytes(r)


class ScriptedSource:
    """A test double of `kernel.source.SampleSource`: `push()` samples, the agent's poll delivers them.

    Named a double because it is one: no kernel is involved. `stats()` reports what a probe's
    kernel-side counters would, from `ringbuf_full` set by the test.
    """

    def __init__(self, on_sample: Callable[[bytes], None],
                 plan: HookPlan = HookPlan("tp_btf", "none")) -> None:
        self.plan = plan
        self._on_sample = on_sample
        self._pending: deque[bytes] = deque()
        self._cond = threading.Condition()
        self.ringbuf_full = 0
        self.closed = 0
        self.polls = 0

    def push(self, samples: Iterable[bytes]) -> None:
        with self._cond:
            self._pending.extend(samples)
            self._cond.notify_all()

    def poll(self, timeout_ms: int) -> int:
        self.polls += 1
        with self._cond:
            if not self._pending and timeout_ms > 0:
                self._cond.wait(timeout_ms / 1000)
            batch, self._pending = list(self._pending), deque()
        for raw in batch:
            self._on_sample(raw)
        return len(batch)

    def stats(self) -> dict[str, int]:
        return {"submitted": 0, "ringbuf_full": self.ringbuf_full, "decisions": 0}

    def close(self) -> None:
        self.closed += 1
