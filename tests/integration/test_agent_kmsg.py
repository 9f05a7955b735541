"""The whole agent in-process with `--backend kmsg`: its real source (`kernel.kmsg_source`) follows a
kernel log written record by record to a file, beside /proc/vmstat as files (`testing.fake_kernel`,
the test double of the kernel's own record), to a real OTLP receiver. The device, real kills and a
BPF-less process are tests/e2e/test_kmsg_backend.py's; here the lines are placed exactly.

What this holds: the kills the log tells after the start are live records (`oom.recovered=false`),
attributed from their cgroup path like the BPF backends' (container, pod), stored, sent and counted
in the ledger as the kernel's kills (so a restart recovers only what it did not see, under the same
id), and the lines user space wrote are nothing."""
from __future__ import annotations

import io
import threading

from otel_oom.agent import Agent
from otel_oom.cli import build_parser
from otel_oom.config import resolve
from testing.fake_kernel import FakeKernel, kills
from testing.inprocess import wait
from testing.otlp_receiver import OtlpGrpcReceiver

POD = "/kubepods/burstable/pod5f0c9c1e-3b7a-4c2e-9d41-0a8f2b6e7c13"
CONTAINER = "3f9a0123456789abcdef0123456789abcdef0123456789abcdefc0ffee0123ba"


class KmsgAgent:
    """An Agent built from real flags, its kernel log and counter the fake kernel's files."""

    def __init__(self, tmp_path, kernel: FakeKernel, endpoint: str) -> None:
        args = build_parser().parse_args(["run", "--backend=kmsg", "--oom-score-adj=keep", "--shutdown-timeout=2",
                                          "--events=none", f"--spool-dir={tmp_path / 'spool'}"])
        cfg = resolve({k: v for k, v in vars(args).items() if k != "command"},
                      {"OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        self.agent = Agent(cfg, {}, io.StringIO(), proc_root=kernel.proc_root, kmsg_path=kernel.kmsg_path)
        self.agent.start()
        self.agent.export_ready(30)
        self.thread = threading.Thread(target=self.agent._loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.stopping.set()
        self.thread.join(5)
        self.agent.close()


def test_kills_after_the_start_are_live_attributed_and_accounted(tmp_path):
    kernel = FakeKernel(tmp_path / "kernel")
    kernel.kill(501)  # before the first start: not this agent's to report
    with OtlpGrpcReceiver() as rx:
        a = KmsgAgent(tmp_path, kernel, rx.endpoint)
        try:
            assert a.agent.source is not None and a.agent.source.plan.backend == "kmsg"
            kernel.kill(511, f"{POD}/{CONTAINER}")
            kernel.user_line("Killed process 4190001 (forged) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB")
            kernel.kill(512)
            rx.wait_for_logs(2)
            assert wait(lambda: a.agent.reconciler.accounted() == 3)
        finally:
            a.stop()
        records = {r["attributes"]["process.pid"]: r["attributes"] for r in rx.log_records()}
    assert sorted(records) == [511, 512]
    k = records[511]
    assert (k["oom.hook"], k["oom.recovered"], k["oom.event.id"]) == ("kmsg", False, kernel.kmsg_id(511))
    assert (k["oom.victim.cgroup.path"], k["container.id"], k["k8s.pod.uid"], k["oom.victim.pod.qos_class"]) == (
        f"{POD}/{CONTAINER}", CONTAINER, "5f0c9c1e-3b7a-4c2e-9d41-0a8f2b6e7c13", "burstable")
    assert (k["oom.constraint"], k["oom.constraint.source"], k["oom.memcg.path"]) == ("memcg", "kmsg",
                                                                                      f"{POD}/{CONTAINER}")
    assert (k["process.executable.name"], k["oom.victim.memory.anon_rss"], k["oom.victim.killed"]) == (
        "victim511", 900 * 1024, True)
    assert "oom.victim.cgroup.path" not in records[512]  # its summary line was not printed: not guessed
    assert a.agent.unobserved_kills() == 0


def test_a_restart_recovers_what_it_did_not_see_once_and_follows_the_rest(tmp_path):
    kernel = FakeKernel(tmp_path / "kernel")
    with OtlpGrpcReceiver() as rx:
        a = KmsgAgent(tmp_path, kernel, rx.endpoint)
        try:
            kernel.kill(601)
            rx.wait_for_logs(1)
        finally:
            a.stop()
        kernel.kill(602)  # while no agent ran
        kernel.user_line("Memory cgroup out of memory: Killed process 4190002 (forged) total-vm:1kB, anon-rss:1kB, "
                         "file-rss:0kB, shmem-rss:0kB")
        b = KmsgAgent(tmp_path, kernel, rx.endpoint)
        try:
            kernel.kill(603)
            rx.wait_for_logs(3)
            assert wait(lambda: b.agent.reconciler.accounted() == 3)
        finally:
            b.stop()
        got = sorted(kills(rx))
    assert got == [(601, False, kernel.kmsg_id(601)), (602, True, kernel.kmsg_id(602)),
                   (603, False, kernel.kmsg_id(603))]
