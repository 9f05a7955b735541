"""One epoll for every notification the pressure source waits on, with disarm-until-next-tick.

Each registered descriptor has an owner (what the source wants to know when it fires). A
descriptor that keeps firing (a reclaim or OOM storm signals an eventfd thousands of times a
second) is disarmed after its first wake-up and re-armed at the source's next tick, so a storm
costs one wake-up per second per descriptor, not one per event. `stop()` from any thread wakes
the wait at once.
"""
from __future__ import annotations

import os
import select
from typing import Generic, Hashable, Optional, TypeVar

from . import v1_events

Owner = TypeVar("Owner", bound=Hashable)


class Notifier(Generic[Owner]):
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._wake = v1_events.new_eventfd()
        self._ep.register(self._wake, select.EPOLLIN)
        self._owners: dict[int, tuple[Owner, int]] = {}   # fd -> (owner, epoll mask)
        self._disarmed: set[int] = set()

    def add(self, fd: int, owner: Owner, mask: int = select.EPOLLIN) -> None:
        self._ep.register(fd, mask)
        self._owners[fd] = (owner, mask)

    def remove(self, fd: int) -> None:
        """Stop waiting on `fd` (the caller closes it)."""
        self._owners.pop(fd, None)
        self._disarmed.discard(fd)
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def owner(self, fd: int) -> Optional[Owner]:
        entry = self._owners.get(fd)
        return entry[0] if entry else None

    def disarm(self, fd: int) -> None:
        """No more wake-ups from `fd` until `rearm()`."""
        try:
            self._ep.modify(fd, 0)
            self._disarmed.add(fd)
        except OSError:
            pass

    def any_disarmed(self) -> bool:
        return bool(self._disarmed)

    def rearm(self) -> list[tuple[Owner, int]]:
        """Arm every disarmed descriptor again; (owner, fd) of each, for the caller to drain."""
        out = []
        for fd in list(self._disarmed):
            self._disarmed.discard(fd)
            entry = self._owners.get(fd)
            if entry is None:
                continue
            try:
                self._ep.modify(fd, entry[1])
            except OSError:
                continue
            out.append((entry[0], fd))
        return out

    def wait(self, timeout: float) -> list[tuple[Owner, int, int]]:
        """(owner, fd, epoll mask) of what fired within `timeout` seconds; [] on a `stop()`."""
        fired = []
        for fd, mask in self._ep.poll(max(0.0, timeout)):
            if fd == self._wake:
                v1_events.drain(fd)
                continue
            entry = self._owners.get(fd)
            if entry is not None:
                fired.append((entry[0], fd, mask))
        return fired

    def stop(self) -> None:
        """Wake a `wait()` (from any thread)."""
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def close(self) -> None:
        self._ep.close()
        os.close(self._wake)
