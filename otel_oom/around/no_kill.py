"""OOMs that kill nobody (`oom.no_kill`): the kernel declared a memory cgroup out of memory, and no one died.

Three ways this happens, each reported once when it starts and once when it ends:

  oom_kill_disable  cgroup v1 `memory.oom_control` has the killer off: the tasks that hit the limit
                    sleep (uninterruptibly) until memory is freed or the limit raised; `under_oom` is 1.
  nothing_killable  the OOM killer found no task to kill (all at oom_score_adj -1000, or none left):
                    the charge fails, the faulting task retries, and the kernel declares OOM again.
  victim_exiting    the kernel marked a task that was already exiting as the victim and sent no
                    SIGKILL (it frees its memory by itself); seen by the BPF program, not here.

Inputs, all on the worker thread (the pipeline calls it; no lock): the pressure source's OOM
signals per cgroup (`CgroupSignal` kind `oom`: v1 the `memory.oom_control` eventfd, which fires for
the OOMing cgroup and every cgroup below it; v2 a rise of `memory.events.local` `oom`), its
`CgroupAppeared` (the kill counter's baseline) and `CgroupRemoved`, and every kill the probe
delivered. A notification followed within `grace_s` by a kill in that cgroup (or by a rise of its
kernel kill counter) was an ordinary OOM kill; otherwise it starts an episode. The episode ends
when `under_oom` drops to 0 (oom_kill_disable), or after `clear_s` without a further OOM, or when
a kill finally happens. Every method returns the records it made.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from ..attribution.containers import parse_cgroup_path
from ..cgroupfs.memcg import MemcgFiles
from ..cgroupfs.tree import is_under
from ..pressure.events import OOM, CgroupAppeared, CgroupRemoved, CgroupSignal, SourceEvent
from ..schema.records import (
    NO_KILL_DISABLED,
    NO_KILL_EXITING,
    NO_KILL_NOTHING,
    NO_KILL_PIDS_MAX,
    STATE_END,
    STATE_START,
    OomKill,
    OomNoKill,
)

log = logging.getLogger("otel_oom.around.no_kill")

KILLS_KEPT_S = 10.0   # kills remembered, to tell a notified OOM that did kill from one that did not
KILLS_KEPT_MAX = 256


@dataclass
class _Candidate:
    path: str
    first_mono: float
    count: int


@dataclass
class _Episode:
    record: OomNoKill            # the start record
    readable: bool               # a cgroup to read (not the root: a global OOM's victim_exiting)
    started_mono: float
    last_oom_mono: float
    ooms: int
    oom_kills: Optional[int]     # the kernel's kill counter at the start
    declared: Optional[int] = None  # v2: the kernel's own OOM count (memory.events.local oom), last read


class NoKillTracker:
    def __init__(self, files: MemcgFiles, boot_id: str, *, grace_s: float = 1.0, clear_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], int] = time.time_ns) -> None:
        self.files = files
        self.boot_id = boot_id
        self.grace_s = grace_s
        self.clear_s = clear_s
        self._clock = clock
        self._wall = wall
        self._candidates: dict[str, _Candidate] = {}
        self._episodes: dict[str, _Episode] = {}
        self._kill_counts: dict[str, int] = {}    # last known kernel kill counter per cgroup
        self._kills: list[tuple[float, OomKill]] = []  # kills the probe delivered, last few seconds
        self._by_reason: dict[str, int] = {}      # episodes going on, for the metrics

    def active(self) -> dict[str, int]:
        """Episodes going on now, by reason (for the metrics; any thread may read it)."""
        return {k: n for k, n in dict(self._by_reason).items() if n}

    # ---- the source's events -------------------------------------------------------------------
    def handle(self, event: SourceEvent) -> list[OomNoKill]:
        if isinstance(event, CgroupSignal):
            return self.oom_notified(event.path, event.count) if event.kind == OOM else []
        if isinstance(event, CgroupAppeared):
            self._baseline(event.path)
        elif isinstance(event, CgroupRemoved):
            return self._removed(event.path)
        return []

    def _baseline(self, path: str) -> None:
        """Remember the cgroup's kill counter before any OOM, so a kill the probe missed still counts."""
        n = self.files.oom_kills(path)
        if n is not None:
            self._kill_counts[path] = n

    def _removed(self, path: str) -> list[OomNoKill]:
        """The cgroup and everything below it is gone: their episodes end."""
        for table in (self._kill_counts, self._candidates):
            for p in [q for q in table if is_under(q, path)]:
                del table[p]
        return [self._end(p, "cgroup_removed") for p in [q for q in self._episodes if is_under(q, path)]]

    def oom_notified(self, path: str, count: int = 1) -> list[OomNoKill]:
        """The kernel declared an OOM in `path` (or, on v1, in an ancestor of it)."""
        now = self._clock()
        ep = self._episodes.get(path)
        if ep is not None:
            ep.ooms += count
            ep.last_oom_mono = now
            return []
        cand = self._candidates.get(path)
        if cand is not None:
            cand.count += count
            return []
        self._candidates[path] = _Candidate(path, now, count)
        ctl = self.files.oom_control(path)  # v1 only ({} on v2)
        if ctl.get("oom_kill_disable") == 1 and ctl.get("under_oom") == 1:
            # certain at once: the killer is off and tasks wait
            cand = self._candidates.pop(path)
            return self._start(path, NO_KILL_DISABLED, ooms=cand.count)
        return []

    # ---- kills ---------------------------------------------------------------------------------
    def kill_seen(self, kill: OomKill) -> list[OomNoKill]:
        """A kernel OOM kill the probe delivered."""
        now = self._clock()
        self._kills.append((now, kill))
        self._kills = [(t, k) for t, k in self._kills if now - t <= KILLS_KEPT_S][-KILLS_KEPT_MAX:]
        ended = [p for p in self._episodes if is_under(kill.cgroup_path, p) or kill.memcg_path == p]
        return [self._end(p, "killed") for p in ended]

    def victim_exiting(self, kill: OomKill) -> list[OomNoKill]:
        """mark_victim without a SIGKILL: the kernel let an exiting task free its memory."""
        path = kill.memcg_path or kill.cgroup_path or "/"
        ep = self._episodes.get(path)
        if ep is not None:
            ep.ooms += 1
            ep.last_oom_mono = self._clock()
            return []
        return self._start(path, NO_KILL_EXITING, victim=kill)

    # ---- the tick ------------------------------------------------------------------------------
    def tick(self) -> list[OomNoKill]:
        """About once a second: notifications past their grace decided, episodes ended."""
        now = self._clock()
        out: list[OomNoKill] = []
        # v1 notifies the OOMing cgroup and every cgroup below it: keep the highest
        paths = list(self._candidates)
        for p in paths:
            if any(q != p and is_under(p, q) for q in paths):
                self._candidates.pop(p, None)
        for c in [c for c in self._candidates.values() if now - c.first_mono >= self.grace_s]:
            del self._candidates[c.path]
            out += self._decide(c)
        for path, ep in list(self._episodes.items()):
            why = self._over(path, ep, now)
            if why:
                out.append(self._end(path, why))
        return out

    def _decide(self, c: _Candidate) -> list[OomNoKill]:
        # a kill the probe delivered from (just before) the notification on was an ordinary OOM kill
        if any(t >= c.first_mono - 0.5 and (is_under(k.cgroup_path, c.path) or k.memcg_path == c.path)
               for t, k in self._kills):
            self._baseline(c.path)
            return []
        counted = self.files.oom_kills(c.path)
        before = self._kill_counts.get(c.path)
        if counted is not None and before is not None and counted > before:
            self._baseline(c.path)  # a kill happened that the probe did not deliver
            return []
        reason = NO_KILL_DISABLED if self.files.oom_control(c.path).get("oom_kill_disable") == 1 else NO_KILL_NOTHING
        return self._start(c.path, reason, ooms=c.count)

    def _over(self, path: str, ep: _Episode, now: float) -> Optional[str]:
        if ep.readable and not self.files.exists(path):
            return "cgroup_removed"
        if ep.record.reason == NO_KILL_DISABLED:
            ctl = self.files.oom_control(path)
            if ctl.get("oom_kill", 0) > (ep.oom_kills or 0) and ep.oom_kills is not None:
                return "killed"
            return "resolved" if ctl.get("under_oom", 0) == 0 else None
        if ep.readable:
            # v2: the kernel's own count, read each tick like any cgroup in an episode: the source
            # reports an OOM that keeps coming once a second, out of phase with this tick
            declared = self.files.events_local(path).get("oom")
            if declared is not None and ep.declared is not None and declared > ep.declared:
                ep.last_oom_mono = now
            ep.declared = declared
        return "resolved" if now - ep.last_oom_mono >= self.clear_s else None

    # ---- records -----------------------------------------------------------------------------
    def _start(self, path: str, reason: str, *, victim: Optional[OomKill] = None, ooms: int = 1) -> list[OomNoKill]:
        if path in self._episodes:
            return []
        now, wall = self._clock(), self._wall()
        readable = path != "/"  # a global OOM: no cgroup to read
        limit = usage = tasks = waiting = None
        pids: tuple[int, ...] = ()
        if readable:
            limit, usage = self.files.limit(path), self.files.usage(path)
            tasks, pids = self.files.tasks(path, NO_KILL_PIDS_MAX)
            waiting = self.files.waiting(pids)
        workload = parse_cgroup_path(path)
        episode_id = f"{self.boot_id}:{wall}:{path}"
        rec = OomNoKill(
            event_id=f"{episode_id}:start", time_unix_nano=victim.time_unix_nano if victim else wall,
            state=STATE_START, reason=reason, episode_id=episode_id, cgroup_path=path,
            container_runtime=workload.runtime, container_id=workload.container_id, pod_uid=workload.pod_uid,
            limit_bytes=limit if victim is None else victim.memcg_limit_bytes,
            usage_bytes=usage if victim is None else victim.memcg_usage_bytes,
            tasks=tasks, task_pids=pids, tasks_waiting=waiting, ooms=ooms,
            victim_pid=victim.victim_pid if victim else None, victim_tid=victim.victim_tid if victim else None,
            victim_comm=victim.victim_comm if victim else None)
        self._candidates.pop(path, None)
        self._episodes[path] = _Episode(rec, readable, now, now, ooms, self.files.oom_kills(path) if readable else None,
                                        self.files.events_local(path).get("oom") if readable else None)
        self._by_reason[reason] = self._by_reason.get(reason, 0) + 1
        log.warning("memory cgroup %s is out of memory and nobody was killed (%s)", path, reason)
        return [rec]

    def _end(self, path: str, ended_by: str) -> OomNoKill:
        ep = self._episodes.pop(path)
        self._by_reason[ep.record.reason] -= 1  # (a plain dict: the metrics thread copies it)
        start = ep.record
        now: dict = {}
        if ep.readable and self.files.exists(path):
            # as it is now: the limit may have been raised, the waiting tasks gone
            tasks, pids = self.files.tasks(path, NO_KILL_PIDS_MAX)
            now = {"limit_bytes": self.files.limit(path), "usage_bytes": self.files.usage(path),
                   "tasks": tasks, "task_pids": pids, "tasks_waiting": self.files.waiting(pids)}
        return replace(
            start, event_id=f"{start.episode_id}:end", time_unix_nano=self._wall(), state=STATE_END, ooms=ep.ooms,
            duration_ns=int((self._clock() - ep.started_mono) * 1e9), ended_by=ended_by, **now)
