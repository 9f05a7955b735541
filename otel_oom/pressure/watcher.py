"""The pressure watcher thread: waits for the kernel's notifications, and reports `oom.pressure` episodes.

It is over 400 lines because the one job (register for every notification, wait, and turn what
arrives into episodes for v1, v2 and the host) reads best in one place; the pieces it stands on are
in psi.py, inotify.py, v1_events.py, cgroup_files.py and episode.py.

What it waits on, in one epoll, without reading any file on a timer for a quiet cgroup:

  host       a PSI trigger on /proc/pressure/memory ("some" stall at the start level per window).
             System PSI counts every stalled task, also one stalling at its own cgroup's limit on
             a host with memory to spare; so the host's episode starts only when the host is also
             short of memory (MemAvailable at most 100 - usage_percent % of MemTotal), and stays
             on while the stall and the shortage stay above their clear levels.
  v1 cgroup  (limited cgroups) three eventfds: usage crossing the start level (a
             `memory.usage_in_bytes` threshold), reclaim pressure caused by the cgroup's own limit
             (`memory.pressure_level` "medium,local"), and out of memory (`memory.oom_control`,
             handed to the no-kill tracker).
  v2 cgroup  (limited cgroups) a PSI trigger on `memory.pressure`, and inotify on
             `memory.events.local` (the `max` and `high` counters start an episode, `oom` goes to
             the no-kill tracker).
  discovery  inotify IN_CREATE / IN_DELETE on every cgroup directory, and IN_MODIFY on its limit
             file (`memory.limit_in_bytes` / `memory.max`: a write to it is a VFS write, which
             inotify reports), so a cgroup is registered when it gets a limit and its v1 thresholds
             move with the limit; a full rescan every `RESCAN_EVERY` sweeps catches anything
             missed (and an inotify queue overflow).

A sweep every `scan_interval_s` reads, on v2 only, where no usage notification exists, each
limited cgroup's usage. On a read-only cgroupfs (where no v1 eventfd and no v2 PSI trigger can be
registered: both need to write to the cgroup's files) v1 cgroups are read at each sweep too
(usage, and `under_oom` for the no-kill tracker), and v2 goes on with inotify and the sweep.

Only cgroups with an active episode, a notification to follow up, or a pending no-kill
decision are read every second (the tick), until their episode ends. A notification fd that fires
is disarmed until the next tick, so a storm of reclaim or OOM notifications costs one wake-up per
second per cgroup, not one per event.

PSI is hierarchical (a stall counts in every ancestor): when several cgroups on one path fire, only
the deepest is reported; memcg PSI starts are not reported while the host itself is under
pressure (the host episode explains them).
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import select
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from ..attribution.containers import parse_cgroup_path
from ..cgroupfs import memcg as files
from ..cgroupfs.hierarchy import MemoryHierarchy
from ..cgroupfs.psi import read_psi
from ..cgroupfs.tree import walk
from ..schema.records import STATE_END, STATE_START, OomPressure, Record
from . import inotify as ino
from . import v1_events
from .episode import Episode, Thresholds
from .psi import PsiTrigger, PsiUnavailable

if TYPE_CHECKING:
    from ..around.no_kill import NoKillTracker

log = logging.getLogger("otel_oom.pressure")

HOST_PSI = "/proc/pressure/memory"
TICK_S = 1.0
RESCAN_EVERY = 6             # sweeps between full rescans of the tree
DIR_MASK = ino.IN_CREATE | ino.IN_DELETE | ino.IN_ONLYDIR
VMPRESSURE_LEVEL = "medium,local"
SCOPE_HOST, SCOPE_MEMCG = "host", "memcg"


@dataclass(frozen=True)
class WatchSettings:
    thresholds: Thresholds = Thresholds()
    scan_interval_s: float = 10.0
    max_cgroups: int = 10000       # limited cgroups with notifications registered
    host: bool = True              # host PSI
    memcgs: bool = True            # watch memory cgroups (for pressure and the no-kill tracker)
    report: bool = True            # report oom.pressure (False: only feed the no-kill tracker)


@dataclass
class _Cgroup:
    path: str
    directory: str
    limit: Optional[int] = None
    fds: dict[str, int] = field(default_factory=dict)   # v1: "usage" / "vmpressure" / "oom" eventfds
    psi: Optional[PsiTrigger] = None                      # v2
    wd_events: int = -1                                   # v2 memory.events.local watch
    episode: Optional[Episode] = None
    events: dict[str, int] = field(default_factory=dict)  # v2 memory.events.local, last read
    failcnt: Optional[int] = None                         # v1, last read
    read_mono: float = 0.0                                # when events were last read
    dirty: bool = False                                   # events changed, not read yet
    polled: bool = False                                  # v1 on a read-only cgroupfs: read at each sweep


class PressureWatcher:
    """Run `run()` on its own thread; `stop()` from any thread; `close()` after it returned."""

    def __init__(self, hierarchy: Optional[MemoryHierarchy], settings: WatchSettings, boot_id: str,
                 emit: Callable[[Record], None], no_kill: Optional["NoKillTracker"] = None,
                 host_psi: str = HOST_PSI, meminfo: str = "/proc/meminfo",
                 clock: Callable[[], float] = time.monotonic, faults: Optional["Counter[str]"] = None) -> None:
        self.hierarchy = hierarchy
        self.settings = settings
        self.t = settings.thresholds
        self.boot_id = boot_id
        self.emit = emit
        self.no_kill = no_kill
        self.host_psi = host_psi
        self.meminfo = meminfo
        self._clock = clock
        self.faults: Counter[str] = faults if faults is not None else Counter()
        self._stop = threading.Event()
        self._ep = select.epoll()
        self._wake = v1_events.new_eventfd()
        self._ep.register(self._wake, select.EPOLLIN)
        self._inotify: Optional[ino.Inotify] = None
        self._dir_wd: dict[int, str] = {}          # directory watch -> cgroup path
        self._events_wd: dict[int, str] = {}       # memory.events.local watch -> cgroup path
        self._limit_wd: dict[int, str] = {}        # limit file watch -> cgroup path
        self._fd_owner: dict[int, tuple[str, str]] = {}  # notification fd -> (cgroup path, kind)
        self._disarmed: set[int] = set()
        self._known: set[str] = set()              # every cgroup seen (limited or not)
        self._cgroups: dict[str, _Cgroup] = {}     # limited cgroups with notifications
        self._psi_fired: dict[str, float] = {}     # v2 cgroup PSI triggers since the last tick
        self._host_trigger: Optional[PsiTrigger] = None
        self.host_episode: Optional[Episode] = None
        self.unwatched = 0                          # limited cgroups not watched (cap, fd or watch limit)
        self._warned: set[str] = set()
        self._sweeps = 0

    # ---- set-up ------------------------------------------------------------------------------
    def start(self) -> None:
        """The host trigger and inotify, on the caller's thread (errors show at start-up); the cgroups
        are registered by `run()`, in the background: a v1 usage threshold costs the kernel an RCU
        grace period (about 10 ms) each, which for thousands of cgroups must not delay the kills."""
        _raise_nofile_limit()
        if self.settings.host:
            try:
                self._host_trigger = PsiTrigger(self.host_psi, self.t.stall_percent, self.t.window_s)
                self._ep.register(self._host_trigger.fileno(), select.EPOLLPRI)
            except (PsiUnavailable, ValueError) as e:
                log.warning("no host memory pressure warning: %s", e)
        if self.hierarchy is not None and self.settings.memcgs:
            try:
                self._inotify = ino.Inotify()
                self._ep.register(self._inotify.fileno(), select.EPOLLIN)
            except OSError as e:
                log.warning("no inotify (%s): new cgroups are found by the rescan every %.0f s",
                            e.strerror, self.settings.scan_interval_s * RESCAN_EVERY)

    def watched(self) -> int:
        return len(self._cgroups)

    def host_watched(self) -> bool:
        return self._host_trigger is not None

    def active(self) -> dict[str, int]:
        return {SCOPE_HOST: int(self.host_episode is not None),
                SCOPE_MEMCG: sum(1 for c in list(self._cgroups.values()) if c.episode is not None)}

    def _dir(self, path: str) -> str:
        assert self.hierarchy is not None
        return self.hierarchy.mount if path == "/" else self.hierarchy.mount + path

    def _rescan(self) -> None:
        assert self.hierarchy is not None
        seen = set()
        for path, directory, _inode in walk(self.hierarchy.mount):
            if self._stop.is_set():
                return  # stopping: a partial scan must not forget the cgroups not reached
            seen.add(path)
            if path not in self._known:
                self._discover(path, directory)
        for path in self._known - seen:
            self._gone(path)

    def _discover(self, path: str, directory: str) -> None:
        self._known.add(path)
        if self._inotify is not None:
            try:
                self._dir_wd[self._inotify.add_watch(directory, DIR_MASK)] = path
                if path != "/":
                    assert self.hierarchy is not None
                    limit_file = "memory.limit_in_bytes" if self.hierarchy.version == 1 else "memory.max"
                    self._limit_wd[self._inotify.add_watch(os.path.join(directory, limit_file), ino.IN_MODIFY)] = path
            except OSError as e:
                self._warn_once("inotify", f"cannot watch {directory} for new cgroups ({e.strerror}; "
                                "raise fs.inotify.max_user_watches): found by the rescan instead")
        if path != "/":
            self._consider(path, directory)

    def _consider(self, path: str, directory: str) -> None:
        """Register a cgroup's notifications if it has a limit; re-register if the limit changed."""
        assert self.hierarchy is not None
        limit = files.limit_bytes(self.hierarchy.version, directory)
        cg = self._cgroups.get(path)
        if cg is not None and cg.limit == limit:
            return
        episode = None
        if cg is not None:
            # a new limit: register again (v1 thresholds move with it), keeping an episode in progress
            episode, cg.episode = (cg.episode, None) if limit is not None else (None, cg.episode)
            self._unregister(cg, ended_by="cgroup_unlimited")
            del self._cgroups[path]
        if limit is None:
            return
        if len(self._cgroups) >= self.settings.max_cgroups:
            self.unwatched += 1
            self._warn_once("cap", f"more than {self.settings.max_cgroups} limited memory cgroups: the rest are "
                            "not watched for pressure (raise --pressure-max-cgroups)")
            return
        cg = self._cgroups[path] = _Cgroup(path, directory, limit, episode=episode)
        try:
            if self.hierarchy.version == 1:
                self._register_v1(cg)
            else:
                self._register_v2(cg)
        except OSError as e:
            self._unregister(cg, ended_by=None)
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and self.hierarchy.version == 1:
                # a read-only cgroupfs (the DaemonSet's default mount): no eventfd can be registered,
                # so this cgroup is read at every sweep instead of notified
                cg.polled = True
                self._warn_once("read-only", f"cannot register memory cgroup notifications ({e.strerror}): "
                                "v1 cgroups are read every --pressure-scan-interval instead; mount "
                                "/sys/fs/cgroup read-write for notifications (docs/deploy.md)")
            else:
                self._cgroups.pop(path, None)
                if e.errno == errno.ENOENT:
                    return  # removed meanwhile
                self.unwatched += 1
                hint = "raise the open-files limit" if e.errno in (errno.EMFILE, errno.ENFILE) else "see the error"
                self._warn_once(f"register-{e.errno}", f"cannot watch memory cgroup {path}: {e.strerror} ({hint})")
                return
        if self.no_kill is not None:
            self.no_kill.baseline(path, directory)
        # thresholds fire on a crossing: a cgroup found (or re-registered) already above one starts now
        if cg.episode is None and self.t.usage_starts(files.usage_bytes(self.hierarchy.version, directory), limit):
            self._begin(cg, "usage")

    def _register_v1(self, cg: _Cgroup) -> None:
        assert cg.limit is not None
        for kind in ("usage", "vmpressure", "oom") if self.settings.report else ("oom",):
            efd = v1_events.new_eventfd()
            cg.fds[kind] = efd
            self._fd_owner[efd] = (cg.path, kind)
            if kind == "usage":
                # the start level only: while an episode lasts the tick follows the usage itself
                v1_events.register(cg.directory, efd, "memory.usage_in_bytes", str(self.t.start_threshold_bytes(cg.limit)))
            elif kind == "vmpressure":
                v1_events.register(cg.directory, efd, "memory.pressure_level", VMPRESSURE_LEVEL)
            else:
                v1_events.register(cg.directory, efd, "memory.oom_control")
            self._ep.register(efd, select.EPOLLIN)
        cg.failcnt = files.failcnt(cg.directory)

    def _register_v2(self, cg: _Cgroup) -> None:
        try:
            if not self.settings.report:
                raise PsiUnavailable(0, "not reporting pressure")
            cg.psi = PsiTrigger(os.path.join(cg.directory, "memory.pressure"), self.t.stall_percent, self.t.window_s)
            self._fd_owner[cg.psi.fileno()] = (cg.path, "psi")
            self._ep.register(cg.psi.fileno(), select.EPOLLPRI)
        except PsiUnavailable as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOENT):
                raise OSError(e.errno, e.strerror) from None
            if e.errno:
                self._warn_once("psi-cgroup", f"no per-cgroup PSI trigger: {e.strerror}")
        if self._inotify is not None:
            wd = self._inotify.add_watch(os.path.join(cg.directory, "memory.events.local"), ino.IN_MODIFY)
            cg.wd_events = wd
            self._events_wd[wd] = cg.path
        cg.events = files.events(cg.directory)
        cg.read_mono = self._clock()

    def _unregister(self, cg: _Cgroup, ended_by: Optional[str]) -> None:
        if cg.episode is not None and ended_by:
            self._end(cg, ended_by)
        for fd in list(cg.fds.values()) + ([cg.psi.fileno()] if cg.psi else []):
            self._fd_owner.pop(fd, None)
            self._disarmed.discard(fd)
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass
        for fd in cg.fds.values():
            os.close(fd)
        cg.fds.clear()
        if cg.psi:
            cg.psi.close()
            cg.psi = None
        if cg.wd_events >= 0 and self._inotify is not None:
            self._events_wd.pop(cg.wd_events, None)
            self._inotify.rm_watch(cg.wd_events)
            cg.wd_events = -1

    def _gone(self, path: str) -> None:
        """A cgroup (and so its subtree) was removed."""
        for p in [q for q in self._known if q == path or q.startswith(path + "/")]:
            self._known.discard(p)
            cg = self._cgroups.pop(p, None)
            if cg is not None:
                self._unregister(cg, ended_by="cgroup_removed")
            if self.no_kill is not None:
                self.no_kill.forget(p)
        for table in (self._dir_wd, self._limit_wd):
            for wd in [w for w, p in table.items() if p == path or p.startswith(path + "/")]:
                del table[wd]

    # ---- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def run(self) -> None:
        if self.hierarchy is not None and self.settings.memcgs:
            t0 = self._clock()
            self._rescan()
            log.info("watching %d limited memory cgroups for pressure%s (registered in %.1f s)", len(self._cgroups),
                     f", {self.unwatched} not watched" if self.unwatched else "", self._clock() - t0)
        next_tick = next_sweep = self._clock() + self.settings.scan_interval_s
        while not self._stop.is_set():
            now = self._clock()
            busy = self._busy()
            if busy and next_tick > now + TICK_S:
                next_tick = now + TICK_S
            wake_at = min(next_sweep, next_tick if busy else next_sweep)
            try:
                for fd, mask in self._ep.poll(max(0.0, wake_at - now)):
                    self._dispatch(fd, mask)
                now = self._clock()
                if self._busy() and now >= next_tick:
                    self._tick()
                    next_tick = now + TICK_S
                if now >= next_sweep:
                    self._sweep()
                    next_sweep = now + self.settings.scan_interval_s
            except Exception:  # noqa: BLE001 - a fault here must not stop the kills: counted, then on
                self.faults["pressure"] += 1
                if self.faults["pressure"] == 1:
                    log.exception("the pressure watcher failed (counted in otel_oom.faults{stage=pressure}); "
                                  "it goes on")
                self._stop.wait(TICK_S)  # never a busy loop on a repeating fault
                next_tick, next_sweep = self._clock() + TICK_S, max(next_sweep, self._clock() + TICK_S)

    def _busy(self) -> bool:
        return bool(self.host_episode or self._disarmed or self._psi_fired
                    or any(c.episode or c.dirty for c in self._cgroups.values())
                    or (self.no_kill is not None and self.no_kill.busy()))

    def _dispatch(self, fd: int, mask: int) -> None:
        if fd == self._wake:
            v1_events.drain(fd)
            return
        if self._inotify is not None and fd == self._inotify.fileno():
            self._on_inotify()
            return
        if self._host_trigger is not None and fd == self._host_trigger.fileno():
            self._on_host_psi()
            return
        owner = self._fd_owner.get(fd)
        if owner is None:
            return
        path, kind = owner
        cg = self._cgroups.get(path)
        if cg is None:
            return
        if kind == "psi":
            if mask & select.EPOLLERR:  # the cgroup is being removed
                self._gone(path)
                return
            self._psi_fired[path] = self._clock()
            return
        count = v1_events.drain(fd)
        self._disarm(fd)
        self._on_v1(cg, kind, count)

    def _disarm(self, fd: int) -> None:
        try:
            self._ep.modify(fd, 0)
            self._disarmed.add(fd)
        except OSError:
            pass

    def _on_v1(self, cg: _Cgroup, kind: str, count: int) -> None:
        if not os.path.isdir(cg.directory):
            self._gone(cg.path)  # removing a cgroup signals its eventfds one last time
            return
        if kind == "oom":
            if self.no_kill is not None:
                self.no_kill.oom_notified(cg.path, cg.directory, count)
            return
        usage = files.usage_bytes(1, cg.directory)
        if cg.episode is not None:
            if kind == "vmpressure" or self.t.usage_hot(usage, cg.limit):
                cg.episode.heat(self._clock())
            cg.episode.observe(usage=usage)
        elif kind == "usage" and self.t.usage_starts(usage, cg.limit):
            self._begin(cg, "usage")
        elif kind == "vmpressure":
            self._begin(cg, "vmpressure")

    def _on_inotify(self) -> None:
        assert self._inotify is not None and self.hierarchy is not None
        for wd, mask, name in self._inotify.read():
            if mask & ino.IN_Q_OVERFLOW:
                self._rescan()
                continue
            if wd in self._limit_wd:
                if mask & ino.IN_IGNORED:
                    del self._limit_wd[wd]
                elif self._limit_wd[wd] in self._known:
                    path = self._limit_wd[wd]
                    self._consider(path, self._dir(path))
                continue
            if wd in self._events_wd:
                cg = self._cgroups.get(self._events_wd[wd])
                if cg is not None:
                    cg.dirty = True
                    if self._clock() - cg.read_mono >= TICK_S:
                        self._read_events(cg)
                continue
            parent = self._dir_wd.get(wd)
            if mask & ino.IN_IGNORED:
                self._dir_wd.pop(wd, None)
                continue
            if parent is None or not name or not mask & ino.IN_ISDIR:
                continue
            path = (parent.rstrip("/") + "/" + name) if parent != "/" else "/" + name
            if mask & ino.IN_CREATE and path not in self._known:
                # children made before the watch on the new directory existed: walk it
                for sub, directory, _ in walk(self._dir(path)):
                    full = path if sub == "/" else path + sub
                    if full not in self._known:
                        self._discover(full, directory)
            elif mask & ino.IN_DELETE:
                self._gone(path)

    def _read_events(self, cg: _Cgroup) -> None:
        """v2: memory.events.local changed: max/high start pressure, oom goes to the no-kill tracker."""
        cg.dirty = False
        cg.read_mono = self._clock()
        now = files.events(cg.directory)
        if not now:
            if not os.path.isdir(cg.directory):
                self._gone(cg.path)
            return
        before, cg.events = cg.events, now
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in ("high", "max", "oom", "oom_kill")}
        if delta["oom"] > 0 and self.no_kill is not None:
            self.no_kill.oom_notified(cg.path, cg.directory, delta["oom"])
        if delta["max"] > 0 or delta["high"] > 0:
            if cg.episode is not None:
                cg.episode.heat(self._clock())
            else:
                self._begin(cg, "memory.events.max" if delta["max"] > 0 else "memory.events.high")

    def _host_short(self, clear: bool) -> bool:
        """MemAvailable at or below the start level (clear=False) or still below the clear level."""
        mem = _meminfo(self.meminfo)
        avail, total = mem.get("MemAvailable"), mem.get("MemTotal")
        if avail is None or not total:
            return True  # cannot tell: let PSI alone decide
        used = total - avail
        return self.t.usage_hot(used, total) if clear else self.t.usage_starts(used, total)

    def _on_host_psi(self) -> None:
        if self.host_episode is not None:
            self.host_episode.heat(self._clock())
            return
        if not self._host_short(clear=False):
            return  # stalls at cgroup limits on a host with memory to spare: the memcg episodes tell
        psi = read_psi(self.host_psi)
        self.host_episode = Episode.begin(self.boot_id, "host", "psi", time.time_ns(), self._clock())
        self.host_episode.observe(psi_avg10=psi.some_avg10 if psi else None)
        self.emit(self._host_record(STATE_START, self.host_episode))

    # ---- tick and sweep ----------------------------------------------------------------------
    def _tick(self) -> None:
        now = self._clock()
        for fd in list(self._disarmed):
            owner = self._fd_owner.get(fd)
            self._disarmed.discard(fd)
            if owner is None:
                continue
            try:
                self._ep.modify(fd, select.EPOLLIN)
            except OSError:
                continue
            count = v1_events.drain(fd)
            cg = self._cgroups.get(owner[0])
            if count and cg is not None:
                self._disarm(fd)  # still firing: stay on the tick
                self._on_v1(cg, owner[1], count)
        for cg in [c for c in self._cgroups.values() if c.dirty]:
            self._read_events(cg)
        self._start_fired_psi()
        if self.host_episode is not None:
            psi = read_psi(self.host_psi)
            some = psi.some_avg10 if psi else None
            self.host_episode.observe(psi_avg10=some)
            if self.t.psi_hot(some) and self._host_short(clear=True):
                self.host_episode.heat(now)
            elif self.host_episode.cleared(now, self.t.clear_seconds):
                ep, self.host_episode = self.host_episode, None
                self.emit(self._host_record(STATE_END, ep, ended_by="cleared"))
        for cg in [c for c in self._cgroups.values() if c.episode is not None]:
            self._follow(cg, now)
        if self.no_kill is not None:
            self.no_kill.tick()

    def _start_fired_psi(self) -> None:
        fired, self._psi_fired = self._psi_fired, {}
        for path in fired:
            cg = self._cgroups.get(path)
            if cg is None:
                continue
            if cg.episode is not None:
                cg.episode.heat(self._clock())
                continue
            # hierarchical PSI: a deeper cgroup that fired explains this one; the host explains all
            if any(q != path and q.startswith(path + "/") for q in fired) or self.host_episode is not None:
                continue
            self._begin(cg, "psi")

    def _follow(self, cg: _Cgroup, now: float) -> None:
        assert self.hierarchy is not None and cg.episode is not None
        v = self.hierarchy.version
        usage = files.usage_bytes(v, cg.directory)
        if usage is None and not os.path.isdir(cg.directory):
            self._gone(cg.path)
            return
        hot = self.t.usage_hot(usage, cg.limit)
        psi = None
        if v == 2:
            p = read_psi(os.path.join(cg.directory, "memory.pressure"))
            psi = p.some_avg10 if p else None
            hot = hot or self.t.psi_hot(psi)
        else:
            fc = files.failcnt(cg.directory)
            hot = hot or (fc is not None and cg.failcnt is not None and fc > cg.failcnt)
            cg.failcnt = fc
        cg.episode.observe(usage=usage, psi_avg10=psi)
        if hot:
            cg.episode.heat(now)
        elif cg.episode.cleared(now, self.t.clear_seconds):
            self._end(cg, "cleared")

    def _sweep(self) -> None:
        self._sweeps += 1
        if self.hierarchy is None or not self.settings.memcgs:
            return
        if self._sweeps % RESCAN_EVERY == 0 or self._inotify is None:
            self._rescan()
            # limits are notified (inotify on the limit files); this catches what a watch missed
            for path in list(self._known):
                if path != "/":
                    self._consider(path, self._dir(path))
        v = self.hierarchy.version
        for cg in list(self._cgroups.values()):
            if v == 1 and not cg.polled:
                continue  # notified
            if cg.episode is None and self.t.usage_starts(files.usage_bytes(v, cg.directory), cg.limit):
                self._begin(cg, "usage")
            if cg.polled and self.no_kill is not None and files.oom_control(cg.directory).get("under_oom"):
                self.no_kill.oom_notified(cg.path, cg.directory)

    # ---- records -----------------------------------------------------------------------------
    def _begin(self, cg: _Cgroup, source: str) -> None:
        if not self.settings.report:
            return
        cg.episode = Episode.begin(self.boot_id, cg.path, source, time.time_ns(), self._clock())
        rec = self._memcg_record(cg, STATE_START, cg.episode)
        cg.episode.observe(usage=rec.usage_bytes, psi_avg10=rec.psi_some_avg10)
        self.emit(rec)

    def _end(self, cg: _Cgroup, ended_by: str) -> None:
        ep, cg.episode = cg.episode, None
        assert ep is not None
        self.emit(self._memcg_record(cg, STATE_END, ep, ended_by))

    def _memcg_record(self, cg: _Cgroup, state: str, ep: Episode, ended_by: Optional[str] = None) -> OomPressure:
        assert self.hierarchy is not None
        v = self.hierarchy.version
        usage = files.usage_bytes(v, cg.directory)
        psi = read_psi(os.path.join(cg.directory, "memory.pressure")) if v == 2 else None
        events = files.events(cg.directory) if v == 2 else {}
        workload = parse_cgroup_path(cg.path)
        wall = time.time_ns()
        return OomPressure(
            event_id=f"{ep.episode_id}:{state}", time_unix_nano=ep.started_wall_ns if state == STATE_START else wall,
            state=state, scope=SCOPE_MEMCG, source=ep.source, episode_id=ep.episode_id, cgroup_path=cg.path,
            container_runtime=workload.runtime, container_id=workload.container_id, pod_uid=workload.pod_uid,
            limit_bytes=cg.limit, usage_bytes=usage,
            psi_some_avg10=psi.some_avg10 if psi else None, psi_full_avg10=psi.full_avg10 if psi else None,
            failcnt=files.failcnt(cg.directory) if v == 1 else None,
            events_high=events.get("high"), events_max=events.get("max"), events_oom=events.get("oom"),
            events_oom_kill=events.get("oom_kill"),
            vmpressure_level=VMPRESSURE_LEVEL.split(",")[0] if ep.source == "vmpressure" else None,
            **self._end_fields(state, ep, wall, ended_by))

    def _host_record(self, state: str, ep: Episode, ended_by: Optional[str] = None) -> OomPressure:
        psi = read_psi(self.host_psi)
        mem = _meminfo(self.meminfo)
        wall = time.time_ns()
        return OomPressure(
            event_id=f"{ep.episode_id}:{state}", time_unix_nano=ep.started_wall_ns if state == STATE_START else wall,
            state=state, scope=SCOPE_HOST, source=ep.source, episode_id=ep.episode_id,
            psi_some_avg10=psi.some_avg10 if psi else None, psi_full_avg10=psi.full_avg10 if psi else None,
            host_available_bytes=mem.get("MemAvailable"), host_total_bytes=mem.get("MemTotal"),
            **self._end_fields(state, ep, wall, ended_by))

    def _end_fields(self, state: str, ep: Episode, wall: int, ended_by: Optional[str]) -> dict:
        if state != STATE_END:
            return {}
        return {"duration_ns": max(0, wall - ep.started_wall_ns), "peak_usage_bytes": ep.peak_usage,
                "peak_psi_some_avg10": ep.peak_psi, "ended_by": ended_by}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    def close(self) -> None:
        for cg in list(self._cgroups.values()):
            self._unregister(cg, ended_by=None)
        self._cgroups.clear()
        if self._host_trigger:
            self._host_trigger.close()
        if self._inotify:
            self._inotify.close()
        self._ep.close()
        os.close(self._wake)


def _meminfo(path: str) -> dict[str, int]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _raise_nofile_limit() -> None:
    # three eventfds per limited v1 cgroup, one PSI fd per v2 cgroup: use what the hard limit allows
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
