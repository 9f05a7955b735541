"""The queue between the ring-buffer poll (and the watchers) and the worker: bounded in bytes, never
blocking the producer, FIFO for the one consumer (otel_oom/sample_queue.py)."""
from __future__ import annotations

import threading

import pytest

from otel_oom.sample_queue import ITEM_OVERHEAD, RECORD_BYTES, ByteBoundedQueue, Empty


def test_items_come_out_in_order_and_the_bytes_go_back_to_zero():
    q: ByteBoundedQueue[object] = ByteBoundedQueue(10_000)
    record = object()  # a watcher's record: charged flat
    for item in (b"a" * 10, record, b"b" * 20):
        assert q.put_nowait(item)
    assert q.bytes == 10 + ITEM_OVERHEAD + RECORD_BYTES + 20 + ITEM_OVERHEAD == q.peak_bytes
    assert len(q) == 3 and not q.empty()
    assert [q.get(timeout=0), q.get_nowait(), q.get()] == [b"a" * 10, record, b"b" * 20]
    assert q.bytes == 0 and q.empty() and q.peak_bytes > 0


def test_put_nowait_refuses_what_does_not_fit_and_never_blocks():
    cost = 100 + ITEM_OVERHEAD
    q: ByteBoundedQueue[bytes] = ByteBoundedQueue(3 * cost)
    assert all(q.put_nowait(b"x" * 100) for _ in range(3))
    assert not q.put_nowait(b"y")  # the caller counts the drop (queue_full)
    assert q.bytes == 3 * cost and len(q) == 3
    q.get_nowait()
    assert q.put_nowait(b"z" * 100)  # room again


def test_one_item_larger_than_the_bound_still_goes_into_an_empty_queue():
    # a single sample must never be refused forever: alone, it is taken whatever its size
    q: ByteBoundedQueue[bytes] = ByteBoundedQueue(50)
    assert q.put_nowait(b"x" * 500)
    assert not q.put_nowait(b"y")
    assert q.get_nowait() == b"x" * 500 and q.bytes == 0


def test_put_always_enqueues_and_is_charged_nothing():
    # the stop marker (and the reconciliation's markers) must get through a full queue
    q: ByteBoundedQueue[object] = ByteBoundedQueue(ITEM_OVERHEAD + 1)
    assert q.put_nowait(b"x")
    q.put(None)
    assert q.bytes == 1 + ITEM_OVERHEAD
    assert q.get_nowait() == b"x" and q.get_nowait() is None and q.bytes == 0


def test_get_waits_for_an_item_or_raises_empty():
    q: ByteBoundedQueue[bytes] = ByteBoundedQueue(1000)
    with pytest.raises(Empty):
        q.get(timeout=0)
    with pytest.raises(Empty):
        q.get_nowait()
    threading.Timer(0.05, lambda: q.put_nowait(b"late")).start()
    assert q.get(timeout=30) == b"late"  # woken by the put, long before the timeout


def test_a_snapshot_is_a_copy_of_what_waits():
    q: ByteBoundedQueue[bytes] = ByteBoundedQueue(1000)
    q.put_nowait(b"1")
    q.put_nowait(b"2")
    snap = q.snapshot()
    q.get_nowait()
    q.put_nowait(b"3")
    assert list(snap) == [b"1", b"2"] and list(q.snapshot()) == [b"2", b"3"]


def test_one_producer_and_one_consumer_lose_nothing_that_was_accepted():
    q: ByteBoundedQueue[bytes] = ByteBoundedQueue(64 * (8 + ITEM_OVERHEAD))
    accepted, got = [], []

    def produce() -> None:
        for i in range(5000):
            item = i.to_bytes(8, "little")
            if q.put_nowait(item):
                accepted.append(item)
        q.put(b"")

    t = threading.Thread(target=produce)
    t.start()
    while (item := q.get(timeout=30)) != b"":
        got.append(item)
    t.join()
    assert got == accepted and q.bytes == 0 and q.peak_bytes <= q.max_bytes
