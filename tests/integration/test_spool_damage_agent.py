"""The spool damaged behind the running agent's back, through the whole in-process agent to a real
OTLP receiver (issue 21): kills wait while the collector is down, the spool's files are removed, cut
or replaced, more kills come, the collector comes back. Before, removing the segment files (not the
directory) made every read fail for good: none of 6 kills was delivered, not even the 3 after, and
nothing was counted. Now what can be recovered is delivered, what is lost is counted, /readyz is ok
once delivery resumes."""
from __future__ import annotations

import os
import shutil

import pytest

from testing.inprocess import Harness, sample, wait
from testing.otlp_receiver import OtlpGrpcReceiver, free_port


def segs(spool) -> list[str]:
    return sorted(n for n in os.listdir(spool) if n.startswith("seg-"))


def remove_segments(spool) -> None:
    for name in segs(spool):
        os.unlink(spool / name)


def remove_segments_and_ack(spool) -> None:
    remove_segments(spool)
    os.unlink(spool / "ack")


def replace_directory(spool) -> None:
    os.rename(spool, spool.parent / "moved-away")
    os.mkdir(spool)


def cut_the_last_record(spool) -> None:
    newest = spool / segs(spool)[-1]
    os.truncate(newest, os.path.getsize(newest) - 5)


@pytest.mark.parametrize("damage, lost", [(remove_segments, 0), (remove_segments_and_ack, 0),
                                          (shutil.rmtree, 0), (replace_directory, 0), (cut_the_last_record, 1)])
def test_kills_waiting_in_a_damaged_spool_are_delivered_and_what_is_lost_counted(tmp_path, damage, lost):
    port = free_port()
    spool = tmp_path / "spool"
    h = Harness(tmp_path, f"http://127.0.0.1:{port}").start()  # the collector is down
    try:
        h.push(sample(441), sample(442), sample(443))
        assert wait(lambda: h.agent.pipeline.kills_seen == 3 and len(segs(spool)) >= 1)
        damage(spool)
        h.push(sample(444), sample(445), sample(446))
        assert wait(lambda: h.agent.pipeline.kills_seen == 6)
        with OtlpGrpcReceiver(port=port) as rcv:
            rcv.wait_for_logs(6 - lost, 40)
            pids = [r["attributes"]["process.pid"] for r in rcv.log_records() if r["event_name"] == "oom.kill"]
            assert pids == [p for p in range(441, 447) if p != 443 or not lost]  # (the cut one is the 3rd)
            assert wait(lambda: not h.agent.store.pending(1))
            assert h.agent.readiness() == (True, "ok")
        counts = h.agent.drop_counts()
        assert counts.get("spool_lost", 0) == 0 and counts.get("spool_corrupt", 0) == lost
    finally:
        h.stop()
    assert segs(spool) == []  # all delivered: nothing left behind, nothing in "moved-away" is the spool's
