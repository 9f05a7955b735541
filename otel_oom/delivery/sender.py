"""The send loop: the store's pending events, in order, to the collector; acknowledged only on success.

An event leaves the store only when the exporter says the collector accepted its batch, so an
outage, a slow collector or a SIGKILL of the agent loses nothing. Failures back off from 0.5 s to
30 s. During a burst the loop lets a batch fill (up to `BURST_WAIT_S`) so a storm costs one export
and one acknowledgement per `SEND_BATCH` events rather than per event; an isolated kill is sent at
once.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Protocol, Sequence

from ..model import OomKill

log = logging.getLogger("otel_oom.delivery")

SEND_BATCH = 100
BURST_WAIT_S = 0.05
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0


class Store(Protocol):
    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]: ...
    def ack(self, upto_seq: int) -> None: ...


class Exporter(Protocol):
    def send(self, kills: Sequence[OomKill]) -> bool: ...
    def shutdown(self) -> None: ...


class SpoolSender:
    """Runs `run()` on its own thread until `stopping` is set and nothing is pending (or it fails)."""

    def __init__(self, store: Store, exporter: Exporter, drops: Counter[str], stopping: threading.Event,
                 burst_in_progress: Callable[[], bool] = lambda: False,
                 spooled: Callable[[], int] = lambda: 0) -> None:
        self.store = store
        self.exporter = exporter
        self.drops = drops
        self.stopping = stopping
        self._burst_in_progress = burst_in_progress
        self._spooled = spooled
        self._wake = threading.Event()
        self.last_ok = time.monotonic()  # the last time nothing was waiting or the collector accepted

    def wake(self) -> None:
        """New events are in the store (or the agent is stopping): look now."""
        self._wake.set()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _fill_burst(self, have: int) -> list[tuple[int, bytes]]:
        target = self._spooled() + SEND_BATCH - have
        deadline = time.monotonic() + BURST_WAIT_S
        while (self._burst_in_progress() and self._spooled() < target
               and time.monotonic() < deadline and not self.stopping.is_set()):
            time.sleep(0.001)
        return self.store.pending(SEND_BATCH)

    def run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            batch = self.store.pending(SEND_BATCH)
            if not batch:
                self.last_ok = time.monotonic()
                if self.stopping.is_set():
                    return
                self._sleep(1.0)
                continue
            if len(batch) < SEND_BATCH and self._burst_in_progress() and not self.stopping.is_set():
                batch = self._fill_burst(len(batch))
            kills = []
            for _, payload in batch:
                try:
                    kills.append(OomKill.from_json(payload))
                except (ValueError, TypeError):
                    self.drops["spool_undecodable"] += 1
            if not kills or self.exporter.send(kills):
                self.store.ack(batch[-1][0])
                self.last_ok = time.monotonic()
                delay = RETRY_MIN_S
                continue
            if self.stopping.is_set():
                return
            log.warning("collector did not accept %d OOM event(s); keeping them and retrying in %.1f s",
                        len(kills), delay)
            self._sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def stuck_for(self) -> float:
        """Seconds since the collector last accepted anything while events were waiting."""
        return time.monotonic() - self.last_ok
