"""What the agent accounts against the kernel's OOM kill counter, through the whole in-process agent
to a real OTLP receiver, with the kernel's counter and log as files (`testing.fake_kernel`) and the
probe's samples scripted (issue 21):

- Shutdown with events held in memory (the spool cannot write, the collector is down): before, all of
  them were taken off the kernel's count, user-space kills and reclaim records included, so the next
  start reported kills "while otel-oom was not running" that never were, sent a delivered kill again
  under another oom.event.id, replayed kills from before its first start, and lost the user-space
  kills it said it would recover. Now exactly the kernel kills lost are recovered, once, under the
  same id at every replay; the rest is counted as lost."""
from __future__ import annotations

import pytest

from otel_oom.delivery import spool as spool_module
from testing.fake_kernel import FakeKernel, kernel_kill, kills, userspace_kill
from testing.inprocess import Harness, sample, wait
from testing.otlp_receiver import OtlpGrpcReceiver, free_port
from testing.spool_crash import abandon
from testing.spooled import spooled_attributes


def start(tmp_path, kernel: FakeKernel, endpoint: str, *flags: str) -> Harness:
    return Harness(tmp_path, endpoint, *flags, proc_root=kernel.proc_root, kmsg_path=kernel.kmsg_path).start()


@pytest.fixture
def unwritable_spool(monkeypatch):
    def failing(self, payloads, accounted=None):
        raise spool_module.SpoolError("cannot write OOM event to spool: No space left on device")

    monkeypatch.setattr(spool_module.Spool, "append_many", failing)
    return monkeypatch


@pytest.mark.parametrize("delivered_from_memory", [False, True])
def test_only_the_kernel_kills_held_in_memory_at_shutdown_are_recovered_once(tmp_path, unwritable_spool,
                                                                             delivered_from_memory, caplog):
    kernel = FakeKernel(tmp_path / "kernel")
    kernel.kill(501)  # before the agent's first start: never replayed
    kernel.kill(502)
    port = free_port()
    rx = OtlpGrpcReceiver(port=port)
    h = start(tmp_path, kernel, rx.endpoint, "--events=reclaim,userspace_kill")
    try:
        if delivered_from_memory:  # the collector takes the first kill straight from memory
            rx.start()
            h.push(kernel_kill(kernel, 511))
            rx.wait_for_logs(1)
            assert wait(lambda: h.agent.store.in_memory() == 0)
            rx.stop()
        else:
            h.push(kernel_kill(kernel, 511))
        h.push(userspace_kill(520), kernel_kill(kernel, 512), sample(530))  # (530: marked exiting, no kill)
        assert wait(lambda: h.agent.store.in_memory() == (3 if delivered_from_memory else 4))
    finally:
        h.stop()
    unwritable_spool.undo()
    lost = 3 if delivered_from_memory else 4
    assert h.agent.drops["shutdown_in_memory"] == lost
    kernel_lost = 1 if delivered_from_memory else 2
    assert f"recovers the {kernel_lost} kernel OOM kill(s) among them" in caplog.text

    with OtlpGrpcReceiver(port=port) as rx:  # the next start: exactly the kernel kills lost, from the log
        h = start(tmp_path, kernel, rx.endpoint)
        try:
            want = [(512, True, kernel.kmsg_id(512))]
            if not delivered_from_memory:
                want.insert(0, (511, True, kernel.kmsg_id(511)))
            rx.wait_for_logs(len(want))
            assert kills(rx) == want
            assert f"{kernel_lost} OOM kill(s) happened while otel-oom was not running" in caplog.text
            assert wait(lambda: not h.agent.store.pending(1))
            assert h.agent.reconciler.unobserved() == 0 and h.agent.reconciler.accounted() == 4
        finally:
            h.stop()
    with OtlpGrpcReceiver(port=port) as rx:  # and the one after: nothing again
        h = start(tmp_path, kernel, rx.endpoint)
        try:
            h.push(kernel_kill(kernel, 540))
            rx.wait_for_logs(1)
            assert [pid for pid, _, _ in kills(rx)] == [540]
        finally:
            h.stop()


def test_kills_recovered_and_replayed_after_a_sigkill_keep_their_id(tmp_path):
    # recovered at one start from the kernel log (id: boot, printk time, pid), the agent SIGKILLed
    # before delivering them: the next start delivers them from the spool under those ids, and does
    # not recover them a second time
    kernel = FakeKernel(tmp_path / "kernel")
    port = free_port()
    h = start(tmp_path, kernel, f"http://127.0.0.1:{port}")
    h.stop()
    kernel.kill(601)  # while no agent runs
    kernel.kill(602)
    h = start(tmp_path, kernel, f"http://127.0.0.1:{port}")  # recovers both into the spool; collector down
    assert wait(lambda: len(h.agent.store.spool.pending()) == 2)
    spooled = [spooled_attributes(p)["oom.event.id"] for _, p in h.agent.store.spool.pending()]
    assert spooled == [kernel.kmsg_id(601), kernel.kmsg_id(602)]
    abandon(h.agent.store.spool)  # SIGKILL: nothing more reaches the spool
    h.stop()                      # (the rest of the agent's threads end)
    with OtlpGrpcReceiver(port=port) as rx:
        h = start(tmp_path, kernel, rx.endpoint)
        try:
            rx.wait_for_logs(2)
            assert kills(rx) == [(601, True, kernel.kmsg_id(601)), (602, True, kernel.kmsg_id(602))]
            assert wait(lambda: not h.agent.store.pending(1))
        finally:
            h.stop()
