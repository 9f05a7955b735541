"""One way to run the agent's parts: the service protocol and the supervisor that owns their lifecycle.

Every part that has a thread (the worker, the sender, the pressure watcher, the webhook, the health
server, the runtime watchers, the export set-up) or must be closed at the end (the store, the
probe, the exporters) is a `Service`: `start()`, `stop()` (ask it to end, returns at once),
`join(timeout)` (wait for it; True once it ended) and `healthy()` -> (ok, why not).

The `Supervisor` registers them in dependency order (what a part uses is registered before it):
that is the start order, and teardown runs the reverse, so a part stops before what it depends on.
A service may be registered and started later (`add(..., start=False)`, then `start(name)`): the
sender and the exporters exist only once the export set-up ran after `ready`, but they keep the
place their dependencies give them. Teardown has one deadline for everything (`stop_all`): the
services marked `final` (the last metric export) get the last part of it, the others share the
rest in order, and whatever is still running after its turn gets one more second in all.

A service thread that raises, or returns while nobody asked it to, is a failure: it is logged once
(one line when it ran out of memory or for an expected `AgentError`, the traceback otherwise), makes
`healthy()` name it (so /readyz fails), and calls the supervisor's `on_failure` (the agent stops,
with exit code 1, after its normal teardown).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Protocol

log = logging.getLogger("otel_oom.service")

GRACE_S = 1.0  # after each service had its turn: one more second in all for what still runs
ENDED = "ended unexpectedly"


class Service(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float) -> bool: ...
    def healthy(self) -> tuple[bool, str]: ...


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is the process running out of memory (or address space, under ulimit -v), in any
    of the shapes Python gives it: MemoryError, ENOMEM, a shared object that cannot be mapped, a
    thread that cannot be started."""
    import errno

    text = str(e)
    return (isinstance(e, MemoryError)
            or (isinstance(e, OSError) and e.errno == errno.ENOMEM)
            or (isinstance(e, ImportError) and ("failed to map segment" in text or "Cannot allocate memory" in text))
            or (isinstance(e, RuntimeError) and "can't start new thread" in text))


class ServiceThread:
    """A daemon thread that records why it ended; `ends=True` for a body that is meant to return."""

    def __init__(self, name: str, target: Callable[[], None], *, ends: bool = False,
                 on_failure: Optional[Callable[[str, str], None]] = None) -> None:
        self.name = name
        self.target = target
        self.ends = ends
        self.on_failure = on_failure
        self.failure: Optional[str] = None
        self.stopping = False  # set by stop(): the body returning is expected from now on
        self.agent_stopping: Optional[threading.Event] = None  # ... and once the whole agent stops
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        from .errors import AgentError

        thread = threading.Thread(target=self._body, name=self.name, daemon=True)
        try:
            thread.start()
        except RuntimeError as e:  # no memory (or address space) for its stack
            raise AgentError(f"cannot start thread {self.name}: {e}; raise the agent's memory limit "
                             "(its container's, or ulimit -v)") from None
        self._thread = thread

    def _body(self) -> None:
        try:
            self.target()
        except BaseException as e:  # noqa: BLE001 - recorded, shown by /readyz, and stops the agent
            self._fail(describe(e), e)
            return
        stopping = self.stopping or (self.agent_stopping is not None and self.agent_stopping.is_set())
        if not stopping and not self.ends:
            self._fail(ENDED, None)

    def _fail(self, why: str, e: Optional[BaseException]) -> None:
        from .errors import AgentError

        self.failure = why
        oom = e is not None and out_of_memory(e)
        if e is None or oom or isinstance(e, AgentError):
            hint = "; out of memory: raise the agent's memory limit (its container's, or ulimit -v)" if oom else ""
            log.critical("thread %s %s%s; stopping so the agent can be restarted (stored events stay in "
                         "the spool)", self.name, f"died: {why}" if e is not None else why, hint)
        else:
            log.critical("thread %s died: %s; stopping so the agent can be restarted (stored events stay in "
                         "the spool)", self.name, why, exc_info=e)
        if self.on_failure is not None:
            self.on_failure(self.name, why)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def healthy(self) -> tuple[bool, str]:
        if self.failure is None:
            return True, "ok"
        if self.failure == ENDED:
            return False, f"thread {self.name} {ENDED}"
        return False, f"thread {self.name} died: {self.failure}"


class ThreadService:
    """A thread body, how to ask it to stop, and (optional) what to do when its turn runs out.

    `deadline(t)` is told the monotonic time its join must end by, before the join (the sender
    stops starting new attempts then); `abort()` runs if it is still alive after that (the sender
    cuts the export in flight); `check()` adds a health verdict of its own (delivery stuck)."""

    def __init__(self, name: str, run: Callable[[], None], stop: Callable[[], None] = lambda: None, *,
                 ends: bool = False, deadline: Optional[Callable[[float], None]] = None,
                 abort: Optional[Callable[[], None]] = None,
                 check: Optional[Callable[[], tuple[bool, str]]] = None) -> None:
        self.name = name
        self.thread = ServiceThread(name, run, ends=ends)
        self._stop = stop
        self._deadline = deadline
        self._abort = abort
        self._check = check

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stopping = True
        if self.thread.started:
            self._stop()

    def join(self, timeout: float) -> bool:
        if self._deadline is not None and self.thread.alive():
            self._deadline(time.monotonic() + max(0.0, timeout))
        if self.thread.join(timeout):
            return True
        if self._abort is not None:
            self._abort()
            self._abort = None
        return False

    def healthy(self) -> tuple[bool, str]:
        ok, why = self.thread.healthy()
        if ok and self._check is not None:
            return self._check()
        return ok, why


class Resource:
    """Something without a thread that must be closed at its turn, and may say it is unhealthy.

    `close()` runs when it is stopped; `close_within(seconds)` instead, when closing needs to
    know how much of the teardown's time is left for it (the final metric export)."""

    def __init__(self, name: str, close: Optional[Callable[[], object]] = None, *,
                 close_within: Optional[Callable[[float], object]] = None,
                 check: Optional[Callable[[], tuple[bool, str]]] = None) -> None:
        self.name = name
        self._close = close
        self._close_within = close_within
        self._check = check

    def start(self) -> None:
        pass

    def stop(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def join(self, timeout: float) -> bool:
        close, self._close_within = self._close_within, None
        if close is not None:
            close(max(0.0, timeout))
        return True

    def healthy(self) -> tuple[bool, str]:
        return self._check() if self._check is not None else (True, "ok")


class _Entry:
    __slots__ = ("service", "started", "final", "stopped")

    def __init__(self, service: Optional[Service], final: bool) -> None:
        self.service = service
        self.started = False
        self.final = final
        self.stopped = False


class Supervisor:
    """Owns the services: start order, reverse teardown within one deadline, and readiness.

    `stopping`: the agent's own stop flag (set by a signal); a service thread that returns once it
    is set ended as expected."""

    def __init__(self, on_failure: Callable[[str, str], None] = lambda name, why: None,
                 stopping: Optional[threading.Event] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_failure = on_failure
        self.agent_stopping = stopping
        self.clock = clock
        self._entries: dict[str, _Entry] = {}  # in registration (= dependency) order
        self._lock = threading.Lock()
        self.stopping = False

    def add(self, service: Service, start: bool = True, final: bool = False) -> Service:
        """Register `service` after everything registered so far; start it now unless `start=False`."""
        self.reserve(service.name, final)
        self._entries[service.name].service = service
        if start:
            self.start(service.name)
        return service

    def reserve(self, name: str, final: bool = False) -> None:
        """Keep a place for a service made later (`fill`); it is torn down from that place."""
        with self._lock:
            if name in self._entries:
                raise ValueError(f"service {name} registered twice")
            self._entries[name] = _Entry(None, final)

    def fill(self, service: Service, start: bool = True) -> Service:
        """The service for a reserved place (started unless `start=False`). Once the teardown began it
        is not started but stopped at once: the teardown may have passed its place already (a
        resource made, like the metrics with their exporter thread, is closed)."""
        entry = self._entries[service.name]
        if entry.service is not None:
            raise ValueError(f"service {service.name} is there already")
        entry.service = service
        if self.stopping:
            entry.stopped = True
            service.stop()
            service.join(0.0)
        elif start:
            self.start(service.name)
        return service

    def start(self, name: str) -> None:
        entry = self._entries[name]
        assert entry.service is not None, f"service {name} was reserved, never filled"
        if entry.started:
            return
        thread = getattr(entry.service, "thread", None)
        if isinstance(thread, ServiceThread):
            thread.on_failure = self._failed
            thread.agent_stopping = self.agent_stopping
        entry.service.start()
        entry.started = True

    def get(self, name: str) -> Optional[Service]:
        entry = self._entries.get(name)
        return entry.service if entry is not None else None

    def _failed(self, name: str, why: str) -> None:
        self.on_failure(name, why)

    def healthy(self) -> tuple[bool, str]:
        """Every started service healthy: (True, "ok"); else (False, every reason, in order)."""
        problems = []
        for entry in list(self._entries.values()):
            if entry.service is None or not entry.started:
                continue
            try:
                ok, why = entry.service.healthy()
            except Exception as e:  # noqa: BLE001 - a broken check means not ready, never a crash
                ok, why = False, f"{entry.service.name}: health check failed: {describe(e)}"
            if not ok:
                problems.append(why)
        return (False, "; ".join(problems)) if problems else (True, "ok")

    def failures(self) -> list[str]:
        """The services whose thread failed, in order."""
        out = []
        for name, entry in self._entries.items():
            thread = getattr(entry.service, "thread", None)
            if isinstance(thread, ServiceThread) and thread.failure is not None:
                out.append(name)
        return out

    def stop_all(self, timeout: float, final_share: float = 0.0) -> list[str]:
        """Stop every started service in reverse order within `timeout` seconds; the `final` ones
        keep the last `final_share` seconds of it. Returns the names still running at the end."""
        self.stopping = True
        now = self.clock()
        end = now + max(0.0, timeout)
        has_final = any(e.final and e.started for e in self._entries.values())
        others_end = end - (final_share if has_final else 0.0)
        running: list[Service] = []
        for entry in reversed(list(self._entries.values())):
            service = entry.service
            if service is None or not entry.started or entry.stopped:
                continue
            entry.stopped = True
            by = end if entry.final else others_end
            try:
                service.stop()
                if not service.join(max(0.0, by - self.clock())):
                    running.append(service)
            except Exception:  # noqa: BLE001 - teardown goes on with the next service
                log.exception("error stopping %s", service.name)
        grace = self.clock() + GRACE_S  # one second in all, not one each
        return [s.name for s in running if not s.join(max(0.0, grace - self.clock()))]
