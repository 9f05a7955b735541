"""Registering a limited memory cgroup's notifications, per hierarchy version, and what each one means.

  v1  three eventfds through `cgroup.event_control`: usage crossing the start level (a
      `memory.usage_in_bytes` threshold: the start level only, while an episode lasts the tracker
      follows the usage itself), reclaim pressure caused by the cgroup's own limit
      (`memory.pressure_level` "medium,local"), and out of memory (`memory.oom_control`).
  v2  a PSI trigger on `memory.pressure`, and inotify on `memory.events.local`: a change is read
      (at most once a second per cgroup) and each counter that rose (`oom`, `max`, `high`) is a signal.

On a read-only cgroupfs (no eventfd can be registered: `cgroup.event_control` must be written) a v1
cgroup is polled instead: at each sweep its usage and `under_oom` are read and turned into the same
signals. A v2 cgroup's usage is read at each sweep too (v2 has no usage notification). Only
`max_cgroups` cgroups are registered; the rest are counted as unwatched and said once.
"""
from __future__ import annotations

import errno
import os
import select
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..cgroupfs import memcg
from . import v1_events
from .discovery import Discovery
from .events import (
    HIGH,
    MAX,
    OOM,
    PSI,
    REPORT_EVERY_S,
    USAGE,
    VMPRESSURE,
    VMPRESSURE_LEVEL,
    CgroupAppeared,
    CgroupSignal,
    CgroupUnlimited,
    SourceEvent,
)
from .notifier import Notifier
from .psi_trigger import PsiTrigger, PsiUnavailable
from .thresholds import Thresholds

EVENTS_READ_EVERY_S = REPORT_EVERY_S   # v2 memory.events.local: read at most this often per cgroup
_V1_TARGETS = {USAGE: "memory.usage_in_bytes", VMPRESSURE: "memory.pressure_level", OOM: "memory.oom_control"}
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)

Owner = tuple[str, str]   # (cgroup path, signal kind) of a notification descriptor


@dataclass
class Registration:
    path: str
    limit: int
    fds: dict[str, int] = field(default_factory=dict)     # v1: eventfd per signal kind
    psi: Optional[PsiTrigger] = None                        # v2
    wd_events: int = -1                                     # v2 memory.events.local watch
    events: dict[str, int] = field(default_factory=dict)   # v2 memory.events.local, as last read
    read_mono: float = 0.0                                  # when it was last read
    polled: bool = False                                    # v1 on a read-only cgroupfs


class Registry:
    """`report`: register what pressure needs (else only the OOM notifications, for the no-kill tracker)."""

    def __init__(self, version: int, discovery: Discovery, notifier: Notifier[Owner], thresholds: Thresholds,
                 max_cgroups: int, report: bool, warn: Callable[[str, str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.version = version
        self.discovery = discovery
        self.notifier = notifier
        self.t = thresholds
        self.max_cgroups = max_cgroups
        self.report = report
        self._warn = warn
        self._clock = clock
        self.regs: dict[str, Registration] = {}
        self.unwatched = 0          # limited cgroups not watched (cap, fd or watch limit)
        self._dirty: set[str] = set()  # v2: memory.events.local changed, not read yet

    # ---- registering -------------------------------------------------------------------------
    def consider(self, path: str) -> list[SourceEvent]:
        """Register the cgroup's notifications if it has a limit; again if the limit changed."""
        directory = self.discovery.directory(path)
        limit = memcg.limit_bytes(self.version, directory)
        reg = self.regs.get(path)
        if reg is not None and reg.limit == limit:
            return []
        if reg is not None:
            self.drop(path)
            if limit is None:
                return [CgroupUnlimited(path)]
        if limit is None:
            return []
        if len(self.regs) >= self.max_cgroups:
            self.unwatched += 1
            self._warn("cap", f"more than {self.max_cgroups} limited memory cgroups: the rest are "
                       "not watched for pressure (raise --pressure-max-cgroups)")
            return []
        reg = self.regs[path] = Registration(path, limit)
        try:
            self._register_v1(reg, directory) if self.version == 1 else self._register_v2(reg, directory)
        except OSError as e:
            self._release(reg)
            if e.errno in _READ_ONLY and self.version == 1:
                reg.polled = True
                self._warn("read-only", f"cannot register memory cgroup notifications ({e.strerror}): "
                           "v1 cgroups are read every --pressure-scan-interval instead; mount "
                           "/sys/fs/cgroup read-write for notifications (docs/deploy.md)")
            else:
                del self.regs[path]
                if e.errno == errno.ENOENT:
                    return []  # removed meanwhile
                self.unwatched += 1
                hint = "raise the open-files limit" if e.errno in (errno.EMFILE, errno.ENFILE) else "see the error"
                self._warn(f"register-{e.errno}", f"cannot watch memory cgroup {path}: {e.strerror} ({hint})")
                return []
        return [CgroupAppeared(path, limit)]

    def _register_v1(self, reg: Registration, directory: str) -> None:
        for kind in (USAGE, VMPRESSURE, OOM) if self.report else (OOM,):
            efd = v1_events.new_eventfd()
            reg.fds[kind] = efd
            self.notifier.add(efd, (reg.path, kind))
            args = {USAGE: str(self.t.start_threshold_bytes(reg.limit)), VMPRESSURE: VMPRESSURE_LEVEL}.get(kind, "")
            v1_events.register(directory, efd, _V1_TARGETS[kind], args)

    def _register_v2(self, reg: Registration, directory: str) -> None:
        try:
            if not self.report:
                raise PsiUnavailable(0, "not reporting pressure")
            reg.psi = PsiTrigger(os.path.join(directory, "memory.pressure"), self.t.stall_percent, self.t.window_s)
            self.notifier.add(reg.psi.fileno(), (reg.path, PSI), select.EPOLLPRI)
        except PsiUnavailable as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOENT):
                raise OSError(e.errno, e.strerror) from None
            if e.errno:
                self._warn("psi-cgroup", f"no per-cgroup PSI trigger: {e.strerror}")
        reg.wd_events = self.discovery.watch_file(reg.path, "memory.events.local")
        reg.events = memcg.events(directory)
        reg.read_mono = self._clock()

    def drop(self, path: str) -> None:
        """Unregister a cgroup's notifications (gone, or its limit changed)."""
        reg = self.regs.pop(path, None)
        if reg is not None:
            self._release(reg)

    def _release(self, reg: Registration) -> None:
        for fd in reg.fds.values():
            self.notifier.remove(fd)
            os.close(fd)
        reg.fds.clear()
        if reg.psi:
            self.notifier.remove(reg.psi.fileno())
            reg.psi.close()
            reg.psi = None
        self.discovery.unwatch_file(reg.wd_events)
        reg.wd_events = -1
        self._dirty.discard(reg.path)

    def close(self) -> None:
        for path in list(self.regs):
            self.drop(path)

    # ---- what a notification means ---------------------------------------------------------
    def fired(self, owner: Owner, fd: int, mask: int) -> Optional[list[SourceEvent]]:
        """The signal of a descriptor that fired; None when it says the cgroup is gone."""
        path, kind = owner
        if path not in self.regs:
            return []
        if kind == PSI:
            return None if mask & select.EPOLLERR else [CgroupSignal(path, PSI)]  # EPOLLERR: being removed
        count = v1_events.drain(fd)
        self.notifier.disarm(fd)  # until the next tick: a storm costs one wake-up a second
        return self._v1_signal(path, kind, max(1, count))

    def _v1_signal(self, path: str, kind: str, count: int) -> Optional[list[SourceEvent]]:
        if not os.path.isdir(self.discovery.directory(path)):
            return None  # removing a cgroup signals its eventfds one last time
        return [CgroupSignal(path, kind, count)]

    def events_changed(self, path: str) -> Optional[list[SourceEvent]]:
        """v2 memory.events.local was modified: read now, or at the tick if read less than a second ago."""
        reg = self.regs.get(path)
        if reg is None:
            return []
        self._dirty.add(path)
        if self._clock() - reg.read_mono >= EVENTS_READ_EVERY_S:
            return self._read_events(reg)
        return []

    def _read_events(self, reg: Registration) -> Optional[list[SourceEvent]]:
        self._dirty.discard(reg.path)
        reg.read_mono = self._clock()
        directory = self.discovery.directory(reg.path)
        now = memcg.events(directory)
        if not now:
            return None if not os.path.isdir(directory) else []
        before, reg.events = reg.events, now
        out: list[SourceEvent] = []
        for kind in (OOM, MAX, HIGH):
            rose = now.get(kind, 0) - before.get(kind, 0)
            if rose > 0:
                out.append(CgroupSignal(reg.path, kind, rose))
        return out

    def busy(self) -> bool:
        """Something waits for the tick: a disarmed descriptor, or a counter file not read yet."""
        return self.notifier.any_disarmed() or bool(self._dirty)

    def tick(self) -> tuple[list[SourceEvent], list[str]]:
        """Once a second while busy: (signals, paths of cgroups found gone)."""
        out: list[SourceEvent] = []
        gone: list[str] = []
        for (path, kind), fd in self.notifier.rearm():
            count = v1_events.drain(fd)
            if count and path in self.regs:
                self.notifier.disarm(fd)  # still firing: stay on the tick
                self._collect(path, self._v1_signal(path, kind, count), out, gone)
        for path in list(self._dirty):
            reg = self.regs.get(path)
            if reg is not None:
                self._collect(path, self._read_events(reg), out, gone)
        return out, gone

    def sweep(self) -> list[SourceEvent]:
        """Every scan interval: what no notification tells, read (v2 usage; v1 polled: usage, under_oom)."""
        out: list[SourceEvent] = []
        for reg in list(self.regs.values()):
            if self.version == 1 and not reg.polled:
                continue  # notified
            directory = self.discovery.directory(reg.path)
            if self.report and self.t.usage_starts(memcg.usage_bytes(self.version, directory), reg.limit):
                out.append(CgroupSignal(reg.path, USAGE))
            if reg.polled and memcg.oom_control(directory).get("under_oom"):
                out.append(CgroupSignal(reg.path, OOM))
        return out

    @staticmethod
    def _collect(path: str, events: Optional[list[SourceEvent]], out: list[SourceEvent], gone: list[str]) -> None:
        if events is None:
            gone.append(path)
        else:
            out += events
