"""`otel-oom run`: wires the stages together, supervises their threads and tears them down.

    main thread    source.poll() -> callback copies the sample -> samples queue; reconciliation
    worker thread  pipeline.handle_sample: decode -> attribute -> store -> console/JSON/webhook -> metrics
                   (and pipeline.handle_record for the pressure source's events, pipeline.tick once a second)
    sender thread  delivery.sender: store -> OTLP export -> ack   (retries with backoff)
    pressure       around the kill: kernel memory notifications -> events -> samples queue (the
                   trackers that make oom.pressure / oom.no_kill of them run on the worker)

Set-up happens in `start()`, in data-flow order; every part registers its teardown, and `close()`
runs them once, in reverse order (it can be called twice). Signals only set a flag. A supervised
thread that dies makes `/readyz` fail and the agent stop with exit code 1 after its teardown, so an
orchestrator restarts it; what was stored stays in the spool for the next start.

It is over 400 lines because it is the one place where every stage is wired and its thread
supervised (kernel, attribution and runtime names, delivery, OTLP, and around the kill); the parts
themselves live in their modules (`around/wiring.py` for around the kill's).
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, Mapping, Optional, TextIO, Union

from .around import wiring as around_the_kill
from .attribution import clock
from .attribution.enrich import Enricher
from .attribution.runtime.settings import build_names
from .cgroupfs.hierarchy import detect_memory_hierarchy
from .cgroupfs.tree import CgroupResolver
from .config import RunConfig
from .delivery.parked import ParkedEvents
from .delivery.sender import RETRY_MAX_S, SpoolSender
from .delivery.store import DeliveryStore, MemoryStore, Store, open_store
from .errors import AgentError
from .kernel.libbpf import release_freed_memory
from .kernel.source import SampleSource, SourceFactory
from .otlp.spooled import SpoolCodec
from .pipeline import Pipeline
from .reconcile.recovery import Reconciler
from .sample_queue import ByteBoundedQueue, Empty

if TYPE_CHECKING:
    from .around.room import Around
    from .health import HealthServer
    from .otlp.metrics import Metrics
    from .pressure.events import Submitted

log = logging.getLogger("otel_oom.agent")

SAMPLE_QUEUE_BYTES = 16 << 20  # samples and records waiting for the worker (see sample_queue.py)
BURST_MAX = 64             # samples the worker takes at once: stored in one spool write (group commit)
POLL_MS = 100
# compare with /proc/vmstat oom_kill every cfg.reconcile_interval (default 5 s), and with every
# memory cgroup's own oom_kill counter this many times less often (default every 30 s)
RECONCILE_MEMCGS_EVERY = 6
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TICK_S = 1.0               # the worker's tick: reclaim timeouts, episodes that ran too long
PARKED_MIN_BYTES = 64 << 10  # events the collector refused for good, kept for inspection (spool_max_bytes / 16)


class Agent:
    def __init__(self, cfg: RunConfig, environ: Mapping[str, str] = os.environ, out: TextIO = sys.stdout,
                 source_factory: Optional[SourceFactory] = None) -> None:
        self.cfg = cfg
        self.environ = environ
        self.out = out
        self._source_factory = source_factory or self._open_probe
        self.drops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.stopping = threading.Event()
        # ring-buffer samples, and the pressure source's events (around the kill); None stops the worker
        self._samples: ByteBoundedQueue[Optional[Union[bytes, "Submitted"]]] = ByteBoundedQueue(SAMPLE_QUEUE_BYTES)
        self._threads: list[threading.Thread] = []
        self._dead: dict[str, str] = {}  # supervised thread name -> why it ended
        self._cleanup: list[Callable[[], None]] = []
        self._stoppers: list[Callable[[], None]] = []  # wake threads that wait on their own descriptors
        self._deadline = 0.0
        self._closed = False
        self.source: Optional[SampleSource] = None
        self.store: Optional[Store] = None
        self.sender: Optional[SpoolSender] = None
        self.metrics: Optional["Metrics"] = None
        self.reconciler: Optional[Reconciler] = None
        self.pipeline: Optional[Pipeline] = None
        self.around: Optional["Around"] = None
        self._export_pending = False  # the OTel SDK and exporters being set up after `ready`
        self._export_thread: Optional[threading.Thread] = None
        self.exit_code = 0

    # ---- set-up, in data-flow order --------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self._lower_own_oom_score()
        hierarchy = detect_memory_hierarchy()
        if hierarchy is None:
            log.warning("no memory cgroup hierarchy found: kills are reported without cgroup attribution")
        names = build_names(cfg.runtimes, self.faults)  # container names: watchers start below
        if names is not None:
            self._cleanup.append(names.close)
        enricher = Enricher(hierarchy, clock.boot_id(), CgroupResolver(hierarchy.mount) if hierarchy else None,
                            names=names)

        # the spool first: it is what most often cannot be used (path, permissions, a read-only
        # filesystem), and nothing should be exporting yet when the agent refuses to start
        delivers = cfg.otlp_settings is not None
        store: Store = open_store(cfg) if delivers else MemoryStore()
        self.store = store
        self._cleanup.append(store.close)
        notifier = None
        if cfg.webhook:
            from .sinks.webhook import WebhookNotifier

            notifier = WebhookNotifier(cfg.webhook)
            # what is left of --shutdown-timeout (see close()), at least half a second
            self._cleanup.append(lambda: notifier.close(max(0.5, self._deadline - time.monotonic())))

        # the kernel's count and log are read before the probes attach (see reconcile.recovery); the
        # state lives in the spool directory, so only with the spool's lock held (an agent without
        # one, e.g. --no-otlp, must not overwrite the state of another agent's spool)
        holds_spool = isinstance(store, DeliveryStore)
        self.reconciler = Reconciler(state_dir=cfg.spool_dir if holds_spool else None, hierarchy=hierarchy,
                                     boot_id=enricher.boot_id,
                                     next_seq=store.next_seq if isinstance(store, DeliveryStore) else None)
        self.source = self._source_factory(self._on_sample)
        self._cleanup.append(self.source.close)
        release_freed_memory()  # libbpf's parse of the kernel BTF, freed after the load
        commit_lock = threading.Lock()  # a kill is stored and accounted for before the sender may see it
        # around the kill: pressure, OOMs without a kill, reclaim times, episode traces
        around = self.around = around_the_kill.build(
            cfg, hierarchy, enricher.boot_id, self.submit, faults=self.faults,
            reclaim_events=bool(getattr(self.source, "reclaim_events", False)))
        # the OTel SDK and its exporters come after `ready` (_start_export): what is caught meanwhile
        # waits in the store, and its metrics in the pipeline's backlog
        self._export_pending = bool(cfg.otlp or cfg.prometheus)
        # records are stored as their OTLP messages; the sender reads them back (and older agents' JSON)
        self.codec = SpoolCodec(cfg.otlp_settings.log_limits) if cfg.otlp_settings else SpoolCodec()
        self.pipeline = Pipeline(enricher, self.drops, self.faults, store=store if delivers else None,
                                 commit_lock=commit_lock, on_stored=self._wake_sender,
                                 reconciler=self.reconciler, out=self.out, console=cfg.console, json=cfg.json,
                                 notifier=notifier, around=around, metrics_later=self._export_pending,
                                 codec=self.codec)

        health = None
        if cfg.listen:
            from .health import HealthServer

            health = HealthServer(cfg.listen, self.readiness)  # /metrics once the registry exists
            self._cleanup.append(health.close)

        # before the worker runs: kills that happened while no agent was running, from the kernel's
        # own record, then those of the attach window that the probe did not catch (what it caught
        # is in the sample queue by now); they are older than what the queue holds
        missed = self.reconciler.recover_missed()
        self.source.poll(0)
        window = self.reconciler.recover_window(self._queued_victims())
        self.reconciler.release_snapshot()
        for kill in missed + window:
            self.pipeline.handle_kill(kill)
        for i, watcher in enumerate(names.watchers if names else []):
            self._spawn(f"otel-oom-runtime-{watcher.client.kind}-{i}", functools.partial(watcher.run, self.stopping))
            if hasattr(watcher.client, "events"):
                self._spawn(f"otel-oom-runtime-{watcher.client.kind}-{i}-events",
                            functools.partial(watcher.follow, self.stopping))
        self._spawn("otel-oom-worker", self._work)
        if self.sender:
            self._spawn("otel-oom-sender", self.sender.run)
        if around.source is not None:
            self._cleanup.append(around.close)  # after the thread stopped (close() joins it first)
            self._spawn("otel-oom-pressure", around.run)
            self._stoppers.append(around.stop)
        plan = self.source.plan
        task = ""
        if plan.victim == "tracepoint":
            task = f" task={plan.task}" + (f" ({plan.task_symbol})" if plan.task == "kprobe" else "")
        log.info("ready in %.0f ms: hooks victim=%s context=%s%s%s, backend %s; delivery %s; around the kill: %s",
                 (time.monotonic() - t0) * 1000, plan.victim, plan.context,
                 f" ({plan.kprobe_symbol})" if plan.kprobe_symbol else "", task, plan.backend,
                 self._delivery_summary(), around.describe())
        if self._export_pending:
            self._export_thread = threading.Thread(target=self._start_export, args=(commit_lock, health),
                                                   name="otel-oom-export-setup", daemon=True)
            self._export_thread.start()

    def _start_export(self, commit_lock: threading.Lock, health: Optional["HealthServer"]) -> None:
        """After `ready`, on a thread of its own: the OTel SDK, the exporters, the sender.

        Importing and building them takes longer than everything before `ready` (~150 ms of
        imports); the probes are attached and the spool open by then, so a kill caught meanwhile is
        stored (and counted in the pipeline's backlog) and goes out as soon as the sender runs.
        """
        t0 = time.monotonic()
        try:
            self._build_export(commit_lock, health)
        except Exception as e:  # noqa: BLE001 - recorded, shown by /readyz, and stops the agent
            self._dead["otel-oom-export-setup"] = f"{type(e).__name__}: {e}"
            log.critical("cannot set up the OTLP export (%s); stopping (stored events stay in the spool)",
                         self._dead["otel-oom-export-setup"], exc_info=not isinstance(e, AgentError))
            self.exit_code = 1
            self.stopping.set()
            return
        self._export_pending = False
        release_freed_memory()  # what the SDK's imports and set-up freed
        log.info("export ready in %.0f ms after ready", (time.monotonic() - t0) * 1000)

    def _build_export(self, commit_lock: threading.Lock, health: Optional["HealthServer"]) -> None:
        from .otlp.metrics import Metrics
        from .otlp.resource import build_resource

        cfg = self.cfg
        assert self.pipeline is not None and self.store is not None and self.around is not None
        resource = build_resource(self.environ)
        self.metrics = metrics = Metrics(resource, cfg.otlp_settings, prometheus=cfg.prometheus,
                                         drop_counts=self.drop_counts, fault_counts=self.fault_counts,
                                         hooks=self.hooks_attached, unobserved=self.unobserved_kills)
        # the final metric export gets what is left of --shutdown-timeout (see close())
        self._cleanup.append(lambda: metrics.shutdown(max(0.05, self._deadline - time.monotonic()) * 1000))
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
        self._cleanup.append(export.shutdown)
        store = self.store
        parked = ParkedEvents(cfg.spool_dir if isinstance(store, DeliveryStore) else None,
                              max(PARKED_MIN_BYTES, cfg.spool_max_bytes // 16))
        sender = SpoolSender(store, export, self.drops, self.stopping,
                             burst_in_progress=lambda: not self._samples.empty(),
                             spooled=lambda: self.pipeline.kills_seen if self.pipeline else 0,
                             parked=parked, commit_lock=commit_lock, codec=self.codec)
        if self.stopping.is_set():
            return  # stopping before the export existed: what is stored stays in the spool
        self.sender = sender
        self._spawn("otel-oom-sender", sender.run)

    def export_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the export set up after `ready` is done (or failed); False if still going."""
        if self._export_thread is not None:
            self._export_thread.join(timeout)
        return not self._export_pending

    def _wake_sender(self) -> None:
        if self.sender is not None:
            self.sender.wake()

    def _open_probe(self, on_sample: Callable[[bytes], None]) -> SampleSource:
        from .kernel.backends import open_source

        cfg = self.cfg
        # the extras around the kill (user-space killers, reclaim) are libbpf programs: the bcc backend has none
        return open_source(on_sample, cfg.backend, cfg.victim_hook, cfg.context_hook, cfg.task_hook,
                           ring_bytes=cfg.ring_buffer_bytes, bcc_buffer=cfg.bcc_buffer,
                           extras=around_the_kill.probe_extras(cfg))

    def _delivery_summary(self) -> str:
        parts = []
        if self.cfg.otlp_settings is not None:
            logs = self.cfg.otlp_settings.logs
            parts.append(f"OTLP {logs.protocol} to {logs.endpoint.redacted}")
            parts.append(f"spool {self.cfg.spool_dir}" if self.cfg.spool_dir else "no spool (memory only)")
        if self.cfg.console:
            parts.append("console")
        if self.cfg.json:
            parts.append("JSON on stdout")
        if self.cfg.webhook:
            parts.append("webhook")
        return ", ".join(parts) or "none"

    def _lower_own_oom_score(self) -> None:
        if self.cfg.oom_score_adj is None:
            return
        want = self.cfg.oom_score_adj
        have: Optional[int]
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(want))
            with open("/proc/self/oom_score_adj") as f:
                have = int(f.read())
        except (OSError, ValueError) as e:
            have, why = None, getattr(e, "strerror", None) or str(e)
        else:
            why = "the kernel kept the old value"
        if have != want:
            # lowering needs CAP_SYS_RESOURCE (some kernels ignore the write instead of refusing it);
            # the agent still works, it is just as killable as any other process
            log.warning("could not set the agent's oom_score_adj to %d (%s; lowering needs CAP_SYS_RESOURCE)",
                        want, why)

    # ---- threads and their supervision -----------------------------------------------------
    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def supervised() -> None:
            try:
                target()
            except BaseException as e:  # noqa: BLE001 - recorded, shown by /readyz, and stops the agent
                self._dead[name] = f"{type(e).__name__}: {e}"
                log.critical("thread %s died: %s; stopping so the agent can be restarted (stored events stay "
                             "in the spool)", name, self._dead[name], exc_info=True)
                self.exit_code = 1
                self.stopping.set()
                return
            if not self.stopping.is_set():
                self._dead[name] = "ended unexpectedly"
                log.critical("thread %s ended unexpectedly; stopping", name)
                self.exit_code = 1
                self.stopping.set()

        t = threading.Thread(target=supervised, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _queued_victims(self) -> set[int]:
        """Victim pids (tgid and tid) of the samples waiting in the queue."""
        from .kernel.wire import DecodeError, decode

        pids: set[int] = set()
        for raw in self._samples.snapshot():
            if not isinstance(raw, bytes):
                continue  # an event of the pressure source (around the kill), or the stop
            try:
                ev = decode(raw, os.sysconf("SC_PAGE_SIZE"))
            except DecodeError:
                continue
            if ev is not None:
                pids.update(p for p in (ev.victim_tgid, ev.victim_pid) if p)
        return pids

    def _on_sample(self, raw: bytes) -> None:
        # runs inside the source's poll: copy and hand on, never block
        if not self._samples.put_nowait(raw):
            self.drops["queue_full"] += 1

    def submit(self, event: "Submitted") -> None:
        """An event from the pressure source's thread, for the worker (never blocks)."""
        if not self._samples.put_nowait(event):
            self.drops["queue_full"] += 1

    def _work(self) -> None:
        assert self.pipeline is not None
        next_tick = time.monotonic() + TICK_S
        while True:
            try:
                item = self._samples.get(timeout=max(0.0, next_tick - time.monotonic()))
            except Empty:
                item = b""
            # a burst: the samples queued behind this one go to the store in one write (group commit)
            burst: list[bytes] = []
            while isinstance(item, bytes) and item and len(burst) < BURST_MAX:
                burst.append(item)
                try:
                    item = self._samples.get_nowait()
                except Empty:
                    item = b""
            if burst:
                self.pipeline.handle_samples(burst)
            if item is None:
                self.pipeline.close()  # the open episodes' spans, before the sender's last attempt
                return
            if not isinstance(item, bytes):
                self.pipeline.handle_record(item)
            elif item:
                self.pipeline.handle_samples([item])  # the one after a full burst
            if time.monotonic() >= next_tick:
                self.pipeline.tick()
                next_tick = time.monotonic() + TICK_S

    # ---- observability of the agent itself ----------------------------------------------------
    def drop_counts(self) -> dict[str, int]:
        counts = dict(self.drops)
        if self.source:
            counts["ringbuf_full"] = self.source.stats().get("ringbuf_full", 0)
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
        if self._dead:
            return False, "; ".join(f"thread {n} died: {why}" for n, why in sorted(self._dead.items()))
        if not self.source or self._closed:
            return False, "probes not attached"
        problem = getattr(self.store, "problem", None)
        if problem:
            return False, f"spool unreadable: {problem}"
        if self.sender:
            stuck = self.sender.stuck_for()
            if stuck > 5 * RETRY_MAX_S:
                return False, f"delivery stuck: nothing accepted by the collector for {stuck:.0f} s"
        return True, "ok"

    # ---- main loop and teardown ------------------------------------------------------------
    def run(self) -> int:
        def stop(signum: int, _frame: object) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping.set()

        for sig in STOP_SIGNALS:
            signal.signal(sig, stop)
        try:
            self.start()
            self._loop()
        finally:
            self.close()
        return self.exit_code

    def _loop(self) -> None:
        assert self.source is not None and self.reconciler is not None
        last_reconcile = last_memcgs = time.monotonic()
        while not self.stopping.is_set():
            self.source.poll(POLL_MS)
            now = time.monotonic()
            if now - last_reconcile >= self.cfg.reconcile_interval:
                # walking every memory cgroup costs more than one read of /proc/vmstat: less often
                walk = now - last_memcgs >= self.cfg.reconcile_interval * RECONCILE_MEMCGS_EVERY
                self.reconciler.refresh(memcgs=walk)
                last_reconcile = now
                last_memcgs = now if walk else last_memcgs

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        # one budget for the whole stop: delivery first, then the final metric export (its last
        # quarter, at most 1 s), so a collector that never answers cannot stretch it
        timeout = self.cfg.shutdown_timeout
        self._deadline = time.monotonic() + timeout
        if self._export_thread is not None:
            # an export still being set up either starts the sender now or (stopping) leaves it off
            self._export_thread.join(max(0.0, self._deadline - time.monotonic()))
        deadline = self._deadline - (min(1.0, timeout / 4) if self.metrics else 0.0)
        if self.source:
            try:
                self.source.poll(0)  # drain what the kernel already submitted
            except Exception:  # noqa: BLE001 - teardown goes on; what stays in the ring buffer is counted by the kernel
                log.exception("could not drain the ring buffer at shutdown")
        for stop in self._stoppers:
            stop()
        for t in self._threads:
            if t.name == "otel-oom-pressure":  # its last records go into the queue before the worker's stop
                t.join(max(0.0, deadline - time.monotonic()))
        self._samples.put(None)
        if self.sender:
            self.sender.deadline = deadline
            self.sender.wake()
        # the worker first (every kill into the store), then the sender's last delivery attempt
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.sender and any(t.is_alive() for t in self._threads if t.name == "otel-oom-sender"):
            # out of time: abort the export in flight; what it was sending stays in the spool
            self.sender.exporter.shutdown()
        grace = time.monotonic() + 1.0  # one second in all for what is still running, not one each
        for t in self._threads:
            t.join(max(0.0, grace - time.monotonic()))
        self._report_undelivered()
        if self.reconciler:
            self.reconciler.save()
            self.reconciler.close()
        for fn in reversed(self._cleanup):
            try:
                fn()
            except Exception:  # noqa: BLE001 - teardown continues
                log.exception("error during shutdown")
        self._cleanup.clear()

    def _report_undelivered(self) -> None:
        if self.store is None or self.cfg.otlp_settings is None:
            return  # (a sender that never started, stopped during the export's set-up: the same)
        if isinstance(self.store, DeliveryStore):
            self.store.rescue_memory()  # the spool may take them now
        in_memory = self.store.in_memory()
        if in_memory:
            self.drops["shutdown_in_memory"] += in_memory
            if self.reconciler is not None:
                # they are the newest kills (the store keeps order): the next start recovers them
                # from the kernel log, where the state is kept
                self.reconciler.forget(in_memory)
            log.error("stopping with %d OOM event(s) held in memory only (no usable spool): they are lost "
                      "here (counted as shutdown_in_memory)%s", in_memory,
                      "; the next start recovers them from the kernel log" if self.reconciler
                      and self.reconciler.state_path else "")
        elif self.store.pending(1):
            log.warning("stopping with OOM events not yet accepted by the collector; they stay in the "
                        "spool and are sent at the next start")
