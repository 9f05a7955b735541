"""The agent's wiring, supervision and shutdown, in-process: the real pipeline, spool, sender and
OTLP exporter into a real OTLP gRPC receiver, fed by `testing.events.ScriptedSource` (a test double
of the kernel side) instead of BPF, so faults can be placed exactly."""
from __future__ import annotations

import time

import pytest

from otel_oom.attribution import enrich as enrich_module
from otel_oom.delivery import spool as spool_module
from otel_oom.kernel import wire
from testing.events import ScriptedSource
from testing.inprocess import Harness, sample, wait
from testing.otlp_receiver import OtlpGrpcReceiver, free_port

# a kernel kill (the victim was sent SIGKILL), as opposed to sample()'s default: a victim marked while exiting
KILLED = wire.F_VICTIM_TASK | wire.F_MM_SIZES | wire.F_BOOT_CLOCK | wire.F_SIGKILLED


def test_samples_flow_to_the_collector_in_order_and_the_spool_drains(tmp_path):
    with OtlpGrpcReceiver() as rcv:
        h = Harness(tmp_path, rcv.endpoint, "--json").start()
        try:
            h.push(sample(101), sample(102), sample(103))
            rcv.wait_for_logs(3)
            pids = [r["attributes"]["process.pid"] for r in rcv.log_records()]
            assert pids == [101, 102, 103]
            assert all(r["event_name"] == "oom.kill" for r in rcv.log_records())
            assert rcv.log_records()[0]["attributes"]["oom.victim.cgroup.path"] == "/test-leaf"
            assert wait(lambda: not h.agent.store.pending(1))
            assert h.out.getvalue().count('"event_name":"oom.kill"') == 3
        finally:
            h.stop()
    assert h.source.closed == 1
    h.agent.close()  # a second close is harmless
    assert h.source.closed == 1


def test_an_undecodable_sample_is_counted_and_the_next_one_still_arrives(tmp_path):
    with OtlpGrpcReceiver() as rcv:
        h = Harness(tmp_path, rcv.endpoint).start()
        try:
            h.push(b"\x00" * 10, sample(201))
            rcv.wait_for_logs(1)
            assert rcv.log_records()[0]["attributes"]["process.pid"] == 201
            assert h.agent.drop_counts()["decode_error"] == 1
            rcv.wait_for_metric("otel_oom.events.dropped",
                                lambda pts: any(p["attributes"] == {"reason": "decode_error"} and p["value"] == 1
                                                for p in pts))
        finally:
            h.stop()


def test_a_fault_attributing_one_kill_is_counted_and_the_kill_still_goes_out(tmp_path, monkeypatch, caplog):
    real = enrich_module.Enricher.enrich

    def flaky(self, ev):
        if ev.victim_pid == 302:
            raise RuntimeError("attribution bug")
        return real(self, ev)

    monkeypatch.setattr(enrich_module.Enricher, "enrich", flaky)
    with OtlpGrpcReceiver() as rcv:
        h = Harness(tmp_path, rcv.endpoint).start()
        try:
            h.push(sample(301), sample(302, b"broken"), sample(303))
            rcv.wait_for_logs(3)
            by_pid = {r["attributes"]["process.pid"]: r["attributes"] for r in rcv.log_records()}
            assert sorted(by_pid) == [301, 302, 303]
            # delivered with what the kernel reported, without attribution
            assert by_pid[302]["process.executable.name"] == "broken"
            assert by_pid[302]["oom.victim.memory.anon_rss"] == 7000 * 4096
            assert "oom.victim.cgroup.path" not in by_pid[302]
            assert by_pid[303]["oom.victim.cgroup.path"] == "/test-leaf"
            assert h.agent.fault_counts() == {"enrich": 1}
            assert h.agent.readiness() == (True, "ok")
            assert any(by_pid[302]["oom.event.id"] in r.getMessage() for r in caplog.records)
        finally:
            h.stop()


def test_a_dead_sender_thread_fails_readiness_and_stops_the_agent_with_exit_1(tmp_path, monkeypatch):
    with OtlpGrpcReceiver() as rcv:
        h = Harness(tmp_path, rcv.endpoint)
        h.agent.start()
        h.agent.export_ready(30)
        store = h.agent.store
        monkeypatch.setattr(type(store), "pending", lambda self, limit=100: (_ for _ in ()).throw(MemoryError("boom")))
        h.agent.sender.wake()
        assert wait(lambda: not h.agent.readiness()[0])
        ok, why = h.agent.readiness()
        assert "thread otel-oom-sender died: MemoryError: boom" in why
        monkeypatch.undo()
        h.agent._loop()  # returns: the dead thread set the stop flag
        h.agent.close()
        assert h.agent.exit_code == 1


def test_run_tears_down_when_polling_raises(tmp_path):
    with OtlpGrpcReceiver() as rcv:
        h = Harness(tmp_path, rcv.endpoint)

        class Broken(ScriptedSource):
            def poll(self, timeout_ms: int) -> int:
                if timeout_ms:
                    raise OSError("ring buffer gone")
                return super().poll(0)

        def factory(on_sample):
            h.source = Broken(on_sample)
            return h.source

        h.agent._source_factory = factory
        with pytest.raises(OSError, match="ring buffer gone"):
            h.agent.run()
        assert h.source.closed == 1 and h.agent._closed


def test_kills_held_in_memory_at_shutdown_are_counted_as_lost(tmp_path):
    port = free_port()  # nobody listens: every export fails
    h = Harness(tmp_path, f"http://127.0.0.1:{port}", "--no-spool").start()
    h.push(sample(401), sample(402))
    assert wait(lambda: h.agent.pipeline.kills_seen == 2)
    h.stop()
    assert h.agent.drops["shutdown_in_memory"] == 2


def test_kills_in_memory_at_shutdown_are_left_for_the_next_start_to_recover(tmp_path, monkeypatch, caplog):
    # the spool cannot write (disk full): kills wait in memory, the collector is down, the agent stops.
    # Before, the reconciler had counted them as observed, so the next start did not recover them.
    def failing_append(self, payloads, accounted=None):
        raise spool_module.SpoolError("cannot write OOM event to spool: No space left on device")

    h = Harness(tmp_path, f"http://127.0.0.1:{free_port()}").start()
    monkeypatch.setattr(spool_module.Spool, "append_many", failing_append)  # append() too: it calls it
    h.push(sample(411, flags=KILLED), sample(412, flags=KILLED))
    assert wait(lambda: h.agent.pipeline.kills_seen == 2 and h.agent.store.in_memory() == 2)
    accounted = h.agent.reconciler.accounted()
    h.stop()
    monkeypatch.undo()
    assert h.agent.drops["shutdown_in_memory"] == 2
    with spool_module.Spool(tmp_path / "spool") as spool:  # the ledger on disk leaves both out
        assert spool.ledger.accounted == accounted - 2
    assert any("the next start recovers the 2 kernel OOM kill(s) among them from the kernel log" in r.getMessage()
               for r in caplog.records)


def test_the_spool_takes_back_what_waited_in_memory_once_it_can_write(tmp_path, monkeypatch):
    real = spool_module.Spool.append_many
    broken = {"on": True}

    def flaky_append(self, payloads, accounted=None):
        if broken["on"]:
            raise spool_module.SpoolError("cannot write OOM event to spool: No space left on device")
        return real(self, payloads, accounted)

    port = free_port()
    h = Harness(tmp_path, f"http://127.0.0.1:{port}").start()
    monkeypatch.setattr(spool_module.Spool, "append_many", flaky_append)
    h.push(sample(421), sample(422))
    assert wait(lambda: h.agent.store.in_memory() == 2)
    broken["on"] = False
    h.push(sample(423))  # joins the two in memory: order is kept
    assert wait(lambda: h.agent.store.in_memory() == 0, 5)  # the sender moved them into the spool
    h.stop()
    assert h.agent.drops.get("shutdown_in_memory", 0) == 0
    with OtlpGrpcReceiver(port=port) as rcv:  # the next start delivers all three, in order
        again = Harness(tmp_path, rcv.endpoint).start()
        try:
            rcv.wait_for_logs(3)
            assert [r["attributes"]["process.pid"] for r in rcv.log_records()] == [421, 422, 423]
        finally:
            again.stop()


def test_an_agent_without_the_spool_leaves_another_agents_state_alone(tmp_path):
    with spool_module.Spool(tmp_path / "spool", boot_id="theirs") as theirs:  # another agent's ledger
        theirs.append(b"their kill", accounted=3)
    (tmp_path / "spool" / "reconcile.json").write_text('{"boot_id": "theirs", "vmstat_oom_kill": 3}'.ljust(256))
    before = {p.name: p.read_bytes() for p in (tmp_path / "spool").iterdir()}
    h = Harness(tmp_path, None, "--no-otlp", "--console").start()
    h.push(sample(431))
    assert wait(lambda: "pid=431" in h.out.getvalue())
    h.stop()
    assert {p.name: p.read_bytes() for p in (tmp_path / "spool").iterdir()} == before
    assert h.agent.reconciler.store is None


def test_counts_exported_after_close_do_not_go_back(tmp_path):
    h = Harness(tmp_path, None, "--no-otlp", "--console").start()
    h.source.ringbuf_full = 7
    h.push(sample(501))
    assert wait(lambda: "pid=501" in h.out.getvalue())
    h.stop()
    assert h.agent.drop_counts()["ringbuf_full"] == 7
    assert h.agent.hooks_attached() == []


def test_spool_write_failure_keeps_the_kill_in_memory_and_delivers_it(tmp_path, monkeypatch):
    def failing_append(self, payloads, accounted=None):
        raise spool_module.SpoolError("disk full")

    with OtlpGrpcReceiver() as rcv:
        h = Harness(tmp_path, rcv.endpoint).start()
        try:
            monkeypatch.setattr(spool_module.Spool, "append_many", failing_append)
            h.push(sample(601))
            rcv.wait_for_logs(1)
            assert rcv.log_records()[0]["attributes"]["process.pid"] == 601
        finally:
            h.stop()



def test_an_unreadable_spool_fails_readiness_and_is_logged_once(tmp_path, monkeypatch, caplog):
    def unreadable(self, limit=100):
        raise spool_module.SpoolError("cannot read spool: Input/output error")

    h = Harness(tmp_path, f"http://127.0.0.1:{free_port()}").start()
    try:
        monkeypatch.setattr(spool_module.Spool, "pending", unreadable)
        h.agent.sender.wake()
        assert wait(lambda: not h.agent.readiness()[0])
        assert h.agent.readiness() == (False, "spool unreadable: cannot read spool: Input/output error")
        for _ in range(3):
            h.agent.sender.wake()
            time.sleep(0.05)
        assert sum("Input/output error" in r.getMessage() for r in caplog.records) == 1
        monkeypatch.undo()
        h.agent.sender.wake()
        assert wait(lambda: h.agent.readiness() == (True, "ok"))
    finally:
        h.stop()


def test_a_spool_directory_removed_while_kills_wait_loses_nothing_it_still_holds(tmp_path):
    # collector down, 3 kills, the directory removed, 3 more, collector back. Before: 1 of 6
    # delivered, then "cannot read spool" every second, /readyz ok, nothing counted
    import shutil

    port = free_port()
    h = Harness(tmp_path, f"http://127.0.0.1:{port}").start()
    try:
        h.push(sample(441), sample(442), sample(443))
        assert wait(lambda: h.agent.pipeline.kills_seen == 3)
        shutil.rmtree(tmp_path / "spool")
        h.push(sample(444), sample(445), sample(446))
        assert wait(lambda: h.agent.pipeline.kills_seen == 6)
        with OtlpGrpcReceiver(port=port) as rcv:
            rcv.wait_for_logs(6, 40)
            assert [r["attributes"]["process.pid"] for r in rcv.log_records()] == list(range(441, 447))
            assert h.agent.readiness() == (True, "ok")
        # the three were in the segment being appended to: rescued, so nothing was lost
        assert h.agent.drop_counts().get("spool_lost", 0) == 0
    finally:
        h.stop()
