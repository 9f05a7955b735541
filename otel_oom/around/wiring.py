"""Wiring of the records around the kill (issue 13), so `agent.py` stays wiring in a few lines.

`build(cfg, hierarchy, boot_id, submit)` makes what `cfg.events` asks for: the pressure watcher
(its thread body, stop and close), the no-kill tracker it feeds, the reclaim tracker and, with
--traces, the episode tracker. Records from the watcher's thread reach the pipeline only through
`submit` (the agent's worker queue), so the pipeline keeps running on one thread.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..cgroupfs.hierarchy import MemoryHierarchy
from ..config import RunConfig
from ..pressure.episode import Thresholds
from ..pressure.watcher import PressureWatcher, WatchSettings
from ..schema.records import Record
from .episodes import EpisodeTracker
from .no_kill import NoKillTracker
from .reclaim import ReclaimTracker

log = logging.getLogger("otel_oom.around.wiring")


@dataclass
class Watchers:
    pressure: Optional[PressureWatcher] = None
    no_kill: Optional[NoKillTracker] = None
    reclaim: Optional[ReclaimTracker] = None
    episodes: Optional[EpisodeTracker] = None

    def describe(self) -> str:
        parts = []
        if self.pressure is not None:
            parts.append("pressure (memory cgroups" + (", host PSI" if self.pressure.host_watched() else "") + ")")
        if self.no_kill is not None:
            parts.append("OOMs without a kill")
        if self.reclaim is not None:
            parts.append("reclaim times")
        if self.episodes is not None:
            parts.append("episode traces")
        return ", ".join(parts) or "kills only"

    def pressure_active(self) -> dict[str, int]:
        return self.pressure.active() if self.pressure else {}

    def no_kill_active(self) -> dict[str, int]:
        return self.no_kill.active() if self.no_kill else {}

    def cgroups(self) -> dict[str, int]:
        if self.pressure is None:
            return {}
        return {"watched": self.pressure.watched(), "unwatched": self.pressure.unwatched}

    def feed_metrics(self, metrics: Any) -> None:
        """The gauges of `otlp.episode_metrics` read these watchers."""
        metrics.episodes.pressure_active = self.pressure_active
        metrics.episodes.no_kill_active = self.no_kill_active
        metrics.episodes.cgroups = self.cgroups


def probe_extras(cfg: RunConfig) -> Any:
    """The optional BPF programs to load (`kernel.probe.Extras`): the signal hook for user-space
    OOM killers, and the reclaim hooks."""
    from ..kernel.probe import Extras

    ev = cfg.events
    return Extras(signals=ev.on("userspace_kill"), killers=ev.userspace_killers, reclaim=ev.on("reclaim"))


def trace_sender(cfg: RunConfig, resource: Any, on_failure: Callable[[], None]) -> Any:
    """--traces: the exporter of the episode spans (`otlp.traces.TraceSender`), else None."""
    if not cfg.events.traces or cfg.otlp_settings is None or cfg.otlp_settings.traces is None:
        return None
    from ..otlp.traces import TraceSender

    return TraceSender(resource, cfg.otlp_settings.traces, on_failure=on_failure)


def build(cfg: RunConfig, hierarchy: Optional[MemoryHierarchy], boot_id: str,
          submit: Callable[[Record], None], reclaim_events: bool, faults: "Counter[str]") -> Watchers:
    """`reclaim_events`: the probe reports the victims' reaper and exit events (else no oom.reclaim)."""
    ev = cfg.events
    w = Watchers()
    if ev.on("no_kill") and hierarchy is not None:
        w.no_kill = NoKillTracker(hierarchy.version, hierarchy.mount, boot_id, submit, clear_s=ev.clear_seconds / 2)
    if ev.on("pressure") or w.no_kill is not None:
        settings = WatchSettings(
            thresholds=Thresholds(stall_percent=ev.stall_percent, usage_percent=ev.usage_percent,
                                  window_s=ev.psi_window_s, clear_seconds=ev.clear_seconds),
            scan_interval_s=ev.scan_interval_s, max_cgroups=ev.max_cgroups,
            host=ev.on("pressure"), memcgs=True, report=ev.on("pressure"))
        w.pressure = PressureWatcher(hierarchy, settings, boot_id, submit, no_kill=w.no_kill, faults=faults)
        w.pressure.start()
    if ev.on("reclaim") and reclaim_events:
        w.reclaim = ReclaimTracker(timeout_s=ev.reclaim_timeout_s)
    if ev.traces:
        w.episodes = EpisodeTracker(expect_reclaim=w.reclaim is not None)
    return w
