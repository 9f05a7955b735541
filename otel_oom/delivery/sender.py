"""The send loop: the store's pending events, in order, to the collector; acknowledged only on success.

An event leaves the store only when the collector accepted it, or refused it as such: an outage, a
slow collector or a SIGKILL of the agent loses nothing. What the collector says decides the rest:

- accepted: acknowledged. With partial success (`rejected_log_records` > 0) the rejected count is
  logged and counted as `collector_partial` (the answer does not say which records they were).
- rejected (gRPC INVALID_ARGUMENT, HTTP 400) or too large (HTTP 413): the batch is split in halves
  and each half sent again, down to single events; a single event still refused is parked
  (`parked.py`), acknowledged and counted as `collector_rejected`, so it never blocks later kills.
- anything else: kept, retried with backoff from 0.5 s to 30 s (or the collector's Retry-After).

During a burst the loop lets a batch fill (up to `BURST_WAIT_S`, while kills keep being stored) so a
storm costs one export and one acknowledgement per `SEND_BATCH` events rather than per event; an
isolated kill is sent at once (at most `BURST_IDLE_S` later).
Stopping: once `stopping` is set and `deadline` passed, no new attempt starts, and each attempt's
timeout is cut to the time left.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from ..schema.records import OomEpisode, Record, record_from_json
from ..text import for_terminal
from .parked import ParkedEvents

log = logging.getLogger("otel_oom.delivery")

SEND_BATCH = 100
BURST_WAIT_S = 0.05   # longest wait for a burst to fill a batch
BURST_IDLE_S = 0.002  # ... as long as a kill was stored within this
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0


class Store(Protocol):
    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]: ...
    def ack(self, upto_seq: int) -> None: ...


class Result(Protocol):
    @property
    def outcome(self) -> str: ...   # "accepted" | "retry" | "rejected" | "too_large"
    @property
    def rejected(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def retry_after(self) -> Optional[float]: ...


class Exporter(Protocol):
    def send(self, kills: Sequence[Record], timeout_s: Optional[float] = None) -> Result: ...
    def shutdown(self) -> None: ...


class SpanExporter(Protocol):
    """--traces: the OOM episodes' spans (otlp/traces.py); True when the collector took them."""

    def send(self, episodes: Sequence[OomEpisode]) -> bool: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class _SpansNotTaken:
    outcome: str = "retry"
    rejected: int = 0
    message: str = "the trace export of the batch's episode spans failed"
    retry_after: Optional[float] = None


class SpoolSender:
    """Runs `run()` on its own thread until `stopping` is set and nothing is pending (or out of time)."""

    def __init__(self, store: Store, exporter: Exporter, drops: Counter[str], stopping: threading.Event,
                 burst_in_progress: Callable[[], bool] = lambda: False,
                 spooled: Callable[[], int] = lambda: 0, parked: Optional[ParkedEvents] = None,
                 commit_lock: Optional[threading.Lock] = None, span_exporter: Optional[SpanExporter] = None) -> None:
        self.store = store
        self.exporter = exporter
        self.drops = drops
        self.stopping = stopping
        self.span_exporter = span_exporter  # --traces: the OOM episodes' spans
        self.parked = parked or ParkedEvents(None, 0)
        # the pipeline holds it while it stores a kill and accounts for it (pipeline.handle_kill)
        self._commit_lock = commit_lock or threading.Lock()
        self.deadline: Optional[float] = None  # monotonic time by which a stopping sender gives up
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
        spooled = self._spooled()
        target = spooled + SEND_BATCH - have
        now = time.monotonic()
        deadline, moved = now + BURST_WAIT_S, now
        # a burst is in progress while kills keep being stored: the queue may also hold samples that
        # are no kills (a victim's reclaim events follow its kill), which must not hold a lone kill back
        while (self._burst_in_progress() and spooled < target and now < deadline and now - moved < BURST_IDLE_S
               and not self.stopping.is_set()):
            time.sleep(0.0005)
            now, latest = time.monotonic(), self._spooled()
            if latest != spooled:
                spooled, moved = latest, now
        return self._pending()

    def _pending(self) -> list[tuple[int, bytes]]:
        with self._commit_lock:
            return self.store.pending(SEND_BATCH)

    def _time_left(self) -> Optional[float]:
        if not self.stopping.is_set() or self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            left = self._time_left()
            if left is not None and left <= 0:
                return
            batch = self._pending()
            if not batch:
                self.last_ok = time.monotonic()
                if self.stopping.is_set():
                    return
                self._sleep(1.0)
                continue
            if len(batch) < SEND_BATCH and self._burst_in_progress() and not self.stopping.is_set():
                batch = self._fill_burst(len(batch))
            failed = self._deliver(batch)
            if failed is None:
                self.last_ok = time.monotonic()
                delay = RETRY_MIN_S
                continue
            if self.stopping.is_set():
                return
            wait = delay if failed.retry_after is None else min(RETRY_MAX_S, max(failed.retry_after, RETRY_MIN_S))
            log.warning("collector did not accept %d OOM event(s) (%s); keeping them and retrying in %.1f s",
                        len(batch), for_terminal(failed.message[:200]), wait)
            self._sleep(wait)
            delay = min(delay * 2, RETRY_MAX_S)

    def _deliver(self, batch: list[tuple[int, bytes]]) -> Optional[Result]:
        """Send `batch` (split as the collector asks); ack what was settled. The failure that stopped it, or None."""
        decoded: list[tuple[int, Record, bytes]] = []
        undecodable: list[int] = []
        spans: list[OomEpisode] = []
        for seq, payload in batch:
            try:
                record = record_from_json(payload)
            except (ValueError, TypeError):
                undecodable.append(seq)
                continue
            if isinstance(record, OomEpisode):
                spans.append(record)
            else:
                decoded.append((seq, record, payload))
        # the batch's episode spans first: acknowledging the log records after them acknowledges them too
        if spans and self.span_exporter is None:
            self.drops["span_without_traces"] += len(spans)  # spooled with --traces, replayed without
        elif spans and not self.span_exporter.send(spans):  # type: ignore[union-attr]
            return _SpansNotTaken()

        def ack(upto: int) -> None:
            # settled in order: acknowledge as we go, so a retry starts after what is done
            lost = [s for s in undecodable if s <= upto]
            if lost:
                self.drops["spool_undecodable"] += len(lost)
                del undecodable[:len(lost)]
            self.store.ack(upto)

        work = [decoded] if decoded else []
        while work:
            part = work.pop(0)
            left = self._time_left()
            if left is not None and left <= 0:
                return None  # out of time while stopping: the rest stays in the spool
            result = self.exporter.send([k for _, k, _ in part], left)
            if result.outcome == "accepted":
                if result.rejected:
                    log.error("collector accepted %d OOM event(s) but rejected %d of them (%s); counted as "
                              "collector_partial (events %s .. %s)", len(part), result.rejected,
                              for_terminal(result.message[:200]) or "no reason given",
                              part[0][1].event_id, part[-1][1].event_id)
                    self.drops["collector_partial"] += result.rejected
            elif result.outcome in ("rejected", "too_large") and len(part) > 1:
                half = len(part) // 2
                work[0:0] = [part[:half], part[half:]]
                continue
            elif result.outcome in ("rejected", "too_large"):
                _, kill, payload = part[0]
                self.drops["collector_rejected"] += 1
                kept = self.parked.park(payload, kill.event_id, result.message)
                log.error("collector refused OOM event %s for good (%s); %s, counted as collector_rejected",
                          kill.event_id, for_terminal(result.message[:200]),
                          f"parked in {self.parked.path}" if kept else "not kept")
            else:
                return result
            ack(part[-1][0])
        ack(batch[-1][0])
        return None

    def stuck_for(self) -> float:
        """Seconds since the collector last accepted anything while events were waiting."""
        return time.monotonic() - self.last_ok
