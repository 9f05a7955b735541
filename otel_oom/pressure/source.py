"""The pressure source: its own thread waits on the kernel's memory notifications and submits events.

What it waits on, in one epoll (notifier.py), without reading any file on a timer for a quiet cgroup:

  host       a PSI trigger on /proc/pressure/memory ("some" stall at the start level per window)
             -> HostPressure.
  cgroups    discovery.py: inotify on every cgroup directory and limit file -> CgroupAppeared (a
             limited cgroup, with its limit), CgroupUnlimited, CgroupRemoved; registry.py: per
             limited cgroup the v1 eventfds or the v2 PSI trigger and memory.events.local watch
             -> CgroupSignal(path, kind, count).
  sweep      every `scan_interval_s`: what no notification tells (v2 usage, v1 on a read-only
             cgroupfs) -> CgroupSignal; every `RESCAN_EVERY` sweeps a full rescan of the tree
             and of every limit (catches what a watch missed, and an inotify queue overflow).

A descriptor that keeps firing is disarmed until the next tick (once a second while anything is
disarmed or unread): a storm costs one wake-up per second per cgroup. The cgroups are registered
by `run()`, in the background: a v1 usage threshold costs the kernel an RCU grace period (about
10 ms) each, which for thousands of cgroups must not delay the kills.

It calls nobody: every event goes to `submit` (the agent's worker queue), a few per queue item
(`events.Batch`), and the trackers around the kill read them on the worker thread.
"""
from __future__ import annotations

import logging
import resource
import select
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from ..cgroupfs import memcg
from ..cgroupfs.hierarchy import MemoryHierarchy
from ..cgroupfs.psi import HOST_PSI
from . import inotify as ino
from .discovery import CREATED, DELETED, FILE, LIMIT, OVERFLOW, Discovery
from .events import BATCH_MAX, REPORT_EVERY_S, Batch, CgroupRemoved, HostPressure, SourceEvent, Submitted
from .notifier import Notifier
from .psi_trigger import PsiTrigger, PsiUnavailable
from .registry import Owner, Registry
from .thresholds import Thresholds

log = logging.getLogger("otel_oom.pressure")

TICK_S = REPORT_EVERY_S      # while busy: disarmed descriptors re-armed, counter files read
RESCAN_EVERY = 6             # sweeps between full rescans of the tree
_HOST: Owner = ("", "host")
_INOTIFY: Owner = ("", "inotify")


@dataclass(frozen=True)
class WatchSettings:
    thresholds: Thresholds = Thresholds()
    scan_interval_s: float = 10.0
    max_cgroups: int = 10000       # limited cgroups with notifications registered
    host: bool = True              # host PSI
    memcgs: bool = True            # watch memory cgroups (for pressure and OOMs without a kill)
    report: bool = True            # pressure too (False: only the OOM notifications)


class PressureSource:
    """Run `run()` on its own thread; `stop()` from any thread; `close()` after it returned."""

    def __init__(self, hierarchy: Optional[MemoryHierarchy], settings: WatchSettings,
                 submit: Callable[[Submitted], None], host_psi: str = HOST_PSI,
                 clock: Callable[[], float] = time.monotonic, faults: Optional["Counter[str]"] = None) -> None:
        self.hierarchy = hierarchy
        self.settings = settings
        self.submit = submit
        self.host_psi = host_psi
        self._clock = clock
        self.faults: Counter[str] = faults if faults is not None else Counter()
        self._stop = threading.Event()
        self.notifier: Notifier[Owner] = Notifier()
        self._host_trigger: Optional[PsiTrigger] = None
        self._inotify: Optional[ino.Inotify] = None
        self.discovery: Optional[Discovery] = None
        self.registry: Optional[Registry] = None
        self._warned: set[str] = set()
        self._outbox: list[SourceEvent] = []
        self._sweeps = 0

    # ---- set-up ------------------------------------------------------------------------------
    def start(self) -> None:
        """The host trigger and inotify, on the caller's thread (errors show at start-up)."""
        _raise_nofile_limit()
        if self.settings.host:
            try:
                self._host_trigger = PsiTrigger(self.host_psi, self.settings.thresholds.stall_percent,
                                                self.settings.thresholds.window_s)
                self.notifier.add(self._host_trigger.fileno(), _HOST, select.EPOLLPRI)
            except (PsiUnavailable, ValueError) as e:
                log.warning("no host memory pressure warning: %s", e)
        h = self.hierarchy
        if h is None or not self.settings.memcgs:
            return
        try:
            self._inotify = ino.Inotify()
            self.notifier.add(self._inotify.fileno(), _INOTIFY)
        except OSError as e:
            log.warning("no inotify (%s): new cgroups are found by the rescan every %.0f s",
                        e.strerror, self.settings.scan_interval_s * RESCAN_EVERY)
        self.discovery = Discovery(h.mount, memcg.limit_file(h.version), self._inotify, self._warn_once)
        self.registry = Registry(h.version, self.discovery, self.notifier, self.settings.thresholds,
                                 self.settings.max_cgroups, self.settings.report, self._warn_once, self._clock)

    def watched(self) -> int:
        return len(self.registry.regs) if self.registry else 0

    def unwatched(self) -> int:
        return self.registry.unwatched if self.registry else 0

    def host_watched(self) -> bool:
        return self._host_trigger is not None

    # ---- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self.notifier.stop()

    def run(self) -> None:
        if self.registry is not None:
            t0 = self._clock()
            self._rescan()
            self._flush()
            log.info("watching %d limited memory cgroups for %s%s (registered in %.1f s)", self.watched(),
                     "pressure" if self.settings.report else "OOMs",
                     f", {self.unwatched()} not watched" if self.unwatched() else "", self._clock() - t0)
        next_tick = next_sweep = self._clock() + self.settings.scan_interval_s
        while not self._stop.is_set():
            now = self._clock()
            busy = self._busy()
            if busy and next_tick > now + TICK_S:
                next_tick = now + TICK_S
            wake_at = min(next_sweep, next_tick if busy else next_sweep)
            try:
                for owner, fd, mask in self.notifier.wait(wake_at - now):
                    self._dispatch(owner, fd, mask)
                now = self._clock()
                if self._busy() and now >= next_tick:
                    self._tick()
                    next_tick = now + TICK_S
                if now >= next_sweep:
                    self._sweep()
                    next_sweep = now + self.settings.scan_interval_s
                self._flush()
            except Exception:  # noqa: BLE001 - a fault here must not stop the kills: counted, then on
                self.faults["pressure"] += 1
                if self.faults["pressure"] == 1:
                    log.exception("the pressure source failed (counted in otel_oom.faults{stage=pressure}); "
                                  "it goes on")
                self._stop.wait(TICK_S)  # never a busy loop on a repeating fault
                next_tick, next_sweep = self._clock() + TICK_S, max(next_sweep, self._clock() + TICK_S)

    def _busy(self) -> bool:
        return self.registry is not None and self.registry.busy()

    def _dispatch(self, owner: Owner, fd: int, mask: int) -> None:
        if owner == _HOST:
            self._emit([HostPressure()])
        elif owner == _INOTIFY:
            self._on_inotify()
        elif self.registry is not None:
            events = self.registry.fired(owner, fd, mask)
            self._gone(owner[0]) if events is None else self._emit(events)

    def _on_inotify(self) -> None:
        assert self.discovery is not None and self.registry is not None
        for change in self.discovery.changes():
            if change.kind == OVERFLOW:
                self._rescan()
            elif change.kind in (CREATED, LIMIT):
                self._emit(self.registry.consider(change.path))
            elif change.kind == DELETED:
                self._gone(change.path)
            elif change.kind == FILE:
                events = self.registry.events_changed(change.path)
                self._gone(change.path) if events is None else self._emit(events)

    def _rescan(self) -> None:
        assert self.discovery is not None and self.registry is not None
        found, gone = self.discovery.rescan(self._stop.is_set)
        for path in gone:
            self._gone(path)
        for path in found:
            if path != "/" and not self._stop.is_set():
                self._emit(self.registry.consider(path))

    def _gone(self, path: str) -> None:
        """A cgroup (and so its subtree) was removed."""
        assert self.discovery is not None and self.registry is not None
        for p in self.discovery.gone(path):
            self.registry.drop(p)
        self._emit([CgroupRemoved(path)])

    def _tick(self) -> None:
        assert self.registry is not None
        events, gone = self.registry.tick()
        self._emit(events)
        for path in gone:
            self._gone(path)

    def _sweep(self) -> None:
        self._sweeps += 1
        if self.registry is None or self.discovery is None:
            return
        if self._sweeps % RESCAN_EVERY == 0 or self._inotify is None:
            self._rescan()
            # limits are notified (inotify on the limit files); this catches what a watch missed
            for path in sorted(self.discovery.known):
                if path != "/":
                    self._emit(self.registry.consider(path))
        self._emit(self.registry.sweep())

    # ---- out ---------------------------------------------------------------------------------
    def _emit(self, events: list[SourceEvent]) -> None:
        self._outbox += events
        while len(self._outbox) >= BATCH_MAX:
            batch, self._outbox = self._outbox[:BATCH_MAX], self._outbox[BATCH_MAX:]
            self.submit(Batch(tuple(batch)))

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if len(batch) == 1:
            self.submit(batch[0])
        elif batch:
            self.submit(Batch(tuple(batch)))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
        if self._host_trigger:
            self.notifier.remove(self._host_trigger.fileno())
            self._host_trigger.close()
        if self._inotify:
            self.notifier.remove(self._inotify.fileno())
            self._inotify.close()
        self.notifier.close()


def _raise_nofile_limit() -> None:
    # three eventfds per limited v1 cgroup, one PSI fd per v2 cgroup: use what the hard limit allows
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
