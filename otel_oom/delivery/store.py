"""Where handled OOM events wait for the collector: the on-disk spool, or memory.

`DeliveryStore` puts events in the spool and, only if the spool cannot write (disk full, read-only,
I/O error), keeps them in a bounded memory queue instead, so a broken disk degrades durability
without losing the kill. Both share the spool's interface: append / pending / ack. Order is kept:
while events wait in memory, new ones join them there, and the sender moves them back into the
spool, oldest first, as soon as it can write again (`rescue_memory`, also tried at shutdown). So
the events held only in memory are always the newest ones, which is what lets a restart recover
them from the kernel log when they are lost (see `reconcile.recovery.Reconciler.forget`).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from typing import Mapping, Protocol

from ..config import RunConfig
from ..errors import AgentError
from .spool import Spool, SpoolError

log = logging.getLogger("otel_oom.store")

MEMORY_MAX_EVENTS = 10000


class Store(Protocol):
    """What the pipeline (append) and the sender (pending, ack) need; `dropped` counts by reason."""

    @property
    def dropped(self) -> Mapping[str, int]: ...
    def append(self, payload: bytes) -> int: ...
    def append_many(self, payloads: list[bytes]) -> list[int]: ...
    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]: ...
    def ack(self, upto_seq: int) -> None: ...
    def in_memory(self) -> int: ...
    def close(self) -> None: ...


class MemoryStore:
    """Spool-shaped queue in memory: lost on restart, bounded, drops counted as `memory_full`."""

    def __init__(self, max_events: int = MEMORY_MAX_EVENTS) -> None:
        self._items: deque[tuple[int, bytes]] = deque()
        self._next = 1
        self._max = max_events
        self._lock = threading.Lock()
        self._dropped: Counter[str] = Counter()

    @property
    def dropped(self) -> Mapping[str, int]:
        return self._dropped

    def append(self, payload: bytes) -> int:
        with self._lock:
            if len(self._items) >= self._max:
                self._items.popleft()
                self._dropped["memory_full"] += 1
                log.error("in-memory event queue full: dropped the oldest OOM event (%d so far)",
                          self._dropped["memory_full"])
            seq, self._next = self._next, self._next + 1
            self._items.append((seq, payload))
            return seq

    def append_many(self, payloads: list[bytes]) -> list[int]:
        return [self.append(p) for p in payloads]

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self._items)[:limit]

    def peek(self) -> "tuple[int, bytes] | None":
        with self._lock:
            return self._items[0] if self._items else None

    def drop_first(self, seq: int) -> None:
        with self._lock:
            if self._items and self._items[0][0] == seq:
                self._items.popleft()

    def ack(self, upto_seq: int) -> None:
        with self._lock:
            while self._items and self._items[0][0] <= upto_seq:
                self._items.popleft()

    def in_memory(self) -> int:
        """Events held here that a stop would lose."""
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        pass


class DeliveryStore:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.memory = MemoryStore()
        self._source: Spool | MemoryStore = spool
        self.spool_write_errors = 0
        self.problem: "str | None" = None  # why the spool cannot be read now (for /readyz)

    @property
    def dropped(self) -> Mapping[str, int]:
        counts = Counter(self.spool.dropped)
        counts.update(self.memory.dropped)
        return dict(counts)

    def in_memory(self) -> int:
        return self.memory.in_memory()

    def next_seq(self) -> int:
        """The spool's next sequence number: it moves past every event written to the spool."""
        return self.spool.next_seq

    def append(self, payload: bytes) -> int:
        waiting = self.memory.in_memory()
        if not waiting:
            try:
                return self.spool.append(payload)
            except SpoolError as e:
                self.spool_write_errors += 1
                log.error("%s; keeping the event in memory until the spool or the collector takes it", e)
        else:  # in order: behind the older ones, which go back to the spool first
            log.warning("spool still unwritable: keeping the event in memory behind %d older one(s) until the "
                        "spool or the collector takes it", waiting)
        return self.memory.append(payload)

    def append_many(self, payloads: list[bytes]) -> list[int]:
        """A burst in one spool write (group commit); in memory, in order, if the spool cannot take it."""
        if len(payloads) == 1 or self.memory.in_memory():
            return [self.append(p) for p in payloads]
        try:
            return self.spool.append_many(payloads)
        except SpoolError as e:
            # the first ones may be on disk already; the rest one at a time (into memory if need be)
            done = list(e.written)
            return done + [self.append(p) for p in payloads[len(done):]]

    @property
    def burst_bytes(self) -> int:
        return self.spool.burst_bytes

    def rescue_memory(self) -> int:
        """Move events waiting in memory into the spool, oldest first, while it writes; how many moved."""
        moved = 0
        while (item := self.memory.peek()) is not None:
            try:
                self.spool.append(item[1])
            except SpoolError:
                break
            self.memory.drop_first(item[0])
            moved += 1
        if moved:
            log.warning("spool writable again: %d OOM event(s) moved from memory into it", moved)
        return moved

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        if self.memory.in_memory():
            self.rescue_memory()
        try:
            batch = self.spool.pending(limit)
        except SpoolError as e:
            if str(e) != self.problem:  # once per kind of failure, not every second
                log.error("%s; events in it wait until it can be read (/readyz says so)", e)
            self.problem = str(e)
            batch = []
        else:
            self.problem = None
        self._source = self.spool if batch else self.memory
        return batch or self.memory.pending(limit)

    def ack(self, upto_seq: int) -> None:
        try:
            self._source.ack(upto_seq)
        except SpoolError as e:
            # a lost acknowledgement means a duplicate at the next start (same event id), never a loss
            log.warning("%s; events the collector accepted may be sent again at the next start", e)

    def close(self) -> None:
        self.spool.close()


def open_store(cfg: RunConfig) -> Store:
    if not cfg.spool_dir:
        log.warning("no spool: OOM events wait for the collector in memory only and are lost if the agent stops")
        return MemoryStore()
    try:
        spool = Spool(cfg.spool_dir, max_bytes=cfg.spool_max_bytes, max_age_seconds=cfg.spool_max_age)
    except SpoolError as e:
        raise AgentError(f"{e} (choose another directory with --spool-dir or {'OTEL_OOM_SPOOL_DIR'})") from None
    except OSError as e:
        raise AgentError(f"cannot use spool directory {cfg.spool_dir}: {e.strerror}; create it or choose "
                         "another with --spool-dir / OTEL_OOM_SPOOL_DIR") from None
    return DeliveryStore(spool)
