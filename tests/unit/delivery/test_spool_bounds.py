"""The spool's drop granularity, counted exactly, and a spool directory that disappears under it.

Before, segments were always 1 MiB: at --spool-max-bytes=65536 the first overflow dropped every
pending event (63 of 63), and at the 64 MiB default about 700 at once. Segments are now sized from
the bound (max_bytes / 1024, 1 KiB to 1 MiB): the first overflow drops one segment's worth."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from otel_oom.config import DEFAULT_SPOOL_MAX_BYTES
from otel_oom.delivery.spool import Spool, SpoolError, segment_size
from otel_oom.delivery.spool_format import HEAD as HEADER
from otel_oom.schema.records import OomKill

HEAD = HEADER.size
POD = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "4f0c3b2a1e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b"


def kubepods_kill(pid: int) -> bytes:
    """A realistic spooled record: a containerd container's kill in a burstable pod (~1.6 kB)."""
    path = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/" \
           f"cri-containerd-{CID}.scope"
    return OomKill(
        event_id=f"8a1b2c3d-1111-2222-3333-444455556666:{1_000_000_000_000 + pid}:{pid}",
        time_unix_nano=1795602667_123456789, boot_time_ns=1_000_000_000_000 + pid, hook="tp_btf",
        context_hook="none", recovered=False, victim_pid=pid, victim_tid=pid, victim_comm="java",
        victim_ppid=4000, victim_uid=1000, oom_score_adj=937, total_vm_bytes=10 << 30, anon_rss_bytes=500 << 20,
        file_rss_bytes=12 << 20, shmem_rss_bytes=0, pgtables_bytes=2 << 20, cgroup_path=path,
        cgroup_line=f"0::{path}", container_runtime="containerd", container_id=CID, pod_uid=POD,
        pod_qos_class="burstable", trigger_pid=pid, trigger_tid=pid, trigger_comm="java", constraint="memcg",
        constraint_source="derived", memcg_path=path, memcg_limit_bytes=512 << 20, memcg_usage_bytes=512 << 20,
        memcg_source="derived").to_json().encode()


RECORD = HEAD + len(kubepods_kill(100000))


def first_overflow(tmp_path, max_bytes: int) -> tuple[int, int]:
    """Append until the spool first drops; (events appended, events dropped at that moment)."""
    with Spool(tmp_path / f"s{max_bytes}", max_bytes=max_bytes, fsync=False) as sp:
        n = 0
        while sp.dropped["spool_full"] == 0:
            sp.append(kubepods_kill(100000 + n))
            n += 1
        dropped = sp.dropped["spool_full"]
        assert sp.stats()["pending"] == n - dropped and sp.stats()["bytes"] <= max_bytes
        return n, dropped


@pytest.mark.parametrize("max_bytes", [1 << 16, DEFAULT_SPOOL_MAX_BYTES])
def test_the_first_overflow_drops_one_small_segment(tmp_path, max_bytes, caplog):
    assert 1024 < RECORD < 2048, RECORD  # one record per 1 KiB segment at 64 KiB; the figures follow from RECORD
    per_segment = max(1, segment_size(max_bytes) // RECORD)
    with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
        appended, dropped = first_overflow(tmp_path, max_bytes)
    assert dropped == per_segment
    assert f"dropped the {per_segment} oldest undelivered OOM events (spool_full)" in caplog.text
    print(f"\n--spool-max-bytes={max_bytes}: segment {segment_size(max_bytes)} B, record {RECORD} B; "
          f"first overflow after {appended} events dropped {dropped} ({100 * dropped / appended:.2f} %)")
    # exactly as many as fit: whole segments of per_segment records, then what fits in the rest
    seg = per_segment * RECORD
    fits = max_bytes // seg * per_segment + max_bytes % seg // RECORD
    assert appended == fits + 1
    if max_bytes == 1 << 16:
        assert segment_size(max_bytes) == 1024 and dropped == 1  # before: 63 of 63 at once
    else:
        assert segment_size(max_bytes) == 65536 and dropped == 65536 // RECORD  # before: ~700 at once


def test_a_removed_spool_directory_is_made_again_with_every_waiting_event(tmp_path, caplog):
    # before: the segment being appended to was rescued, the six older ones counted as spool_lost;
    # now the spool holds a descriptor on every segment and writes them all back
    d = tmp_path / "spool"
    sp = Spool(d, max_bytes=1 << 17, fsync=False)  # 2 KiB segments: one record each
    seqs = [sp.append(kubepods_kill(i)) for i in range(7)]  # six closed segments and one being appended to
    sp.ack(seqs[0])
    assert len([n for n in os.listdir(d) if n.startswith("seg-")]) == 6
    shutil.rmtree(d)
    with caplog.at_level(logging.ERROR, logger="otel_oom.delivery.spool"):
        later = [sp.append(kubepods_kill(i)) for i in range(7, 10)]
    assert "created it again" in caplog.text
    assert "6 segment(s) removed or replaced behind the agent's back written again" in caplog.text
    assert "6 waiting OOM event(s) kept" in caplog.text
    assert sp.dropped["spool_lost"] == 0 and os.path.isdir(d) and os.path.exists(d / "lock")
    got = sp.pending(100)
    assert [p for _, p in got] == [kubepods_kill(i) for i in range(1, 10)]
    assert [s for s, _ in got] == seqs[1:] + later  # the same numbers, in order: nothing renumbered
    sp.ack(got[-1][0])
    sp.close()
    with Spool(d) as again:  # the new directory is a complete spool
        assert again.pending(100) == [] and again.stats()["acked_seq"] == got[-1][0]


def test_a_spool_directory_replaced_by_another_is_noticed(tmp_path):
    d = tmp_path / "spool"
    sp = Spool(d, fsync=False)
    sp.append(kubepods_kill(1))
    os.rename(d, tmp_path / "moved")  # someone moved it away and made a new, empty one
    os.mkdir(d)
    assert [p for _, p in sp.pending(10)] == [kubepods_kill(1)]  # rescued from the open segment
    assert sp.dropped["spool_lost"] == 0
    sp.close()


def test_a_spool_directory_that_cannot_be_made_again_is_a_clear_error_then_recovers(tmp_path):
    parent = tmp_path / "p"
    d = parent / "spool"
    sp = Spool(d, fsync=False)
    sp.append(kubepods_kill(1))
    shutil.rmtree(parent)
    parent.write_text("not a directory")  # the spool's parent is now a file: mkdir fails
    with pytest.raises(SpoolError, match="cannot use spool directory"):
        sp.append(kubepods_kill(2))
    parent.unlink()
    assert [p for _, p in sp.pending(10)] == [kubepods_kill(1)]  # kept while it could not be written
    sp.close()


def test_a_segment_created_but_never_written_holds_no_sequence_number(tmp_path):
    # the agent dies between creating a new segment file and writing its first record: before, the
    # empty file's name counted as a seq used, so the next start believed that record was written
    # (the reconciliation then took the kill as spooled, and nobody ever delivered it)
    d = tmp_path / "spool"
    with Spool(d, fsync=False) as sp:
        sp.ack(sp.append(b"one"))
        nxt = sp.next_seq
    (d / f"seg-{nxt:020d}.log").write_bytes(b"")
    with Spool(d, fsync=False) as sp:
        assert sp.next_seq == nxt and not (d / f"seg-{nxt:020d}.log").exists()
        assert sp.append(b"two") == nxt
