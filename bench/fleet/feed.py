"""The agents' side of the simulation. Each node's agent is a stand-in that runs the agent's own
delivery code: at each occurrence's time the node's record is built and appended to that node's
spool (`otel_oom.delivery.spool.Spool`, on disk in the run's directory), and the agent's send loop
(`otel_oom.delivery.sender.SpoolSender`) sends what is pending, in batches, to the node's Collector
through the agent's exporter (`otel_oom.otlp.export.OtlpExport`, OTLP/HTTP), acknowledging it in the
spool only once the Collector accepted it and retrying with the agent's backoff otherwise. The node's agent metrics
count each kill.

An agent restart (`NodeAgent.crash_after_next_kill`) is a SIGKILL at the worst moment: right after
the Collector accepted an export holding a kill, before the spool's acknowledgement. The agent
comes back a second later, opens its spool again, and the spool hands out everything not
acknowledged: the Collector gets the same records (the same `oom.event.id`) a second time, as it
does from a real agent killed there. (The stand-in's metrics are not restarted: a real restart
starts `oom_kills_total` again from 0, which PromQL's `increase()` reads as a reset.)"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from otel_oom.delivery.sender import SpoolSender
from otel_oom.delivery.spool import Spool
from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.export import OtlpExport
from otel_oom.otlp.spooled import SpoolCodec
from otel_oom.otlp.transport import ExportResult
from otel_oom.schema.records import OomKill, Record

from .stack import node_address
from .wire import AgentMetrics, name_and_id
from .workload import Node, Occurrence, build

RESTART_S = 1.0    # a crashed agent's pod is back this much later
POST_TIMEOUT_S = 10.0  # the agent's default OTLP timeout


@dataclass
class Sent:
    id: str
    kind: str              # oom.kill, oom.reclaim, oom.pressure
    node: str
    namespace: str         # the victim's (or the pressured container's) pod
    pod: str
    pod_uid: str
    container: str
    time_ns: int           # the record's own time (a kill: when it happened)
    phase: str


class _Crash(BaseException):
    """Ends a send loop where a SIGKILL of the agent would: nothing after it runs (no ack)."""


@dataclass
class Tally:
    """What every agent's exports did (shared, under `lock`)."""
    posts: int = 0
    retries: int = 0
    accepted: Counter = field(default_factory=Counter)   # record id -> exports the Collector accepted it in
    accepted_at: list = field(default_factory=list)       # (wall time, node index) of each accepted export
    restarts: list = field(default_factory=list)          # {node, at_wall, replayed: [ids]}
    lock: threading.Lock = field(default_factory=threading.Lock)


class _AgentExporter:
    """The agent's exporter (`otel_oom.otlp.export.OtlpExport`: the request built from the spooled
    messages, posted over OTLP/HTTP, the Collector's answer read as the agent reads it), with the
    run's accounting around it and the crash point of `NodeAgent.crash_after_next_kill`."""

    def __init__(self, agent: "NodeAgent") -> None:
        self.agent = agent
        self.export = OtlpExport(agent.resource, agent.otlp)

    def carries(self, signal: str) -> bool:
        return self.export.carries(signal)

    def send(self, signal: str, messages: Sequence[bytes], timeout_s: Optional[float] = None) -> ExportResult:
        a, t = self.agent, self.agent.tally
        with t.lock:
            t.posts += 1
        result = self.export.send(signal, messages, timeout_s)
        if result.outcome != "accepted":
            if result.outcome == "retry":
                with t.lock:
                    t.retries += 1
            return result
        records = [name_and_id(m) for m in messages]
        with t.lock:
            t.accepted.update(record_id for _, record_id in records)
            t.accepted_at.append((time.time(), a.node.index))
        if a.crash_armed.is_set() and any(name == "oom.kill" for name, _ in records):
            a.crash_armed.clear()
            raise _Crash()
        return result

    def readable(self, signal: str, message: bytes) -> dict[str, Any]:
        return self.export.readable(signal, message)

    def shutdown(self) -> None:
        self.export.shutdown()


class NodeAgent:
    """One node's agent stand-in: its spool and its send loop, on a thread of its own."""

    def __init__(self, node: Node, resource: Any, spool_dir: Path, tally: Tally) -> None:
        self.node, self.resource, self.spool_dir, self.tally = node, resource, spool_dir, tally
        # the agent's settings for OTLP/HTTP to its node's Collector (the default 10 s timeout)
        self.otlp = resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{node_address(node.index)}:4318"})
        self.drops: Counter[str] = Counter()
        self.crash_armed = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()       # appends and the restart's spool swap
        self.codec = SpoolCodec()           # a record as the agent's worker spools it
        self.spool = Spool(spool_dir)
        self.sender = self._sender()
        self.thread = threading.Thread(target=self._run, name=f"fleet-agent-{node.index}", daemon=True)
        self.thread.start()

    def _sender(self) -> SpoolSender:
        return SpoolSender(self.spool, _AgentExporter(self), self.drops, self.stopping)

    def _run(self) -> None:
        while True:
            try:
                self.sender.run()
                return
            except _Crash:
                pending = [i for _, i in self._pending_ids()]
                crashed_at = time.time()
                if self.stopping.wait(RESTART_S):
                    return
                with self._lock:  # the restart: what the old process left on disk, opened again
                    self.sender.exporter.shutdown()
                    self.spool.close()
                    self.spool = Spool(self.spool_dir)
                    self.sender = self._sender()
                with self.tally.lock:
                    self.tally.restarts.append({"node": self.node.name, "at_wall": crashed_at, "replayed": pending})

    def _pending_ids(self) -> list[tuple[int, str]]:
        return [(seq, name_and_id(self.codec.decode(p).message)[1]) for seq, p in self.spool.pending(10_000)]

    def crash_after_next_kill(self) -> None:
        self.crash_armed.set()

    def append(self, record: Record) -> None:
        with self._lock:
            self.spool.append(self.codec.encode(record))
            sender = self.sender
        sender.wake()

    def pending(self) -> int:
        with self._lock:
            return int(self.spool.stats()["pending"])

    def stop(self, now: bool = True) -> None:
        self.stopping.set()
        self.sender.deadline = time.monotonic() if now else None
        self.sender.wake()
        self.thread.join(POST_TIMEOUT_S + 5)
        with self._lock:
            self.sender.exporter.shutdown()
            self.spool.close()


@dataclass
class Feeder:
    nodes: list[Node]
    resources: list[Any]
    metrics: list[AgentMetrics]
    scratch: Path
    sent: dict[str, Sent] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    agents: list[NodeAgent] = field(default_factory=list)
    undelivered: int = 0   # still in a spool when the run gave up (a node Collector that never came back)

    def start(self) -> None:
        # the send loop's "collector did not accept ... retrying" lines: counted in the result instead
        logging.getLogger("otel_oom.delivery").setLevel(logging.ERROR)
        self.agents = [NodeAgent(n, r, self.scratch / "spools" / n.name, self.tally)
                       for n, r in zip(self.nodes, self.resources, strict=True)]

    def run(self, occurrences: list[Occurrence], t0: float, stop: threading.Event) -> None:
        """Append every occurrence to its node's spool at t0 + its time (or until `stop`)."""
        for occ in occurrences:
            delay = t0 + occ.at - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            node = self.nodes[occ.node]
            record = build(occ, node, time.time_ns())
            kind = type(record).TYPE  # type: ignore[union-attr]
            self.sent[record.event_id] = Sent(record.event_id, kind, node.name, occ.pod.namespace, occ.pod.name,
                                              occ.pod.uid, occ.pod.container, record.time_unix_nano, occ.phase)
            self.metrics[occ.node].record(record)
            self.agents[occ.node].append(record)

    def drain(self, stop: threading.Event) -> None:
        """Until every spool is empty, or `stop`: then what is left is counted as undelivered."""
        while not stop.is_set() and any(a.pending() for a in self.agents):
            stop.wait(0.5)
        self.undelivered = sum(a.pending() for a in self.agents)

    def stop(self) -> None:
        for a in self.agents:
            a.stopping.set()
            a.sender.deadline = time.monotonic()
            a.sender.wake()
        for a in self.agents:
            a.stop()

    def kills(self) -> list[Sent]:
        return [s for s in self.sent.values() if s.kind == OomKill.TYPE]

    def rejected(self) -> int:
        return sum(a.drops["collector_rejected"] for a in self.agents)

    def accepted_between(self, start: float, end: float) -> list[int]:
        """Nodes whose Collector accepted an export from their agent between these wall times."""
        with self.tally.lock:
            return list(dict.fromkeys(n for t, n in self.tally.accepted_at if start <= t <= end))

    def sent_twice(self) -> list[str]:
        """Records the node Collectors accepted more than once (the agents' replays)."""
        with self.tally.lock:
            return [i for i, n in self.tally.accepted.items() if n > 1]
