"""The queue between the ring-buffer poll (and the pressure source) and the worker, bounded in bytes.

A storm can outrun the worker: what waits here is ring-buffer samples (a few hundred bytes each)
and the pressure source's events (around the kill). A bound in entries says nothing about memory
(65,536 samples were ~100 MB with Python's per-object overhead, more than the DaemonSet's memory
limit), so the bound is in bytes: each sample is charged its length plus `ITEM_OVERHEAD` (the bytes
object and the deque slot), anything else (a source event, or a batch of at most 8) a flat
`RECORD_BYTES`. `put_nowait` never blocks (the poll callback must not): when the item does not fit
it returns False and the caller counts the drop (`queue_full`).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, Iterator, Optional, TypeVar

ITEM_OVERHEAD = 96   # sys.getsizeof(b"") is 33, plus the deque slot and allocator rounding
RECORD_BYTES = 2048  # a non-sample item (small dataclasses with strings), charged flat

T = TypeVar("T")


class Empty(Exception):
    """get() timed out."""


class ByteBoundedQueue(Generic[T]):
    """FIFO for one consumer; `put_nowait` refuses what would take it over `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.peak_bytes = 0
        self._items: deque[tuple[T, int]] = deque()
        self._ready = threading.Condition(threading.Lock())

    @staticmethod
    def cost(item: object) -> int:
        return len(item) + ITEM_OVERHEAD if isinstance(item, bytes) else RECORD_BYTES

    def put_nowait(self, item: T) -> bool:
        size = self.cost(item)
        with self._ready:
            if self.bytes + size > self.max_bytes and self._items:
                return False
            self._items.append((item, size))
            self.bytes += size
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self._ready.notify()
        return True

    def put(self, item: T) -> None:
        """Always enqueued, even over the bound (the stop marker: it must get through)."""
        with self._ready:
            self._items.append((item, 0))
            self._ready.notify()

    def get(self, timeout: Optional[float] = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Empty
                self._ready.wait(left)
            item, size = self._items.popleft()
            self.bytes -= size
            return item

    def get_nowait(self) -> T:
        with self._ready:
            if not self._items:
                raise Empty
            item, size = self._items.popleft()
            self.bytes -= size
            return item

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    def snapshot(self) -> Iterator[T]:
        """The items waiting now, oldest first (a copy: the queue may change meanwhile)."""
        with self._ready:
            items = [item for item, _ in self._items]
        return iter(items)
