"""What happens around a kill, as one thing for agent.py and pipeline.py: the pressure source and the trackers.

  source thread   pressure.source.PressureSource: kernel notifications -> events -> the worker's queue
  worker thread   every tracker, called by the pipeline (so none needs a lock):
                    handle(event)   the source's events -> pressure (oom.pressure), no_kill (oom.no_kill)
                    killed(kill)    every kill after it is stored -> reclaim timer, no_kill (a kill ends
                                    or prevents an OOM without one; a victim only marked starts one)
                    reclaimed(ev)   the probe's reclaim event -> oom.reclaim
                    stamp(record)   --traces: the record with its episode's trace, and the spans ended
                    tick()          about once a second: pressure followed, no-kill decided, reclaim
                                    timeouts, episodes too long
A tracker's fault is counted in `otel_oom.faults{stage=<its name>}` (logged the first time) and
never stops the others, the records, or the kills.
"""
from __future__ import annotations

import functools
import logging
from collections import Counter
from typing import Any, Callable, Optional, TypeVar

from ..kernel.reclaim_wire import ReclaimEvent
from ..pressure.events import Batch, Submitted
from ..pressure.source import PressureSource
from ..schema.records import KILLER_KERNEL, OomEpisode, OomKill, OomReclaim, Record
from .episodes import EpisodeTracker
from .no_kill import NoKillTracker
from .pressure import PressureTracker
from .reclaim import ReclaimTracker

log = logging.getLogger("otel_oom.around")
T = TypeVar("T")


class Around:
    def __init__(self, faults: "Counter[str]", *, source: Optional[PressureSource] = None,
                 pressure: Optional[PressureTracker] = None, no_kill: Optional[NoKillTracker] = None,
                 reclaim: Optional[ReclaimTracker] = None, episodes: Optional[EpisodeTracker] = None) -> None:
        self.faults = faults
        self.source = source
        self.pressure = pressure
        self.no_kill = no_kill
        self.reclaim = reclaim
        self.episodes = episodes
        self._failed: set[str] = set()

    # ---- the source's thread (the agent runs it supervised) ------------------------------------
    def run(self) -> None:
        assert self.source is not None
        self.source.run()

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()

    def close(self) -> None:
        """After the source's thread returned."""
        if self.source is not None:
            self.source.close()

    # ---- the worker thread ---------------------------------------------------------------------
    def handle(self, event: Submitted) -> list[Record]:
        """An event of the pressure source (or a batch of them): the records the trackers made."""
        out: list[Record] = []
        for ev in event.events if isinstance(event, Batch) else (event,):
            if self.pressure is not None:
                out += self._guard("pressure", functools.partial(self.pressure.handle, ev)) or []
            if self.no_kill is not None:
                out += self._guard("no_kill", functools.partial(self.no_kill.handle, ev)) or []
        return out

    def killed(self, kill: OomKill) -> list[Record]:
        """A kill, once stored: the reclaim timer starts; an OOM that did kill is no OOM without one,
        and a victim only marked because it was exiting starts one."""
        if self.reclaim is not None:
            reclaim = self.reclaim
            self._guard("reclaim", lambda: reclaim.killed(kill))
        no_kill = self.no_kill
        if no_kill is None or kill.killer != KILLER_KERNEL or kill.recovered:
            return []
        if kill.killed is False:
            return list(self._guard("no_kill", lambda: no_kill.victim_exiting(kill)) or [])
        return list(self._guard("no_kill", lambda: no_kill.kill_seen(kill)) or [])

    def reclaimed(self, ev: ReclaimEvent) -> Optional[OomReclaim]:
        reclaim = self.reclaim
        return self._guard("reclaim", lambda: reclaim.observe(ev)) if reclaim else None

    def stamp(self, record: Record) -> tuple[Record, list[OomEpisode]]:
        """--traces: the record stamped with its episode's trace, and the episodes that ended with it
        (without --traces, or on a fault, the record as it is)."""
        episodes = self.episodes
        if episodes is None or isinstance(record, OomEpisode):
            return record, []
        return self._guard("episodes", lambda: episodes.observe(record)) or (record, [])

    def tick(self) -> tuple[list[Record], list[OomEpisode]]:
        """About once a second: the records the trackers' clocks made, and the episodes too long."""
        records: list[Record] = []
        if self.pressure is not None:
            records += self._guard("pressure", self.pressure.tick) or []
        if self.no_kill is not None:
            records += self._guard("no_kill", self.no_kill.tick) or []
        if self.reclaim is not None:
            records += self._guard("reclaim", self.reclaim.expire) or []
        spans = (self._guard("episodes", self.episodes.expire) or []) if self.episodes else []
        return records, spans

    def close_episodes(self) -> list[OomEpisode]:
        """At shutdown, after the last record: the open episodes end as they are."""
        return (self._guard("episodes", self.episodes.close_all) or []) if self.episodes else []

    def _guard(self, stage: str, fn: Callable[[], T]) -> Optional[T]:
        """`fn()`, or None after counting and (the first time) logging its fault."""
        try:
            return fn()
        except Exception:  # noqa: BLE001 - one tracker's fault must not stop the others or the kills
            self.faults[stage] += 1
            if stage not in self._failed:  # the first time with its traceback, then only counted
                self._failed.add(stage)
                log.exception("%s failed around a kill (counted in otel_oom.faults{stage=%s})", stage, stage)
            return None

    # ---- what the agent shows --------------------------------------------------------------------
    def describe(self) -> str:
        """For the ready line: what is watched around the kill."""
        parts = []
        if self.pressure is not None:
            where = [name for name, on in (("memory cgroups", self.pressure.files is not None),
                                           ("host PSI", self.source is not None and self.source.host_watched())) if on]
            parts.append(f"pressure ({', '.join(where) or 'nothing to watch'})")
        if self.no_kill is not None:
            parts.append("OOMs without a kill")
        if self.reclaim is not None:
            parts.append("reclaim times")
        if self.episodes is not None:
            parts.append("episode traces")
        return ", ".join(parts) or "off"

    def feed_metrics(self, metrics: Any) -> None:
        """The gauges of `otlp.episode_metrics` read these (from the metrics thread: counts only)."""
        if self.pressure is not None:
            metrics.episodes.pressure_active = self.pressure.active
        elif self.source is not None:  # watching for OOMs only: no pressure episode can be on
            metrics.episodes.pressure_active = lambda: {"host": 0, "memcg": 0}
        metrics.episodes.no_kill_active = self.no_kill.active if self.no_kill else dict
        source = self.source
        metrics.episodes.cgroups = (lambda: {"watched": source.watched(), "unwatched": source.unwatched()}) \
            if source is not None else dict
