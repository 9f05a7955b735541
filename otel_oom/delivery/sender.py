"""The send loop: the store's pending records, in order, to the collector; acknowledged only once settled.

A record leaves the store only when the collector accepted it, or refused it as such: an outage, a
slow collector or a SIGKILL of the agent loses nothing. Every stored record is a log record or, with
--traces, an OOM episode's span (`otlp/spooled.py`); a batch's spans go in one request to the trace
service, then its log records in one to the logs service, and for both what the collector says
decides the rest, the same way:

- accepted: settled. With partial success (`rejected_log_records` / `rejected_spans` > 0) the
  rejected count is logged and counted as `collector_partial` (the answer does not say which).
- rejected (gRPC INVALID_ARGUMENT, HTTP 400) or too large (HTTP 413): that request's records are
  split in halves and each half sent again, down to single records; a single one still refused is
  parked (`parked.py`), settled and counted as `collector_rejected`, so it never blocks later kills.
- anything else: the attempt stops there; what was settled is acknowledged, the rest retried with
  backoff from 0.5 s to 30 s (or the collector's Retry-After). Nothing retries inside an attempt.

The store acknowledges by sequence number ("everything up to here"), so the spans go first and are
acknowledged only together with the log records stored before them; the log records are then
acknowledged as each request is settled. A retry after the spans were accepted sends them again
(the collector may see a span twice; its ids are the same), never the other way round.

During a burst (several records waiting and more samples queued for the worker) the loop lets a
batch fill (up to `BURST_WAIT_S`, while kills keep being stored, each within `BURST_IDLE_S` of the
last) so a storm costs one export and one acknowledgement per `SEND_BATCH` records rather than per
record; a lone record is sent as soon as the sender wakes.
Stopping: once `stopping` is set and `deadline` passed, no new attempt starts, and each attempt's
timeout is cut to the time left.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from ..otlp.spooled import LOGS, TRACES, SpoolCodec, Spooled
from ..text import for_terminal
from .parked import ParkedEvents

log = logging.getLogger("otel_oom.delivery")

SEND_BATCH = 100
BURST_WAIT_S = 0.05   # longest wait for a burst to fill a batch
BURST_IDLE_S = 0.002  # ... as long as a kill was stored within this
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
SIGNALS = (TRACES, LOGS)  # the order a batch is sent in (see the module docstring)
_NOUN = {LOGS: "OOM event(s)", TRACES: "OOM episode span(s)"}


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
    """`otlp.export.OtlpExport`: one attempt per call, for "logs" or "traces"."""

    def carries(self, signal: str) -> bool: ...
    def send(self, signal: str, messages: Sequence[bytes], timeout_s: Optional[float] = None) -> Result: ...
    def readable(self, signal: str, message: bytes) -> dict[str, Any]: ...
    def shutdown(self) -> None: ...


class Codec(Protocol):
    def decode(self, payload: bytes) -> Spooled: ...


@dataclass(frozen=True)
class _OutOfTime:
    """What stops a delivery once stopping and past the deadline: the rest stays in the store."""
    outcome: str = "out_of_time"
    rejected: int = 0
    message: str = "out of time while stopping"
    retry_after: Optional[float] = None


_OUT_OF_TIME = _OutOfTime()


def _ack_below(ack: Callable[[int], None], ceiling: int, upto: int) -> None:
    ack(min(upto, ceiling))


class SpoolSender:
    """Runs `run()` on its own thread until `stopping` is set and nothing is pending (or out of time)."""

    def __init__(self, store: Store, exporter: Exporter, drops: Counter[str], stopping: threading.Event,
                 burst_in_progress: Callable[[], bool] = lambda: False,
                 spooled: Callable[[], int] = lambda: 0, parked: Optional[ParkedEvents] = None,
                 codec: Optional[Codec] = None) -> None:
        self.store = store
        self.exporter = exporter
        self.drops = drops
        self.stopping = stopping
        self.codec = codec or SpoolCodec()  # reads what the pipeline stored (and what older agents did)
        self.parked = parked or ParkedEvents(None, 0)
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
        """While kills keep being stored, let the batch fill: up to SEND_BATCH records or BURST_WAIT_S,
        and only as long as the next one is stored within BURST_IDLE_S (the store wakes this thread)."""
        spooled = self._spooled()
        target = spooled + SEND_BATCH - have
        deadline = time.monotonic() + BURST_WAIT_S
        while spooled < target and not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or not self._wake.wait(min(BURST_IDLE_S, left)):
                break
            self._wake.clear()
            spooled = self._spooled()
        return self._pending()

    def _pending(self) -> list[tuple[int, bytes]]:
        # a kill is stored and accounted in one write (the ledger): the store may be read at any time
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
            # a lone record goes at once; several waiting, with more samples queued, are a burst
            if 1 < len(batch) < SEND_BATCH and self._burst_in_progress() and not self.stopping.is_set():
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
        by_signal: dict[str, list[tuple[int, Spooled]]] = {signal: [] for signal in SIGNALS}
        undecodable: list[int] = []
        for seq, payload in batch:
            try:
                item = self.codec.decode(payload)
            except (ValueError, TypeError):
                undecodable.append(seq)
                continue
            by_signal[item.signal].append((seq, item))
        if by_signal[TRACES] and not self.exporter.carries(TRACES):
            self.drops["span_without_traces"] += len(by_signal[TRACES])  # spooled with --traces, replayed without
            by_signal[TRACES] = []
        acked = [0]

        def ack(upto: int) -> None:
            # settled in order: acknowledge as we go, so a retry starts after what is done
            if upto <= acked[0]:
                return
            lost = [s for s in undecodable if s <= upto]
            if lost:
                self.drops["spool_undecodable"] += len(lost)
                del undecodable[:len(lost)]
            self.store.ack(upto)
            acked[0] = upto

        for i, signal in enumerate(SIGNALS):
            # while this signal is sent, nothing from the first record of a later signal on may be acknowledged
            later = [seq for other in SIGNALS[i + 1:] for seq, _ in by_signal[other][:1]]
            ceiling = min(later) - 1 if later else batch[-1][0]
            failed = self._send(signal, by_signal[signal], functools.partial(_ack_below, ack, ceiling))
            if failed is _OUT_OF_TIME:
                return None
            if failed is not None:
                return failed
        ack(batch[-1][0])
        return None

    def _send(self, signal: str, items: list[tuple[int, Spooled]], ack: Callable[[int], None]) -> Optional[Result]:
        """Deliver one signal's records of a batch: None once all are settled, else what stopped it."""
        work = [items] if items else []
        noun = _NOUN[signal]
        while work:
            part = work.pop(0)
            left = self._time_left()
            if left is not None and left <= 0:
                return _OUT_OF_TIME
            result = self.exporter.send(signal, [item.message for _, item in part], left)
            if result.outcome == "accepted":
                if result.rejected:
                    log.error("collector accepted %d %s but rejected %d of them (%s); counted as "
                              "collector_partial (%s .. %s)", len(part), noun, result.rejected,
                              for_terminal(result.message[:200]) or "no reason given",
                              self._record_id(signal, part[0][1]), self._record_id(signal, part[-1][1]))
                    self.drops["collector_partial"] += result.rejected
            elif result.outcome in ("rejected", "too_large") and len(part) > 1:
                half = len(part) // 2
                work[0:0] = [part[:half], part[half:]]
                continue
            elif result.outcome in ("rejected", "too_large"):
                _, item = part[0]
                self.drops["collector_rejected"] += 1
                record = self.exporter.readable(signal, item.message)
                rid = self._record_id(signal, item, record)
                kept = self.parked.park(record, rid, result.message, signal)
                log.error("collector refused %s %s for good (%s); %s, counted as collector_rejected",
                          noun.replace("(s)", ""), rid, for_terminal(result.message[:200]),
                          f"parked in {self.parked.path}" if kept else "not kept")
            else:
                return result
            ack(part[-1][0])
        return None

    def _record_id(self, signal: str, item: Spooled, readable: Optional[dict[str, Any]] = None) -> str:
        """A record's id for a log line: oom.event.id (kills), oom.record.id (the others), trace:span (spans)."""
        r = readable if readable is not None else self.exporter.readable(signal, item.message)
        if signal == TRACES:
            return f"{r.get('trace_id', '?')}:{r.get('span_id', '?')}"
        attrs = r.get("attributes") or {}
        return str(attrs.get("oom.event.id") or attrs.get("oom.record.id") or "?")

    def stuck_for(self) -> float:
        """Seconds since the collector last accepted anything while events were waiting."""
        return time.monotonic() - self.last_ok

    def health(self) -> tuple[bool, str]:
        """Its service's health (/readyz): failing once nothing was accepted for five retry periods."""
        stuck = self.stuck_for()
        if stuck > 5 * RETRY_MAX_S:
            return False, f"delivery stuck: nothing accepted by the collector for {stuck:.0f} s"
        return True, "ok"

    def stop_by(self, deadline: float) -> None:
        """No new attempt starts after `deadline` (monotonic), and each one's timeout is cut to the time left."""
        self.deadline = deadline
        self.wake()
