"""The spool ages events by CLOCK_BOOTTIME, not the wall clock (issue 21): a wall clock stepped
forward (NTP after a bad RTC, a manual `date -s`) dropped fresh kills as expired. The wall time stays
in each record, for display. Records of an earlier boot (or of the format before the ledger, which
has no boot) are aged from this boot's start: at least that old, never dropped for a stepped clock."""
from __future__ import annotations

import struct
import zlib

import pytest

from otel_oom.delivery.spool import Spool

BOOT = "7e6d5c4b-3a29-4817-a6b5-c4d3e2f1a0b9"
EARLIER_BOOT = "0f0e0d0c-0b0a-4908-8706-050403020100"
DAY = 86400.0


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_790_000_000.0
        self.up = 1000.0


def open_spool(d, c: Clocks, boot: str = BOOT, max_age: float = 7 * DAY) -> Spool:
    return Spool(d, fsync=False, max_age_seconds=max_age, boot_id=boot, clock=lambda: c.wall, uptime=lambda: c.up)


@pytest.mark.parametrize("step", [30 * DAY, -30 * DAY, 365 * DAY])
def test_a_stepped_wall_clock_ages_nothing(tmp_path, step):
    c = Clocks()
    with open_spool(tmp_path / "s", c) as sp:
        seqs = [sp.append(b"kill %d" % i) for i in range(3)]
        c.wall += step          # the wall clock jumps; the boot clock moves on by a minute
        c.up += 60
        assert [s for s, _ in sp.pending()] == seqs and sp.dropped["spool_expired"] == 0
        assert sp.stats()["oldest_pending_age_seconds"] == pytest.approx(60)
    with open_spool(tmp_path / "s", c) as sp:  # nor at the next start
        assert [s for s, _ in sp.pending()] == seqs


def test_events_older_than_the_bound_by_the_boot_clock_expire_and_are_counted(tmp_path, caplog):
    c = Clocks()
    with open_spool(tmp_path / "s", c, max_age=100) as sp:
        old = [sp.append(b"old %d" % i) for i in range(2)]
        c.up += 60
        new = sp.append(b"new")
        c.up += 50              # the old ones are 110 s old, the new one 50 s
        c.wall -= DAY           # whatever the wall clock says
        assert [s for s, _ in sp.pending()] == [new]
        assert sp.dropped["spool_expired"] == len(old)
    assert "dropped 2 undelivered OOM events older than 100s (spool_expired)" in caplog.text


def test_events_of_an_earlier_boot_are_aged_from_this_boots_start(tmp_path):
    c = Clocks()
    with open_spool(tmp_path / "s", c, boot=EARLIER_BOOT, max_age=DAY) as sp:
        before = sp.append(b"before the reboot")
    c.up = 30.0                 # rebooted: the boot clock starts again; the wall clock is far ahead
    c.wall += 10 * DAY
    with open_spool(tmp_path / "s", c, max_age=DAY) as sp:
        after = sp.append(b"after the reboot")
        assert [s for s, _ in sp.pending()] == [before, after]  # kept: 30 s is all that can be known
        c.up += DAY             # a day of this boot: the earlier boot's event is past the bound
        assert [s for s, _ in sp.pending()] == [after] and sp.dropped["spool_expired"] == 1


def test_records_of_the_format_before_the_ledger_are_aged_from_this_boots_start(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    payload, wall = b"v1 record", 5  # written in 1970 by its wall clock: would be expired at once
    head = struct.pack("<IQq", len(payload), 1, wall)
    crc = zlib.crc32(payload, zlib.crc32(head))
    (d / "seg-00000000000000000001.log").write_bytes(struct.pack("<4sIIQq", b"\x8fOOM", len(payload), crc, 1, wall)
                                                     + payload)
    c = Clocks()
    with open_spool(d, c, max_age=DAY) as sp:
        assert sp.pending() == [(1, payload)]
        c.up += DAY
        assert sp.pending() == [] and sp.dropped["spool_expired"] == 1


def test_the_wall_time_is_kept_for_display(tmp_path):
    c = Clocks()
    with open_spool(tmp_path / "s", c) as sp:
        sp.append(b"kill")
    raw = next((tmp_path / "s").glob("seg-*.log")).read_bytes()
    _, _, _, _, _, uptime, wall, _ = struct.unpack("<4sIIQQqqQ", raw[:52])
    assert (uptime, wall) == (int(c.up * 1e9), int(c.wall * 1e9))
