"""The worker thread: what the poll and the watchers queued, through the pipeline, in order.

The queue (`sample_queue.ByteBoundedQueue`) holds kernel samples (ring-buffer bytes, or the kmsg
backend's `LoggedKill`s), the pressure source's events (around the kill), `Settle` markers from the
reconciliation and, at the end, `None`. Samples queued behind one another go to the pipeline
together (up to `BURST_MAX`: one spool write for all of them, group commit); about once a second
the pipeline's `tick` runs (what the trackers around the kill decide with time).
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Optional, Union

from .reconcile.oom_report import LoggedKill
from .sample_queue import ByteBoundedQueue, Empty

if TYPE_CHECKING:
    from .kernel.source import Sample
    from .pipeline import Pipeline
    from .pressure.events import Submitted

BURST_MAX = 64  # samples the worker takes at once: stored in one spool write (group commit)
TICK_S = 1.0    # the worker's tick: reclaim timeouts, episodes that ran too long


class Settle:
    """The kernel's kill count as read one reconcile interval earlier, queued by the main loop right
    after its latest reading. Every sample the probe caught of a kill counted by then was polled
    before that latest reading, so it is ahead of this marker in the queue: when the worker reaches
    the marker, a kill of that count it has not handled was never caught (see recovery.settle)."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


Item = Optional[Union[bytes, LoggedKill, "Submitted", Settle]]



class Worker:
    """`run()` is the thread body; `stop()` queues the end behind everything already queued."""

    def __init__(self, samples: ByteBoundedQueue[Item], pipeline: "Pipeline") -> None:
        self.samples = samples
        self.pipeline = pipeline

    def stop(self) -> None:
        self.samples.put(None)

    def run(self) -> None:
        samples, pipeline = self.samples, self.pipeline
        next_tick = time.monotonic() + TICK_S
        while True:
            try:
                item = samples.get(timeout=max(0.0, next_tick - time.monotonic()))
            except Empty:
                item = b""
            # a burst: the samples queued behind this one go to the store in one write (group commit)
            burst: list[Sample] = []
            while (isinstance(item, LoggedKill) or (isinstance(item, bytes) and item)) and len(burst) < BURST_MAX:
                burst.append(item)
                try:
                    item = samples.get_nowait()
                except Empty:
                    item = b""
            if burst:
                pipeline.handle_samples(burst)
            if item is None:
                pipeline.close()  # the open episodes' spans, before the sender's last attempt
                return
            if isinstance(item, Settle):
                pipeline.settle(item.count)
            elif isinstance(item, LoggedKill) or (isinstance(item, bytes) and item):
                pipeline.handle_samples([item])  # the one after a full burst
            elif not isinstance(item, bytes):
                pipeline.handle_record(item)
            if time.monotonic() >= next_tick:
                pipeline.tick()
                next_tick = time.monotonic() + TICK_S


def queued_victims(samples: ByteBoundedQueue[Item]) -> set[int]:
    """Victim pids (tgid and tid) of the samples waiting in the queue."""
    from .kernel.wire import DecodeError, decode

    pids: set[int] = set()
    for raw in samples.snapshot():
        if not isinstance(raw, bytes):
            continue  # an event of the pressure source (around the kill), a marker, or the stop
        try:
            ev = decode(raw, os.sysconf("SC_PAGE_SIZE"))
        except DecodeError:
            continue
        if ev is not None:
            pids.update(p for p in (ev.victim_tgid, ev.victim_pid) if p)
    return pids
