"""Read the kernel's log (/dev/kmsg, or a saved dump of it) as records, without blocking.

Every string here comes from the kernel log and is untrusted: task names may hold spaces, brackets,
commas or control characters (which /dev/kmsg escapes as \\xNN and which are unescaped here back
to the kernel's bytes, then decoded with surrogateescape like every other string in otel-oom).
What the OOM killer's lines mean is `oom_report.py`'s business.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Optional

from ..text import from_kernel

_READ_SIZE = 16384  # one /dev/kmsg record per read; the kernel caps a record well below this


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


_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def _unescape(raw: bytes) -> str:
    # /dev/kmsg writes every byte < 0x20, >= 0x7f and the backslash itself as \xNN, so a backslash
    # always starts an escape and unescaping is lossless
    return from_kernel(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw))


def parse_record(raw: bytes) -> Optional[KmsgRecord]:
    """One /dev/kmsg record ("level,seq,usec,flags[,...];message\\n[ KEY=value\\n]..."), or None."""
    head, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    try:
        prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
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


def read_kmsg(path: str = "/dev/kmsg") -> list[KmsgRecord]:
    """Every record still in the kernel's ring buffer, oldest first, without blocking.

    A fresh open of /dev/kmsg starts at the oldest record; EPIPE means the kernel overwrote records
    we had not read yet, and the next read continues at the oldest one left. A regular file holding
    a saved dump is read the same way.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except PermissionError as e:
        raise KmsgError(e.errno, "permission denied; run as root or grant CAP_SYSLOG "
                        "(kernel.dmesg_restrict is set)", path) from None
    except OSError as e:
        raise KmsgError(e.errno, e.strerror, path) from None
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    continue
                if e.errno == errno.EPERM:
                    raise KmsgError(e.errno, "permission denied; run as root or grant CAP_SYSLOG "
                                    "(kernel.dmesg_restrict is set)", path) from None
                raise KmsgError(e.errno, e.strerror, path) from None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return parse_kmsg(b"".join(chunks))
