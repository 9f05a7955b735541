"""Memory pressure episodes (`oom.pressure`), host and memcg, from the pressure source's events.

A pure state machine on the worker thread (the pipeline calls it): fed `pressure.events` values,
a clock, and the cgroup files (cgroupfs `MemcgFiles`, `HostFiles`) it reads only for a cgroup that
signalled or has an episode; it returns the records. One start and one end record per episode
(pressure/thresholds.py: start levels, clear levels, `clear_seconds`), never one per reading.

  start   a cgroup found (or given a new limit) already at the usage start level; a v1 usage
          threshold or vmpressure signal; a v2 `max`/`high` rise; a v2 PSI trigger (at the next
          tick, and only the deepest of the cgroups on one path that fired: PSI is hierarchical,
          a stall counts in every ancestor; none while the host itself is under pressure).
          The host: its PSI trigger while MemAvailable is at most 100 - usage_percent % of MemTotal
          (system PSI also counts a task stalling at its own cgroup's limit on a host with memory
          to spare: the memcg episodes tell those).
  follow  every tick (about once a second) while the episode lasts: usage, and v2 PSI and the
          `max`/`high` counters or v1 failcnt; hot readings (or signals) keep it on. The counters
          are read here too, not only signalled: the source reports a counter that keeps rising
          once a second, out of phase with this tick, so only a reading says "none since" for sure.
  end     `clear_seconds` after the last hot reading (cleared), or its cgroup removed or unlimited.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..attribution.containers import parse_cgroup_path
from ..cgroupfs.host import HostFiles
from ..cgroupfs.memcg import MemcgFiles
from ..cgroupfs.tree import is_under
from ..pressure.events import (
    HIGH,
    MAX,
    PSI,
    USAGE,
    VMPRESSURE,
    VMPRESSURE_LEVEL,
    CgroupAppeared,
    CgroupRemoved,
    CgroupSignal,
    CgroupUnlimited,
    HostPressure,
    SourceEvent,
)
from ..pressure.thresholds import Thresholds
from ..schema.records import STATE_END, STATE_START, OomPressure

SCOPE_HOST, SCOPE_MEMCG = "host", "memcg"


@dataclass
class Episode:
    episode_id: str
    source: str
    started_wall_ns: int
    started_mono: float
    last_hot: float
    peak_usage: Optional[int] = None
    peak_psi: Optional[float] = None

    @classmethod
    def begin(cls, boot_id: str, source: str, wall_ns: int, mono: float) -> "Episode":
        # boot id + start time + a random part: unique, and readable next to the kill's event id
        return cls(f"{boot_id}:{wall_ns}:{os.urandom(4).hex()}", source, wall_ns, mono, mono)

    def observe(self, usage: Optional[int] = None, psi_avg10: Optional[float] = None) -> None:
        if usage is not None:
            self.peak_usage = max(usage, self.peak_usage or 0)
        if psi_avg10 is not None:
            self.peak_psi = max(psi_avg10, self.peak_psi or 0.0)

    def heat(self, mono: float) -> None:
        self.last_hot = mono

    def cleared(self, mono: float, clear_seconds: float) -> bool:
        return mono - self.last_hot >= clear_seconds


@dataclass
class _Cgroup:
    path: str
    limit: int
    failcnt: Optional[int] = None     # v1, last read
    limit_events: int = 0             # v2 memory.events.local max + high, last read
    episode: Optional[Episode] = None


class PressureTracker:
    """`files`: the memory hierarchy's files (None: no hierarchy, the host only)."""

    def __init__(self, files: Optional[MemcgFiles], host: HostFiles, thresholds: Thresholds, boot_id: str, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], int] = time.time_ns) -> None:
        self.files = files
        self.host = host
        self.t = thresholds
        self.boot_id = boot_id
        self._clock = clock
        self._wall = wall
        self._cgroups: dict[str, _Cgroup] = {}    # the limited cgroups the source watches
        self._on: dict[str, _Cgroup] = {}         # those with an episode
        self._psi_fired: dict[str, None] = {}     # v2 PSI triggers since the last tick, in order
        self.host_episode: Optional[Episode] = None

    def active(self) -> dict[str, int]:
        """Episodes going on now, by scope (for the metrics; any thread may read it)."""
        return {SCOPE_HOST: int(self.host_episode is not None), SCOPE_MEMCG: len(self._on)}

    # ---- events ------------------------------------------------------------------------------
    def handle(self, event: SourceEvent) -> list[OomPressure]:
        if isinstance(event, CgroupSignal):
            cg = self._cgroups.get(event.path) or self._adopt(event.path)
            return self._signal(cg, event.kind) if cg is not None else []
        if isinstance(event, HostPressure):
            return self._host_pressure()
        if isinstance(event, CgroupAppeared):
            return self._appeared(event.path, event.limit)
        if isinstance(event, CgroupUnlimited):
            cg = self._cgroups.pop(event.path, None)
            return [self._end(cg, "cgroup_unlimited")] if cg and cg.episode else []
        assert isinstance(event, CgroupRemoved)
        return self._removed(event.path)

    def _appeared(self, path: str, limit: int) -> list[OomPressure]:
        assert self.files is not None
        cg = self._cgroups.setdefault(path, _Cgroup(path, limit))
        cg.limit = limit  # a new limit keeps an episode in progress
        cg.failcnt = self.files.failcnt(path)
        # thresholds fire on a crossing: a cgroup found (or given a new limit) already above one starts now
        if cg.episode is None and self.t.usage_starts(self.files.usage(path), limit):
            return [self._begin(cg, "usage")]
        return []

    def _adopt(self, path: str) -> Optional[_Cgroup]:
        """A signal from a cgroup not heard of (its CgroupAppeared was lost to a full queue): read it now."""
        limit = self.files.limit(path) if self.files is not None else None
        if limit is None:
            return None
        cg = self._cgroups[path] = _Cgroup(path, limit, failcnt=self.files.failcnt(path) if self.files else None)
        return cg

    def _removed(self, path: str) -> list[OomPressure]:
        out = []
        for p in [q for q in self._cgroups if is_under(q, path)]:
            cg = self._cgroups.pop(p)
            self._psi_fired.pop(p, None)
            if cg.episode is not None:
                out.append(self._end(cg, "cgroup_removed"))
        return out

    def _signal(self, cg: _Cgroup, kind: str) -> list[OomPressure]:
        assert self.files is not None
        if kind == PSI:
            self._psi_fired[cg.path] = None  # decided at the tick, with the others that fired
            return []
        if kind in (MAX, HIGH):
            if cg.episode is not None:
                cg.episode.heat(self._clock())
                return []
            return [self._begin(cg, "memory.events.max" if kind == MAX else "memory.events.high")]
        if kind not in (USAGE, VMPRESSURE):
            return []  # OOM: the no-kill tracker's
        usage = self.files.usage(cg.path)
        if cg.episode is not None:
            if kind == VMPRESSURE or self.t.usage_hot(usage, cg.limit):
                cg.episode.heat(self._clock())
            cg.episode.observe(usage=usage)
            return []
        if kind == USAGE:
            return [self._begin(cg, "usage")] if self.t.usage_starts(usage, cg.limit) else []
        return [self._begin(cg, "vmpressure")]

    def _host_short(self, clear: bool) -> bool:
        """MemAvailable at or below the start level (clear=False) or still below the clear level."""
        mem = self.host.meminfo()
        avail, total = mem.get("MemAvailable"), mem.get("MemTotal")
        if avail is None or not total:
            return True  # cannot tell: let PSI alone decide
        used = total - avail
        return self.t.usage_hot(used, total) if clear else self.t.usage_starts(used, total)

    def _host_pressure(self) -> list[OomPressure]:
        if self.host_episode is not None:
            self.host_episode.heat(self._clock())
            return []
        if not self._host_short(clear=False):
            return []  # stalls at cgroup limits on a host with memory to spare: the memcg episodes tell
        psi = self.host.psi()
        self.host_episode = Episode.begin(self.boot_id, "psi", self._wall(), self._clock())
        self.host_episode.observe(psi_avg10=psi.some_avg10 if psi else None)
        return [self._host_record(STATE_START, self.host_episode)]

    # ---- the tick ------------------------------------------------------------------------------
    def tick(self) -> list[OomPressure]:
        """About once a second: the PSI triggers that fired, and every episode followed."""
        now = self._clock()
        out = self._start_fired_psi()
        if self.host_episode is not None:
            psi = self.host.psi()
            some = psi.some_avg10 if psi else None
            self.host_episode.observe(psi_avg10=some)
            if self.t.psi_hot(some) and self._host_short(clear=True):
                self.host_episode.heat(now)
            elif self.host_episode.cleared(now, self.t.clear_seconds):
                ep, self.host_episode = self.host_episode, None
                out.append(self._host_record(STATE_END, ep, ended_by="cleared"))
        for cg in list(self._on.values()):
            if cg.episode is not None:  # (not ended with a removed parent meanwhile)
                out += self._follow(cg, now)
        return out

    def _start_fired_psi(self) -> list[OomPressure]:
        fired, self._psi_fired = self._psi_fired, {}
        out = []
        for path in fired:
            cg = self._cgroups.get(path)
            if cg is None:
                continue
            if cg.episode is not None:
                cg.episode.heat(self._clock())
                continue
            # hierarchical PSI: a deeper cgroup that fired explains this one; the host explains all
            if any(q != path and is_under(q, path) for q in fired) or self.host_episode is not None:
                continue
            out.append(self._begin(cg, "psi"))
        return out

    def _follow(self, cg: _Cgroup, now: float) -> list[OomPressure]:
        assert self.files is not None and cg.episode is not None
        usage = self.files.usage(cg.path)
        if usage is None and not self.files.exists(cg.path):
            return self._removed(cg.path)
        hot = self.t.usage_hot(usage, cg.limit)
        psi = None
        if self.files.version == 2:
            p = self.files.pressure(cg.path)
            psi = p.some_avg10 if p else None
            events = self.files.events_local(cg.path)
            limit_events = events.get("max", 0) + events.get("high", 0)
            hot = hot or self.t.psi_hot(psi) or limit_events > cg.limit_events
            cg.limit_events = limit_events
        else:
            fc = self.files.failcnt(cg.path)
            hot = hot or (fc is not None and cg.failcnt is not None and fc > cg.failcnt)
            cg.failcnt = fc
        cg.episode.observe(usage=usage, psi_avg10=psi)
        if hot:
            cg.episode.heat(now)
            return []
        if cg.episode.cleared(now, self.t.clear_seconds):
            return [self._end(cg, "cleared")]
        return []

    # ---- records -----------------------------------------------------------------------------
    def _begin(self, cg: _Cgroup, source: str) -> OomPressure:
        ep = cg.episode = Episode.begin(self.boot_id, source, self._wall(), self._clock())
        self._on[cg.path] = cg
        rec = self._memcg_record(cg, STATE_START, ep)
        ep.observe(usage=rec.usage_bytes, psi_avg10=rec.psi_some_avg10)
        cg.limit_events = (rec.events_max or 0) + (rec.events_high or 0)
        return rec

    def _end(self, cg: _Cgroup, ended_by: str) -> OomPressure:
        ep, cg.episode = cg.episode, None
        assert ep is not None
        self._on.pop(cg.path, None)
        return self._memcg_record(cg, STATE_END, ep, ended_by)

    def _memcg_record(self, cg: _Cgroup, state: str, ep: Episode, ended_by: Optional[str] = None) -> OomPressure:
        assert self.files is not None
        f, path = self.files, cg.path
        psi = f.pressure(path)
        events = f.events_local(path)
        workload = parse_cgroup_path(path)
        usage = f.usage(path)
        wall = self._wall()
        return OomPressure(
            event_id=f"{ep.episode_id}:{state}", time_unix_nano=ep.started_wall_ns if state == STATE_START else wall,
            state=state, scope=SCOPE_MEMCG, source=ep.source, episode_id=ep.episode_id, cgroup_path=path,
            container_runtime=workload.runtime, container_id=workload.container_id, pod_uid=workload.pod_uid,
            limit_bytes=cg.limit, usage_bytes=usage,
            psi_some_avg10=psi.some_avg10 if psi else None, psi_full_avg10=psi.full_avg10 if psi else None,
            failcnt=f.failcnt(path), events_high=events.get("high"), events_max=events.get("max"),
            events_oom=events.get("oom"), events_oom_kill=events.get("oom_kill"),
            vmpressure_level=VMPRESSURE_LEVEL.split(",")[0] if ep.source == "vmpressure" else None,
            **_end_fields(state, ep, wall, ended_by))

    def _host_record(self, state: str, ep: Episode, ended_by: Optional[str] = None) -> OomPressure:
        psi = self.host.psi()
        mem = self.host.meminfo()
        wall = self._wall()
        return OomPressure(
            event_id=f"{ep.episode_id}:{state}", time_unix_nano=ep.started_wall_ns if state == STATE_START else wall,
            state=state, scope=SCOPE_HOST, source=ep.source, episode_id=ep.episode_id,
            psi_some_avg10=psi.some_avg10 if psi else None, psi_full_avg10=psi.full_avg10 if psi else None,
            host_available_bytes=mem.get("MemAvailable"), host_total_bytes=mem.get("MemTotal"),
            **_end_fields(state, ep, wall, ended_by))


def _end_fields(state: str, ep: Episode, wall: int, ended_by: Optional[str]) -> dict:
    if state != STATE_END:
        return {}
    return {"duration_ns": max(0, wall - ep.started_wall_ns), "peak_usage_bytes": ep.peak_usage,
            "peak_psi_some_avg10": ep.peak_psi, "ended_by": ended_by}
