"""Read the kernel's log (/dev/kmsg, or a saved dump of it) as records, without blocking.

Every byte here is untrusted input. The record header ("PRI,SEQ,USEC,FLAGS;") is the kernel's and
is parsed strictly (ASCII digits within their ranges, else the record is skipped); the message may
hold what anybody chose: task and cgroup names inside the kernel's own lines, and whole lines that
user space wrote to /dev/kmsg. The kernel stores every such write with a facility of its own
(1, "user", when the writer gives none or gives 0), so only records of facility 0 (`KERNEL_FACILITY`,
the kernel's printk) may ever count as the OOM killer's; that check is `oom_report.py`'s first rule.
Messages are unescaped (/dev/kmsg writes control bytes, bytes >= 0x7f and the backslash as \\xNN)
back to the kernel's bytes, then decoded with surrogateescape like every other string in otel-oom.
What the OOM killer's lines mean is `oom_report.py`'s business.

`KmsgReader` follows the log: each `read()` returns the records that arrived since the last one and
counts those the kernel overwrote before they were read (EPIPE, and the gap in sequence numbers).
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Optional

from ..text import from_kernel

_READ_SIZE = 16384  # one /dev/kmsg record per read; the kernel caps a record well below this
KERNEL_FACILITY = 0  # printk's own records; user space can never write one (see the module docstring)
_MAX_PRIO = (255 << 3) | 7  # the kernel keeps 8 bits of facility and 3 of level
_MAX_COUNTER = (1 << 64) - 1  # sequence numbers and timestamps are u64
_DIGITS = re.compile(rb"[0-9]{1,20}")
_PERMISSION_HINT = "permission denied; run as root or grant CAP_SYSLOG (kernel.dmesg_restrict is set)"


class KmsgError(OSError):
    """The kernel log could not be read; an OSError whose message says what to do."""

    def __init__(self, err: Optional[int], what: Optional[str], path: str):
        super().__init__(err, what, path)

    def __str__(self) -> str:
        return f"cannot read {self.filename}: {self.strerror}"


@dataclass(frozen=True)
class KmsgRecord:
    seq: int
    usec: int        # printk timestamp: local_clock() in microseconds since boot
    level: int       # syslog severity 0-7
    message: str     # unescaped, decoded with surrogateescape
    facility: int = 0
    dictionary: tuple[tuple[str, str], ...] = ()  # the record's KEY=value continuation lines

    @property
    def from_kernel(self) -> bool:
        """Printed by the kernel itself: the only records that may tell of an OOM kill."""
        return self.facility == KERNEL_FACILITY


_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def _unescape(raw: bytes) -> str:
    # /dev/kmsg writes every byte < 0x20, >= 0x7f and the backslash itself as \xNN, so a backslash
    # always starts an escape and unescaping is lossless
    return from_kernel(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw))


def _number(field: bytes, limit: int) -> Optional[int]:
    """An ASCII decimal within 0..limit, or None (no sign, space, underscore or other digits)."""
    if not _DIGITS.fullmatch(field):
        return None
    n = int(field)
    return n if n <= limit else None


def parse_record(raw: bytes) -> Optional[KmsgRecord]:
    """One /dev/kmsg record ("level,seq,usec,flags[,...];message\\n[ KEY=value\\n]..."), or None."""
    head, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    if len(fields) < 3:
        return None
    prio, seq, usec = _number(fields[0], _MAX_PRIO), _number(fields[1], _MAX_COUNTER), _number(fields[2], _MAX_COUNTER)
    if prio is None or seq is None or usec is None:
        return None
    lines = rest.split(b"\n")
    pairs = []
    for line in lines[1:]:
        if line.startswith(b" "):
            key, _, value = line[1:].partition(b"=")
            pairs.append((_unescape(key), _unescape(value)))
    return KmsgRecord(seq=seq, usec=usec, level=prio & 7, message=_unescape(lines[0]),
                      facility=prio >> 3, dictionary=tuple(pairs))


def parse_kmsg(data: bytes) -> list[KmsgRecord]:
    """Split a dump of /dev/kmsg records (as read from the device, concatenated) and parse them."""
    records: list[KmsgRecord] = []
    current: list[bytes] = []
    for line in data.split(b"\n"):
        if line.startswith(b" ") and current:
            current.append(line)
            continue
        if current:
            rec = parse_record(b"\n".join(current))
            if rec is not None:
                records.append(rec)
        current = [line] if line else []
    if current:
        rec = parse_record(b"\n".join(current))
        if rec is not None:
            records.append(rec)
    return records


class KmsgReader:
    """An open /dev/kmsg (or a file holding a dump), read without blocking.

    A fresh open of /dev/kmsg starts at the oldest record still in the kernel's ring buffer. A
    reader that falls behind gets EPIPE once the kernel overwrote what it had not read, and goes on
    at the oldest record left: `lost` counts the records skipped that way, from the sequence
    numbers (`after`: the last record already known, so a gap before the first one read counts too).
    """

    def __init__(self, path: str = "/dev/kmsg", after: Optional[int] = None) -> None:
        self.path = path
        self.lost = 0
        self.last_seq = after
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError as e:
            raise KmsgError(e.errno, _PERMISSION_HINT, path) from None
        except OSError as e:
            raise KmsgError(e.errno, e.strerror, path) from None

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[KmsgRecord]:
        """The records available now, oldest first (the kernel's ring buffer bounds how many)."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them: the gap counts them
                    continue
                if e.errno in (errno.EPERM, errno.EACCES):
                    raise KmsgError(e.errno, _PERMISSION_HINT, self.path) from None
                raise KmsgError(e.errno, e.strerror, self.path) from None
            if not chunk:
                break
            chunks.append(chunk)
        records = parse_kmsg(b"".join(chunks))
        for rec in records:
            if self.last_seq is not None and rec.seq > self.last_seq + 1:
                self.lost += rec.seq - self.last_seq - 1
            if self.last_seq is None or rec.seq > self.last_seq:
                self.last_seq = rec.seq
        return records

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_kmsg(path: str = "/dev/kmsg") -> list[KmsgRecord]:
    """Every record still in the kernel's ring buffer, oldest first, without blocking (EPIPE: the
    kernel overwrote records while we read, and the read goes on at the oldest one left). A regular
    file holding a saved dump is read the same way."""
    reader = KmsgReader(path)
    try:
        return reader.read()
    finally:
        reader.close()
