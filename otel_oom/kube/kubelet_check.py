"""After each kill in a pod, what the kubelet reported for that container (`--k8s-kubelet-check`).

The kubelet's container status is read from the API server (GET the Pod: the chart's RBAC allows
`get` on pods and nothing more) until it says how the killed container instance ended, or until
`wait_s` (30 s) after the kill; the answer becomes an `oom.kubelet` record (schema/kubelet.py),
handed to the agent's worker like the records around the kill (spooled, sent over OTLP, printed
with --console/--json, counted in `oom.kills.kubelet`).

What it costs: when the victim was not the container's main process, the container keeps running
and nothing can change: one GET at `wait_s`. Otherwise the Pod is read 1, 2, 4, 8 and 15 s after
the kill and at `wait_s`, and the first reading that shows the instance terminated ends it (the
kubelet reports a main process's death within a few seconds). Kills of one pod due at the same
time share a GET. At most `max_pending` kills wait; the rest, and those whose Pod could not be read
at all (403, or no answer until `wait_s` + 30 s), are counted as `kubelet_check_<kind>` and logged
once per kind. Costs nothing when off: nothing here is imported.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..schema.kubelet import (
    REPORTED_MISSING,
    REPORTED_OOM_KILLED,
    REPORTED_POD_GONE,
    REPORTED_RUNNING,
    REPORTED_TERMINATED,
    OomKubelet,
)
from ..schema.pod_event import limit_scope, wants_event
from ..schema.records import OomKill
from ..service import ServiceThread
from .api import ApiClient, ApiUnreachable
from .drops import ExtraDrops

log = logging.getLogger("otel_oom.kube")

DROP_PREFIX = "kubelet_check_"  # + the kind of failure: the reason in otel_oom.events.dropped
POLLS_S = (1.0, 2.0, 4.0, 8.0, 15.0)   # readings before the bound, when the container may end
RETRY_S = 5.0                          # after the bound, while the Pod cannot be read
GRACE_S = 30.0                         # ... for at most this long
MAX_PENDING = 1024
POD_PATH = "/api/v1/namespaces/{namespace}/pods/{name}"


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    kill: OomKill = field(compare=False)
    main: Optional[bool] = field(compare=False)
    noticed: float = field(compare=False)          # monotonic time the kill reached this thread
    polls: list[float] = field(compare=False, default_factory=list)
    last: Optional[tuple[str, dict]] = field(compare=False, default=None)


def verdict(pod: Optional[dict], kill: OomKill) -> tuple[str, dict[str, Any], bool]:
    """(REPORTED_*, the container's status facts, final) for the killed container instance."""
    if not pod or (pod.get("metadata") or {}).get("uid") != kill.pod_uid:
        return REPORTED_POD_GONE, {}, True
    status = pod.get("status") or {}
    statuses = [s for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
                for s in status.get(key) or [] if isinstance(s, dict)]
    s = next((s for s in statuses if s.get("name") == kill.k8s_container_name), None)
    if s is None:
        return REPORTED_MISSING, {}, False
    state, last = s.get("state") or {}, s.get("lastState") or {}
    facts: dict[str, Any] = {"restart_count": s.get("restartCount"), "state": next(iter(state), None)}
    ours = _id(s.get("containerID")) == kill.container_id
    for where, mine in ((state, ours), (last, _id((last.get("terminated") or {}).get("containerID")) == kill.container_id)):
        ended = where.get("terminated")
        if mine and isinstance(ended, dict):
            reason = ended.get("reason")
            facts.update(reason=reason, exit_code=ended.get("exitCode"))
            return (REPORTED_OOM_KILLED if reason == "OOMKilled" else REPORTED_TERMINATED), facts, True
    if ours and "running" in state:
        return REPORTED_RUNNING, facts, False
    return REPORTED_MISSING, facts, False


def _id(container_id: Any) -> str:
    """containerd://<id> -> <id>"""
    return str(container_id or "").rpartition("://")[2]


class KubeletCheck:
    """A `service.Service`; `notify(kill, main)` from any thread; `submit(record)` gets each report."""

    name = "otel-oom-kubelet-check"

    def __init__(self, client: Callable[[], ApiClient], submit: Callable[[OomKubelet], None], *,
                 wait_s: float = 30.0, max_pending: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], int] = time.time_ns,
                 drops: Optional[Counter[str]] = None) -> None:
        self._make_client = client
        self.submit = submit
        self.wait_s = wait_s
        self.max_pending = max_pending
        self.clock, self.wall = clock, wall
        self.reported: Counter[str] = Counter()
        self.drops = ExtraDrops(DROP_PREFIX, "kubelet cross-check of a kill not made", drops)
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self.thread = ServiceThread(self.name, self._run)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self._cond:
            self.thread.stopping = True
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        done = self.thread.join(timeout)
        with self._cond:
            left = len(self._heap)
            self._heap.clear()
        for _ in range(left):  # still waiting for the kubelet when the agent stopped
            self.drops.count("shutdown", "the agent stopped before the kubelet's report was read")
        return done

    def healthy(self) -> tuple[bool, str]:
        return self.thread.healthy()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    # ---- caller side ------------------------------------------------------------------------------
    def notify(self, kill: OomKill, main: Optional[bool]) -> None:
        if not wants_event(kill) or not kill.k8s_container_name or not kill.container_id:
            return
        now = self.clock()
        polls = [] if main is False else [now + s for s in POLLS_S if s < self.wait_s]
        polls.append(now + self.wait_s)
        with self._cond:
            if len(self._heap) >= self.max_pending or self.thread.stopping:
                full = not self.thread.stopping
            else:
                heapq.heappush(self._heap, _Pending(polls[0], next(self._seq), kill, main, now, polls[1:]))
                self._cond.notify_all()
                return
        self.drops.count("queue_full" if full else "shutdown", f"{self.max_pending} kills waiting for the kubelet")

    def drop(self, kill: OomKill) -> None:
        if wants_event(kill):
            self.drops.count("queue_full", "the kills waiting for their main process filled the queue")

    # ---- the thread ---------------------------------------------------------------------------------
    def _due(self) -> list[_Pending]:
        with self._cond:
            while not self.thread.stopping:
                now = self.clock()
                if self._heap and self._heap[0].due <= now:
                    due = []
                    while self._heap and self._heap[0].due <= now:
                        due.append(heapq.heappop(self._heap))
                    return due
                self._cond.wait(None if not self._heap else self._heap[0].due - now)
            return []

    def _run(self) -> None:
        client = self._make_client()
        try:
            while not self.thread.stopping:
                due = self._due()
                by_pod: dict[tuple[str, str], list[_Pending]] = {}
                for p in due:
                    by_pod.setdefault((p.kill.pod_namespace or "", p.kill.pod_name or ""), []).append(p)
                for (namespace, name), pendings in by_pod.items():
                    self._read(client, namespace, name, pendings)
        finally:
            client.close()

    def _read(self, client: ApiClient, namespace: str, name: str, pendings: list[_Pending]) -> None:
        try:
            r = client.request("GET", POD_PATH.format(namespace=namespace, name=name))
        except ApiUnreachable as e:
            return self._failed(pendings, "unreachable", str(e))
        except Exception as e:  # noqa: BLE001 - the thread goes on with the next pod
            log.exception("reading pod %s/%s failed unexpectedly", namespace, name)
            return self._failed(pendings, "fault", type(e).__name__)
        if r.status == 403:  # RBAC: asking again changes nothing
            for _ in pendings:
                self.drops.count("forbidden", f"HTTP 403: {r.message}")
            return None
        if not r.ok and r.status != 404:  # 401 too: a token the kubelet just rotated is read again
            kind = "unauthorized" if r.status == 401 else "server_error"
            return self._failed(pendings, kind, f"HTTP {r.status}: {r.message}")
        pod = r.body if r.ok and isinstance(r.body, dict) else None
        for p in pendings:
            reported, facts, final = verdict(pod, p.kill)
            p.last = (reported, facts)
            if final or not p.polls:
                self._report(p, reported, facts)
            else:
                self._again(p, p.polls.pop(0))
        return None

    def _failed(self, pendings: list[_Pending], kind: str, detail: str) -> None:
        now = self.clock()
        for p in pendings:
            if p.polls:
                self._again(p, p.polls.pop(0))
            elif p.last is not None:
                self._report(p, *p.last)  # the last reading before the API server stopped answering
            elif now + RETRY_S <= p.noticed + self.wait_s + GRACE_S:
                self._again(p, now + RETRY_S)
            else:
                self.drops.count(kind, detail)

    def _again(self, p: _Pending, due: float) -> None:
        p.due = due
        with self._cond:
            heapq.heappush(self._heap, p)

    def _report(self, p: _Pending, reported: str, facts: dict[str, Any]) -> None:
        k, wall = p.kill, self.wall()
        record = OomKubelet(
            event_id=f"{k.event_id}:kubelet", time_unix_nano=wall, kill_event_id=k.event_id,
            reported=reported, delay_ns=max(0, wall - k.time_unix_nano), victim_pid=k.victim_pid,
            victim_comm=k.victim_comm, main=p.main, memcg_scope=limit_scope(k), pod_uid=k.pod_uid,
            pod_name=k.pod_name, pod_namespace=k.pod_namespace, k8s_container_name=k.k8s_container_name,
            container_id=k.container_id, container_runtime=k.container_runtime,
            reason=_text(facts.get("reason")), exit_code=_int(facts.get("exit_code")),
            restart_count=_int(facts.get("restart_count")), state=_text(facts.get("state")))
        with self._cond:
            self.reported[reported] += 1
        self.submit(record)


def _text(v: Any) -> Optional[str]:
    return v[:256] if isinstance(v, str) and v else None


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
