"""The names cache: warm before the kill, asked at the kill, never holding a kill back for long.

One `RuntimeWatcher` per runtime socket runs on its own supervised thread: it lists every container
(and pod sandbox) every `refresh_s` seconds, the way the kubelet's PLEG relists its runtime every
second; for runtimes with an event stream (docker, podman) a second thread (`follow`) fetches each
container as it is created or started, and the full list only resynchronises every
`EVENTS_RESYNC_S`. So the names of a container are known before it is OOM-killed and survive its
removal right after (entries stay `RETAIN_S` after the runtime stops listing them). `RuntimeNames.annotate` runs on
the pipeline's worker for each kill: a cache hit costs a dict lookup; a miss asks each runtime that
may hold the container by id (on the watchers' threads) and waits at most `lookup_wait_s` for an
answer. Whatever is known then goes out, and `names_source` says how it was obtained
(`otel_oom.model.NAMES_*`): the kill is never late for a name.

No socket at an auto-detected path: the watcher idles, nothing is logged or counted, and it starts
as soon as the socket appears. A socket that stops answering is logged once (and once more when it
answers again), every failed call is counted in `faults["runtime_<kind>"]` (exported as
`otel_oom.faults{stage}`), and the watcher retries with backoff up to `BACKOFF_MAX_S`. While a runtime
is down its cache is still used, and a miss is not waited for; a runtime that let one ask go
unanswered is not waited for again until it answers something, so a storm of kills meets one wait.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from typing import Callable, Optional, Protocol

from ...schema.records import NAMES_CACHE, NAMES_LOOKUP, NAMES_NOT_FOUND, NAMES_TIMEOUT, NAMES_UNAVAILABLE, OomKill
from ...text import for_terminal
from .names import ContainerNames, RuntimeUnavailable, split_image

log = logging.getLogger("otel_oom.runtime")

RETAIN_S = 600.0          # keep a container's names this long after the runtime stopped listing it
MAX_ENTRIES = 20000       # per runtime; the least recently listed go first
NOT_FOUND_TTL_S = 30.0    # an id the runtime does not know is not asked again for this long
BACKOFF_MAX_S = 30.0
EVENTS_RESYNC_S = 30.0    # full list interval while the runtime's event stream is followed
_WAKE_S = 0.2             # how often a live watcher waiting for asks looks at the stop flag
_NO_SOCKET_RECHECK_S = 5.0


class RuntimeClient(Protocol):
    kind: str                  # "cri" | "docker" | "podman"
    path: str
    runtime_name: Optional[str]

    def list(self) -> list[ContainerNames]: ...
    def get(self, container_id: str) -> Optional[ContainerNames]: ...
    def close(self) -> None: ...


class _Ask:
    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.done = threading.Event()
        self.found: Optional[ContainerNames] = None


class RuntimeWatcher:
    """Keeps one runtime's names in memory and answers by-id questions about the ones it lacks."""

    def __init__(self, client: RuntimeClient, faults: Counter[str], *, refresh_s: float = 1.0,
                 explicit: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.faults = faults
        self.refresh_s = refresh_s
        self.explicit = explicit          # configured by the user: a missing socket is worth a warning
        self.clock = clock
        self.stage = f"runtime_{client.kind}"
        self.up: Optional[bool] = None    # None: never answered yet (or no socket); then True/False
        self.answers = 0                  # calls the runtime answered, ever
        self.listed_at: Optional[float] = None
        self.last_list_s: Optional[float] = None  # how long the last full list took
        self._names: OrderedDict[str, tuple[ContainerNames, float]] = OrderedDict()
        self._pods: dict[str, ContainerNames] = {}  # pod uid -> the pod's names
        self._lock = threading.Condition()
        self._asks: list[_Ask] = []
        self._stop = False
        self._stopped = threading.Event()   # set by stop(): idle sleeps end at once
        self._warned_missing = False
        self.following = False            # the runtime's event stream is being followed
        self._resync = False              # list now: an event stream just started
        self._follow_fault_logged = False

    @property
    def name(self) -> str:
        return f"{self.client.kind} at {for_terminal(self.client.path)}"

    # ---- read side (any thread) -----------------------------------------------------------
    def cached(self, container_id: str) -> Optional[ContainerNames]:
        with self._lock:
            entry = self._names.get(container_id)
        return entry[0] if entry else None

    def pod(self, pod_uid: str) -> Optional[ContainerNames]:
        with self._lock:
            return self._pods.get(pod_uid)

    def ask(self, container_id: str) -> _Ask:
        ask = _Ask(container_id)
        with self._lock:
            self._asks.append(ask)
            self._lock.notify_all()
        return ask

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._stopped.set()

    def _idle(self, seconds: float, stopping: Optional[threading.Event]) -> None:
        """Sleep without polling (no socket, or between event streams); the agent's stop ends it."""
        (stopping or self._stopped).wait(seconds)

    # ---- the watcher thread -----------------------------------------------------------------
    def run(self, stopping: Optional[threading.Event] = None) -> None:
        """Thread body: list every `interval()` seconds (backing off while the runtime fails) and
        answer asks as they come."""
        last = -1e18       # when the last list was due
        backoff = 0.0      # extra wait after failures
        while True:
            with self._lock:
                while (not self._stop and not self._asks and self.clock() < last + self.interval() + backoff
                       and not self._resync and not (stopping is not None and stopping.is_set())):
                    self._lock.wait(min(_WAKE_S, max(0.0, last + self.interval() + backoff - self.clock())))
                if self._stop or (stopping is not None and stopping.is_set()):
                    return
                asks, self._asks = self._asks, []
                resync, self._resync = self._resync, False
            if not os.path.exists(self.client.path):
                self._no_socket(asks)
                self._idle(_NO_SOCKET_RECHECK_S, stopping)  # an idle agent wakes rarely for it
                last, backoff = -1e18, 0.0   # list as soon as the socket is there
                continue
            due = resync or self.clock() >= last + self.interval() + backoff
            ok = self._answer(asks) and (not due or self.refresh())
            if due or not ok:
                last = self.clock()
            backoff = 0.0 if ok else min(BACKOFF_MAX_S, max(self.refresh_s, 2 * backoff))

    def interval(self) -> float:
        """Seconds between full lists: resynchronisation only while events keep the cache warm."""
        return max(self.refresh_s, EVENTS_RESYNC_S) if self.following else self.refresh_s

    def follow(self, stopping: Optional[threading.Event] = None) -> None:
        """Thread body for runtimes with an event stream (docker, podman): every container that is
        created or starts is fetched by id at once, so the cache is warm long before a kill."""
        events = getattr(self.client, "events", None)
        if events is None:
            return

        def should_stop() -> bool:
            return self._stop or (stopping is not None and stopping.is_set())

        def connected() -> None:
            # subscribe, then list: a container that started before the stream is in the list
            with self._lock:
                self.following = self._resync = True
                self._lock.notify_all()
        while not should_stop():
            backoff = 1.0  # waiting for the runtime's first answer
            if self.up:
                try:
                    events(self._prefetch, should_stop, connected)
                    backoff = 1.0
                except RuntimeUnavailable as e:
                    log.debug("event stream of %s ended: %s", self.name, for_terminal(str(e)))
                    backoff = 5.0
                except Exception:  # noqa: BLE001 - the periodic list still keeps the cache warm
                    self.faults[self.stage] += 1
                    if not self._follow_fault_logged:
                        self._follow_fault_logged = True
                        log.exception("following the events of %s failed; names come from its periodic list",
                                      self.name)
                    backoff = BACKOFF_MAX_S
                finally:
                    if self.following:
                        self.following = False
                        with self._lock:
                            self._lock.notify_all()  # back to the short list interval
            self._idle(backoff, stopping)

    def _prefetch(self, container_id: str) -> None:
        if self.cached(container_id) is None:
            self.ask(container_id)  # nobody waits: the watcher thread fetches it and caches it

    def refresh(self) -> bool:
        """List the runtime once and merge the answer into the cache; False if it did not answer."""
        t0 = self.clock()
        try:
            listed = self.client.list()
        except RuntimeUnavailable as e:
            self._failed(e)
            return False
        except Exception as e:  # noqa: BLE001 - a runtime's odd answer must not end the watcher
            self._failed(e, unexpected=True)
            return False
        now = self.clock()
        with self._lock:
            for names in listed:
                self._put(names, now)
            self._expire(now)
        self.last_list_s, self.listed_at = now - t0, now
        self._answered()
        return True

    def _answer(self, asks: list[_Ask]) -> bool:
        ok = True
        for ask in asks:
            if ok:
                try:
                    ask.found = self.client.get(ask.container_id)
                except RuntimeUnavailable as e:
                    self._failed(e)
                    ok = False
                except Exception as e:  # noqa: BLE001
                    self._failed(e, unexpected=True)
                    ok = False
                else:
                    self._answered()
                    if ask.found is not None:
                        with self._lock:
                            self._put(ask.found, self.clock())
            ask.done.set()
        return ok

    def _put(self, names: ContainerNames, now: float) -> None:
        self._names[names.container_id] = (names, now)
        self._names.move_to_end(names.container_id)
        if names.pod_uid and (names.k8s_container_name is None or names.pod_uid not in self._pods):
            self._pods[names.pod_uid] = ContainerNames(container_id="", runtime=names.runtime, pod_name=names.pod_name,
                                                       pod_namespace=names.pod_namespace, pod_uid=names.pod_uid)
        while len(self._names) > MAX_ENTRIES:
            self._names.popitem(last=False)

    def _expire(self, now: float) -> None:
        # least recently listed first: stop at the first one still fresh
        while self._names:
            cid, (names, seen) = next(iter(self._names.items()))
            if now - seen <= RETAIN_S:
                break
            del self._names[cid]
        live = {n.pod_uid for n, _ in self._names.values() if n.pod_uid}
        for uid in [u for u in self._pods if u not in live]:
            del self._pods[uid]

    def _no_socket(self, asks: list[_Ask]) -> None:
        for ask in asks:
            ask.done.set()
        if self.up:
            self._failed(RuntimeUnavailable("the socket is gone"))
        elif self.explicit and not self._warned_missing:
            self._warned_missing = True
            log.warning("no %s runtime socket at %s (configured): kills are reported without container names "
                        "until it appears", self.client.kind, self.client.path)

    def _failed(self, e: Exception, unexpected: bool = False) -> None:
        self.faults[self.stage] += 1
        if self.up is not False:
            log.warning("container runtime %s %s (%s); kills are reported with the names cached "
                        "so far; counted in otel_oom.faults{stage=%s}, logged once", self.name,
                        "stopped answering" if self.up else "does not answer", for_terminal(str(e)), self.stage,
                        exc_info=unexpected)
        self.up = False

    def _answered(self) -> None:
        self.answers += 1
        if self.up is False:
            log.info("container runtime %s answers again", self.name)
        elif self.up is None:
            log.info("container names from runtime %s%s", self.name,  # the runtime's own name is untrusted
                     f" ({for_terminal(self.client.runtime_name)})" if self.client.runtime_name else "")
        self.up = True


class RuntimeNames:
    """The agent's view over every watcher: `annotate(kill)` adds the names to a kill."""

    def __init__(self, watchers: list[RuntimeWatcher], faults: Counter[str], lookup_wait_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watchers = watchers
        self.faults = faults
        self.lookup_wait_s = lookup_wait_s
        self.clock = clock
        self._not_found: dict[str, float] = {}
        # watcher -> its answer count when an ask of ours went unanswered: not waited for again
        # until it answers something, so a storm of kills meets a hung runtime's wait once
        self._stalled: dict[int, int] = {}
        self._fault_logged = False
        self.last_lookup_s: Optional[float] = None  # duration of the last annotate's lookup

    def lookup(self, container_id: Optional[str], pod_uid: Optional[str],
               runtime: Optional[str]) -> tuple[Optional[ContainerNames], Optional[str]]:
        """(names, how they were obtained); (None, None) when no runtime could be asked at all."""
        if not self.watchers or not (container_id or pod_uid):
            return None, None
        if container_id:
            for w in self.watchers:
                found = w.cached(container_id)
                if found is not None:
                    return found, NAMES_CACHE
        asked, stalled = self._ask(container_id, runtime) if container_id else ([], False)
        if not asked:
            pod = self._pod(pod_uid)
            if pod is not None:
                return pod, NAMES_CACHE
            if not any(w.up is not None for w in self.watchers):
                return None, None       # no runtime socket has ever answered: no names, no mark
            if container_id and container_id in self._not_found:
                return None, NAMES_NOT_FOUND
            if stalled:
                return None, NAMES_TIMEOUT
            return None, (NAMES_UNAVAILABLE if container_id else NAMES_NOT_FOUND)
        deadline = self.clock() + self.lookup_wait_s
        unanswered = []
        for w, ask in asked:
            if not ask.done.wait(max(0.0, deadline - self.clock())):
                unanswered.append(w)
            elif ask.found is not None:
                return ask.found, NAMES_LOOKUP
        for w in unanswered:
            self._stalled[id(w)] = w.answers
        pod = self._pod(pod_uid)
        if not unanswered and not stalled:
            assert container_id is not None
            self._not_found[container_id] = self.clock()
            return pod, (NAMES_CACHE if pod else NAMES_NOT_FOUND)
        return pod, (NAMES_CACHE if pod else NAMES_TIMEOUT)

    def _ask(self, container_id: str, runtime: Optional[str]) -> tuple[list[tuple[RuntimeWatcher, _Ask]], bool]:
        """Ask each live runtime that may hold the container; True too if one was skipped as stalled."""
        now = self.clock()
        for cid in [c for c, t in self._not_found.items() if now - t > NOT_FOUND_TTL_S]:
            del self._not_found[cid]
        if container_id in self._not_found:
            return [], False
        live = [w for w in self.watchers if w.up]
        candidates = [w for w in live if _may_hold(w, runtime)] or live
        ready = [w for w in candidates if self._stalled.get(id(w)) != w.answers]
        return [(w, w.ask(container_id)) for w in ready], len(ready) < len(candidates)

    def _pod(self, pod_uid: Optional[str]) -> Optional[ContainerNames]:
        if not pod_uid:
            return None
        return next(filter(None, (w.pod(pod_uid) for w in self.watchers)), None)

    def annotate(self, kill: OomKill) -> OomKill:
        """The kill with the names the runtimes know; unchanged (and counted) if that fails."""
        t0 = self.clock()
        try:
            found, source = self.lookup(kill.container_id, kill.pod_uid, kill.container_runtime)
            return with_names(kill, found, source)
        except Exception:  # noqa: BLE001 - names are extra: the kill goes out without them
            self.faults["runtime_names"] += 1
            if not self._fault_logged:
                self._fault_logged = True
                log.exception("looking up container names failed (counted in otel_oom.faults{stage=runtime_names})")
            return kill
        finally:
            self.last_lookup_s = self.clock() - t0

    def close(self) -> None:
        for w in self.watchers:
            w.stop()
            w.client.close()


def _may_hold(watcher: RuntimeWatcher, runtime: Optional[str]) -> bool:
    """Whether a container the cgroup path says runs under `runtime` can be known to this watcher."""
    if runtime is None:
        return True
    if watcher.client.kind == "cri":
        return runtime in ("containerd", "cri-o") or runtime == watcher.client.runtime_name
    return runtime == watcher.client.kind


def with_names(kill: OomKill, found: Optional[ContainerNames], source: Optional[str]) -> OomKill:
    if found is None:
        return dataclasses.replace(kill, names_source=source) if source else kill
    image = split_image(found.image)[0] if found.image else None
    return dataclasses.replace(
        kill,
        container_runtime=kill.container_runtime or found.runtime,
        pod_uid=kill.pod_uid or found.pod_uid,
        container_name=found.name, container_image=image, container_image_tag=_tag(found.image),
        container_image_id=found.image_id, pod_name=found.pod_name, pod_namespace=found.pod_namespace,
        k8s_container_name=found.k8s_container_name, restart_count=found.restart_count, names_source=source)


def _tag(image: Optional[str]) -> Optional[str]:
    return split_image(image)[1] if image else None
