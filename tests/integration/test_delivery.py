"""What the collector answers decides what becomes of a kill: the in-process agent (real pipeline,
spool, sender and OTLP transport) against real OTLP receivers that refuse records, refuse large
requests, report partial success or never answer. Each test would have failed before the sender
learnt to split and park: a refused batch was resent forever and every later kill joined it."""
from __future__ import annotations

import json
import logging
import time

import grpc
import pytest

from testing.inprocess import Harness, sample, wait
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

HTTP = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


def pids(rx) -> list[int]:
    return [r["attributes"]["process.pid"] for r in rx.log_records()]


def parked(tmp_path) -> list[dict]:
    path = tmp_path / "spool" / "parked.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("cls, code, env", [(OtlpGrpcReceiver, grpc.StatusCode.INVALID_ARGUMENT, {}),
                                            (OtlpHttpReceiver, 400, HTTP)])
def test_a_record_refused_for_good_is_parked_and_every_other_kill_flows(cls, code, env, tmp_path, caplog):
    with cls() as rx:
        rx.reject_records(lambda r: r["attributes"]["process.pid"] == 104, code)
        h = Harness(tmp_path, rx.endpoint, **env)
        h.agent.start()  # no poll loop yet: the six samples arrive as one batch
        try:
            h.push(*(sample(pid) for pid in range(101, 107)))
            h.agent.source.poll(0)
            rx.wait_for_logs(lambda recs: {101, 102, 103, 105, 106} <= set(pids(rx)), 20)
            h.push(sample(107))  # a later kill is not held up by the refused one
            h.agent.source.poll(0)
            rx.wait_for_logs(lambda recs: 107 in pids(rx), 20)
            assert 104 not in pids(rx) and sorted(set(pids(rx))) == [101, 102, 103, 105, 106, 107]
            assert wait(lambda: h.agent.drop_counts().get("collector_rejected") == 1)
            (p,) = parked(tmp_path)
            # the record as it was sent, readable: its attributes, body and event name
            attrs = p["event"]["attributes"]
            assert attrs["process.pid"] == 104 and p["reason"] and p["signal"] == "logs"
            assert p["event"]["event_name"] == "oom.kill" and " process 104 (leaky) " in p["event"]["body"]
            assert p["event"]["otlp_base64"]
            assert wait(lambda: not h.agent.store.pending(1))
            refused = [r for r in rx.requests if r["signal"] == "logs" and r["fault"] is not None]
            assert 1 <= len(refused) <= 4  # the first batch, then halves down to the one record
            assert any("refused OOM event" in r.getMessage() and attrs["oom.event.id"] in r.getMessage()
                       for r in caplog.records if r.levelno == logging.ERROR)
            rx.wait_for_metric("otel_oom.events.dropped", lambda pts: any(
                x["attributes"] == {"reason": "collector_rejected"} and x["value"] == 1 for x in pts), 10)
        finally:
            h.stop()


@pytest.mark.parametrize("cls, code, env", [(OtlpHttpReceiver, 413, HTTP),
                                            (OtlpGrpcReceiver, grpc.StatusCode.RESOURCE_EXHAUSTED, {})])
def test_a_request_too_large_is_split_until_it_fits(cls, code, env, tmp_path):
    with cls() as rx:
        rx.max_records(2, code)
        h = Harness(tmp_path, rx.endpoint, **env)
        h.agent.start()
        h.agent.export_ready(30)
        try:
            h.push(*(sample(pid) for pid in range(201, 208)))
            h.agent.source.poll(0)
            rx.wait_for_logs(7, 20)
            assert pids(rx) == list(range(201, 208))  # in order, each once, none parked
            assert parked(tmp_path) == [] and "collector_rejected" not in h.agent.drop_counts()
            accepted = [r for r in rx.requests if r["signal"] == "logs" and r["fault"] is None]
            assert len(accepted) == 4  # 7 -> 3 + 4 -> 1 + 2 + 2 + 2
        finally:
            h.stop()


def test_a_single_record_too_large_is_parked(tmp_path):
    with OtlpHttpReceiver() as rx:
        rx.max_records(0, 413)
        h = Harness(tmp_path, rx.endpoint, **HTTP).start()
        try:
            h.push(sample(301))
            assert wait(lambda: len(parked(tmp_path)) == 1)
            assert h.agent.drop_counts()["collector_rejected"] == 1 and wait(lambda: not h.agent.store.pending(1))
        finally:
            h.stop()


@pytest.mark.parametrize("cls, env", [(OtlpGrpcReceiver, {}), (OtlpHttpReceiver, HTTP)])
def test_partial_success_is_logged_and_counted(cls, env, tmp_path, caplog):
    with cls() as rx:
        rx.partial_success(1, "attribute oom.victim.cgroup.path too long", count=1)
        h = Harness(tmp_path, rx.endpoint, **env).start()
        try:
            h.push(sample(401))
            rx.wait_for_logs(1)
            assert wait(lambda: h.agent.drop_counts().get("collector_partial") == 1)
            msg = next(r.getMessage() for r in caplog.records if "collector_partial" in r.getMessage())
            assert "rejected 1" in msg and "too long" in msg and ":401" in msg
            h.push(sample(402))  # the next answer is a plain success: nothing more counted
            rx.wait_for_logs(2)
            assert wait(lambda: not h.agent.store.pending(1))
            assert h.agent.drop_counts()["collector_partial"] == 1
        finally:
            h.stop()


def test_shutdown_is_bounded_by_the_timeout_with_a_collector_that_never_answers(tmp_path):
    with OtlpGrpcReceiver() as rx:
        rx.delay(60)
        h = Harness(tmp_path, rx.endpoint, "--prometheus", "--listen=127.0.0.1:0",
                    OTEL_EXPORTER_OTLP_TIMEOUT="30").start()
        h.push(sample(501))
        assert wait(lambda: any(r["signal"] == "logs" for r in rx.requests) or h.agent.pipeline.kills_seen == 1)
        time.sleep(0.3)  # the export is in flight and will not be answered
        t0 = time.monotonic()
        h.stop()  # --shutdown-timeout=2
        took = time.monotonic() - t0
        # behaviour, not speed: the stop is bounded by --shutdown-timeout, not held for the in-flight
        # export's own 30 s timeout (nor the collector's 60 s); the margin is for a loaded machine
        assert took < 20, f"the stop waited {took:.1f} s: for the export, not --shutdown-timeout=2"
        # and the kill it could not deliver is still in the spool for the next start
        assert h.agent.store is not None and h.agent.store.spool.stats()["pending"] == 1
