"""Kills while the probes attach, through the whole in-process agent to a real OTLP receiver, with the
kernel's counter and log as files (`testing.fake_kernel`) and the probe's samples scripted (issue 21):
they are recovered from the kernel log and delivered, and were (before) also counted in
oom.kills.unobserved, so the unobserved-kills alert fired for kills that were delivered."""
from __future__ import annotations

import pytest

from testing.fake_kernel import FakeKernel, kernel_kill, kills
from testing.inprocess import Harness, wait
from testing.otlp_receiver import OtlpGrpcReceiver


@pytest.mark.parametrize("during_attach", ["one", "one caught, one not", "a group kill"])
def test_kills_during_the_attach_are_delivered_once_and_never_counted_unobserved(tmp_path, during_attach):
    kernel = FakeKernel(tmp_path / "kernel")
    kernel.kill(700)
    with OtlpGrpcReceiver() as rx:
        h = Harness(tmp_path, rx.endpoint, "--reconcile-interval=0.2", proc_root=kernel.proc_root,
                    kmsg_path=kernel.kmsg_path)
        make_source = h.agent._source_factory

        def attaching(on_sample):  # the kills happen while the probes attach
            source = make_source(on_sample)
            if during_attach == "one":
                kernel.kill(701)
            elif during_attach == "one caught, one not":
                kernel.kill(701)
                source.push([kernel_kill(kernel, 702)])  # the probe caught this one
            else:
                kernel.group_kill("/test-leaf", (703, 704))
            return source

        h.agent._source_factory = attaching
        h.start()
        try:
            want = {"one": [701], "one caught, one not": [701, 702], "a group kill": [703, 704]}[during_attach]
            rx.wait_for_logs(len(want))
            assert sorted(pid for pid, _, _ in kills(rx)) == want
            assert [recovered for pid, recovered, _ in kills(rx) if pid == 702] in ([], [False])
            # two reconciliations later the kernel's count of the window is in the comparison
            assert wait(lambda: h.agent.reconciler.refresh() == kernel.count)
            assert h.agent.unobserved_kills() == 0
            assert wait(lambda: h.agent.reconciler.accounted() == kernel.count)
        finally:
            h.stop()
