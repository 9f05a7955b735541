"""The spool's files damaged behind the agent's back, or not what they should be when it starts: what
can be recovered is delivered, what is lost is counted under a reason and logged once, new events
still go in and out, and the spool says what is wrong meanwhile (otel_oom/delivery/segments.py,
spool_dir.py, spool.py). Before, removing the segment files while events waited made every read
fail ("cannot read spool") for good, and a FIFO or a link named like a segment hung or exhausted the
agent at start."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import as_nobody, require

from otel_oom.delivery import segments as segments_module
from otel_oom.delivery.parked import ParkedEvents
from otel_oom.delivery.spool import Spool
from testing.agent_process import REPO


def segs(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("seg-"))


def event(i: int) -> bytes:
    return b'{"kill": %d, "pad": "%s"}' % (i, b"x" * 600)


def spool_with(d, n: int, **kw) -> tuple[Spool, list[int]]:
    sp = Spool(d, fsync=False, segment_bytes=1024, **kw)  # one event per segment
    return sp, [sp.append(event(i)) for i in range(n)]


def drain(sp: Spool) -> list[tuple[int, bytes]]:
    out = []
    while batch := sp.pending(100):
        out += batch
        sp.ack(batch[-1][0])
    return out


@pytest.mark.parametrize("which", ["all", "oldest", "the one appended to"])
def test_segment_files_removed_while_events_wait_are_written_again_and_delivered(tmp_path, caplog, which):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 3)
    names = segs(d)
    gone = {"all": names, "oldest": names[:1], "the one appended to": names[-1:]}[which]
    for name in gone:
        os.unlink(d / name)
    with caplog.at_level(logging.ERROR, logger="otel_oom.delivery.spool"):
        later = [sp.append(event(i)) for i in range(3, 6)]  # new kills go in as before
        got = sp.pending(100)
    assert got == [(s, event(i)) for i, s in enumerate(seqs + later)]  # the same numbers, in order
    assert set(gone) <= set(segs(d)) and sp.dropped["spool_lost"] == 0 and sp.problem is None
    (line,) = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]  # logged once
    assert f"{len(gone)} segment(s) removed or replaced" in line
    sp.close()
    with Spool(d, fsync=False) as again:  # written again for real: a restart still has them
        assert [s for s, _ in drain(again)] == seqs + later


def test_a_segment_replaced_by_another_file_is_written_back(tmp_path):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 3)
    (tmp_path / "other").write_bytes(b"\x00" * 5000)
    os.rename(tmp_path / "other", d / segs(d)[1])  # someone's file, under the segment's name
    assert drain(sp) == [(s, event(i)) for i, s in enumerate(seqs)]
    assert sp.dropped == {"spool_full": 0, "spool_expired": 0, "spool_corrupt": 0, "spool_lost": 0}
    sp.close()


def test_a_cut_segment_loses_only_what_was_cut_and_counts_it_once(tmp_path, caplog):
    d = tmp_path / "spool"
    sp = Spool(d, fsync=False)  # one segment for all
    seqs = [sp.append(event(i)) for i in range(4)]
    (seg,) = segs(d)
    os.truncate(d / seg, os.path.getsize(d / seg) - 10)  # the last record loses its tail
    with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
        assert drain(sp) == [(s, event(i)) for i, s in enumerate(seqs[:3])]
        assert sp.pending() == []
    assert sp.dropped["spool_corrupt"] == 1 and caplog.text.count("spool_corrupt") == 1
    assert sp.append(event(9)) > seqs[-1] and [p for _, p in sp.pending()] == [event(9)]
    sp.close()


def test_the_directory_removed_while_events_wait_is_made_again_with_them(tmp_path):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 3)
    sp.ack(seqs[0])
    shutil.rmtree(d)
    assert [s for s, _ in sp.pending()] == seqs[1:]
    assert segs(d) and os.path.exists(d / "ack") and sp.dropped["spool_lost"] == 0
    sp.close()
    with Spool(d, fsync=False) as again:  # the floor came along: the acknowledged one is not sent again
        assert [s for s, _ in drain(again)] == seqs[1:]


def test_the_ack_file_removed_or_replaced_is_written_again_with_the_floor_and_the_ledger(tmp_path, caplog):
    d = tmp_path / "spool"
    sp = Spool(d, fsync=False, boot_id="b")
    seqs = [sp.append(event(i), accounted=i + 1) for i in range(3)]
    sp.ack(seqs[0])
    for damage in ("remove", "replace"):
        if damage == "remove":
            os.unlink(d / "ack")
        else:
            (tmp_path / "other").write_bytes(b"garbage")
            os.rename(tmp_path / "other", d / "ack")
        with caplog.at_level(logging.ERROR, logger="otel_oom.delivery.spool"):
            assert [s for s, _ in sp.pending()] == seqs[1:]
        assert "ack file was removed or replaced while the agent ran: written again" in caplog.text
    sp.close()
    with Spool(d, fsync=False, boot_id="b") as again:
        assert [s for s, _ in again.pending()] == seqs[1:] and again.ledger.accounted == 3


def test_a_segment_that_cannot_be_written_again_is_delivered_meanwhile_and_counted_if_the_agent_stops(
        tmp_path, monkeypatch, caplog):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 3)

    def no_space(self, fsync):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segments_module.Segment, "restore", no_space)  # the filesystem is full
    for name in segs(d)[:2]:
        os.unlink(d / name)
    with caplog.at_level(logging.ERROR, logger="otel_oom.delivery.spool"):
        assert [s for s, _ in sp.pending(1)] == seqs[:1]
        assert sp.problem == "segments seg-%020d.log, seg-%020d.log vanished and cannot be written again" % (
            seqs[0], seqs[1])
        sp.ack(seqs[0])  # delivered from the open descriptor: no longer waiting
        sp.close()       # the other one is still waiting, and not on disk: lost, counted
    assert sp.dropped["spool_lost"] == 1
    assert sum("cannot be written again" in r.getMessage() for r in caplog.records) == 1
    assert "1 waiting OOM event(s) of seg-%020d.log" % seqs[1] in caplog.text


def test_a_segment_read_without_a_descriptor_that_vanishes_is_counted_lost(tmp_path, monkeypatch):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 3)
    sp.close()
    monkeypatch.setattr(segments_module, "_raise_open_files_limit", lambda n: 257)  # room for one descriptor
    sp = Spool(d, fsync=False, segment_bytes=1024)
    os.unlink(d / segs(d)[1])
    assert [s for s, _ in drain(sp)] == [seqs[0], seqs[2]]
    assert sp.dropped["spool_lost"] == 1
    sp.close()


def test_a_segment_whose_mode_was_taken_away_is_read_after_a_restart_without_dac_override(tmp_path):
    # an agent with only CAP_BPF, CAP_PERFMON, CAP_SYSLOG (docs/security.md) cannot read a file of mode 0;
    # nobody here plays that agent: owner of the directory, without any capability
    import tempfile
    from pathlib import Path

    require(os.geteuid() == 0, "needs root to hand the spool to nobody")
    top = Path(tempfile.mkdtemp(prefix="otel-oom-ledger-"))  # (pytest's tmp_path is private to root)
    d = top / "spool"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    os.chmod(top, 0o755)

    def as_the_agent():
        sp = Spool(d, fsync=False, segment_bytes=1024)
        seqs = [sp.append(event(i)) for i in range(2)]
        name = segs(d)[0]
        os.chmod(d / name, 0)
        assert [s for s, _ in sp.pending()] == seqs  # while running: read through the descriptor
        sp.close()
        with Spool(d, fsync=False) as again:  # at the next start: the mode is set back
            assert [s for s, _ in again.pending()] == seqs
            assert os.stat(d / name).st_mode & 0o777 == 0o600

    try:
        assert as_nobody(as_the_agent) == "ok"
    finally:
        shutil.rmtree(top)


# ---- what is not a segment, under a segment's name -------------------------------------------------

def _open_in_a_thread(d, **kw) -> Spool:
    """Open the spool on a thread: a FIFO would block its open for ever (the test fails, not hangs)."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("spool", Spool(d, fsync=False, **kw)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "opening the spool blocked"
    return box["spool"]


@pytest.mark.parametrize("what", ["fifo", "link to /dev/zero", "directory", "link to a good segment"])
def test_what_is_not_a_regular_file_is_refused_and_left_in_place(tmp_path, caplog, what):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 2)
    sp.close()
    name = "seg-%020d.log" % (seqs[-1] + 1)
    if what == "fifo":
        os.mkfifo(d / name)
    elif what == "directory":
        os.mkdir(d / name)
    elif what == "link to a good segment":
        os.symlink(d / segs(d)[0], d / name)
    else:
        os.symlink("/dev/zero", d / name)
    with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
        sp = _open_in_a_thread(d)
    assert [s for s, _ in sp.pending()] == seqs
    assert f"{name} is a" in caplog.text and "not read, left in place" in caplog.text
    assert os.path.lexists(d / name)
    assert sp.append(event(7)) > seqs[-1] + 1  # numbering stays above what it may have held
    sp.close()


def test_a_huge_sparse_segment_is_read_only_up_to_the_bound(tmp_path):
    # a terabyte of holes under a segment's name: before, read whole at start (memory exhausted)
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 2)
    sp.close()
    with open(d / ("seg-%020d.log" % (seqs[-1] + 1)), "wb") as f:
        f.truncate(1 << 40)
    child = textwrap.dedent("""
        import resource, sys
        sys.path.insert(0, sys.argv[1])
        from otel_oom.delivery.spool import Spool
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sp = Spool(sys.argv[2], fsync=False, max_bytes=1 << 20)
        print(len(sp.pending()), sp.dropped["spool_corrupt"],
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    r = subprocess.run([sys.executable, "-c", child, str(REPO), str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pending, corrupt, grew_kib = map(int, r.stdout.split())
    assert pending == 2 and corrupt == 2  # the holes read (as garbage), and the rest beyond the bound
    assert grew_kib < 64 * 1024, f"opening grew the resident set by {grew_kib} KiB"
    assert "beyond the spool's bound" in r.stderr


@pytest.mark.parametrize("name", ["ack", "lock"])
@pytest.mark.parametrize("what", ["fifo", "link"])
def test_its_own_files_when_not_regular_files_are_replaced(tmp_path, caplog, name, what):
    d = tmp_path / "spool"
    sp, seqs = spool_with(d, 2)
    sp.close()
    os.unlink(d / name)
    if what == "fifo":
        os.mkfifo(d / name)
    else:
        os.symlink("/dev/zero", d / name)
    with caplog.at_level(logging.WARNING, logger="otel_oom.delivery.spool"):
        sp = _open_in_a_thread(d)
    assert f"{name} is a" in caplog.text and "replaced by a new one" in caplog.text
    assert [s for s, _ in sp.pending()] == seqs  # (a new ack holds no floor: delivered again, never lost)
    sp.close()


@pytest.mark.parametrize("what", ["fifo with a reader", "fifo", "link"])
def test_a_parked_file_that_is_not_a_regular_file_never_stalls_the_sender(tmp_path, caplog, what):
    path = tmp_path / "parked.jsonl"
    reader = None
    if what.startswith("fifo"):
        os.mkfifo(path)
        if what == "fifo with a reader":
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    else:
        os.symlink("/dev/zero", path)
    parked = ParkedEvents(str(tmp_path), 1 << 16)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("kept", parked.park({"a": 1}, "boot:1:2", "rejected")),
                         daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "parking blocked the sender"
    assert box["kept"] is False and parked.not_kept == 1
    assert "cannot write rejected OOM event boot:1:2" in caplog.text
    if reader is not None:
        os.close(reader)
