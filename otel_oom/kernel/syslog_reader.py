"""The kernel log through syslog(2), for a container that may not open /dev/kmsg.

Container runtimes put a device cgroup (v1) or device filter (v2) around every unprivileged
container: a hostPath mount of /dev/kmsg is there, but opening it fails with EPERM whatever the
capabilities. The syslog(2) system call reads the same ring buffer without a device; it needs
CAP_SYSLOG (which the runtimes' default seccomp profiles require for it too). Only its
non-destructive action is used (SYSLOG_ACTION_READ_ALL: the newest records that fit the buffer
given), never the destructive read that journald or a syslog daemon may rely on.

Each line comes as "<PRI>[SECONDS.MICROS] text" (an optional caller id "[T123]" after the time).
PRI holds the facility, as in /dev/kmsg, so user-space writes (facility 1) stay distinguishable
from the kernel's own lines; a record holding a newline is printed as several lines, each with the
record's own prefix, so a forged prefix inside one stays text. There are no sequence numbers: the
records are numbered here as they are first read, and the last ones read (`_TAIL`) are found again
by their times and texts (printk stamps each CPU's records with its own clock, so times need not
rise from one record to the next). When they are no longer in the buffer at all, the kernel
overwrote records before they were read: `lost` then counts one (at least one was lost; how many is
not told). Without printk timestamps (printk.time=0) records cannot be told apart: that is refused.
The one ambiguity left: a run of more than `_TAIL` records identical in microsecond and text.
"""
from __future__ import annotations

import ctypes
import errno
import re
from typing import Any, Optional

from ..reconcile.kmsg import KmsgError, KmsgRecord
from ..text import from_kernel

SYSLOG_ACTION_READ_ALL, SYSLOG_ACTION_SIZE_BUFFER = 3, 10
_FIRST_READ = 16384  # most polls find the last record read within the newest 16 KiB
_TAIL = 16           # records read last, to find our place again
_LINE = re.compile(rb"<([0-9]{1,4})>\[ *([0-9]{1,12})\.([0-9]{6})\](?:\[ *[TC][0-9]{1,10}\])? ?(.*)")
_WHAT = "syslog(2)"


class SyslogReader:
    """`KmsgReader`'s interface (`read`, `lost`, `last_seq`, `close`) over syslog(2) READ_ALL."""

    fd = -1  # nothing to select on: the caller waits by time

    def __init__(self, libc: Optional[Any] = None) -> None:
        """`libc`: what provides klogctl (default the C library; tests give a test double)."""
        self._libc = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
        self.path = _WHAT
        self.lost = 0
        self.last_seq: Optional[int] = None
        self._tail: list[tuple[int, str]] = []  # (usec, message) of the last records read
        self._started = False
        self._size = self._klogctl(SYSLOG_ACTION_SIZE_BUFFER, None, 0)
        if self._size <= 0:
            raise KmsgError(errno.EINVAL, "the kernel reports no log buffer", _WHAT)
        self._closed = False

    def _klogctl(self, action: int, buf: Optional[ctypes.Array], size: int) -> int:
        n = self._libc.klogctl(action, buf, size)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EPERM, errno.EACCES):
                raise KmsgError(err, "permission denied; grant CAP_SYSLOG (and a seccomp profile that allows "
                                     "syslog(2) with it, as the runtimes' defaults do)", _WHAT)
            raise KmsgError(err, errno.errorcode.get(err, str(err)), _WHAT)
        return int(n)

    def _read_all(self, size: int) -> list[tuple[int, int, str]]:
        buf = ctypes.create_string_buffer(size)
        n = self._klogctl(SYSLOG_ACTION_READ_ALL, buf, size)
        out = []
        for line in buf.raw[:n].split(b"\n"):
            m = _LINE.fullmatch(line)
            if m is None:
                if line:
                    raise KmsgError(errno.EINVAL, "records carry no printk timestamp (printk.time=0): "
                                                  "use /dev/kmsg, or set printk.time=1", _WHAT)
                continue
            prio = int(m.group(1))
            out.append((prio, int(m.group(2)) * 1_000_000 + int(m.group(3)), from_kernel(m.group(4))))
        return out

    def read(self) -> list[KmsgRecord]:
        """The records printed since the last read, oldest first (at the first read: the newest
        `_FIRST_READ` bytes of the log, as context)."""
        if self._closed:
            return []
        size = min(_FIRST_READ, self._size)
        while True:
            lines = self._read_all(size)
            new = self._after_tail(lines, whole=size >= self._size)
            if new is not None or size >= self._size:
                break
            size = min(size * 4, self._size)
        self._started = True
        if new is None:  # the records read last are gone from the whole buffer: overwritten unread
            self.lost += 1
            new = lines
        records = []
        for prio, usec, message in new:
            self.last_seq = (self.last_seq or 0) + 1
            records.append(KmsgRecord(seq=self.last_seq, usec=usec, level=prio & 7, message=message,
                                      facility=prio >> 3))
        self._tail = (self._tail + [(usec, message) for _, usec, message in new])[-_TAIL:]
        return records

    def _after_tail(self, lines: list[tuple[int, int, str]], whole: bool) -> Optional[list[tuple[int, int, str]]]:
        """What follows the records read last; None if they are not among `lines`."""
        if not self._started:
            return lines
        if not self._tail:  # the log was empty: everything in it is new, once it is read whole
            return lines if whole else None
        keys = [(usec, message) for _, usec, message in lines]
        last = self._tail[-1]
        for i in range(len(keys) - 1, -1, -1):
            if keys[i] == last:
                n = min(len(self._tail), i + 1)
                if keys[i - n + 1:i + 1] == self._tail[-n:]:
                    return lines[i + 1:]
        return None

    def close(self) -> None:
        self._closed = True
