"""One event's way through the agent: decode -> attribute -> store durably -> show -> count.

`handle_sample` runs on the worker thread for every ring-buffer sample, `handle_kill` also for the
kills recovered from the kernel log at start-up. A kill counts as handled once it is in the store;
from there the sender delivers it. Nothing in here may lose a kill silently: an undecodable sample
is counted as a drop (`decode_error`); a fault while attributing one kill is counted as a fault
(`enrich`), logged with the event id, and the kill still goes out with what the kernel reported; a
failing sink (webhook, metrics, reconciler) is counted as a fault and never stops the others.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import TYPE_CHECKING, Callable, Optional, Protocol, TextIO

from .attribution.enrich import Enricher, bare_kill
from .kernel.wire import DecodeError, decode
from .model import OomKill
from .sinks.console import format_console, format_json

if TYPE_CHECKING:
    from .otlp.metrics import Metrics
    from .reconcile.recovery import Reconciler
    from .sinks.webhook import WebhookNotifier

log = logging.getLogger("otel_oom.pipeline")


class Store(Protocol):
    def append(self, payload: bytes) -> int: ...


class Pipeline:
    def __init__(self, enricher: Enricher, drops: Counter[str], faults: Counter[str], *, store: Optional[Store] = None,
                 on_stored: Callable[[], None] = lambda: None, reconciler: Optional["Reconciler"] = None,
                 out: Optional[TextIO] = None, console: bool = False, json: bool = False,
                 notifier: Optional["WebhookNotifier"] = None, metrics: Optional["Metrics"] = None,
                 commit_lock: Optional[threading.Lock] = None) -> None:
        self.enricher = enricher
        self.drops = drops            # events (or their stdout rendering) lost, by reason
        self.faults = faults          # events handled with a fault on the way, by stage
        self.store = store            # None: no OTLP delivery (console/JSON only)
        self.on_stored = on_stored    # wakes the sender
        self.commit_lock = commit_lock or threading.Lock()  # held across store + account; the sender reads under it
        self.reconciler = reconciler
        self.out = out
        self.console = console
        self.json = json
        self.notifier = notifier
        self.metrics = metrics
        self.kills_seen = 0           # live kills handled (in the store when there is one)
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._failed_sinks: set[str] = set()

    def handle_sample(self, raw: bytes) -> None:
        try:
            ev = decode(raw, self._page_size)
        except DecodeError as e:
            self.drops["decode_error"] += 1
            log.error("undecodable event dropped (counted as decode_error): %s", e)
            return
        try:
            kill = self.enricher.enrich(ev)
        except Exception:  # noqa: BLE001 - an attribution fault must not lose the kill
            kill = bare_kill(ev, self.enricher.boot_id)
            self.faults["enrich"] += 1
            log.exception("attributing OOM event %s failed (counted in otel_oom.faults{stage=enrich}); "
                          "delivering it with the fields the kernel reported", kill.event_id)
        self.handle_kill(kill)

    def handle_kill(self, kill: OomKill) -> None:
        # stored and accounted for as one step: the sender takes the same lock to read the store, so
        # it never delivers a kill the reconciliation state does not count yet (a SIGKILL in between
        # would have the next start recover it from the kernel log: a second report of one kill)
        reconciler = self.reconciler if not kill.recovered else None
        with self.commit_lock:
            if reconciler is not None:
                # counted with the spool's next seq first: see Reconciler.observed for why no crash
                # point between the two loses the kill or reports it twice
                self._sink("reconciler", lambda: reconciler.observed(kill))
            if self.store is not None:
                self.store.append(kill.to_json().encode())
            if reconciler is not None:
                reconciler.stored()
            if not kill.recovered:
                self.kills_seen += 1
        if self.store is not None:
            self.on_stored()
        if self.console:
            self._write(format_console(kill))
        if self.json:
            self._write(format_json(kill) + "\n")
        if self.notifier is not None:
            from .otlp.mapping import log_body

            notifier = self.notifier
            self._sink("webhook", lambda: notifier.notify(kill, log_body(kill)))
        if self.metrics is not None:
            metrics = self.metrics
            self._sink("metrics", lambda: metrics.record_kill(kill))

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
