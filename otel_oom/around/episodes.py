"""OOM episodes as traces (`--traces`): which records belong together, their trace and span ids, and the span.

An episode starts with the first of: a pressure episode starting, a kill, an OOM that killed
nobody. Its trace and span ids are chosen then, and every record of the episode is stamped with
them before it is spooled, so each log record links to the trace. Records join the open episode
of their memory cgroup: a kill joins the episode of the deepest cgroup on its path (its OOMing
memcg or its own cgroup) that has one, a global OOM or a user-space kill with no cgroup episode
joins the host's. The episode ends when every kill in it has its memory back (`oom.reclaim`), no
OOM without a kill is still going on, and (if it had no kill) its pressure ended; or after
`max_s`; or when the agent stops. Then the span (`model.OomEpisode`) goes to the spool like any
record, and `otlp/traces.py` exports it. The start and end records of a pressure episode keep the
trace they started in, even when the span closed at the reclaim in between.

Runs on the worker thread only (the pipeline calls it), so it needs no lock.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..schema.records import (
    KILLER_KERNEL,
    STATE_END,
    STATE_START,
    OomEpisode,
    OomKill,
    OomNoKill,
    OomPressure,
    OomReclaim,
    Record,
)

HOST = "host"
_REMEMBERED = 4096  # pressure / no-kill episode ids -> trace, for their end records


def _under(path: Optional[str], root: str) -> bool:
    return path is not None and (root == "/" or path == root or path.startswith(root + "/"))


@dataclass
class _Open:
    trace_id: str
    span_id: str
    key: str                        # HOST or a cgroup path
    start_ns: int
    started_mono: float
    cgroup_path: Optional[str] = None
    container_runtime: Optional[str] = None
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    kills: int = 0
    no_kill: bool = False
    pending_kills: set[str] = field(default_factory=set)   # kill event ids waiting for their reclaim
    pressure: set[str] = field(default_factory=set)        # pressure episodes still on
    no_kills: set[str] = field(default_factory=set)        # no-kill episodes still on
    events: list[dict[str, Any]] = field(default_factory=list)

    def idle(self) -> bool:
        if self.pending_kills or self.no_kills:
            return False
        # with a kill, the span ends when the memory is back; without, when the pressure ends
        return self.kills > 0 or self.no_kill or not self.pressure


class EpisodeTracker:
    def __init__(self, expect_reclaim: bool = True, max_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.expect_reclaim = expect_reclaim  # False: a kill is not followed by an oom.reclaim record
        self.max_s = max_s
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self._by_episode: OrderedDict[str, tuple[str, str]] = OrderedDict()  # pressure/no-kill id -> ids
        self._by_kill: OrderedDict[str, str] = OrderedDict()                  # kill event id -> open key

    def observe(self, record: Record) -> tuple[Record, list[OomEpisode]]:
        """The record stamped with its episode's trace, and the episodes that ended with it."""
        if isinstance(record, OomEpisode):
            return record, []
        ep = self._episode_for(record)
        if ep is None:
            return record, []
        self._account(ep, record)
        stamped = dataclasses.replace(record, trace_id=ep.trace_id, span_id=ep.span_id)
        ended = []
        if ep.idle() and self._open.get(ep.key) is ep:
            ended.append(self._close(ep, "reclaimed" if ep.kills else "cleared", record.time_unix_nano))
        return stamped, ended

    def expire(self) -> list[OomEpisode]:
        """Episodes open longer than max_s end now (call it about once a second)."""
        now = self._clock()
        old = [ep for ep in self._open.values() if now - ep.started_mono >= self.max_s]
        return [self._close(ep, "timeout", time.time_ns()) for ep in old]

    def close_all(self) -> list[OomEpisode]:
        """At shutdown: every open episode ends as it is."""
        return [self._close(ep, "shutdown", time.time_ns()) for ep in list(self._open.values())]

    def open_count(self) -> int:
        return len(self._open)

    # ---- matching ----------------------------------------------------------------------------
    def _episode_for(self, record: Record) -> Optional[_Open]:
        if isinstance(record, (OomPressure, OomNoKill)) and record.state == STATE_END:
            ids = self._by_episode.get(record.episode_id)
            key = self._key_of(ids)
            if key is not None:
                return self._open[key]
            if ids is not None:  # the span already closed: the end record keeps its trace
                return _Open(ids[0], ids[1], "", 0, 0.0)
            return None
        if isinstance(record, OomReclaim):
            key = self._by_kill.get(record.kill_event_id)
            return self._open.get(key) if key is not None else None
        if isinstance(record, OomPressure):
            key = HOST if record.scope == HOST else (record.cgroup_path or "/")
            return self._open.get(key) or self._new(key, record.time_unix_nano, record)
        if isinstance(record, OomNoKill):
            key = record.cgroup_path or "/"
            return self._deepest(record.cgroup_path) or self._new(key, record.time_unix_nano, record)
        if isinstance(record, OomKill):
            path = record.cgroup_path or record.memcg_path
            found = self._deepest(path) if path else None
            if found is None and (record.constraint != "memcg" or record.killer != KILLER_KERNEL):
                found = self._open.get(HOST)
            if found is not None:
                return found
            key = record.memcg_path or record.cgroup_path or HOST
            return self._new(key, record.time_unix_nano, record)
        return None

    def _key_of(self, ids: Optional[tuple[str, str]]) -> Optional[str]:
        if ids is None:
            return None
        return next((k for k, ep in self._open.items() if (ep.trace_id, ep.span_id) == ids), None)

    def _deepest(self, path: Optional[str]) -> Optional[_Open]:
        best = None
        for key, ep in self._open.items():
            if key != HOST and _under(path, key) and (best is None or len(key) > len(best.key)):
                best = ep
        return best

    def _new(self, key: str, start_ns: int, record: Record) -> _Open:
        # os.urandom, what secrets.token_hex reads, without importing hashlib and hmac before `ready`
        ep = _Open(os.urandom(16).hex(), os.urandom(8).hex(), key, start_ns, self._clock())
        if key != HOST:
            ep.cgroup_path = key
            ep.container_runtime = getattr(record, "container_runtime", None)
            ep.container_id = getattr(record, "container_id", None)
            ep.pod_uid = getattr(record, "pod_uid", None)
        self._open[key] = ep
        return ep

    def _account(self, ep: _Open, record: Record) -> None:
        if ep.key:
            ep.start_ns = min(ep.start_ns, record.time_unix_nano)  # a pressure start can arrive after its kill
        name = record.TYPE
        attrs: dict[str, Any] = {"oom.event.id" if isinstance(record, OomKill) else "oom.record.id": record.event_id}
        if isinstance(record, OomKill):
            ep.kills += 1
            if self.expect_reclaim:
                ep.pending_kills.add(record.event_id)
                self._remember(self._by_kill, record.event_id, ep.key)
            attrs.update({"process.pid": record.victim_pid, "process.executable.name": record.victim_comm,
                          "oom.killer": record.killer, "oom.constraint": record.constraint,
                          "oom.victim.cgroup.path": record.cgroup_path, "oom.victim.memory.rss": record.rss_bytes})
        elif isinstance(record, OomReclaim):
            ep.pending_kills.discard(record.kill_event_id)
            attrs.update({"process.pid": record.victim_pid, "oom.reclaim.method": record.method,
                          "oom.reclaim.duration": None if record.duration_ns is None else record.duration_ns / 1e9})
        elif isinstance(record, (OomPressure, OomNoKill)):
            name = f"{record.TYPE}.{record.state}"
            live = ep.pressure if isinstance(record, OomPressure) else ep.no_kills
            if record.state == STATE_START:
                live.add(record.episode_id)
                self._remember(self._by_episode, record.episode_id, (ep.trace_id, ep.span_id))
            else:
                live.discard(record.episode_id)
            if isinstance(record, OomNoKill):
                ep.no_kill = True
                attrs["oom.no_kill.reason"] = record.reason
            else:
                attrs.update({"oom.pressure.source": record.source, "oom.memcg.usage": record.usage_bytes,
                              "oom.pressure.psi.some.avg10": record.psi_some_avg10})
        if ep.key:  # not a closed episode's leftover
            ep.events.append({"name": name, "time_unix_nano": record.time_unix_nano,
                              "attributes": {k: v for k, v in attrs.items() if v is not None}})

    @staticmethod
    def _remember(table: OrderedDict, key: str, value: Any) -> None:
        table[key] = value
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    def _close(self, ep: _Open, ended_by: str, end_ns: int) -> OomEpisode:
        self._open.pop(ep.key, None)
        outcome = "kill" if ep.kills else ("no_kill" if ep.no_kill else "pressure")
        return OomEpisode(trace_id=ep.trace_id, span_id=ep.span_id, start_unix_nano=ep.start_ns,
                          end_unix_nano=max(end_ns, ep.start_ns), scope="host" if ep.key == HOST else "memcg",
                          outcome=outcome, ended_by=ended_by, kills=ep.kills, cgroup_path=ep.cgroup_path,
                          container_runtime=ep.container_runtime, container_id=ep.container_id, pod_uid=ep.pod_uid,
                          events=tuple(sorted(ep.events, key=lambda e: e["time_unix_nano"])))
