"""The spool keeps every acknowledged-durable OOM event across SIGKILL, corruption and a full disk."""
from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from otel_oom.delivery.spool import MAGIC, NO_LEDGER, Spool, SpoolError
from otel_oom.delivery.spool_format import HEAD as HEADER
from otel_oom.schema.records import OomKill
from testing.agent_process import REPO

ROOT = str(REPO)
BOOT = "2b0e4c1a-5d6f-4a7b-8c9d-0e1f2a3b4c5d"
HEAD = HEADER.size  # record header size, see the format in otel_oom/delivery/spool_format.py


def segments(d) -> list[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith("seg-"))


def payload(i: int, size: int = 200) -> bytes:
    filler = hashlib.sha256(str(i).encode()).hexdigest() * (size // 64 + 1)
    return f"{i}:{filler[:size]}".encode()


def test_append_pending_ack_in_order(tmp_path):
    with Spool(tmp_path / "s", fsync=False) as sp:
        seqs = [sp.append(payload(i)) for i in range(10)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        assert sp.pending(limit=3) == [(seqs[i], payload(i)) for i in range(3)]
        sp.ack(seqs[2])
        assert [s for s, _ in sp.pending()] == seqs[3:]
        sp.ack(seqs[1])  # an older ack changes nothing
        assert [s for s, _ in sp.pending()] == seqs[3:]
        st = sp.stats()
        assert st["pending"] == 7 and st["acked_seq"] == seqs[2]
        assert st["bytes"] == 10 * (HEAD + len(payload(0)))
        with pytest.raises(ValueError, match="beyond the last appended seq"):
            sp.ack(seqs[-1] + 1)
        sp.ack(seqs[-1])
        assert sp.pending() == [] and sp.stats()["pending"] == 0


def test_seq_and_ack_survive_reopen(tmp_path):
    d = tmp_path / "s"
    with Spool(d) as sp:
        a = [sp.append(payload(i)) for i in range(5)]
        sp.ack(a[1])
    with Spool(d) as sp:
        assert sp.pending() == [(a[i], payload(i)) for i in range(2, 5)]
        b = sp.append(payload(5))
        assert b > a[-1]
        sp.ack(b)
    # everything acknowledged: the segments go, the sequence still moves on
    with Spool(d) as sp:
        assert segments(d) == [] and sp.pending() == []
        assert sp.append(b"x") > b
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_acked_segments_are_deleted(tmp_path):
    d = tmp_path / "s"
    with Spool(d, segment_bytes=1024, fsync=False) as sp:
        seqs = [sp.append(payload(i, 400)) for i in range(10)]  # two records per segment
        assert len(segments(d)) == 5
        sp.ack(seqs[5])
        assert len(segments(d)) == 2  # [0,1] [2,3] [4,5] gone; [6,7] [8,9] stay
        assert [s for s, _ in sp.pending()] == seqs[6:]
        sp.ack(seqs[-1])
        assert segments(d) == [] and sp.stats()["bytes"] == 0
        assert sp.append(b"x") > seqs[-1] and len(segments(d)) == 1


CHILD = textwrap.dedent("""
    import hashlib, random, sys
    sys.path.insert(0, sys.argv[1])
    from otel_oom.delivery.spool import Spool
    sp = Spool(sys.argv[2], segment_bytes=16384, fsync=sys.argv[4] == "1")
    i = int(sys.argv[3])
    rnd = random.Random(i)
    def body(i):
        filler = "".join(rnd.choice("abcdef") for _ in range(rnd.randrange(1, 3000)))
        return f"{i}:{hashlib.sha256(filler.encode()).hexdigest()}:{filler}".encode()
    while True:
        # one event, or a burst (group commit: one write and one fdatasync per segment it fills)
        n = 1 if rnd.random() < 0.5 else rnd.randrange(2, 40)
        seqs = sp.append_many([body(i + k) for k in range(n)]) if n > 1 else [sp.append(body(i))]
        for k, seq in enumerate(seqs):
            print("seq", seq, i + k, flush=True)
        for k, seq in enumerate(seqs):
            if (i + k) % 37 == 0:
                print("ack-start", seq - 5, flush=True)
                sp.ack(seq - 5)
                print("ack-done", seq - 5, flush=True)
        i += n
""")


def _self_consistent(body: bytes) -> int:
    i, digest, filler = body.decode().split(":", 2)
    assert hashlib.sha256(filler.encode()).hexdigest() == digest, "valid-looking record with wrong content"
    return int(i)


def test_sigkill_at_random_moments_loses_no_returned_append(tmp_path):
    """Single appends and bursts (append_many) mixed: no event whose append returned is lost."""
    d = str(tmp_path / "s")
    rnd = random.Random(1234)
    next_i, highest_seen = 1, 0
    for run in range(20):
        child = subprocess.Popen([sys.executable, "-c", CHILD, ROOT, d, str(next_i), str(run % 2)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = child.stdout.readline()
        assert first.startswith(b"seq "), child.stderr.read()
        threading.Event().wait(rnd.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        # not communicate(): with two pipes it reads the raw fd and loses what readline() buffered
        rest = child.stdout.read()
        assert child.wait() == -signal.SIGKILL, child.stderr.read()
        child.stdout.close()
        child.stderr.close()
        out = first + rest
        lines = [ln.split() for ln in out[:out.rfind(b"\n")].split(b"\n")]  # a cut-off last line is no news
        printed = {int(ln[1]): int(ln[2]) for ln in lines if ln[0] == b"seq" and len(ln) == 3}
        ack_started = max([int(ln[1]) for ln in lines if ln[0] == b"ack-start"] + [0])
        ack_done = max([int(ln[1]) for ln in lines if ln[0] == b"ack-done"] + [0])
        assert min(printed) > highest_seen, "sequence numbers went back after a restart"

        with Spool(d) as sp:
            got = sp.pending(limit=10**6)
            corrupt = sp.dropped["spool_corrupt"]
        seqs = [s for s, _ in got]
        assert seqs == sorted(set(seqs))
        assert all(s > ack_done for s in seqs), "an acknowledged event came back"
        for seq, body in got:
            i = _self_consistent(body)
            if seq in printed:
                assert printed[seq] == i
        missing = sorted(s for s in printed if s > ack_started and s not in seqs)
        assert missing == [], f"run {run}: appended events lost: {missing}"
        assert corrupt <= run + 1  # at most one torn tail per kill
        highest_seen = max(seqs + list(printed))
        next_i = max(printed.values()) + 100  # leave room for appends that returned unprinted


def _spool_with(d, n, size=200):
    with Spool(d, fsync=False) as sp:
        return [sp.append(payload(i, size)) for i in range(n)]


def test_truncated_tail_is_skipped_and_later_appends_survive(tmp_path, caplog):
    d = tmp_path / "s"
    seqs = _spool_with(d, 5)
    [seg] = segments(d)
    os.truncate(seg, os.path.getsize(seg) - 10)
    with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
        with Spool(d) as sp:
            assert [s for s, _ in sp.pending()] == seqs[:4]
            assert sp.dropped["spool_corrupt"] == 1
            more = [sp.append(payload(i)) for i in range(5, 8)]
    assert "truncated or garbage tail" in caplog.text and "spool_corrupt" in caplog.text
    assert len(segments(d)) == 2  # never appended after the garbage
    with Spool(d) as sp:
        assert sp.pending() == [(seqs[i], payload(i)) for i in range(4)] + \
            [(more[i - 5], payload(i)) for i in range(5, 8)]
        assert sp.dropped["spool_corrupt"] == 1
        assert sp.append(b"next") > more[-1]


@pytest.mark.parametrize("field,offset", [("magic", 0), ("length", 5), ("crc", 9), ("seq", 12), ("boot", 22),
                                          ("uptime", 30), ("wall", 38), ("accounted", 46), ("payload", HEAD + 50)])
def test_flipped_byte_skips_one_record_only(tmp_path, field, offset):
    d = tmp_path / "s"
    seqs = _spool_with(d, 10)
    [seg] = segments(d)
    with open(seg, "r+b") as f:
        pos = 4 * (HEAD + len(payload(0))) + offset  # inside the fifth record
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 0x10]))
    with Spool(d) as sp:
        assert sp.pending() == [(seqs[i], payload(i)) for i in range(10) if i != 4]
        assert sp.dropped["spool_corrupt"] == 1
        assert sp.stats()["pending"] == 9


def test_corruption_after_open_is_caught_on_read(tmp_path):
    d = tmp_path / "s"
    with Spool(d, fsync=False) as sp:
        seqs = [sp.append(payload(i)) for i in range(3)]
        with open(segments(d)[0], "r+b") as f:
            f.seek(HEAD + len(payload(0)) + HEAD + 3)
            f.write(b"#")
        assert sp.pending() == [(seqs[0], payload(0)), (seqs[2], payload(2))]
        assert sp.dropped["spool_corrupt"] == 1
        assert sp.pending() == [(seqs[0], payload(0)), (seqs[2], payload(2))]  # counted once
        assert sp.dropped["spool_corrupt"] == 1


def test_garbage_segment_does_not_stop_the_spool(tmp_path):
    d = tmp_path / "s"
    seqs = _spool_with(d, 3)
    with open(os.path.join(d, f"seg-{seqs[-1] + 1:020d}.log"), "wb") as f:
        f.write(b"\0" * 4096 + MAGIC + b"\xff" * 100)
    with Spool(d) as sp:
        assert [s for s, _ in sp.pending()] == seqs
        assert sp.dropped["spool_corrupt"] == 1
        assert sp.append(b"after") > seqs[-1] + 1


def test_max_bytes_drops_oldest_and_counts(tmp_path, caplog):
    d = tmp_path / "s"
    rec = HEAD + len(payload(0, 1000))
    with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
        with Spool(d, max_bytes=16384, segment_bytes=4096, fsync=False) as sp:
            seqs = [sp.append(payload(i, 1000)) for i in range(40)]
            st = sp.stats()
            got = sp.pending(limit=1000)
            assert st["bytes"] <= 16384
            assert sp.dropped["spool_full"] + len(got) == 40
            assert sp.dropped["spool_full"] >= 40 - 16384 // rec
            assert got == [(seqs[i], payload(i, 1000)) for i in range(40 - len(got), 40)]
            dropped = sp.dropped["spool_full"]
    assert "spool_full" in caplog.text and "dropped the 3 oldest" in caplog.text
    with Spool(d, max_bytes=16384, segment_bytes=4096) as sp:  # dropped stay dropped
        assert sp.pending(limit=1000) == got and sp.dropped["spool_full"] == 0
    with Spool(d, max_bytes=8192, segment_bytes=4096) as sp:  # a smaller bound applies on open
        assert sp.stats()["bytes"] <= 8192
        assert sp.dropped["spool_full"] + len(sp.pending(limit=1000)) == len(got)
    assert dropped > 0


def test_max_age_drops_expired_and_counts(tmp_path, caplog):
    d = tmp_path / "s"
    now = [1000.0]
    with Spool(d, max_age_seconds=100, fsync=False, boot_id=BOOT, uptime=lambda: now[0]) as sp:
        old = [sp.append(payload(i)) for i in range(5)]
        now[0] = 1050.0
        new = [sp.append(payload(i)) for i in range(5, 8)]
        now[0] = 1120.0
        assert sp.stats()["oldest_pending_age_seconds"] == pytest.approx(120.0)
        with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
            assert [s for s, _ in sp.pending()] == new
        assert "dropped 5 undelivered OOM events older than 100s (spool_expired)" in caplog.text
        assert sp.dropped == {"spool_full": 0, "spool_expired": 5, "spool_corrupt": 0, "spool_lost": 0}
        assert sp.stats()["oldest_pending_age_seconds"] == pytest.approx(70.0)
    with Spool(d, max_age_seconds=100, boot_id=BOOT, uptime=lambda: now[0]) as sp:
        assert [s for s, _ in sp.pending()] == new and sp.dropped["spool_expired"] == 0
        now[0] = 1200.0
        assert sp.pending() == [] and sp.dropped["spool_expired"] == 3
        assert old[-1] < sp.append(b"fresh")


def test_second_spool_on_same_directory_is_refused(tmp_path):
    d = tmp_path / "s"
    with Spool(d):
        with pytest.raises(SpoolError) as e:
            Spool(d)
        assert str(e.value) == f"spool {d} is in use by another otel-oom (pid {os.getpid()})"
    with subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from otel_oom.delivery.spool import Spool;"
             "s = Spool(sys.argv[2]); print('ready', flush=True); sys.stdin.read()", ROOT, str(d)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout.readline() == b"ready\n"
            with pytest.raises(SpoolError, match=rf"in use by another otel-oom \(pid {holder.pid}\)$"):
                Spool(d)
        finally:
            holder.kill()
    with Spool(d) as sp:  # the kernel released the dead holder's lock
        sp.append(b"ok")


def test_oomkill_json_round_trip_with_hostile_strings(tmp_path):
    hostile = "a\x00b\n\r\t\"'\\\x1b[31m\udcff\ud800\u2028\U0001f4a5 " + "\x8fOOM"
    kills = [OomKill(event_id=f"boot:{i}:{i}", time_unix_nano=1_700_000_000_000_000_000 + i,
                     boot_time_ns=i, hook="tp_btf", context_hook="fentry", recovered=False,
                     victim_pid=1000 + i, victim_tid=1000 + i, victim_comm=hostile * (i + 1),
                     cgroup_path="/kubepods/" + hostile, memcg_limit_bytes=2**63 - 1, gfp_mask=0xcc0)
             for i in range(3)]
    d = tmp_path / "s"
    with Spool(d) as sp:
        for k in kills:
            sp.append(k.to_json().encode("utf-8"))
    with Spool(d) as sp:
        assert [OomKill.from_json(p) for _, p in sp.pending()] == kills
        assert sp.dropped["spool_corrupt"] == 0


def test_concurrent_appends_and_delivery(tmp_path):
    appended, delivered = [], []
    lock = threading.Lock()
    with Spool(tmp_path / "s", segment_bytes=8192, fsync=False) as sp:
        def writer(w):
            for i in range(300):
                body = payload(w * 1000 + i)
                seq = sp.append(body)
                with lock:
                    appended.append((seq, body))

        done = threading.Event()

        def deliverer():
            while True:
                batch = sp.pending(limit=17)
                if not batch and done.is_set():
                    return
                delivered.extend(batch)
                if batch:
                    sp.ack(batch[-1][0])

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        d = threading.Thread(target=deliverer)
        for t in writers + [d]:
            t.start()
        for t in writers:
            t.join()
        done.set()
        d.join()
        assert [s for s, _ in delivered] == sorted(s for s, _ in appended)
        assert sorted(delivered) == sorted(appended)
        assert sp.stats()["pending"] == 0 and sp.stats()["segments"] == 0


def test_bad_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SpoolError, match="cannot use spool directory .*file/s: Not a directory; point the spool"):
        Spool(tmp_path / "file" / "s")
    with pytest.raises(SpoolError, match="spool .* is closed"):
        sp = Spool(tmp_path / "ok")
        sp.close()
        sp.append(b"x")
    with Spool(tmp_path / "small", max_bytes=1024) as sp:
        with pytest.raises(SpoolError, match="does not fit in spool max_bytes=1024; raise max_bytes"):
            sp.append(b"x" * 2000)


def test_record_layout_is_as_documented(tmp_path):
    import time

    d = tmp_path / "s"
    with Spool(d, clock=lambda: 12.5, boot_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0") as sp:
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        seq = sp.append(b"hello", accounted=41)
        plain = sp.append(b"world")  # carries the count of the record before it
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    with open(segments(d)[0], "rb") as f:
        raw = f.read()
    magic, length, crc, s, boot, uptime, wall, accounted = struct.unpack("<4sIIQQqqQ", raw[:HEAD])
    assert (magic, length, s, boot, wall, accounted, raw[HEAD:HEAD + 5]) == \
        (MAGIC, 5, seq, 0x0F1E2D3C4B5A6978, 12_500_000_000, 41, b"hello")
    assert before <= uptime <= after
    assert struct.unpack("<QQqqQ", raw[HEAD + 5 + 12:HEAD + 5 + HEAD])[0] == plain
    assert struct.unpack("<QQqqQ", raw[HEAD + 5 + 12:HEAD + 5 + HEAD])[4] == 41
    with Spool(tmp_path / "no-ledger") as sp:  # a writer without a ledger marks its records so
        sp.append(b"x")
    with open(segments(tmp_path / "no-ledger")[0], "rb") as f:
        assert struct.unpack("<4sIIQQqqQ", f.read(HEAD))[7] == NO_LEDGER


def test_a_burst_is_one_write_in_one_segment_and_survives_reopen(tmp_path):
    d = tmp_path / "s"
    with Spool(d, segment_bytes=1024) as sp:
        first = sp.append(payload(0, 400))
        burst = sp.append_many([payload(i, 400) for i in range(1, 21)])  # ~8.5 KB: past segment_bytes
        assert burst == list(range(first + 1, first + 21))
        # the burst starts a segment of its own (the first one had no room) and stays in it whole
        assert len(segments(d)) == 2
        assert os.path.getsize(segments(d)[1]) == sum(HEAD + len(payload(i, 400)) for i in range(1, 21))
        after = sp.append(payload(21, 400))
        assert len(segments(d)) == 3 and after == burst[-1] + 1
    with Spool(d) as sp:
        assert sp.pending(limit=100) == [(first + i, payload(i, 400)) for i in range(22)]


def test_a_burst_larger_than_max_bytes_is_split_and_the_oldest_dropped(tmp_path):
    with Spool(tmp_path / "s", max_bytes=4096, segment_bytes=1024, fsync=False) as sp:
        seqs = sp.append_many([payload(i, 400) for i in range(20)])
        assert len(seqs) == 20 and seqs == sorted(seqs)
        kept = sp.pending(limit=100)
        assert kept and kept[-1] == (seqs[-1], payload(19, 400))
        assert sp.dropped["spool_full"] == 20 - len(kept)
