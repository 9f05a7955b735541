"""The upgrade to the ledger, through the whole in-process agent: a spool and reconcile.json written by
otel-oom before the ledger (tests/fixtures/spool-v1, made by main's code at the commit it names) are
delivered to a real OTLP receiver by this agent, each kill once, and the kills the old agent never
stored are recovered from the kernel log, once. The kernel's counter, boot id and log are fixture
files (`Harness(proc_root=, kmsg_path=)`); the samples come from `testing.events.ScriptedSource`."""
from __future__ import annotations

import shutil

from otel_oom.kernel import wire
from testing.agent_process import REPO
from testing.inprocess import Harness, sample, wait
from testing.otlp_receiver import OtlpGrpcReceiver

FIXTURE = REPO / "tests" / "fixtures" / "spool-v1"
BOOT = (FIXTURE / "BOOT").read_text().strip()
KILLED = wire.F_VICTIM_TASK | wire.F_MM_SIZES | wire.F_BOOT_CLOCK | wire.F_SIGKILLED


def kernel_files(tmp_path):
    for name in ("spool", "proc", "kmsg"):
        src, dst = FIXTURE / name, tmp_path / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    (tmp_path / "proc" / "sys" / "kernel" / "random").mkdir(parents=True)
    (tmp_path / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT + "\n")
    return {"proc_root": str(tmp_path / "proc"), "kmsg_path": str(tmp_path / "kmsg")}


def kills(rx) -> list[tuple[int, bool, str]]:
    return [(r["attributes"]["process.pid"], r["attributes"]["oom.recovered"], r["attributes"]["oom.event.id"])
            for r in rx.log_records() if r["event_name"] == "oom.kill"]


def test_an_upgraded_agent_delivers_the_old_spool_once_and_recovers_what_it_never_stored(tmp_path):
    kernel = kernel_files(tmp_path)
    with OtlpGrpcReceiver() as rx:
        h = Harness(tmp_path, rx.endpoint, **kernel).start()
        try:
            rx.wait_for_logs(5)
            assert kills(rx) == [(106, False, f"{BOOT}:106000000000:106"), (107, False, f"{BOOT}:107000000000:107"),
                                 (108, False, f"{BOOT}:108000000000:108"), (109, True, f"{BOOT}:9000000000:109"),
                                 (110, True, f"{BOOT}:10000000000:110")]
            assert not (tmp_path / "spool" / "reconcile.json").exists()
            (tmp_path / "proc" / "vmstat").write_text("oom_kill 11\n")  # the kernel kills once more
            h.push(sample(111, flags=KILLED))
            rx.wait_for_logs(6)
            assert wait(lambda: not h.agent.store.pending(1))
        finally:
            h.stop()
    with OtlpGrpcReceiver() as rx:  # the next start: nothing again
        h = Harness(tmp_path, rx.endpoint, **kernel).start()
        try:
            h.push(sample(112, flags=KILLED))
            rx.wait_for_logs(1)
            assert [pid for pid, _, _ in kills(rx)] == [112]
            assert h.agent.reconciler.unobserved() == 0
        finally:
            h.stop()
