"""The spool directory as an untrusted place, with the real agent and real OOM kills (issue 21): its
segment files removed while kills wait, and files that are not the spool's under a segment's name
(a FIFO, a link to /dev/zero, a sparse file of a terabyte) when the agent starts. Before: "cannot
read spool" for good and none of the kills delivered; a FIFO hung the agent before `ready` (and it
then ignored SIGTERM); /dev/zero or the sparse file exhausted its memory."""
from __future__ import annotations

import os
import signal

import pytest

from otel_oom.trigger import trigger_oom
from testing.otlp_receiver import OtlpGrpcReceiver, free_port

MiB = 1 << 20
pytestmark = pytest.mark.root


def kill_pids(rx) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for r in rx.log_records():
        if r["event_name"] == "oom.kill":
            out.setdefault(r["attributes"]["process.pid"], set()).add(r["attributes"]["oom.event.id"])
    return out


def segments(spool) -> list[str]:
    return sorted(n for n in os.listdir(spool) if n.startswith("seg-"))


def test_kills_waiting_when_the_segment_files_are_removed_are_all_delivered(start_agent, tmp_path):
    spool = tmp_path / "spool"
    rx = OtlpGrpcReceiver(port=free_port())  # down
    agent = start_agent([f"--spool-dir={spool}", "--events=none"], rx.endpoint)
    before = [trigger_oom(limit_bytes=16 * MiB) for _ in range(2)]
    deadline = 30
    while deadline and not (segments(spool) and "collector did not accept" in agent.stderr):
        deadline -= 1
        signal.sigtimedwait([], 1)
    for name in segments(spool):
        os.unlink(spool / name)
    after = trigger_oom(limit_bytes=16 * MiB)
    pids = [k.victim_pid for k in (*before, after)]
    rx.start()
    try:
        rx.wait_for_logs(lambda recs: set(pids) <= set(kill_pids(rx)), 60)
        got = kill_pids(rx)
        assert all(len(got[p]) == 1 for p in pids), got  # once each, under one id
        assert agent.stop() == 0
    finally:
        rx.stop()
    assert "written again from its open descriptors" in agent.stderr
    assert "cannot read spool" not in agent.stderr and "Traceback" not in agent.stderr


@pytest.mark.parametrize("what", ["fifo", "link to /dev/zero", "sparse terabyte"])
def test_what_is_not_a_segment_under_a_segments_name_neither_hangs_nor_exhausts_the_agent(start_agent, tmp_path, what):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    name = spool / "seg-00000000000000000001.log"
    if what == "fifo":
        os.mkfifo(name)
    elif what == "link to /dev/zero":
        os.symlink("/dev/zero", name)
    else:
        with open(name, "wb") as f:
            f.truncate(1 << 40)
    with OtlpGrpcReceiver() as rx:
        agent = start_agent([f"--spool-dir={spool}", "--spool-max-bytes=4194304", "--events=none"], rx.endpoint)
        kill = trigger_oom(limit_bytes=16 * MiB)
        rx.wait_for_logs(lambda recs: kill.victim_pid in kill_pids(rx), 60)
        with open(f"/proc/{agent.proc.pid}/status") as f:
            vm_hwm_kib = int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
        assert agent.stop(signal.SIGTERM) == 0
    assert "Traceback" not in agent.stderr
    if what == "sparse terabyte":
        # a regular file under the spool's own name: read up to the bound (4 MiB; the terabyte, or
        # even a GiB of it, would show in the peak), its garbage counted, deleted once consumed
        assert "beyond the spool's bound" in agent.stderr and "spool_corrupt" in agent.stderr
        assert vm_hwm_kib < 512 * 1024, vm_hwm_kib
    else:
        assert "not read, left in place" in agent.stderr and os.path.lexists(name)
