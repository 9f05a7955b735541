"""Whether an OOM victim was its container's main process, from the container runtime (CRI).

The main process is the one the runtime started for the container (PID 1 of the container's pid
namespace, unless the pod shares one): when it dies the container ends and the kubelet reports it;
any other process can be killed while the container keeps running, and the kubelet reports nothing.

The CRI says which it is (ContainerStatus, verbose: the runtime's pid of it) only while the
container runs: once it exited the runtime reports 0. So the pid is learned before the kill: every
`LEARN_INTERVAL_S` this thread lists the running containers and asks for each new one once (one
call per container start). At a kill it compares the victim's pid with what it learned, or, for a
container started since, asks at once (the kill is a few ms old: the runtime usually has not
processed the exit yet). The answer is reliable both ways: a container the runtime still reports
running with another pid has its main process alive, so the victim was not it; the same pid is the
victim, since that pid cannot have been reused inside a container whose main process still ran.
When the container had already exited and its pid was never learned (a kill within a second of
the start, a kill recovered after the agent was down, a runtime that does not say), the answer is
None: unknown, never guessed. Docker and podman containers outside Kubernetes are not asked.

Kills come in through `notify` (the pipeline's worker: never blocks) and go on, with the answer,
to the consumers (pod_events.py, kubelet_check.py).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional, Protocol, Sequence

from ..attribution.runtime.names import RuntimeUnavailable
from ..schema.records import OomKill
from ..service import ServiceThread

log = logging.getLogger("otel_oom.kube")

LEARN_INTERVAL_S = 1.0
RETAIN_S = 600.0       # a container not seen running for this long is forgotten
MAX_CONTAINERS = 65536
QUEUE_MAX = 1024
CRI_RUNTIMES = ("containerd", "cri-o")

Consumer = Callable[[OomKill, Optional[bool]], None]


class CriMain(Protocol):
    path: str

    def running(self) -> Sequence[str]: ...
    def main_pid(self, container_id: str) -> Optional[int]: ...


class MainProcesses:
    """The pid of each running container's main process, learned from the CRI runtimes."""

    def __init__(self, clients: Sequence[CriMain], clock: Callable[[], float] = time.monotonic) -> None:
        self.clients = list(clients)
        self.clock = clock
        self._pids: OrderedDict[str, tuple[int, float]] = OrderedDict()  # container id -> (pid, last seen)
        self._lock = threading.Lock()
        self._down: set[str] = set()  # sockets that failed: logged once until they answer

    def learn(self) -> None:
        """One round: every running container seen now; the pid of each new one."""
        for client in self.clients:
            try:
                running = client.running()
                now = self.clock()
                for cid in running:
                    with self._lock:
                        known = self._pids.get(cid)
                    pid = known[0] if known else client.main_pid(cid)
                    if pid is not None:
                        self._remember(cid, pid, now)
            except RuntimeUnavailable as e:
                if client.path not in self._down:
                    self._down.add(client.path)
                    log.debug("main processes: runtime at %s does not answer (%s)", client.path, e)
                continue
            self._down.discard(client.path)
        self._expire(self.clock())

    def _remember(self, cid: str, pid: int, now: float) -> None:
        with self._lock:
            self._pids[cid] = (pid, now)
            self._pids.move_to_end(cid)
            while len(self._pids) > MAX_CONTAINERS:
                self._pids.popitem(last=False)

    def _expire(self, now: float) -> None:
        with self._lock:
            while self._pids:
                cid, (_, seen) = next(iter(self._pids.items()))
                if now - seen <= RETAIN_S:
                    break
                del self._pids[cid]

    def main(self, kill: OomKill) -> Optional[bool]:
        """True: the victim was its container's main process; False: it was not; None: unknown."""
        cid = kill.container_id
        if not cid or kill.container_runtime not in CRI_RUNTIMES or not kill.pod_uid:
            return None
        with self._lock:
            known = self._pids.get(cid)
        pid = known[0] if known else self._ask(cid)
        return None if pid is None else kill.victim_pid == pid

    def _ask(self, cid: str) -> Optional[int]:
        for client in self.clients:
            try:
                pid = client.main_pid(cid)
            except RuntimeUnavailable:
                continue
            if pid is not None:
                self._remember(cid, pid, self.clock())
                return pid
        return None


class MainProcessWatch:
    """The thread: learns every LEARN_INTERVAL_S, and hands each kill on with its answer. A service."""

    name = "otel-oom-k8s-main-process"

    def __init__(self, processes: MainProcesses, consumers: Sequence[Consumer], on_drop: Callable[[OomKill], None],
                 queue_max: int = QUEUE_MAX) -> None:
        self.processes = processes
        self.consumers = list(consumers)
        self.on_drop = on_drop  # a kill that did not fit the queue: each consumer counts it as not done
        self._queue: queue.Queue[Optional[OomKill]] = queue.Queue(queue_max)
        self.thread = ServiceThread(self.name, self._run)

    def notify(self, kill: OomKill) -> None:
        try:
            self._queue.put_nowait(kill)
        except queue.Full:
            self.on_drop(kill)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stopping = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def join(self, timeout: float) -> bool:
        return self.thread.join(timeout)

    def healthy(self) -> tuple[bool, str]:
        return self.thread.healthy()

    def _run(self) -> None:
        next_learn = 0.0
        while not self.thread.stopping:
            try:
                kill = self._queue.get(timeout=max(0.0, next_learn - time.monotonic()))
            except queue.Empty:
                kill = None
            if kill is not None:
                self._hand_on(kill)
            if time.monotonic() >= next_learn:
                try:
                    self.processes.learn()
                except Exception:  # noqa: BLE001 - a runtime's odd answer: the kills still go on (main unknown)
                    log.exception("learning the containers' main processes failed; trying again")
                next_learn = time.monotonic() + LEARN_INTERVAL_S
        # stopping: what is queued still goes on to the consumers (which count what they cannot post)
        while True:
            try:
                kill = self._queue.get_nowait()
            except queue.Empty:
                return
            if kill is not None:
                for consumer in self.consumers:
                    consumer(kill, None)

    def _hand_on(self, kill: OomKill) -> None:
        try:
            main = self.processes.main(kill)
        except Exception:  # noqa: BLE001 - unknown, and the kill goes on
            log.exception("could not tell whether pid %d was its container's main process", kill.victim_pid)
            main = None
        for consumer in self.consumers:
            consumer(kill, main)
