"""One event's way through the agent: decode -> attribute -> store durably -> show -> count.

`handle_sample` runs on the worker thread for every kernel sample (a ring-buffer sample of the BPF
backends, or a kill the kmsg backend read from the kernel's report: `kernel.source.Sample`), `handle_kill` also for the
kills recovered from the kernel log at start-up, `handle_record` for what else the worker queue
holds (the pressure source's events, for the trackers around the kill) and the records those
trackers make (pressure, no-kill, reclaim; with --traces, the episode spans). A kill counts as
handled once it is in the store; from there the sender delivers it. Nothing in here may lose a kill
silently: an undecodable sample is counted as a drop (`decode_error`); a fault while attributing
one kill is counted as a fault (`enrich`), logged with the event id, and the kill still goes out
with what the kernel reported; a failing sink (webhook, metrics, reconciler, a tracker around the
kill) is counted as a fault and never stops the others.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence, TextIO, Union

from .attribution.enrich import Enricher, bare_kill, logged_kill
from .kernel.reclaim_wire import RECLAIM_EVENT_SIZE, ReclaimDecodeError, decode_reclaim
from .kernel.wire import DecodeError, decode
from .otlp.spooled import SpoolCodec
from .pressure.events import EVENT_TYPES, Submitted
from .reconcile.oom_report import LoggedKill
from .schema.records import OomEpisode, OomKill, Record
from .sinks.console import format_console, format_record_console, format_record_json

if TYPE_CHECKING:
    from .around.room import Around
    from .kernel.source import Sample
    from .otlp.metrics import Metrics
    from .reconcile.recovery import Reconciler
    from .sinks.webhook import WebhookNotifier

log = logging.getLogger("otel_oom.pipeline")


class Store(Protocol):
    def append_many(self, payloads: Sequence[bytes], accounted: Optional[Sequence[Optional[int]]] = None) -> list[int]: ...


class Codec(Protocol):
    """A record as the store keeps it (`otlp.spooled.SpoolCodec`: its encoded OTLP message)."""

    def encode(self, record: Record) -> bytes: ...


METRICS_BACKLOG_MAX = 10000  # records counted before the agent's metrics exist (see attach_metrics)


class Pipeline:
    def __init__(self, enricher: Enricher, drops: Counter[str], faults: Counter[str], *, store: Optional[Store] = None,
                 on_stored: Callable[[], None] = lambda: None, reconciler: Optional["Reconciler"] = None,
                 out: Optional[TextIO] = None, console: bool = False, json: bool = False,
                 notifier: Optional["WebhookNotifier"] = None, metrics: Optional["Metrics"] = None,
                 around: Optional["Around"] = None,
                 metrics_later: bool = False, codec: Optional[Codec] = None,
                 on_kill: Optional[Callable[[OomKill], None]] = None) -> None:
        self.enricher = enricher
        self.drops = drops            # events (or their stdout rendering) lost, by reason
        self.faults = faults          # events handled with a fault on the way, by stage
        self.store = store            # None: no OTLP delivery (console/JSON only)
        self.codec: Codec = codec or SpoolCodec()  # a record as the store keeps it: its encoded OTLP message
        self.on_stored = on_stored    # wakes the sender
        self.reconciler = reconciler
        self.out = out
        self.console = console
        self.json = json
        self.notifier = notifier
        self.on_kill = on_kill        # --k8s-events / --k8s-kubelet-check (kube/): queues, never blocks
        self.metrics = metrics
        # metrics_later: the agent sets its metrics up after `ready` (attach_metrics); until then
        # what would be counted waits here, so no kill caught meanwhile is missing from oom.kills
        self._metrics_lock = threading.Lock()
        self._metrics_backlog: Optional[list[Record]] = [] if metrics_later and metrics is None else None
        self.around = around          # the trackers around the kill: pressure, no-kill, reclaim, --traces
        self.kills_seen = 0           # live kills handled (in the store when there is one)
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._failed_sinks: set[str] = set()

    def handle_sample(self, raw: "Sample") -> None:
        self.handle_samples([raw])

    def handle_samples(self, raws: "Sequence[Sample]") -> None:
        """A burst of kernel samples, in order; its kills go to the store in one write."""
        kills: list[OomKill] = []
        for raw in raws:
            if isinstance(raw, LoggedKill):
                kills.append(self._attribute_logged(raw))
                continue
            if len(raw) == RECLAIM_EVENT_SIZE:
                self.handle_kills(kills)  # what came before it first
                kills = []
                self._handle_reclaim(raw)
                continue
            kill = self._attribute(raw)
            if kill is not None:
                kills.append(kill)
        self.handle_kills(kills)

    def _attribute(self, raw: bytes) -> Optional[OomKill]:
        try:
            ev = decode(raw, self._page_size)
        except DecodeError as e:
            self.drops["decode_error"] += 1
            log.error("undecodable event dropped (counted as decode_error): %s", e)
            return None
        try:
            return self.enricher.enrich(ev)
        except Exception:  # noqa: BLE001 - an attribution fault must not lose the kill
            kill = bare_kill(ev, self.enricher.boot_id)
            self.faults["enrich"] += 1
            log.exception("attributing OOM event %s failed (counted in otel_oom.faults{stage=enrich}); "
                          "delivering it with the fields the kernel reported", kill.event_id)
            return kill

    def _attribute_logged(self, logged: LoggedKill) -> OomKill:
        """A kill the kernel's report told (the kmsg backend), attributed like a BPF event."""
        kill = logged_kill(logged, self.enricher.boot_id)
        try:
            return self.enricher.attribute(kill)
        except Exception:  # noqa: BLE001 - an attribution fault must not lose the kill
            self.faults["enrich"] += 1
            log.exception("attributing OOM event %s failed (counted in otel_oom.faults{stage=enrich}); "
                          "delivering it with the fields the kernel printed", kill.event_id)
            return kill

    def _handle_reclaim(self, raw: bytes) -> None:
        try:
            ev = decode_reclaim(raw)
        except ReclaimDecodeError as e:
            self.drops["decode_error"] += 1
            log.error("undecodable reclaim event dropped (counted as decode_error): %s", e)
            return
        record = self.around.reclaimed(ev) if self.around is not None else None
        if record is not None:
            self.handle_record(record)

    def _episode(self, record: Record) -> tuple[Record, list[OomEpisode]]:
        """--traces: the record stamped with its episode's trace, and the episodes that ended with it."""
        return self.around.stamp(record) if self.around is not None else (record, [])

    def handle_record(self, item: Union[Record, Submitted]) -> None:
        """A record other than a kill (pressure, no-kill, reclaim): trace, store, stdout, metrics; or an
        event of the pressure source: the records the trackers around the kill make of it."""
        if isinstance(item, EVENT_TYPES):
            if self.around is not None:
                self.handle_records(self.around.handle(item))
            return
        self.handle_records([item])

    def handle_records(self, records: list[Record]) -> None:
        """Records in order; those other than kills stored together (one spool write per segment's worth)."""
        others: list[tuple[Record, list[bytes]]] = []
        for record in records:
            if isinstance(record, OomKill):
                self._store_records(others)
                others = []
                self.handle_kill(record)
                continue
            stamped, finished = self._episode(record)
            others.append((stamped, self._payloads(stamped, finished)))
        self._store_records(others)

    def _payloads(self, record: Optional[Record], spans: Sequence[OomEpisode]) -> list[bytes]:
        """What the store keeps for a record and the episodes that ended with it (nothing without a store)."""
        if self.store is None:
            return []
        encode = self.codec.encode
        return [encode(r) for r in (*([record] if record is not None else []), *spans)]

    def _store_records(self, records: list[tuple[Record, list[bytes]]]) -> None:
        if not records:
            return
        if self.store is not None:
            limit = getattr(self.store, "burst_bytes", None) or (1 << 62)
            chunk: list[bytes] = []
            for _, payloads in records:
                if chunk and sum(map(len, chunk)) + sum(map(len, payloads)) > limit:
                    self.store.append_many(chunk)
                    chunk = []
                chunk += payloads
            self.store.append_many(chunk)
            self.on_stored()
        for record, _ in records:
            if isinstance(record, OomEpisode):
                continue
            if self.console:
                self._write(format_record_console(record))
            if self.json:
                self._write(format_record_json(record) + "\n")
            self._count(record)

    def tick(self) -> None:
        """About once a second on the worker thread: what the trackers around the kill decide with time
        (pressure followed and ended, OOMs without a kill, reclaim timeouts, episodes too long)."""
        if self.around is not None:
            records, spans = self.around.tick()
            self.handle_records(records)
            self._store_spans(spans)

    def close(self) -> None:
        """At shutdown, after the last record: the open episodes end as they are."""
        if self.around is not None:
            self._store_spans(self.around.close_episodes())

    def _store_spans(self, spans: list[OomEpisode]) -> None:
        if spans and self.store is not None:
            self.store.append_many(self._payloads(None, spans))
            self.on_stored()

    def handle_kill(self, kill: OomKill) -> None:
        self.handle_kills([kill])

    def handle_kills(self, kills: list[OomKill]) -> None:
        """Kills, in order: stored together (group commit), then shown and counted.

        A burst goes to the store in writes of at most the store's `burst_bytes` (the spool's
        segment size: what a full spool drops at once stays one segment), each one write.
        """
        limit = getattr(self.store, "burst_bytes", None) or (1 << 62)
        group: list[tuple[OomKill, list[bytes]]] = []
        size = 0
        for kill in kills:
            stamped, finished = self._episode(kill)
            assert isinstance(stamped, OomKill)
            payloads = self._payloads(stamped, finished)
            n = sum(map(len, payloads))
            if group and size + n > limit:
                self._commit(group)
                group, size = [], 0
            group.append((stamped, payloads))
            size += n
        if group:
            self._commit(group)

    def _commit(self, group: list[tuple[OomKill, list[bytes]]]) -> None:
        # stored and accounted for in one write: each kernel kill's record carries the ledger's count
        # with that kill in it (see reconcile.recovery), so no crash point lets a restart report it
        # twice or never, and the sender may read the store at any time
        accounted: list[Optional[int]] = []
        for kill, payloads in group:
            accounted += [self._account(kill)] + [None] * (len(payloads) - 1)
        if self.store is not None:
            payloads = [p for _, records in group for p in records]
            if any(a is not None for a in accounted):
                self.store.append_many(payloads, accounted)
            else:
                self.store.append_many(payloads)
            self.on_stored()
        self.kills_seen += sum(1 for kill, _ in group if not kill.recovered)
        around: list[Record] = []
        for kill, _ in group:
            if self.around is not None:
                around += self.around.killed(kill)  # the reclaim timer; an OOM without a kill ended or begun
            self._show(kill)
        if around:
            self.handle_records(around)

    def _account(self, kill: OomKill) -> Optional[int]:
        if self.reconciler is None:
            return None
        try:
            return self.reconciler.account(kill)
        except Exception:  # noqa: BLE001 - the kill is stored even if the count fails (it is recovered once more)
            self.faults["reconciler"] += 1
            if "reconciler" not in self._failed_sinks:
                self._failed_sinks.add("reconciler")
                log.exception("reconciler failed on an OOM event (counted in otel_oom.faults{stage=reconciler})")
            return None

    def settle(self, count: int) -> None:
        """The worker reached a `worker.Settle` marker: kills of that kernel count not handled by now
        were never caught (see reconcile.recovery.Reconciler.settle)."""
        if self.reconciler is not None:
            reconciler = self.reconciler
            self._sink("reconciler", lambda: reconciler.settle(count))

    def _show(self, kill: OomKill) -> None:
        if self.console:
            self._write(format_console(kill))
        if self.json:
            self._write(format_record_json(kill) + "\n")
        if self.notifier is not None:
            from .schema.mapping import log_body

            notifier = self.notifier
            self._sink("webhook", lambda: notifier.notify(kill, log_body(kill)))
        if self.on_kill is not None:
            on_kill = self.on_kill
            self._sink("kube", lambda: on_kill(kill))
        self._count(kill)

    def _count(self, record: Record) -> None:
        """Into the metrics, or the backlog while they are not set up yet."""
        if self._metrics_backlog is not None:
            with self._metrics_lock:
                backlog = self._metrics_backlog
                if backlog is not None:
                    if len(backlog) < METRICS_BACKLOG_MAX:
                        backlog.append(record)
                    else:  # the record itself is delivered; only its count in the metrics is missing
                        self.faults["metrics_backlog"] += 1
                    return
        metrics = self.metrics
        if metrics is None:
            return
        if isinstance(record, OomKill):
            self._sink("metrics", lambda: metrics.record_kill(record))
        else:
            self._sink("metrics", lambda: metrics.record_event(record))

    def attach_metrics(self, metrics: "Metrics") -> None:
        """The agent's metrics, set up after `ready`: from now on counted there, the backlog first."""
        with self._metrics_lock:
            backlog, self._metrics_backlog = self._metrics_backlog or [], None
            self.metrics = metrics
        for record in backlog:
            self._count(record)

    def _write(self, text: str) -> None:
        if self.out is None:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.drops["stdout_error"] += 1

    def _sink(self, name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - one sink's fault must not stop the others
            self.faults[name] += 1
            if name not in self._failed_sinks:  # the first time with its traceback, then only counted
                self._failed_sinks.add(name)
                log.exception("%s failed on an OOM event (counted in otel_oom.faults{stage=%s})", name, name)
