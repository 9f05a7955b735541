"""OOMs that kill nobody (`oom.no_kill`): the kernel declared a memory cgroup out of memory, and no one died.

Three ways this happens, each reported once when it starts and once when it ends:

  oom_kill_disable  cgroup v1 `memory.oom_control` has the killer off: the tasks that hit the limit
                    sleep (uninterruptibly) until memory is freed or the limit raised; `under_oom` is 1.
  nothing_killable  the OOM killer found no task to kill (all at oom_score_adj -1000, or none left):
                    the charge fails, the faulting task retries, and the kernel declares OOM again.
  victim_exiting    the kernel marked a task that was already exiting as the victim and sent no
                    SIGKILL (it frees its memory by itself); seen by the BPF program, not here.

Inputs: the pressure watcher's OOM notifications per cgroup (v1: the `memory.oom_control` eventfd,
which fires for the OOMing cgroup and every cgroup below it; v2: the `oom` counter of
`memory.events.local`), and from the pipeline every kill the probe delivered. A notification
followed within `grace_s` by a kill in that cgroup (or by a rise of its kernel kill counter) was an
ordinary OOM kill; otherwise it starts an episode. The episode ends when `under_oom` drops to 0
(oom_kill_disable), or after `clear_s` without a further OOM, or when a kill finally happens.
Notifications and ticks come from the watcher thread, kills from the worker thread: a lock guards
the state; records leave through `emit`, which only queues.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from ..attribution.containers import parse_cgroup_path
from ..cgroupfs import memcg as files
from ..schema.records import (
    NO_KILL_DISABLED,
    NO_KILL_EXITING,
    NO_KILL_NOTHING,
    NO_KILL_PIDS_MAX,
    STATE_END,
    STATE_START,
    OomKill,
    OomNoKill,
    Record,
)

log = logging.getLogger("otel_oom.around.no_kill")


def _under(path: Optional[str], root: str) -> bool:
    return path is not None and (root == "/" or path == root or path.startswith(root + "/"))


@dataclass
class _Candidate:
    path: str
    directory: str
    first_mono: float
    first_wall_ns: int
    count: int


@dataclass
class _Episode:
    record: OomNoKill            # the start record
    directory: str
    started_mono: float
    last_oom_mono: float
    ooms: int
    oom_kills: Optional[int]     # the kernel's kill counter at the start


class NoKillTracker:
    def __init__(self, version: int, mount: str, boot_id: str, emit: Callable[[Record], None], *, grace_s: float = 1.0,
                 clear_s: float = 5.0, clock: Callable[[], float] = time.monotonic, proc_root: str = "/proc") -> None:
        self.version = version
        self.mount = mount
        self.boot_id = boot_id
        self.emit = emit
        self.grace_s = grace_s
        self.clear_s = clear_s
        self._clock = clock
        self.proc_root = proc_root
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        self._episodes: dict[str, _Episode] = {}
        self._kill_counts: dict[str, int] = {}    # last known kernel kill counter per cgroup
        self._kills: list[tuple[float, OomKill]] = []  # kills the probe delivered, last few seconds
        self.started = 0

    # ---- inputs ------------------------------------------------------------------------------
    def baseline(self, path: str, directory: str) -> None:
        """Remember the cgroup's kill counter before any OOM, so a kill the probe missed still counts."""
        n = files.oom_kills(self.version, directory)
        with self._lock:
            if n is not None:
                self._kill_counts[path] = n

    def forget(self, path: str) -> None:
        """The cgroup is gone: end its episode."""
        with self._lock:
            self._kill_counts.pop(path, None)
            self._candidates.pop(path, None)
            ep = self._episodes.pop(path, None)
        if ep is not None:
            self._end(ep, "cgroup_removed")

    def oom_notified(self, path: str, directory: str, count: int = 1) -> None:
        """The kernel declared an OOM in `path` (or, on v1, in an ancestor of it)."""
        now = self._clock()
        with self._lock:
            ep = self._episodes.get(path)
            if ep is not None:
                ep.ooms += count
                ep.last_oom_mono = now
                return
            cand = self._candidates.get(path)
            if cand is not None:
                cand.count += count
                return
            self._candidates[path] = _Candidate(path, directory, now, time.time_ns(), count)
        if self.version == 1:
            ctl = files.oom_control(directory)
            if ctl.get("oom_kill_disable") == 1 and ctl.get("under_oom") == 1:
                # certain at once: the killer is off and tasks wait
                with self._lock:
                    cand = self._candidates.pop(path, None)
                self._start(path, NO_KILL_DISABLED, directory=directory, ooms=cand.count if cand else count)

    def kill_seen(self, kill: OomKill) -> None:
        """A kernel OOM kill the probe delivered (worker thread)."""
        now = self._clock()
        with self._lock:
            self._kills.append((now, kill))
            self._kills = [(t, k) for t, k in self._kills if now - t <= 10.0][-256:]
            ended = [p for p in self._episodes if _under(kill.cgroup_path, p) or kill.memcg_path == p]
            eps = [self._episodes.pop(p) for p in ended]
        for ep in eps:
            self._end(ep, "killed")

    def victim_exiting(self, kill: OomKill) -> None:
        """mark_victim without a SIGKILL: the kernel let an exiting task free its memory (worker thread)."""
        path = kill.memcg_path or kill.cgroup_path or "/"
        directory = self.mount + path if path != "/" else ""  # a global OOM: no cgroup to read
        with self._lock:
            if path in self._episodes:
                self._episodes[path].ooms += 1
                self._episodes[path].last_oom_mono = self._clock()
                return
        self._start(path, NO_KILL_EXITING, victim=kill, directory=directory)

    # ---- the watcher's tick ------------------------------------------------------------------
    def busy(self) -> bool:
        with self._lock:
            return bool(self._candidates or self._episodes)

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            # v1 notifies the OOMing cgroup and every cgroup below it: keep the highest
            paths = list(self._candidates)
            for p in paths:
                if any(q != p and _under(p, q) for q in paths):
                    self._candidates.pop(p, None)
            due = [c for c in self._candidates.values() if now - c.first_mono >= self.grace_s]
            for c in due:
                del self._candidates[c.path]
            kills = list(self._kills)
        for c in due:
            # a kill the probe delivered from (just before) the notification on was an ordinary OOM kill
            if any(t >= c.first_mono - 0.5 and (_under(k.cgroup_path, c.path) or k.memcg_path == c.path)
                   for t, k in kills):
                self.baseline(c.path, c.directory)
                continue
            counted = files.oom_kills(self.version, c.directory)
            with self._lock:
                before = self._kill_counts.get(c.path)
            if counted is not None and before is not None and counted > before:
                self.baseline(c.path, c.directory)  # a kill happened that the probe did not deliver
                continue
            reason = NO_KILL_NOTHING
            if self.version == 1 and files.oom_control(c.directory).get("oom_kill_disable") == 1:
                reason = NO_KILL_DISABLED
            self._start(c.path, reason, directory=c.directory, ooms=c.count)
        with self._lock:
            episodes = list(self._episodes.items())
        for path, ep in episodes:
            why = self._over(ep, now)
            if why:
                with self._lock:
                    if self._episodes.get(path) is ep:
                        del self._episodes[path]
                    else:
                        continue
                self._end(ep, why)

    def _over(self, ep: _Episode, now: float) -> Optional[str]:
        if ep.directory and not os.path.isdir(ep.directory):
            return "cgroup_removed"
        if ep.record.reason == NO_KILL_DISABLED:
            ctl = files.oom_control(ep.directory)
            if ctl.get("oom_kill", 0) > (ep.oom_kills or 0) and ep.oom_kills is not None:
                return "killed"
            return "resolved" if ctl.get("under_oom", 0) == 0 else None
        return "resolved" if now - ep.last_oom_mono >= self.clear_s else None

    # ---- records -----------------------------------------------------------------------------
    def _start(self, path: str, reason: str, *, directory: str = "", victim: Optional[OomKill] = None,
               ooms: int = 1) -> None:
        now, wall = self._clock(), time.time_ns()
        limit = usage = tasks = waiting = None
        pids: tuple[int, ...] = ()
        if directory:
            limit, usage = files.limit_bytes(self.version, directory), files.usage_bytes(self.version, directory)
            tasks, pids = files.tasks(directory, NO_KILL_PIDS_MAX)
            waiting = files.waiting(pids, self.proc_root)
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
        ep = _Episode(rec, directory, now, now, ooms, files.oom_kills(self.version, directory) if directory else None)
        with self._lock:
            if path in self._episodes:
                return
            self._candidates.pop(path, None)
            self._episodes[path] = ep
            self.started += 1
        log.warning("memory cgroup %s is out of memory and nobody was killed (%s)", path, reason)
        self.emit(rec)

    def _end(self, ep: _Episode, ended_by: str) -> None:
        start = ep.record
        now: dict = {}
        if ep.directory and os.path.isdir(ep.directory):
            # as it is now: the limit may have been raised, the waiting tasks gone
            tasks, pids = files.tasks(ep.directory, NO_KILL_PIDS_MAX)
            now = {"limit_bytes": files.limit_bytes(self.version, ep.directory),
                   "usage_bytes": files.usage_bytes(self.version, ep.directory),
                   "tasks": tasks, "task_pids": pids, "tasks_waiting": files.waiting(pids, self.proc_root)}
        self.emit(replace(
            start, event_id=f"{start.episode_id}:end", time_unix_nano=time.time_ns(), state=STATE_END, ooms=ep.ooms,
            duration_ns=int((self._clock() - ep.started_mono) * 1e9), ended_by=ended_by, **now))

    def active(self) -> dict[str, int]:
        """Active episodes by reason (for the metrics)."""
        with self._lock:
            out: dict[str, int] = {}
            for ep in self._episodes.values():
                out[ep.record.reason] = out.get(ep.record.reason, 0) + 1
            return out
