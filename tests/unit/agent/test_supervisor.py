"""The supervisor (otel_oom/service.py): start order, reverse teardown within one deadline, readiness,
and what a service thread that dies does. Pure: threads and a fake clock, no agent."""
from __future__ import annotations

import logging
import threading

import pytest

from otel_oom.errors import AgentError
from otel_oom.service import GRACE_S, Resource, Supervisor, ThreadService


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorded:
    """A service that writes what is done to it into `log`; `join` takes `takes` seconds of the
    fake clock (at most its timeout): one that never ends takes every second it is given."""

    def __init__(self, name: str, log: list, clock: FakeClock, takes: float = 0.0, ok: bool = True) -> None:
        self.name = name
        self.log = log
        self.clock = clock
        self.takes = takes
        self.ok = ok
        self.joins: list[float] = []

    def start(self) -> None:
        self.log.append(("start", self.name))

    def stop(self) -> None:
        self.log.append(("stop", self.name))

    def join(self, timeout: float) -> bool:
        self.joins.append(timeout)
        spent = min(self.takes, timeout)
        self.clock.now += spent
        self.takes -= spent
        return self.takes <= 0

    def healthy(self) -> tuple[bool, str]:
        return (True, "ok") if self.ok else (False, f"{self.name} is not ready")


def test_services_start_in_registration_order_and_stop_in_reverse():
    log: list = []
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    for name in ("store", "probe", "worker"):
        sv.add(Recorded(name, log, clock))
    sv.reserve("sender")                       # made later, torn down from its place
    sv.add(Recorded("pressure", log, clock))
    sv.fill(Recorded("sender", log, clock))
    assert [n for op, n in log if op == "start"] == ["store", "probe", "worker", "pressure", "sender"]
    log.clear()
    assert sv.stop_all(10) == []
    assert [n for op, n in log if op == "stop"] == ["pressure", "sender", "worker", "probe", "store"]


def test_a_reserved_place_never_filled_and_a_service_added_unstarted_are_skipped():
    log: list = []
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    sv.reserve("metrics", final=True)
    sv.add(Recorded("later", log, clock), start=False)
    sv.add(Recorded("now", log, clock))
    sv.stop_all(5)
    assert log == [("start", "now"), ("stop", "now")]
    with pytest.raises(ValueError, match="registered twice"):
        sv.reserve("now")


def test_one_deadline_for_all_and_the_final_share_kept_for_the_last_service():
    log: list = []
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    metrics = sv.add(Recorded("metrics", log, clock), final=True)
    store = sv.add(Recorded("store", log, clock))
    sender = sv.add(Recorded("sender", log, clock, takes=100))   # a collector that never answers
    worker = sv.add(Recorded("worker", log, clock, takes=1.5))
    start = clock.now
    still = sv.stop_all(10, final_share=1.0)
    assert worker.joins == [9.0]                 # everything but the final share
    assert sender.joins[0] == pytest.approx(7.5)  # what the worker left of it
    assert store.joins == [0.0]                  # nothing left: not waited for
    assert metrics.joins == [pytest.approx(1.0)]  # the final share is still there
    # then one grace second in all for what still runs, not one each
    assert sender.joins[1] == pytest.approx(GRACE_S) and still == ["sender"]
    assert clock.now - start == pytest.approx(9 + GRACE_S)  # (the metrics' share was not needed)


def test_without_a_final_service_the_share_goes_to_the_others():
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    sv.reserve("metrics", final=True)  # never made (the export was not set up)
    worker = sv.add(Recorded("worker", [], clock))
    sv.stop_all(4, final_share=1.0)
    assert worker.joins == [4.0]


def test_a_dead_service_fails_readiness_naming_it_and_stops_the_agent(caplog):
    failed = []
    stopping = threading.Event()
    sv = Supervisor(on_failure=lambda name, why: (failed.append((name, why)), stopping.set()), stopping=stopping)
    log: list = []
    sv.add(Recorded("store", log, FakeClock()))
    release = threading.Event()
    other = sv.add(ThreadService("otel-oom-watcher", lambda: release.wait(30), release.set))

    def boom() -> None:
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.CRITICAL, logger="otel_oom.service"):
        sv.add(ThreadService("otel-oom-worker", boom))
        assert stopping.wait(10)
    assert failed == [("otel-oom-worker", "RuntimeError: disk on fire")]
    assert sv.healthy() == (False, "thread otel-oom-worker died: RuntimeError: disk on fire")
    assert sv.failures() == ["otel-oom-worker"]
    (rec,) = caplog.records
    assert rec.exc_info is not None  # a bug: its traceback is logged, once
    # the agent's normal teardown then stops the rest
    assert sv.stop_all(5) == []
    assert ("stop", "store") in log and not other.thread.alive()


@pytest.mark.parametrize("error, hint", [(MemoryError(), "raise the agent's memory limit"),
                                         (AgentError("cannot set up the OTLP export: bad CA"), "")])
def test_memory_errors_and_expected_errors_are_one_line_without_a_traceback(error, hint, caplog):
    sv = Supervisor()

    def fail() -> None:
        raise error

    with caplog.at_level(logging.CRITICAL, logger="otel_oom.service"):
        svc = sv.add(ThreadService("otel-oom-export-setup", fail, ends=True))
        assert svc.join(10)
    (rec,) = caplog.records
    assert rec.exc_info is None and "\n" not in rec.getMessage() and hint in rec.getMessage()
    assert not sv.healthy()[0]


def test_a_thread_that_ends_unexpectedly_is_a_failure_unless_it_was_asked_or_is_meant_to():
    stopping = threading.Event()
    failed: list = []
    sv = Supervisor(on_failure=lambda name, why: failed.append(name), stopping=stopping)
    quits = sv.add(ThreadService("otel-oom-pressure", lambda: None))
    setup = sv.add(ThreadService("otel-oom-export-setup", lambda: None, ends=True))
    assert quits.join(10) and setup.join(10)
    assert failed == ["otel-oom-pressure"]
    assert sv.healthy() == (False, "thread otel-oom-pressure ended unexpectedly")
    stopping.set()  # the agent stops: a thread that returns now ended as expected
    sv.add(ThreadService("otel-oom-sender", lambda: None)).join(10)
    assert failed == ["otel-oom-pressure"]


def test_a_thread_still_running_at_its_turn_is_aborted_and_given_the_grace():
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    release = threading.Event()
    deadlines, aborted = [], []
    sv.add(ThreadService("otel-oom-sender", lambda: release.wait(30), deadline=deadlines.append,
                         abort=lambda: (aborted.append(True), release.set())))
    assert sv.stop_all(0) == []  # no time at all: told its deadline, aborted, then it ended in the grace
    assert deadlines and aborted == [True]


def test_health_checks_of_services_and_resources_are_readiness():
    sv = Supervisor()
    log: list = []
    sv.add(Recorded("probe", log, FakeClock()))
    sv.add(Resource("store", check=lambda: (False, "spool unreadable: EIO")))
    sv.add(Recorded("sender", log, FakeClock(), ok=False))

    def broken() -> tuple[bool, str]:
        raise ValueError("bug")

    sv.add(Resource("webhook", check=broken))
    assert sv.healthy() == (False, "spool unreadable: EIO; sender is not ready; webhook: health check failed: "
                                   "ValueError: bug")


def test_a_resource_closes_once_and_may_be_told_the_time_left():
    calls: list = []
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    sv.add(Resource("metrics", close_within=calls.append), final=True)
    sv.add(Resource("store", lambda: calls.append("closed")))
    sv.stop_all(8, final_share=2.0)
    sv.stop_all(8)  # twice: nothing happens again
    assert calls == ["closed", 8.0]


@pytest.mark.parametrize("error", [MemoryError(), OSError(12, "Cannot allocate memory"),
                                   ImportError("libstdc++.so.6: failed to map segment from shared object"),
                                   RuntimeError("can't start new thread")])
def test_every_shape_of_memory_exhaustion_is_one_line(error, caplog):
    # seen under `ulimit -v`: the SDK's import failing to map gRPC's libstdc++, a thread without a stack
    sv = Supervisor()

    def fail() -> None:
        raise error

    with caplog.at_level(logging.CRITICAL, logger="otel_oom.service"):
        assert sv.add(ThreadService("otel-oom-export-setup", fail, ends=True)).join(10)
    (rec,) = caplog.records
    assert rec.exc_info is None and "out of memory: raise the agent's memory limit" in rec.getMessage()


def test_a_thread_that_cannot_be_started_is_an_expected_error(monkeypatch):
    def no_stack(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_stack)
    with pytest.raises(AgentError, match="cannot start thread otel-oom-worker: can't start new thread; raise the "
                                         "agent's memory limit"):
        Supervisor().add(ThreadService("otel-oom-worker", lambda: None))


def test_a_service_made_once_the_teardown_began_is_closed_at_once_not_started():
    clock = FakeClock()
    sv = Supervisor(clock=clock)
    sv.reserve("metrics", final=True)
    sv.stop_all(5)
    closed: list = []
    sv.fill(Resource("metrics", close_within=closed.append))   # the export set-up finished too late
    assert closed == [0.0]  # its exporter thread would otherwise outlive the agent
