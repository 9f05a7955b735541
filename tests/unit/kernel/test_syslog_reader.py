"""syslog_reader.SyslogReader on a test double of the syslog(2) call (`KernelRing`, which answers
READ_ALL with the newest lines that fit, as the kernel does): the order of records, what was
overwritten and what a line can claim are placed exactly here. The real call, with real kills and
a real user-space write, is tests/e2e/test_kmsg_backend.py's."""
from __future__ import annotations

import ctypes
import errno

import pytest

from otel_oom.kernel.syslog_reader import SYSLOG_ACTION_READ_ALL, SYSLOG_ACTION_SIZE_BUFFER, SyslogReader
from otel_oom.reconcile.kmsg import KmsgError


class KernelRing:
    """Test double of klogctl(2): a ring of formatted lines bounded by `size` bytes."""

    def __init__(self, size: int = 4096, refuse: int = 0) -> None:
        self.size, self.refuse = size, refuse
        self.lines: list[bytes] = []

    def print(self, line: bytes) -> None:
        self.lines.append(line + b"\n")
        while sum(map(len, self.lines)) > self.size:
            self.lines.pop(0)  # overwritten

    def klogctl(self, action: int, buf, size: int) -> int:
        if self.refuse:
            ctypes.set_errno(self.refuse)
            return -1
        if action == SYSLOG_ACTION_SIZE_BUFFER:
            return self.size
        assert action == SYSLOG_ACTION_READ_ALL
        out = b""
        for line in reversed(self.lines):  # the newest that fit
            if len(out) + len(line) > size:
                break
            out = line + out
        ctypes.memmove(buf, out, len(out))
        return len(out)


def reader(ring: KernelRing) -> SyslogReader:
    return SyslogReader(libc=ring)


def test_records_keep_their_facility_time_and_text_and_come_once():
    ring = KernelRing()
    ring.print(b"<6>[    1.000001] booted")
    r = reader(ring)
    assert [(x.seq, x.usec, x.message) for x in r.read()] == [(1, 1_000_001, "booted")]
    ring.print(b"<3>[   12.500000][ T4242] Memory cgroup out of memory: Killed process 7 (a)")
    ring.print(b"<12>[   12.500000] <3>[   12.500001] Killed process 8 (forged)")
    got = r.read()
    assert [(x.facility, x.level, x.usec, x.message) for x in got] == [
        (0, 3, 12_500_000, "Memory cgroup out of memory: Killed process 7 (a)"),
        (1, 4, 12_500_000, "<3>[   12.500001] Killed process 8 (forged)")]
    assert [x.from_kernel for x in got] == [True, False]
    assert r.read() == [] and r.lost == 0


def test_the_same_line_twice_is_two_records_and_times_may_go_back():
    ring = KernelRing()
    r = reader(ring)
    r.read()
    ring.print(b"<4>[    2.000000] a")
    ring.print(b"<4>[    2.000000] same")
    ring.print(b"<4>[    2.000000] same")
    assert len(r.read()) == 3
    ring.print(b"<4>[    1.999999] another CPU's clock")  # printk stamps with each CPU's clock
    ring.print(b"<4>[    2.000000] same")
    assert [x.message for x in r.read()] == ["another CPU's clock", "same"] and r.lost == 0


def test_more_than_the_first_read_holds_is_read_whole():
    ring = KernelRing(size=1 << 20)
    r = reader(ring)
    r.read()
    for i in range(2000):  # ~60 KiB: more than the first 16 KiB read
        ring.print(b"<6>[  %5d.000000] line %d" % (i + 10, i))
    got = r.read()
    assert [x.message for x in got] == [f"line {i}" for i in range(2000)] and r.lost == 0


def test_a_reader_that_fell_behind_counts_the_overrun_and_goes_on():
    ring = KernelRing(size=512)
    r = reader(ring)
    ring.print(b"<6>[    3.000000] read")
    assert len(r.read()) == 1
    for i in range(40):  # the ring holds far fewer: "read" is overwritten
        ring.print(b"<6>[    4.%06d] line %d" % (i, i))
    got = r.read()
    assert r.lost == 1 and got and got[-1].message == "line 39"
    assert [x.message for x in got] == [line.decode().split("] ", 1)[1].strip() for line in ring.lines]


def test_no_timestamps_and_no_privilege_are_one_clear_error():
    ring = KernelRing()
    ring.print(b"<6>no time here")
    with pytest.raises(KmsgError, match="printk.time=0"):
        reader(ring).read()
    with pytest.raises(KmsgError, match="grant CAP_SYSLOG"):
        reader(KernelRing(refuse=errno.EPERM))
