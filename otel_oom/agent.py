"""`otel-oom run`: the pipeline from ring buffer to collector, and its lifecycle.

    poll thread    probe.poll() -> callback copies the sample -> samples queue
    worker thread  decode -> enrich -> spool (durable) -> console/JSON/webhook -> metrics
    sender thread  spool.pending() -> OTLP export -> spool.ack()   (retries with backoff)

A kill counts as handled once it is in the spool; it leaves the spool only when the collector
accepted it, so an outage, a slow collector or a SIGKILL of the agent loses nothing. Every place
that can still drop an event counts the drop under a reason, and the counts are exported.
Signals only set a flag; teardown runs once, in reverse order of set-up.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from typing import Callable, Optional, TextIO

from . import clock
from .cgroups import CgroupResolver, detect_memory_hierarchy
from .config import RunConfig
from .enrich import Enricher
from .event import DecodeError, decode
from .kill import OomKill
from .output import format_console, format_json
from .probe import Probe, open_probe
from .recovery import Reconciler
from .store import MemoryStore, open_store

log = logging.getLogger("otel_oom.agent")

SAMPLE_QUEUE_MAX = 65536  # ring-buffer samples waiting for the worker (~100 MB at worst)
SEND_BATCH = 100
BURST_WAIT_S = 0.05  # at most this long, while a burst is being spooled, the sender lets it fill a batch
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
POLL_MS = 100
RECONCILE_S = 5.0          # compare with /proc/vmstat oom_kill
RECONCILE_MEMCGS_S = 30.0  # compare with every memory cgroup's own oom_kill counter


class Agent:
    def __init__(self, cfg: RunConfig, environ=os.environ, out: TextIO = sys.stdout) -> None:
        self.cfg = cfg
        self.environ = environ
        self.out = out
        self.drops: Counter[str] = Counter()
        self.kills_seen = 0
        self.stopping = threading.Event()
        self._wake_sender = threading.Event()
        self._samples: queue.Queue[Optional[bytes]] = queue.Queue(SAMPLE_QUEUE_MAX)
        self._threads: list[threading.Thread] = []
        self._cleanup: list[Callable[[], None]] = []
        self._last_export_ok = time.monotonic()
        self._deadline = 0.0
        self._closed = False
        self.probe: Optional[Probe] = None
        self.store = None
        self.sender = None
        self.metrics = None
        self.notifier = None
        self.reconciler: Optional[Reconciler] = None

    # ---- set-up -------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self._lower_own_oom_score()
        hierarchy = detect_memory_hierarchy()
        if hierarchy is None:
            log.warning("no memory cgroup hierarchy found: kills are reported without cgroup attribution")
        self.enricher = Enricher(hierarchy, clock.boot_id(),
                                 CgroupResolver(hierarchy.mount) if hierarchy else None)

        if cfg.otlp or cfg.prometheus:
            from .telemetry import LogSender, Metrics, build_resource, validate_otlp_environment

            if cfg.otlp:
                validate_otlp_environment(self.environ)
            resource = build_resource(self.environ)
            self.metrics = Metrics(resource, self.environ, prometheus=cfg.prometheus, otlp=cfg.otlp,
                                   drop_counts=self.drop_counts, hooks=self.hooks_attached,
                                   unobserved=self.unobserved_kills)
            # the final metric export gets what is left of --shutdown-timeout (at least 1 s)
            self._cleanup.append(lambda: self.metrics.shutdown(
                max(1.0, self._deadline - time.monotonic()) * 1000))
            if cfg.otlp:
                self.sender = LogSender(resource, self.environ,
                                        on_failure=lambda: self.metrics.record_export_failure("logs"))
                self._cleanup.append(self.sender.shutdown)
        self.store = open_store(cfg) if cfg.otlp else MemoryStore()
        self._cleanup.append(self.store.close)
        if cfg.webhook:
            from .webhook import WebhookNotifier

            self.notifier = WebhookNotifier(cfg.webhook)
            self._cleanup.append(lambda: self.notifier.close(cfg.shutdown_timeout))

        self.probe = open_probe(self._on_sample, cfg.victim_hook, cfg.context_hook,
                                ring_bytes=cfg.ring_buffer_bytes, bench_pin=cfg.bench_pin)
        self._cleanup.append(self.probe.close)
        self.reconciler = Reconciler(state_dir=cfg.spool_dir, hierarchy=hierarchy, boot_id=self.enricher.boot_id)

        if cfg.listen:
            from .health import HealthServer

            registry = self.metrics.prometheus_registry if (self.metrics and cfg.prometheus) else None
            self.health = HealthServer(cfg.listen, self.readiness, registry)
            self._cleanup.append(self.health.close)

        self._spawn("otel-oom-worker", self._work)
        if self.sender:
            self._spawn("otel-oom-sender", self._send_loop)
        # kills that happened while no agent was running, from the kernel's own record
        for kill in self.reconciler.recover_missed():
            self._handle(kill)
        plan = self.probe.plan
        log.info("ready in %.0f ms: hooks victim=%s context=%s%s; delivery %s", (time.monotonic() - t0) * 1000,
                 plan.victim, plan.context, f" ({plan.kprobe_symbol})" if plan.kprobe_symbol else "",
                 self._delivery_summary())

    def _delivery_summary(self) -> str:
        parts = []
        if self.sender:
            parts.append(f"OTLP {self.sender.describe()}")
            parts.append(f"spool {self.cfg.spool_dir}" if self.cfg.spool_dir else "no spool (memory only)")
        if self.cfg.console:
            parts.append("console")
        if self.cfg.json:
            parts.append("JSON on stdout")
        if self.notifier:
            parts.append("webhook")
        return ", ".join(parts) or "none"

    def _lower_own_oom_score(self) -> None:
        if self.cfg.oom_score_adj is None:
            return
        want = self.cfg.oom_score_adj
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(want))
            with open("/proc/self/oom_score_adj") as f:
                have = int(f.read())
        except (OSError, ValueError) as e:
            have, why = None, getattr(e, "strerror", str(e))
        else:
            why = "the kernel kept the old value"
        if have != want:
            # lowering needs CAP_SYS_RESOURCE (some kernels ignore the write instead of refusing it);
            # the agent still works, it is just as killable as any other process
            log.warning("could not set the agent's oom_score_adj to %d (%s; lowering needs CAP_SYS_RESOURCE)",
                        want, why)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ---- stage 1: ring buffer -> queue (runs inside ring_buffer__poll) ----------------------
    def _on_sample(self, raw: bytes) -> None:
        try:
            self._samples.put_nowait(raw)
        except queue.Full:
            self.drops["queue_full"] += 1

    # ---- stage 2: decode, enrich, persist, show --------------------------------------------
    def _work(self) -> None:
        page_size = os.sysconf("SC_PAGE_SIZE")
        while True:
            raw = self._samples.get()
            if raw is None:
                return
            try:
                ev = decode(raw, page_size)
            except DecodeError as e:
                self.drops["decode_error"] += 1
                log.error("undecodable event dropped: %s", e)
                continue
            try:
                kill = self.enricher.enrich(ev)
            except Exception:  # noqa: BLE001 - an enrichment bug must not lose the kill
                log.exception("enrichment failed; reporting the kill without attribution")
                kill = Enricher(None, self.enricher.boot_id).enrich(ev)
            self._handle(kill)

    def _handle(self, kill: OomKill) -> None:
        if self.sender:
            self.store.append(kill.to_json().encode())
            self._wake_sender.set()
        if not kill.recovered:
            # only once it is spooled: from here a restart must not replay it from the kernel log
            self.kills_seen += 1
            self.reconciler.observed(kill)
        if self.cfg.console:
            self._write(format_console(kill))
        if self.cfg.json:
            self._write(format_json(kill) + "\n")
        if self.notifier:
            from .telemetry import log_body

            self.notifier.notify(kill, log_body(kill))
        if self.metrics:
            self.metrics.record_kill(kill)

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.drops["stdout_error"] += 1

    # ---- stage 3: spool -> collector ---------------------------------------------------------
    def _send_loop(self) -> None:
        delay = RETRY_MIN_S
        while True:
            batch = self.store.pending(SEND_BATCH)
            if not batch:
                self._last_export_ok = time.monotonic()
                if self.stopping.is_set():
                    return
                self._wake_sender.wait(1.0)
                self._wake_sender.clear()
                continue
            if len(batch) < SEND_BATCH and not self._samples.empty() and not self.stopping.is_set():
                # a burst is still being spooled: let it fill the batch, so a storm costs one export and
                # one acknowledgement fdatasync per SEND_BATCH events, not per event or two; an isolated
                # kill finds the queue empty and is sent at once
                target = self.kills_seen + SEND_BATCH - len(batch)
                deadline = time.monotonic() + BURST_WAIT_S
                while (not self._samples.empty() and self.kills_seen < target
                       and time.monotonic() < deadline and not self.stopping.is_set()):
                    time.sleep(0.001)
                batch = self.store.pending(SEND_BATCH)
            kills = []
            for _, payload in batch:
                try:
                    kills.append(OomKill.from_json(payload))
                except (ValueError, TypeError):
                    self.drops["spool_undecodable"] += 1
            if not kills or self.sender.send(kills):
                self.store.ack(batch[-1][0])
                self._last_export_ok = time.monotonic()
                delay = RETRY_MIN_S
                continue
            if self.stopping.is_set():
                return
            log.warning("collector did not accept %d OOM event(s); keeping them and retrying in %.1f s",
                        len(kills), delay)
            self._wake_sender.wait(delay)
            self._wake_sender.clear()
            delay = min(delay * 2, RETRY_MAX_S)

    # ---- observability of the agent itself ----------------------------------------------------
    def drop_counts(self) -> dict[str, int]:
        counts = dict(self.drops)
        if self.probe:
            counts["ringbuf_full"] = self.probe.stats().get("ringbuf_full", 0)
        dropped = getattr(self.store, "dropped", None) or {}
        counts.update(dropped)
        if self.notifier:
            # a kill is still in the spool and at the collector; only its chat message was lost
            counts["webhook_dropped"] = self.notifier.dropped
        return counts

    def hooks_attached(self) -> list[tuple[str, str]]:
        if not self.probe or self._closed:
            return []
        hooks = [(self.probe.plan.victim, "victim")]
        if self.probe.plan.context != "none":
            hooks.append((self.probe.plan.context, "context"))
        return hooks

    def unobserved_kills(self) -> int:
        return self.reconciler.unobserved() if self.reconciler else 0

    def readiness(self) -> tuple[bool, str]:
        if not self.probe or self._closed:
            return False, "probes not attached"
        if self.sender:
            stuck = time.monotonic() - self._last_export_ok
            if stuck > 5 * RETRY_MAX_S:
                return False, f"delivery stuck: nothing accepted by the collector for {stuck:.0f} s"
        return True, "ok"

    # ---- main loop and teardown ------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        self.start()
        last_reconcile = last_memcgs = time.monotonic()
        while not self.stopping.is_set():
            self.probe.poll(POLL_MS)
            now = time.monotonic()
            if now - last_reconcile >= RECONCILE_S:
                # walking every memory cgroup costs more than one read of /proc/vmstat: less often
                walk = now - last_memcgs >= RECONCILE_MEMCGS_S
                self.reconciler.refresh(memcgs=walk)
                last_reconcile = now
                last_memcgs = now if walk else last_memcgs
        self.close()
        return 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        deadline = self._deadline = time.monotonic() + self.cfg.shutdown_timeout
        if self.probe:
            self.probe.poll(0)  # drain what the kernel already submitted
        self._samples.put(None)
        self._wake_sender.set()
        # the worker first (every kill into the spool), then the sender's last delivery attempt
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.sender and any(t.is_alive() for t in self._threads):
            # out of time: abort the exporter's own retries and its RPC in flight; what it was
            # sending stays in the spool
            self.sender.shutdown()
            for t in self._threads:
                t.join(1.0)
        if self.reconciler:
            self.reconciler.save()
            self.reconciler.close()
        pending = len(self.store.pending(1)) if self.store else 0
        if pending:
            log.warning("stopping with OOM events not yet accepted by the collector; they stay in the "
                        "spool and are sent at the next start")
        for fn in reversed(self._cleanup):
            try:
                fn()
            except Exception:  # noqa: BLE001 - teardown continues
                log.exception("error during shutdown")
        self._cleanup.clear()
