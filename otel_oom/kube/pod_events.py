"""A Kubernetes Event on the victim's Pod for every kill (`--k8s-events`): best effort, bounded, once.

The kill's `oom.kill` record is the durable path (spool, acknowledged OTLP); the Event is a view of
it where people already look (`kubectl describe pod`, `kubectl get events`). So nothing here may
hold up or lose a kill: `notify` only queues (the caller is the main-process thread, never the
pipeline), and a daemon thread POSTs each Event (schema/pod_event.py builds it) to the API server.

- Once: the Event's name is derived from the kill's `oom.event.id`, so posting the same kill again
  (a retry whose first request did arrive, or the same kill handed over twice) is answered 409
  AlreadyExists, which counts as done; the ids of the last `REMEMBER` kills queued are kept, so
  a kill handed over twice is not even sent twice.
- Bounded: at most `queue_max` Events wait (more are dropped), at most `rate` per second are sent
  (burst `burst`), and each is given up `max_age_s` after the kill reached this thread.
- Retries: no answer, 429, 5xx and 401 (a token the kubelet just rotated is read again) are retried
  with backoff from `backoff` to `max_backoff` seconds (Retry-After when given), within `max_age_s`.
  403 (RBAC), 404 (the namespace is gone), 400/422 (refused as invalid) are not.
- Counted: every Event not posted is a drop, exported as `otel_oom.events.dropped{reason=
  "k8s_event_<kind>"}` and logged once per kind of failure (forbidden, not_found, invalid,
  unauthorized, server_error, unreachable, queue_full, shutdown, fault: a bounded set); a
  post that succeeds after failures says so once.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from typing import Callable, Optional

from ..schema.pod_event import pod_event, wants_event
from ..schema.records import OomKill
from ..service import ServiceThread
from .api import ApiClient, ApiUnreachable, Response
from .drops import ExtraDrops

log = logging.getLogger("otel_oom.kube")

DROP_PREFIX = "k8s_event_"  # + the kind of failure: the reason in otel_oom.events.dropped
QUEUE_MAX = 256
REMEMBER = 4096
EVENTS_PATH = "/api/v1/namespaces/{namespace}/events"
RETRYABLE = {401, 408, 429, 500, 502, 503, 504}
NOT_RETRYABLE_KIND = {403: "forbidden", 404: "not_found", 400: "invalid", 422: "invalid"}


class PodEvents:
    """A `service.Service`; `notify(kill, main)` from any thread. Counters: `posted`, `existed` (409:
    posted before), `deduplicated` (handed over twice, not sent), `drops` (kube/drops.py)."""

    name = "otel-oom-k8s-events"

    def __init__(self, client: Callable[[], ApiClient], node: str, *, queue_max: int = QUEUE_MAX,
                 rate: float = 5.0, burst: int = 50, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_age_s: float = 120.0, clock: Callable[[], float] = time.monotonic,
                 drops: Optional[Counter[str]] = None) -> None:
        self._make_client = client  # made on the thread that uses it
        self.node = node
        self.rate, self.burst = rate, float(burst)
        self.backoff, self.max_backoff, self.max_age_s = backoff, max_backoff, max_age_s
        self.clock = clock
        self.posted = self.existed = self.deduplicated = 0
        self.drops = ExtraDrops(DROP_PREFIX, "Kubernetes Event not posted", drops)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Optional[tuple[OomKill, Optional[bool], float]]] = queue.Queue(queue_max)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._abort = threading.Event()
        self._closed = False
        self._tokens, self._refilled = float(burst), clock()
        self.thread = ServiceThread(self.name, self._run)

    # ---- the service ----------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stopping = True

    def join(self, timeout: float) -> bool:
        self.close(max(0.5, timeout))
        return not self.thread.alive()

    def healthy(self) -> tuple[bool, str]:
        return self.thread.healthy()

    # ---- caller side ------------------------------------------------------------------------------
    def notify(self, kill: OomKill, main: Optional[bool]) -> None:
        if not wants_event(kill):
            return  # not in a pod the runtime named: no Pod to tell
        with self._lock:
            if kill.event_id in self._seen:
                self.deduplicated += 1
                return
            self._seen[kill.event_id] = None
            while len(self._seen) > REMEMBER:
                self._seen.popitem(last=False)
        if self._closed:
            self.drops.count("shutdown", "the agent is stopping")
            return
        try:
            self._queue.put_nowait((kill, main, self.clock()))
        except queue.Full:
            self.drops.count("queue_full", f"{self._queue.maxsize} Events waiting")

    def drop(self, kill: OomKill) -> None:
        """A kill that never reached `notify` (a full queue before it): counted as not posted."""
        if wants_event(kill):
            self.drops.count("queue_full", "the kills waiting for their main process filled the queue")

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued within `timeout` seconds, then stop; the rest counts as dropped."""
        if self._closed:
            return
        self._closed = self.thread.stopping = True
        deadline = self.clock() + max(0.0, timeout)
        try:
            self._queue.put(None, timeout=max(0.0, deadline - self.clock()))
        except queue.Full:
            pass
        self.thread.join(deadline - self.clock())
        if self.thread.alive():
            self._abort.set()
            self.thread.join(2.0)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.drops.count("shutdown", "the agent stopped before it was posted")

    # ---- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        client = self._make_client()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if self._abort.is_set():
                    self.drops.count("shutdown", "the agent stopped before it was posted")
                    continue
                try:
                    self._deliver(client, *item)
                except Exception:  # noqa: BLE001 - one Event's fault must never end the thread
                    self.drops.count("fault", "unexpected error")
                    log.exception("posting a Kubernetes Event failed unexpectedly; the next one is still posted")
        finally:
            client.close()

    def _take_token(self) -> bool:
        """Wait for the rate limit; False if aborted meanwhile."""
        while True:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            if self._abort.wait((1.0 - self._tokens) / self.rate):
                return False

    def _deliver(self, client: ApiClient, kill: OomKill, main: Optional[bool], queued: float) -> None:
        if not self._take_token():
            self.drops.count("shutdown", "the agent stopped before it was posted")
            return
        body = pod_event(kill, main, self.node)
        path = EVENTS_PATH.format(namespace=kill.pod_namespace)
        delay, kind, detail = self.backoff, "", ""
        while True:
            wait: Optional[float] = None
            try:
                r = client.request("POST", path, body)
            except ApiUnreachable as e:
                kind, detail = "unreachable", str(e)
            else:
                if r.ok or r.status == 409:
                    self._done(r)
                    return
                if r.status in NOT_RETRYABLE_KIND:
                    self.drops.count(NOT_RETRYABLE_KIND[r.status], f"HTTP {r.status}: {r.message}")
                    return
                if r.status not in RETRYABLE:
                    self.drops.count("invalid", f"HTTP {r.status}: {r.message}")
                    return
                kind = "unauthorized" if r.status == 401 else "server_error"
                detail = f"HTTP {r.status}: {r.message}" + (f" (token: {client.token_problem})"
                                                            if client.token_problem else "")
                wait = _retry_after(r)
            wait = min(self.max_backoff, wait if wait is not None else delay)
            if self.clock() + wait > queued + self.max_age_s:
                self.drops.count(kind, f"{detail}; gave up {self.max_age_s:g} s after the kill")
                return
            if self._abort.wait(wait):
                self.drops.count("shutdown", "the agent stopped before it was posted")
                return
            delay = min(self.max_backoff, delay * 2)

    def _done(self, r: Response) -> None:
        with self._lock:
            if r.status == 409:
                self.existed += 1
            else:
                self.posted += 1
        if self.drops.recovered():
            log.info("Kubernetes Events are posted again")


def _retry_after(r: Response) -> Optional[float]:
    body = r.body if isinstance(r.body, dict) else {}
    seconds = (body.get("details") or {}).get("retryAfterSeconds") if isinstance(body.get("details"), dict) else None
    return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else None
