"""Where handled OOM events wait for the collector: the on-disk spool, or memory.

`DeliveryStore` puts events in the spool and, only if the spool cannot write (disk full, read-only,
I/O error), keeps them in a bounded memory queue instead, so a broken disk degrades durability
without losing the kill. Both share the spool's interface: append / pending / ack. Order is kept:
while events wait in memory, new ones join them there, and the sender moves them back into the
spool, oldest first, as soon as it can write again (`rescue_memory`, also tried at shutdown).

The ledger (see `spool.py`) travels the same way: every event carries the ledger's count once it
is stored, and a count that moves without an event (`account`) waits in memory behind the events
before it. So the count on disk never covers a kill that is only in memory: what a stop loses from
memory, the next start finds missing from the kernel's count and recovers from the kernel log,
exactly the kernel's own kills among them. A count reaches the disk when its event does, or when
the collector accepted the events before it straight from memory.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from typing import Mapping, NamedTuple, Optional, Protocol, Sequence

from ..config import RunConfig
from ..errors import AgentError
from .spool import Ledger, Spool, SpoolError

log = logging.getLogger("otel_oom.store")

MEMORY_MAX_EVENTS = 10000


class Store(Protocol):
    """What the pipeline (append, account) and the sender (pending, ack) need; `dropped` counts by reason."""

    @property
    def dropped(self) -> Mapping[str, int]: ...
    def append(self, payload: bytes) -> int: ...
    def append_many(self, payloads: Sequence[bytes], accounted: Optional[Sequence[Optional[int]]] = None) -> list[int]: ...
    def account(self, accounted: int, durable: bool = False) -> bool: ...
    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]: ...
    def ack(self, upto_seq: int) -> None: ...
    def in_memory(self) -> int: ...
    def report_undelivered(self) -> int: ...
    def close(self) -> None: ...


class _Item(NamedTuple):
    seq: int
    payload: Optional[bytes]   # None: a ledger count that moved without an event
    accounted: Optional[int]   # the ledger's count once this item is stored (None: unchanged)
    kernel_kill: bool          # the count moved with this event: it is a kernel OOM kill


class MemoryStore:
    """Spool-shaped queue in memory: lost on restart, bounded, drops counted as `memory_full`."""

    def __init__(self, max_events: int = MEMORY_MAX_EVENTS) -> None:
        self._items: deque[_Item] = deque()
        self._next = 1
        self._max = max_events
        self._lock = threading.Lock()
        self._dropped: Counter[str] = Counter()
        self._last_count: Optional[int] = None  # the ledger count of the newest item

    @property
    def dropped(self) -> Mapping[str, int]:
        return self._dropped

    def append(self, payload: Optional[bytes], accounted: Optional[int] = None) -> int:
        with self._lock:
            if payload is not None and self._events() >= self._max:
                self._drop_oldest_event()
            moved = accounted is not None and (self._last_count is None or accounted > self._last_count)
            if accounted is not None:
                self._last_count = accounted
            seq, self._next = self._next, self._next + 1
            self._items.append(_Item(seq, payload, accounted, moved and payload is not None))
            return seq

    def _events(self) -> int:
        return sum(1 for item in self._items if item.payload is not None)

    def _drop_oldest_event(self) -> None:
        for i, item in enumerate(self._items):
            if item.payload is not None:
                # its ledger count stays with the queue (the kill is counted, as memory_full)
                self._items[i] = item._replace(payload=None, kernel_kill=False)
                break
        self._dropped["memory_full"] += 1
        log.error("in-memory event queue full: dropped the oldest OOM event (%d so far)", self._dropped["memory_full"])

    def append_many(self, payloads: Sequence[bytes], accounted: Optional[Sequence[Optional[int]]] = None) -> list[int]:
        counts = list(accounted) if accounted is not None else [None] * len(payloads)
        return [self.append(p, a) for p, a in zip(payloads, counts, strict=True)]

    def account(self, accounted: int, durable: bool = False) -> bool:
        self.append(None, accounted)
        return False

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        with self._lock:
            return [(i.seq, i.payload) for i in self._items if i.payload is not None][:limit]

    def peek(self) -> Optional[_Item]:
        with self._lock:
            return self._items[0] if self._items else None

    def drop_first(self, seq: int) -> None:
        with self._lock:
            if self._items and self._items[0].seq == seq:
                self._items.popleft()

    def ack(self, upto_seq: int) -> None:
        self.settle(upto_seq)

    def settle(self, upto_seq: int) -> Optional[int]:
        """Drop what is settled; the ledger count it carried (None if none), for the spool to keep."""
        count = None
        with self._lock:
            while self._items and (self._items[0].seq <= upto_seq or self._items[0].payload is None):
                item = self._items.popleft()
                if item.accounted is not None:
                    count = item.accounted
        return count

    def in_memory(self) -> int:
        """Events held here that a stop would lose."""
        with self._lock:
            return self._events()

    def report_undelivered(self) -> int:
        """At shutdown: log what is lost with the memory; how many events."""
        lost = self.in_memory()
        if lost:
            log.error("stopping with %d OOM event(s) held in memory only (no spool): they are lost here "
                      "(counted as shutdown_in_memory)", lost)
        return lost

    def kernel_kills(self) -> int:
        """The events held here that are kernel OOM kills (the next start recovers those)."""
        with self._lock:
            return sum(1 for item in self._items if item.kernel_kill)

    def close(self) -> None:
        pass


class DeliveryStore:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.memory = MemoryStore()
        self._source: Spool | MemoryStore = spool
        self.spool_write_errors = 0
        self._read_problem: "str | None" = None  # why the spool cannot be read now

    @property
    def problem(self) -> "str | None":
        """What is wrong with the spool now, for /readyz (None: nothing)."""
        return self._read_problem or self.spool.problem

    @property
    def dropped(self) -> Mapping[str, int]:
        counts = Counter(self.spool.dropped)
        counts.update(self.memory.dropped)
        return dict(counts)

    @property
    def ledger(self) -> Ledger:
        return self.spool.ledger

    def in_memory(self) -> int:
        return self.memory.in_memory()

    def next_seq(self) -> int:
        """The spool's next sequence number: it moves past every event written to the spool."""
        return self.spool.next_seq

    def append(self, payload: bytes) -> int:
        return self.append_many([payload])[0]

    def append_many(self, payloads: Sequence[bytes], accounted: Optional[Sequence[Optional[int]]] = None) -> list[int]:
        """A burst in one spool write (group commit); in memory, in order, if the spool cannot take it."""
        counts = list(accounted) if accounted is not None else [None] * len(payloads)
        done: list[int] = []
        if not self.memory.peek():
            try:
                return self.spool.append_many(payloads, counts)
            except SpoolError as e:
                done = list(e.written)  # the first ones may be on disk already
                self.spool_write_errors += 1
                log.error("%s; keeping the event in memory until the spool or the collector takes it", e)
        else:  # in order: behind the older ones, which go back to the spool first
            log.warning("spool still unwritable: keeping the event in memory behind %d older one(s) until the "
                        "spool or the collector takes it", self.memory.in_memory())
        rest = len(done)
        return done + self.memory.append_many(payloads[rest:], counts[rest:])

    def account(self, accounted: int, durable: bool = False) -> bool:
        """The ledger's count moved without an event: into the spool's ack file (True), or behind
        what waits in memory (False)."""
        if not self.memory.peek():
            try:
                self.spool.account(accounted, durable)
                return True
            except SpoolError as e:
                log.error("%s; keeping the ledger's count in memory until the spool takes it", e)
        return self.memory.account(accounted)

    @property
    def burst_bytes(self) -> int:
        return self.spool.burst_bytes

    def rescue_memory(self) -> int:
        """Move what waits in memory into the spool, oldest first, while it writes; how many events moved."""
        moved = 0
        while (item := self.memory.peek()) is not None:
            try:
                if item.payload is not None:
                    self.spool.append_many([item.payload], [item.accounted])
                    moved += 1
                elif item.accounted is not None:
                    self.spool.account(item.accounted)
            except SpoolError:
                break
            self.memory.drop_first(item.seq)
        if moved:
            log.warning("spool writable again: %d OOM event(s) moved from memory into it", moved)
        return moved

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        if self.memory.peek():
            self.rescue_memory()
        try:
            batch = self.spool.pending(limit)
        except SpoolError as e:
            if str(e) != self._read_problem:  # once per kind of failure, not every second
                log.error("%s; events in it wait until it can be read (/readyz says so)", e)
            self._read_problem = str(e)
            batch = []
        else:
            self._read_problem = None
        self._source = self.spool if batch else self.memory
        if batch:
            return batch
        batch = self.memory.pending(limit)
        if not batch and self.memory.peek():
            self._settle_memory(0)  # only ledger counts left: what they follow is delivered
        return batch

    def ack(self, upto_seq: int) -> None:
        try:
            if self._source is self.spool:
                self.spool.ack(upto_seq)
            else:
                self._settle_memory(upto_seq)
        except SpoolError as e:
            # a lost acknowledgement means a duplicate at the next start (same event id), never a loss
            log.warning("%s; events the collector accepted may be sent again at the next start", e)

    def _settle_memory(self, upto_seq: int) -> None:
        """Events the collector accepted from memory: their ledger count goes into the ack file, so
        the next start does not recover them from the kernel log as if they were never seen."""
        count = self.memory.settle(upto_seq)
        if count is not None:
            try:
                self.spool.account(count)
            except SpoolError as e:
                # the next start may then recover those kills from the kernel log a second time
                log.warning("%s; OOM kills delivered from memory may be reported again at the next start", e)

    def report_undelivered(self) -> int:
        """At shutdown: log what stays in the spool and what is lost with the memory; how many events are lost."""
        self.rescue_memory()  # the spool may take them now
        lost = self.memory.in_memory()
        if lost:
            kernel = self.memory.kernel_kills()
            log.error("stopping with %d OOM event(s) held in memory only (no usable spool): they are lost here "
                      "(counted as shutdown_in_memory); the next start recovers the %d kernel OOM kill(s) among "
                      "them from the kernel log%s", lost, kernel,
                      "" if kernel == lost else f", the other {lost - kernel} (kills by user-space OOM killers, "
                      "records around kills) are lost for good")
        elif self.pending(1):
            log.warning("stopping with OOM events not yet accepted by the collector; they stay in the "
                        "spool and are sent at the next start")
        return lost

    def close(self) -> None:
        self.spool.close()


def open_store(cfg: RunConfig, boot_id: Optional[str] = None) -> Store:
    if not cfg.spool_dir:
        log.warning("no spool: OOM events wait for the collector in memory only and are lost if the agent stops")
        return MemoryStore()
    try:
        spool = Spool(cfg.spool_dir, max_bytes=cfg.spool_max_bytes, max_age_seconds=cfg.spool_max_age,
                      boot_id=boot_id)
    except SpoolError as e:
        raise AgentError(f"{e} (choose another directory with --spool-dir or {'OTEL_OOM_SPOOL_DIR'})") from None
    except OSError as e:
        raise AgentError(f"cannot use spool directory {cfg.spool_dir}: {e.strerror}; create it or choose "
                         "another with --spool-dir / OTEL_OOM_SPOOL_DIR") from None
    return DeliveryStore(spool)
