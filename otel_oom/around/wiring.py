"""The around-the-kill room's one entry point for agent.py: `build()` makes what `cfg.events` asks for.

  pressure   the pressure source (its own thread) and the pressure tracker (oom.pressure)
  no_kill    the no-kill tracker (oom.no_kill), fed by the same source (its OOM notifications)
  reclaim    the reclaim tracker (oom.reclaim), when the probe reports the victims' reclaim events
  --traces   the episode tracker (trace ids on every record, the span per episode)

Events from the source's thread reach the trackers only through `submit` (the agent's worker
queue), so everything around the kill runs on the worker thread. `probe_extras` is the room's
part of the probe; its spans are exported with the log records (`otlp/export.py`).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional

from ..cgroupfs.hierarchy import MemoryHierarchy
from ..cgroupfs.host import HostFiles
from ..cgroupfs.memcg import MemcgFiles
from ..config import RunConfig
from ..pressure.events import REPORT_EVERY_S, Submitted
from ..pressure.source import PressureSource, WatchSettings
from ..pressure.thresholds import Thresholds
from .episodes import EpisodeTracker
from .no_kill import NoKillTracker
from .pressure import PressureTracker
from .reclaim import ReclaimTracker
from .room import Around


def probe_extras(cfg: RunConfig) -> Any:
    """The optional BPF programs to load (`kernel.probe.Extras`): the signal hook for user-space
    OOM killers, and the reclaim hooks."""
    from ..kernel.probe import Extras

    ev = cfg.events
    return Extras(signals=ev.on("userspace_kill"), killers=ev.userspace_killers, reclaim=ev.on("reclaim"))


def build(cfg: RunConfig, hierarchy: Optional[MemoryHierarchy], boot_id: str,
          submit: Callable[[Submitted], None], reclaim_events: bool, faults: "Counter[str]") -> Around:
    """`reclaim_events`: the probe reports the victims' reaper and exit events (else no oom.reclaim).
    The source's host trigger and inotify are set up here (errors show at start-up); its thread is
    `Around.run`, for the agent to start."""
    ev = cfg.events
    thresholds = Thresholds(stall_percent=ev.stall_percent, usage_percent=ev.usage_percent,
                            window_s=ev.psi_window_s, clear_seconds=ev.clear_seconds)
    files = MemcgFiles(hierarchy.version, hierarchy.mount) if hierarchy is not None else None
    # an OOM without a kill ends after half of --pressure-clear-seconds without another OOM; a
    # continuing one is reported once a second, so the window holds at least two reports
    clear_s = max(ev.clear_seconds / 2, 2 * REPORT_EVERY_S)
    no_kill = NoKillTracker(files, boot_id, clear_s=clear_s) if ev.on("no_kill") and files is not None else None
    pressure = PressureTracker(files, HostFiles(), thresholds, boot_id) if ev.on("pressure") else None
    source = None
    if pressure is not None or no_kill is not None:
        settings = WatchSettings(thresholds=thresholds, scan_interval_s=ev.scan_interval_s,
                                 max_cgroups=ev.max_cgroups, host=ev.on("pressure"), memcgs=True,
                                 report=ev.on("pressure"))
        source = PressureSource(hierarchy, settings, submit, faults=faults)
        source.start()
    reclaim = ReclaimTracker(timeout_s=ev.reclaim_timeout_s) if ev.on("reclaim") and reclaim_events else None
    episodes = EpisodeTracker(expect_reclaim=reclaim is not None) if ev.traces else None
    return Around(faults, source=source, pressure=pressure, no_kill=no_kill, reclaim=reclaim, episodes=episodes)
