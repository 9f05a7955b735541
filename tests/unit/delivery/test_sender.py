"""SpoolSender driven by an exporter double (the collector's answers scripted per request): one
delivery semantic for a batch's spans and log records — split, park, partial success, retry with
backoff, the stop deadline — and acknowledgement of exactly what was settled."""
from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Callable

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_oom.delivery.parked import ParkedEvents
from otel_oom.delivery.sender import RETRY_MAX_S, RETRY_MIN_S, SpoolSender
from otel_oom.delivery.store import MemoryStore
from otel_oom.otlp.requests import readable
from otel_oom.otlp.spooled import LOGS, TRACES, SpoolCodec
from otel_oom.otlp.transport import ExportResult
from otel_oom.schema.records import OomEpisode, OomKill

CODEC = SpoolCodec()


def kill(pid: int) -> bytes:
    return CODEC.encode(OomKill(f"b:{pid}:{pid}", 1000 + pid, pid, "tp_btf", "none", False, pid, pid, "leaky"))


def span(n: int) -> bytes:
    return CODEC.encode(OomEpisode(f"{n:032x}", f"{n:016x}", 1, 2, "host", "kill", "reclaimed", kills=1))


def ident(signal: str, message: bytes) -> str:
    """What a message is, for the assertions: the kill's pid, or "span<n>"."""
    if signal == LOGS:
        return str(next(kv.value.int_value for kv in LogRecord.FromString(message).attributes if kv.key == "process.pid"))
    return f"span{int.from_bytes(Span.FromString(message).span_id, 'big')}"


class Collector:
    """The exporter double: `answer(signal, ids)` gives each request's outcome; every attempt is kept."""

    def __init__(self, answer: Callable[[str, list[str]], ExportResult] = lambda s, ids: ExportResult("accepted"),
                 traces: bool = True) -> None:
        self.answer = answer
        self.traces = traces
        self.attempts: list[tuple[str, list[str], float | None]] = []

    def carries(self, signal: str) -> bool:
        return signal == LOGS or self.traces

    def send(self, signal, messages, timeout_s=None):
        ids = [ident(signal, m) for m in messages]
        self.attempts.append((signal, ids, timeout_s))
        return self.answer(signal, ids)

    def readable(self, signal, message):
        return readable(signal, message)

    def shutdown(self) -> None:
        pass


def sender_for(store, collector, tmp_path=None, **kw) -> tuple[SpoolSender, Counter]:
    drops: Counter[str] = Counter()
    parked = ParkedEvents(str(tmp_path) if tmp_path else None, 1 << 20)
    return SpoolSender(store, collector, drops, threading.Event(), parked=parked, **kw), drops


def store_of(*payloads: bytes) -> MemoryStore:
    store = MemoryStore()
    for p in payloads:
        store.append(p)
    return store


def pending_ids(store: MemoryStore) -> list[str]:
    out = []
    for _, p in store.pending(1000):
        item = CODEC.decode(p)
        out.append(ident(item.signal, item.message))
    return out


def test_a_batch_of_log_records_is_one_request_and_acknowledged():
    store, c = store_of(kill(1), kill(2), kill(3)), Collector()
    s, drops = sender_for(store, c)
    assert s._deliver(store.pending()) is None
    assert [(sig, ids) for sig, ids, _ in c.attempts] == [(LOGS, ["1", "2", "3"])]
    assert store.pending() == [] and drops == Counter()


def test_a_refused_record_is_split_out_and_parked_readable(tmp_path):
    def answer(signal, ids):
        return ExportResult("rejected", message="INVALID_ARGUMENT: bad") if "3" in ids else ExportResult("accepted")

    store, c = store_of(*(kill(p) for p in range(1, 6))), Collector(answer)
    s, drops = sender_for(store, c, tmp_path)
    assert s._deliver(store.pending()) is None
    assert [ids for _, ids, _ in c.attempts] == [["1", "2", "3", "4", "5"], ["1", "2"], ["3", "4", "5"], ["3"], ["4", "5"]]
    assert store.pending() == [] and drops == Counter(collector_rejected=1)
    (line,) = (tmp_path / "parked.jsonl").read_text().splitlines()
    p = json.loads(line)
    assert p["signal"] == LOGS and p["reason"] == "INVALID_ARGUMENT: bad"
    assert p["event"]["attributes"]["process.pid"] == 3 and p["event"]["event_name"] == "oom.kill"
    assert p["event"]["body"] == "Out of memory: Killed process 3 (leaky)"


def test_too_large_splits_until_it_fits_and_a_lone_record_too_large_is_parked(tmp_path):
    def answer(signal, ids):
        return ExportResult("too_large") if len(ids) > 2 or "7" in ids else ExportResult("accepted")

    store, c = store_of(*(kill(p) for p in range(1, 8))), Collector(answer)
    s, drops = sender_for(store, c, tmp_path)
    assert s._deliver(store.pending()) is None
    accepted = [ids for _, ids, _ in c.attempts if len(ids) <= 2 and "7" not in ids]
    assert sum(accepted, []) == ["1", "2", "3", "4", "5", "6"]  # each once, in order
    assert drops == Counter(collector_rejected=1) and store.pending() == []


def test_partial_success_is_counted_and_settles_the_batch(caplog):
    store, c = store_of(kill(1), kill(2)), Collector(lambda s, ids: ExportResult("accepted", 1, "one too old"))
    s, drops = sender_for(store, c)
    assert s._deliver(store.pending()) is None
    assert drops == Counter(collector_partial=1) and store.pending() == []
    assert "rejected 1 of them (one too old)" in caplog.text and "b:1:1 .. b:2:2" in caplog.text


def test_a_retry_keeps_everything_not_yet_settled():
    def answer(signal, ids):
        if ids == ["1", "2", "3", "4"]:
            return ExportResult("rejected")
        return ExportResult("retry", message="UNAVAILABLE") if ids == ["3", "4"] else ExportResult("accepted")

    store, c = store_of(*(kill(p) for p in range(1, 5))), Collector(answer)
    s, drops = sender_for(store, c)
    failed = s._deliver(store.pending())
    assert failed is not None and failed.outcome == "retry"
    assert pending_ids(store) == ["3", "4"] and drops == Counter()  # the first half was settled and acknowledged


def test_spans_and_log_records_of_one_batch_share_one_semantic():
    store, c = store_of(kill(1), span(5), kill(2), span(6)), Collector()
    s, _ = sender_for(store, c)
    assert s._deliver(store.pending()) is None
    assert [(sig, ids) for sig, ids, _ in c.attempts] == [(TRACES, ["span5", "span6"]), (LOGS, ["1", "2"])]
    assert store.pending() == []


def test_spans_not_taken_hold_back_the_batch_and_its_log_records_are_not_sent():
    store = store_of(span(5), kill(1), kill(2))
    c = Collector(lambda signal, ids: ExportResult("retry") if signal == TRACES else ExportResult("accepted"))
    s, _ = sender_for(store, c)
    assert s._deliver(store.pending()).outcome == "retry"  # type: ignore[union-attr]
    assert [sig for sig, _, _ in c.attempts] == [TRACES] and pending_ids(store) == ["span5", "1", "2"]


def test_log_records_not_taken_keep_themselves_but_not_the_spans_stored_before_them():
    store = store_of(span(5), kill(1), span(6), kill(2))
    c = Collector(lambda signal, ids: ExportResult("retry") if signal == LOGS else ExportResult("accepted"))
    s, _ = sender_for(store, c)
    assert s._deliver(store.pending()).outcome == "retry"  # type: ignore[union-attr]
    # span5 is settled and acknowledged (nothing before it waits); span6 waits behind kill 1 and goes again
    assert pending_ids(store) == ["1", "span6", "2"]


def test_a_refused_span_is_split_out_and_parked_like_a_record(tmp_path):
    c = Collector(lambda signal, ids: ExportResult("rejected") if "span6" in ids else ExportResult("accepted"))
    store = store_of(span(5), span(6), kill(1))
    s, drops = sender_for(store, c, tmp_path)
    assert s._deliver(store.pending()) is None
    (line,) = (tmp_path / "parked.jsonl").read_text().splitlines()
    p = json.loads(line)
    assert p["signal"] == TRACES and p["event"]["name"] == "oom.episode" and p["event"]["span_id"] == f"{6:016x}"
    assert drops == Counter(collector_rejected=1) and store.pending() == []


def test_spans_replayed_without_traces_are_counted_and_undecodable_payloads_too():
    store = store_of(span(5), b"\x09garbage", kill(1), b'{"type":"oom.future"}')
    c = Collector(traces=False)
    s, drops = sender_for(store, c)
    assert s._deliver(store.pending()) is None
    assert [(sig, ids) for sig, ids, _ in c.attempts] == [(LOGS, ["1"])]
    assert drops == Counter(span_without_traces=1, spool_undecodable=2) and store.pending() == []


def test_run_backs_off_and_follows_retry_after():
    outcomes = [ExportResult("retry")] * 4 + [ExportResult("retry", retry_after=0.1),
                                              ExportResult("retry", retry_after=120.0), ExportResult("accepted")]
    c = Collector(lambda signal, ids: outcomes.pop(0))
    store = store_of(kill(1))
    s, _ = sender_for(store, c)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if not store.pending():
            s.stopping.set()

    s._sleep = sleep  # type: ignore[method-assign]
    s.run()
    assert waits[:6] == [RETRY_MIN_S, 1.0, 2.0, 4.0, RETRY_MIN_S, RETRY_MAX_S]  # Retry-After within [0.5, 30]
    assert store.pending() == [] and len(c.attempts) == 7


def test_stopping_past_the_deadline_starts_no_new_attempt_and_cuts_the_timeout():
    store = store_of(*(kill(p) for p in range(1, 5)))
    c = Collector()
    s, _ = sender_for(store, c)
    s.stopping.set()
    s.deadline = 0.0  # long past (monotonic)
    s.run()
    assert c.attempts == [] and len(store.pending()) == 4

    import time

    stopped = {}

    def answer(signal, ids):
        if ids == ["1", "2", "3", "4"]:
            s.deadline = time.monotonic() - 1  # the time ran out during this attempt
            return ExportResult("rejected")
        stopped["late"] = True
        return ExportResult("accepted")

    c = Collector(answer)
    s, _ = sender_for(store, c)
    s.stopping.set()
    s.deadline = time.monotonic() + 3600
    s.run()
    (only,) = c.attempts
    assert only[2] is not None and 0 < only[2] <= 3600  # the attempt's timeout is the time left
    assert "late" not in stopped and len(store.pending()) == 4  # the halves stay for the next start


def test_a_lone_record_is_sent_at_once_even_with_samples_queued():
    store, c = store_of(kill(1)), Collector()
    s, _ = sender_for(store, c, burst_in_progress=lambda: True)
    waited = []
    s._fill_burst = lambda have: waited.append(have) or store.pending()  # type: ignore[method-assign]
    s.stopping.set()
    s.run()
    assert waited == [] and [ids for _, ids, _ in c.attempts] == [["1"]]


def test_a_burst_fills_the_batch_while_kills_keep_being_stored():
    store, c = store_of(kill(1), kill(2)), Collector()
    stored = [2]

    class Wakes:
        """The store's wake-ups, scripted: three more kills arrive, then none within BURST_IDLE_S."""

        def wait(self, timeout):
            if stored[0] >= 5:
                return False
            stored[0] += 1
            store.append(kill(stored[0]))
            return True

        def clear(self):
            pass

        def set(self):
            pass

    s, _ = sender_for(store, c, burst_in_progress=lambda: True, spooled=lambda: stored[0])
    s._wake = Wakes()  # type: ignore[assignment]
    batch = s._pending()
    assert len(batch) == 2
    assert [seq for seq, _ in s._fill_burst(len(batch))] == [1, 2, 3, 4, 5]
