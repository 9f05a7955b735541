"""`otel-oom run`: wires the stages together; the supervisor (`service.py`) runs and stops them.

    main thread   source.poll() -> the samples queue; the kernel's counters every reconcile interval
    worker        worker.py: pipeline: decode -> attribute -> store -> show -> count
    sender        delivery.sender: store -> OTLP export -> ack   (retries with backoff)
    and           pressure (around the kill), runtime-* (container names), webhook, health, export-setup

`start()` builds the parts in data-flow order and registers each with the supervisor in dependency
order; `close()` has it stop them in reverse within --shutdown-timeout (delivery first, the final
metric export last); it can be called twice. Signals only set a flag (own_process.py). A service
thread that dies makes `/readyz` fail and the agent stop with exit code 1 after its teardown; the
spool keeps what was stored.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, Mapping, Optional, TextIO

from .around import wiring as around_the_kill
from .attribution import clock
from .attribution.enrich import Enricher
from .attribution.runtime.settings import build_names
from .cgroupfs.hierarchy import detect_memory_hierarchy
from .cgroupfs.tree import CgroupResolver
from .config import RunConfig
from .delivery.parked import ParkedEvents
from .delivery.sender import SpoolSender
from .delivery.store import DeliveryStore, MemoryStore, Store, open_store
from .errors import AgentError
from .kernel.libbpf import release_freed_memory
from .kernel.source import Sample, SampleSource, SourceFactory
from .kube import build as build_kube
from .otlp.spooled import SpoolCodec
from .own_process import (
    OUT_OF_MEMORY,
    check_room_for_grpc,
    install_signal_handlers,
    install_thread_hook,
    limit_malloc_arenas,
    lower_oom_score,
    ready_line,
    status_line,
)
from .pipeline import Pipeline
from .reconcile.recovery import Reconciler
from .sample_queue import ByteBoundedQueue
from .service import Resource, Supervisor, ThreadService
from .worker import Item, Settle, Worker, queued_victims

if TYPE_CHECKING:
    from .around.room import Around
    from .health import HealthServer
    from .otlp.metrics import Metrics
    from .pressure.events import Submitted

log = logging.getLogger("otel_oom.agent")

SAMPLE_QUEUE_BYTES = 16 << 20  # samples and records waiting for the worker (see sample_queue.py)
POLL_MS = 100
# compare with /proc/vmstat oom_kill every cfg.reconcile_interval (default 5 s), and with every
# memory cgroup's own oom_kill counter this many times less often (default every 30 s)
RECONCILE_MEMCGS_EVERY = 6
PARKED_MIN_BYTES = 64 << 10  # events the collector refused for good, kept for inspection (spool_max_bytes / 16)
# places kept in the teardown order for what the export set-up makes after `ready`
METRICS, EXPORTERS, SENDER = "otel-oom-metrics", "otel-oom-exporters", "otel-oom-sender"


class Agent:
    def __init__(self, cfg: RunConfig, environ: Mapping[str, str] = os.environ, out: TextIO = sys.stdout,
                 source_factory: Optional[SourceFactory] = None, proc_root: str = "/proc",
                 kmsg_path: str = "/dev/kmsg") -> None:
        self.cfg = cfg
        self.environ = environ
        self.out = out
        self.proc_root, self.kmsg_path = proc_root, kmsg_path  # the kernel's counters and log
        self._source_factory = source_factory or self._open_probe
        self.drops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._status_wanted = threading.Event()
        # ring-buffer samples, the pressure source's events (around the kill), Settle markers; None stops the worker
        self._samples: ByteBoundedQueue[Item] = ByteBoundedQueue(SAMPLE_QUEUE_BYTES)
        self.supervisor = Supervisor(on_failure=self._service_failed, stopping=self.stopping)
        self._closed = False
        self.source: Optional[SampleSource] = None
        self.store: Optional[Store] = None
        self.sender: Optional[SpoolSender] = None
        self.metrics: Optional["Metrics"] = None
        self.reconciler: Optional[Reconciler] = None
        self.pipeline: Optional[Pipeline] = None
        self.around: Optional["Around"] = None
        self._export_pending = False  # the OTel SDK and exporters being set up after `ready`
        self.exit_code = 0

    def _service_failed(self, name: str, why: str) -> None:
        self.exit_code = 1
        self.stopping.set()

    # ---- set-up, in data-flow order --------------------------------------------------------
    def start(self) -> None:
        cfg, sv = self.cfg, self.supervisor
        t0 = time.monotonic()
        lower_oom_score(cfg.oom_score_adj)
        sv.reserve(METRICS, final=True)  # the final metric export comes last of all
        hierarchy = detect_memory_hierarchy()
        if hierarchy is None:
            log.warning("no memory cgroup hierarchy found: kills are reported without cgroup attribution")
        names = build_names(cfg.runtimes, self.faults)  # container names: watchers start below
        if names is not None:
            sv.add(Resource("otel-oom-runtime-names", names.close))
        boot_id = clock.boot_id(self.proc_root)
        enricher = Enricher(hierarchy, boot_id, CgroupResolver(hierarchy.mount) if hierarchy else None, names=names)

        # the spool first: it is what most often cannot be used (path, permissions, a read-only
        # filesystem), and nothing should be exporting yet when the agent refuses to start
        delivers = cfg.otlp_settings is not None
        store = self.store = open_store(cfg, boot_id) if delivers else MemoryStore()
        sv.add(Resource("otel-oom-store", self._close_store, check=self._store_health))
        notifier = None
        if cfg.webhook:
            from .sinks.webhook import WebhookNotifier

            notifier = WebhookNotifier(cfg.webhook)
            sv.add(notifier)

        # the kernel's count and log are read before the probes attach (see reconcile.recovery); the
        # ledger lives in the spool, so only an agent holding the spool's lock keeps state across restarts
        ledger = store if isinstance(store, DeliveryStore) else None
        self.reconciler = Reconciler(ledger, hierarchy, boot_id, self.proc_root, self.kmsg_path,
                                     state_dir=cfg.spool_dir if ledger else None)
        self._hierarchy = hierarchy  # the kmsg backend's kill counters read it
        self.source = self._source_factory(self._on_sample)
        sv.add(Resource("otel-oom-probe", self.source.close))
        release_freed_memory()  # libbpf's parse of the kernel BTF, freed after the load
        # around the kill: pressure, OOMs without a kill, reclaim times, episode traces
        around = self.around = around_the_kill.build(
            cfg, hierarchy, boot_id, self.submit, faults=self.faults,
            reclaim_events=bool(getattr(self.source, "reclaim_events", False)))
        # the OTel SDK and its exporters come after `ready` (_start_export): what is caught meanwhile
        # waits in the store, and its metrics in the pipeline's backlog
        self._export_pending = bool(cfg.otlp or cfg.prometheus)
        kube = build_kube(cfg.kube, cfg.runtimes, self.submit, self.drops)  # Events on the Pod, the kubelet's report
        # records are stored as their OTLP messages; the sender reads them back (and older agents' JSON)
        self.codec = SpoolCodec(cfg.otlp_settings.log_limits) if cfg.otlp_settings else SpoolCodec()
        self.pipeline = Pipeline(enricher, self.drops, self.faults, store=store if delivers else None,
                                 on_stored=self._wake_sender, reconciler=self.reconciler, out=self.out,
                                 console=cfg.console, json=cfg.json, notifier=notifier, around=around,
                                 metrics_later=self._export_pending, codec=self.codec,
                                 on_kill=kube.notify if kube else None)
        health = None
        if cfg.listen:
            from .health import HealthServer

            health = HealthServer(cfg.listen, self.readiness, start=False)  # /metrics once the registry exists
            sv.add(health)
        sv.reserve(EXPORTERS)
        sv.reserve(SENDER)

        self._recover()
        for i, watcher in enumerate(names.watchers if names else []):
            name = f"otel-oom-runtime-{watcher.client.kind}-{i}"
            sv.add(ThreadService(name, functools.partial(watcher.run, self.stopping), watcher.stop))
            if hasattr(watcher.client, "events"):
                sv.add(ThreadService(f"{name}-events", functools.partial(watcher.follow, self.stopping), watcher.stop))
        sv.add(ThreadService("otel-oom-worker", Worker(self._samples, self.pipeline).run, self._stop_worker))
        for service in kube.services if kube else ():  # after the worker feeding them: they stop first
            sv.add(service)
        if around.source is not None:
            sv.add(Resource("otel-oom-pressure-files", around.close))  # after its thread stopped
            sv.add(ThreadService("otel-oom-pressure", around.run, around.stop))
        log.info("%s", ready_line(self.source.plan, cfg, around.describe(), time.monotonic() - t0))
        if self._export_pending:
            sv.add(ThreadService("otel-oom-export-setup", functools.partial(self._start_export, health), ends=True))

    def _recover(self) -> None:
        """Before the worker runs: kills that happened while no agent was running, from the kernel's
        own record, then those of the attach window that the probe did not catch (what it caught is in
        the sample queue by now); they are older than what the queue holds."""
        assert self.reconciler is not None and self.pipeline is not None and self.source is not None
        self.pipeline.handle_kills(self.reconciler.recover_missed())
        self.reconciler.start()  # the ledger: everything up to the start-up's count is accounted for
        self.source.poll(0)
        if self.source.plan.backend != "kmsg":  # which follows the log from the start-up reading on: no window
            self.pipeline.handle_kills(self.reconciler.recover_window(queued_victims(self._samples)))
        self.reconciler.release_snapshot()

    def _start_export(self, health: Optional["HealthServer"]) -> None:
        """After `ready`, on a thread of its own: the OTel SDK, the exporters, the sender (~150 ms of
        imports: a kill caught meanwhile is stored, and counted in the pipeline's backlog). A failure
        here is the service's: /readyz names it and the agent stops with exit code 1."""
        t0 = time.monotonic()
        otlp = self.cfg.otlp_settings
        if otlp is not None and "grpc" in (otlp.logs.protocol, otlp.metrics.protocol):
            check_room_for_grpc()
        self._build_export(health)
        self._export_pending = False
        release_freed_memory()  # what the SDK's imports and set-up freed
        log.info("export ready in %.0f ms after ready", (time.monotonic() - t0) * 1000)

    def _build_export(self, health: Optional["HealthServer"]) -> None:
        from .otlp.metrics import Metrics
        from .otlp.resource import build_resource

        cfg, sv = self.cfg, self.supervisor
        assert self.pipeline is not None and self.store is not None and self.around is not None
        resource = build_resource(self.environ)
        self.metrics = metrics = Metrics(resource, cfg.otlp_settings, prometheus=cfg.prometheus,
                                         drop_counts=self.drop_counts, fault_counts=self.fault_counts,
                                         hooks=self.hooks_attached, unobserved=self.unobserved_kills)
        # the final metric export gets what is left of --shutdown-timeout (Supervisor.stop_all)
        sv.fill(Resource(METRICS, close_within=lambda left: metrics.shutdown(max(0.05, left) * 1000),
                         check=metrics.healthy))
        self.around.feed_metrics(metrics)
        self.pipeline.attach_metrics(metrics)
        if health is not None and cfg.prometheus:
            health.serve_metrics(metrics.prometheus_registry)
        if cfg.otlp_settings is None:
            return
        from .otlp.export import OtlpExport

        # log records, and with --traces the episodes' spans: one acknowledged export for both
        export = OtlpExport(resource, cfg.otlp_settings, traces=cfg.events.traces,
                            on_failure=metrics.record_export_failure)
        sv.fill(Resource(EXPORTERS, export.shutdown))
        store = self.store
        parked = ParkedEvents(cfg.spool_dir if isinstance(store, DeliveryStore) else None,
                              max(PARKED_MIN_BYTES, cfg.spool_max_bytes // 16))
        sender = SpoolSender(store, export, self.drops, self.stopping,
                             burst_in_progress=lambda: not self._samples.empty(),
                             spooled=lambda: self.pipeline.kills_seen if self.pipeline else 0,
                             parked=parked, codec=self.codec)
        if self.stopping.is_set():
            return  # stopping before the export existed: what is stored stays in the spool
        self.sender = sender
        sv.fill(ThreadService(SENDER, sender.run, sender.wake, deadline=sender.stop_by,
                              abort=sender.exporter.shutdown, check=sender.health))

    def export_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the export set up after `ready` is done (or failed); False if still going."""
        setup = self.supervisor.get("otel-oom-export-setup")
        if setup is not None:
            setup.join(1e9 if timeout is None else timeout)
        return not self._export_pending

    # ---- the services' parts -----------------------------------------------------------------
    def _wake_sender(self) -> None:
        if self.sender is not None:
            self.sender.wake()

    def _stop_worker(self) -> None:
        if self.source is not None:
            try:
                self.source.poll(0)  # what the kernel already submitted goes in before the stop
            except Exception:  # noqa: BLE001 - teardown goes on; what stays in the ring buffer is counted by the kernel
                log.exception("could not drain the ring buffer at shutdown")
        self._samples.put(None)

    def _store_health(self) -> tuple[bool, str]:
        problem = getattr(self.store, "problem", None)
        return (False, f"spool unreadable: {problem}") if problem else (True, "ok")

    def _close_store(self) -> None:
        store = self.store
        if store is None:
            return
        if self.cfg.otlp_settings is not None:
            # (a sender that never started, stopped during the export's set-up: the same)
            lost = store.report_undelivered()
            if lost:
                self.drops["shutdown_in_memory"] += lost
        store.close()

    def _open_probe(self, on_sample: Callable[[Sample], None]) -> SampleSource:
        from .kernel.backends import KernelLog, open_source

        cfg, log_end = self.cfg, self.reconciler.log_end() if self.reconciler else None
        # the extras around the kill (user-space killers, reclaim) are BPF programs (libbpf and bcc);
        # the kmsg backend follows the log from where the reconciler's start-up reading of it ended
        return open_source(on_sample, cfg.backend, cfg.victim_hook, cfg.context_hook, cfg.task_hook,
                           ring_bytes=cfg.ring_buffer_bytes, bcc_buffer=cfg.bcc_buffer,
                           extras=around_the_kill.probe_extras(cfg),
                           kernel_log=KernelLog(self.kmsg_path, log_end, self._hierarchy, self.proc_root))

    def _on_sample(self, raw: Sample) -> None:
        # runs inside the source's poll: copy and hand on, never block
        if not self._samples.put_nowait(raw):
            self.drops["queue_full"] += 1

    def submit(self, event: "Submitted") -> None:
        """An event from the pressure source's thread, for the worker (never blocks)."""
        if not self._samples.put_nowait(event):
            self.drops["queue_full"] += 1

    # ---- observability of the agent itself ----------------------------------------------------
    def drop_counts(self) -> dict[str, int]:
        counts = dict(self.drops)
        if self.source:
            stats = self.source.stats()
            counts["ringbuf_full"] = stats.get("ringbuf_full", 0)
            counts.update({r: stats[r] for r in ("kmsg_overrun", "kmsg_malformed") if r in stats})  # kmsg backend
        if self.store is not None:
            counts.update(self.store.dropped)
        notifier = self.pipeline.notifier if self.pipeline else None
        if notifier:
            # a kill is still in the spool and at the collector; only its chat message was lost
            counts["webhook_dropped"] = notifier.dropped
        return counts

    def fault_counts(self) -> dict[str, int]:
        return dict(self.faults)

    def hooks_attached(self) -> list[tuple[str, str]]:
        if not self.source or self._closed:
            return []
        plan = self.source.plan
        hooks = [(plan.victim, "victim")]
        if plan.context != "none":
            hooks.append((plan.context, "context"))
        if plan.task != "none":
            hooks.append((plan.task, "task"))
        return hooks

    def unobserved_kills(self) -> int:
        return self.reconciler.unobserved() if self.reconciler else 0

    def readiness(self) -> tuple[bool, str]:
        """/readyz: every service healthy, and the probes attached."""
        ok, why = self.supervisor.healthy()
        if not ok:
            return ok, why
        if not self.source or self._closed:
            return False, "probes not attached"
        return True, "ok"

    # ---- main loop and teardown ------------------------------------------------------------
    def run(self) -> int:
        install_signal_handlers(self.stopping, self._status_wanted)
        install_thread_hook()
        limit_malloc_arenas()
        try:
            try:
                self.start()
                self._loop()
            finally:
                self.close()
        except MemoryError:
            raise AgentError(OUT_OF_MEMORY) from None  # one line, exit 1 (cli)
        return self.exit_code

    def _loop(self) -> None:
        assert self.source is not None and self.reconciler is not None
        last_reconcile = last_memcgs = time.monotonic()
        while not self.stopping.is_set():
            self.source.poll(POLL_MS)
            if self._status_wanted.is_set():  # SIGUSR1, SIGUSR2
                self._status_wanted.clear()
                self._log_status()
            now = time.monotonic()
            if now - last_reconcile >= self.cfg.reconcile_interval:
                # walking every memory cgroup costs more than one read of /proc/vmstat: less often
                walk = now - last_memcgs >= self.cfg.reconcile_interval * RECONCILE_MEMCGS_EVERY
                settled = self.reconciler.refresh(memcgs=walk)
                if settled is not None:
                    # right after the reading, before the next poll: see worker.Settle
                    self._samples.put(Settle(settled))
                last_reconcile = now
                last_memcgs = now if walk else last_memcgs

    def _log_status(self) -> None:
        spool = getattr(self.store, "spool", None)
        log.info("%s", status_line(self.readiness(), self.pipeline.kills_seen if self.pipeline else 0,
                                   spool.stats()["pending"] if spool is not None else 0,
                                   self.store.in_memory() if self.store is not None else 0,
                                   self.drop_counts(), self.unobserved_kills()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        # one budget for the whole stop: delivery first, then the final metric export (its last
        # quarter, at most 1 s), so a collector that never answers cannot stretch it
        timeout = self.cfg.shutdown_timeout
        self.supervisor.stop_all(timeout, final_share=min(1.0, timeout / 4))
