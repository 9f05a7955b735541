"""The agents' side of the simulation: at each occurrence's time, the node's record is built, encoded
(`wire.encode_batch`) and posted to that node's Collector (OTLP/HTTP), retried until the Collector
accepts it, as the agent's spool does; the node's agent metrics count it too."""
from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from otel_oom.schema.records import OomKill, Record

from .stack import node_address
from .wire import AgentMetrics, encode_batch
from .workload import Node, Occurrence, build


@dataclass
class Sent:
    id: str
    kind: str              # oom.kill, oom.reclaim, oom.pressure
    node: str
    pod: str               # the victim's (or the pressured container's) pod name
    time_ns: int           # the record's own time (a kill: when it happened)
    phase: str


@dataclass
class Feeder:
    nodes: list[Node]
    resources: list[Any]
    metrics: list[AgentMetrics]
    sent: dict[str, Sent] = field(default_factory=dict)
    attempts: int = 0
    retries: int = 0
    rejected: int = 0      # answered 400: the agent would drop it as malformed (must stay 0)
    undelivered: int = 0   # still refused when the run gave up (a node Collector that never came back)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, occurrences: list[Occurrence], t0: float, stop: threading.Event) -> None:
        """Send every occurrence at t0 + its time (blocks until all are accepted, or `stop`: then
        what is still refused is counted as undelivered)."""
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="fleet-agent") as pool:
            for occ in occurrences:
                delay = t0 + occ.at - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                node = self.nodes[occ.node]
                record = build(occ, node, time.time_ns())
                self._track(record, node, occ)
                self.metrics[occ.node].record(record)
                pool.submit(self._post, occ.node, record, stop)

    def _track(self, record: Record, node: Node, occ: Occurrence) -> None:
        kind = type(record).TYPE  # type: ignore[union-attr]
        with self._lock:
            self.sent[record.event_id] = Sent(record.event_id, kind, node.name, occ.pod.name,
                                              record.time_unix_nano, occ.phase)

    def _post(self, index: int, record: Record, stop: threading.Event) -> None:
        body = encode_batch([record], self.resources[index]).SerializeToString()
        url = f"http://{node_address(index)}:4318/v1/logs"
        backoff = 0.2
        while not stop.is_set():
            with self._lock:
                self.attempts += 1
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                return
            except urllib.error.HTTPError as e:
                if e.code == 400:
                    with self._lock:
                        self.rejected += 1
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            with self._lock:
                self.retries += 1
            stop.wait(backoff)
            backoff = min(5.0, backoff * 2)
        with self._lock:
            self.undelivered += 1

    def kills(self) -> list[Sent]:
        return [s for s in self.sent.values() if s.kind == OomKill.TYPE]
