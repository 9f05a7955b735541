"""The faults a run injects, each on a thread of its own, at a time into the run; each records what
it did (and when, wall clock) in the result's `faults`.

- gateway: gateway-1 SIGKILLed, restarted `down` seconds later. The kill lands while vlinsert-a
  is stalled (SIGSTOP for STALL_S before the kill, as a CPU-throttled or paused pod stalls): the
  gateway's requests to it wait unanswered, vlinsert-a takes them once it resumes, and the
  restarted gateway sends them again from its disk queue (they were never acknowledged): copy A
  gets those records twice, the at-least-once hop from gateway to backend.
- storage: vlstorage-2 (copy B) killed (SIGKILL by default: what it acknowledged since its last
  flush is gone from copy B), restarted `down` seconds later.
- agents: the agents of `count` nodes crash right after their node Collector accepted their next
  kill, before their spool's acknowledgement, and come back a second later (feed.py): they send
  it again.
- node_collectors: both gateways stall for STALL_S; the node Collectors whose agents handed them
  a record meanwhile (so they dispatched it to a stalled gateway) are SIGKILLed, the gateways
  resume and answer no one, and the node Collectors, back `down` seconds later, send again what
  their disk queues had dispatched and not seen acknowledged.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .feed import Feeder
from .procs import Proc
from .stack import GATEWAYS, Stack
from .workload import Occurrence


@dataclass
class Plan:
    """When each fault happens (seconds into the feeding; None: not at all) and how long it lasts."""
    gateway_at: Optional[float] = None
    storage_at: Optional[float] = None
    storage_signal: int = signal.SIGKILL
    down_s: float = 15.0
    agents_at: Optional[float] = None
    agents: int = 5
    node_collectors_at: Optional[float] = None
    node_collectors: int = 5
    node_collectors_down_s: float = 5.0


ENDPOINTS_DELAY_S = 1.0   # a killed pod leaves the headless Service's records about this much later
STALL_S = 2.0


def _restart(proc: Proc, out: dict, killed: float, t0: float) -> bool:
    out["restarted_wall"] = time.time()
    proc.start()
    try:
        ready = proc.wait_healthy(120)
    except RuntimeError as e:
        out["error"] = str(e).splitlines()[0]
        return False
    out.update(restarted_at_s=round(time.monotonic() - ready - t0, 2), down_s=round(time.monotonic() - killed, 2),
               healthy_after_restart_s=round(ready, 2))
    return True


def _at(stop: threading.Event, t0: float, at: float) -> bool:
    """Wait until t0 + at; False if the run stopped first."""
    return not stop.wait(max(0.0, t0 + at - time.monotonic()))


def gateway(stack: Stack, at: float, down_s: float, t0: float, stop: threading.Event, out: dict) -> None:
    proc, vlinsert = stack.gateways[0], stack.vlinsert[0]
    if not _at(stop, t0, at - STALL_S):
        return
    vlinsert.pause()
    if not _at(stop, t0, at):
        vlinsert.resume()
        return
    killed = time.monotonic()
    proc.kill(signal.SIGKILL)
    out["gateway"] = o = {"process": proc.name, "signal": "SIGKILL", "at_s": round(killed - t0, 2),
                          "killed_wall": time.time(), "stalled": f"{vlinsert.name} for {STALL_S} s before the kill"}
    stop.wait(0.5)
    vlinsert.resume()
    dns = stack.resolver == "dns"
    if dns:  # the pod turns not ready and leaves the headless Service's records
        stop.wait(max(0.0, killed + ENDPOINTS_DELAY_S - time.monotonic()))
        stack.set_ready(stack.ready - {GATEWAYS[0]})
        o["left_dns_at_s"] = round(time.monotonic() - t0, 2)
    if stop.wait(max(0.0, killed + down_s - time.monotonic())):
        return
    if _restart(proc, o, killed, t0) and dns:
        stack.set_ready(stack.ready | {GATEWAYS[0]})


def storage(stack: Stack, at: float, down_s: float, sig: int, t0: float, stop: threading.Event, out: dict) -> None:
    proc = stack.storage[1]
    if not _at(stop, t0, at):
        return
    killed = time.monotonic()
    proc.kill(sig)
    out["storage"] = o = {"process": proc.name, "signal": signal.Signals(sig).name, "at_s": round(killed - t0, 2),
                          "killed_wall": time.time()}
    if not stop.wait(max(0.0, killed + down_s - time.monotonic())):
        _restart(proc, o, killed, t0)


def agents(feeder: Feeder, occurrences: list[Occurrence], at: float, count: int, t0: float,
           stop: threading.Event, out: dict) -> None:
    """The `count` nodes whose next kill comes first after `at` crash right after it was accepted."""
    if not _at(stop, t0, at):
        return
    nodes: list[int] = []
    for occ in occurrences:
        if occ.at >= at and occ.kind == "kill" and occ.node not in nodes:
            nodes.append(occ.node)
        if len(nodes) == count:
            break
    for n in nodes:
        feeder.agents[n].crash_after_next_kill()
    out["agents"] = {"armed_at_s": round(time.monotonic() - t0, 2), "nodes": [feeder.nodes[n].name for n in nodes],
                     "restarts": feeder.tally.restarts}  # filled in as they crash and come back


def node_collectors(stack: Stack, feeder: Feeder, at: float, count: int, down_s: float, t0: float,
                    stop: threading.Event, out: dict) -> None:
    if not _at(stop, t0, at):
        return
    for g in stack.gateways:
        g.pause()
    stalled = time.time()
    stop.wait(STALL_S)
    # nodes whose agent got a record accepted early enough in the stall for the node Collector to
    # have dispatched it (its queue's batch waits up to 200 ms)
    busy = feeder.accepted_between(stalled, time.time() - 0.3)[:count]
    procs = [stack.node_procs[n] for n in busy]
    killed = time.monotonic()
    for p in procs:
        p.kill(signal.SIGKILL)
    out["node_collectors"] = o = {"processes": [p.name for p in procs], "signal": "SIGKILL", "at_s": round(killed - t0, 2),
                                  "killed_wall": time.time(), "stalled": f"both gateways for {STALL_S} s before the kill"}
    stop.wait(0.5)
    for g in stack.gateways:
        g.resume()
    if procs and not stop.wait(max(0.0, killed + down_s - time.monotonic())):
        for p in procs:
            p.start()
        for p in procs:
            try:
                p.wait_healthy(120)
            except RuntimeError as e:
                o["error"] = str(e).splitlines()[0]
        o["down_s"] = round(time.monotonic() - killed, 2)


def launch(plan: Plan, stack: Stack, feeder: Feeder, occurrences: list[Occurrence], t0: float,
           stop: threading.Event, out: dict) -> list[threading.Thread]:
    """A thread per fault of the plan, started."""
    todo: list[tuple[Callable[..., None], tuple]] = []
    if plan.gateway_at is not None:
        todo.append((gateway, (stack, plan.gateway_at, plan.down_s, t0, stop, out)))
    if plan.storage_at is not None:
        todo.append((storage, (stack, plan.storage_at, plan.down_s, plan.storage_signal, t0, stop, out)))
    if plan.agents_at is not None:
        todo.append((agents, (feeder, occurrences, plan.agents_at, plan.agents, t0, stop, out)))
    if plan.node_collectors_at is not None:
        todo.append((node_collectors, (stack, feeder, plan.node_collectors_at, plan.node_collectors,
                                       plan.node_collectors_down_s, t0, stop, out)))
    threads = [threading.Thread(target=f, args=a, daemon=True, name=f"fleet-fault-{f.__name__}") for f, a in todo]
    for t in threads:
        t.start()
    return threads
