"""The agent's own process (otel_oom/own_process.py), in-process: its signals and memory exhaustion
(issue 21). Before, SIGUSR1, SIGUSR2 and SIGALRM ended the agent silently (their default action),
and a MemoryError after `ready` printed a traceback."""
from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from otel_oom import pipeline as pipeline_module
from otel_oom.errors import AgentError
from otel_oom.own_process import IGNORED_SIGNALS, OUT_OF_MEMORY, STATUS_SIGNALS, install_signal_handlers, install_thread_hook
from testing.inprocess import Harness, sample, wait


@pytest.fixture
def handlers():
    """Signal handlers and the thread hook as they were, back after the test."""
    saved = {sig: signal.getsignal(sig) for sig in (*STATUS_SIGNALS, *IGNORED_SIGNALS, signal.SIGINT,
                                                    signal.SIGTERM, signal.SIGHUP)}
    hook = threading.excepthook
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    threading.excepthook = hook


@pytest.mark.parametrize("sig", STATUS_SIGNALS + IGNORED_SIGNALS)
def test_signals_that_used_to_end_the_agent_silently_now_log_and_it_goes_on(sig, handlers, caplog):
    stop, status = threading.Event(), threading.Event()
    install_signal_handlers(stop, status)
    with caplog.at_level(logging.INFO, logger="otel_oom.agent"):
        os.kill(os.getpid(), sig)  # delivered to this (the main) thread before kill() returns
    assert not stop.is_set()
    if sig in STATUS_SIGNALS:
        assert status.is_set()  # the main loop logs the status line
    else:
        assert f"received {signal.Signals(sig).name}: ignored" in caplog.text


def test_sigusr1_logs_a_status_line_from_the_running_agent(tmp_path, handlers, caplog):
    h = Harness(tmp_path, None, "--no-otlp", "--console")
    install_signal_handlers(h.agent.stopping, h.agent._status_wanted)
    h.start()
    try:
        h.push(sample(801))
        assert wait(lambda: "pid=801" in h.out.getvalue())
        with caplog.at_level(logging.INFO, logger="otel_oom.agent"):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert wait(lambda: "status: ready; 1 kill(s) handled" in caplog.text)
        assert not h.agent.stopping.is_set()
    finally:
        h.stop()


def test_memory_exhausted_in_a_service_after_ready_is_one_line_and_exit_1(tmp_path, monkeypatch, caplog):
    def no_memory(self, raws):
        raise MemoryError()

    h = Harness(tmp_path, None, "--no-otlp", "--console").start()
    monkeypatch.setattr(pipeline_module.Pipeline, "handle_samples", no_memory)
    with caplog.at_level(logging.INFO):
        h.push(sample(802))
        assert wait(lambda: h.agent.stopping.is_set())
        h.stop()
    assert h.agent.exit_code == 1
    (line,) = [r for r in caplog.records if "otel-oom-worker" in r.getMessage()]
    assert line.exc_info is None and "out of memory" in line.getMessage()
    assert h.agent.readiness() == (False, "thread otel-oom-worker died: MemoryError")


def test_memory_exhausted_in_the_main_thread_is_an_expected_error(tmp_path, handlers):
    h = Harness(tmp_path, None, "--no-otlp", "--console")

    def no_memory(on_sample):
        raise MemoryError()

    h.agent._source_factory = no_memory
    with pytest.raises(AgentError, match="out of memory; raise the agent's memory limit"):
        h.agent.run()  # the CLI prints that one line and exits 1
    assert h.agent._closed
    assert OUT_OF_MEMORY.startswith("out of memory")


def test_a_foreign_thread_out_of_memory_is_one_line(handlers, caplog):
    install_thread_hook()

    def sdk_thread() -> None:
        raise MemoryError()

    with caplog.at_level(logging.CRITICAL, logger="otel_oom.agent"):
        t = threading.Thread(target=sdk_thread, name="OtelPeriodicExportingMetricReader")
        t.start()
        t.join()
    (rec,) = caplog.records
    assert rec.getMessage() == f"thread OtelPeriodicExportingMetricReader: {OUT_OF_MEMORY}" and rec.exc_info is None
