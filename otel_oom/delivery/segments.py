"""The spool's files, handled as untrusted: opened only if they are regular files, scanned within the
spool's bound, read through a descriptor held from the moment they are known, and written again
when they vanish (or are replaced) behind the agent's back.

Whoever can write in the spool directory (root, or a process sharing the hostPath) can put anything
there under a segment's name: a FIFO (whose open or read blocks for ever), a symbolic link to
/dev/zero (an endless read), a sparse file of a terabyte. So every open is O_NOFOLLOW | O_NONBLOCK
and checked with fstat to be a regular file, and a segment is read at most `limit` bytes (the
spool's bound: a segment the spool wrote is never larger). What is refused is logged and left in
place; it holds no event this spool wrote.

A segment's descriptor stays open while the segment is known, so removing, renaming or replacing the
file, or changing its permissions, takes nothing from the agent: it reads on through the descriptor
and writes the file again (`restore`: same name, same bytes, so the same sequence numbers, in
place). Only what was cut from the file itself (truncation, overwriting) is gone: such a record
fails its check on read and is counted as corrupt.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import stat
from typing import Callable, Optional

from .spool_format import Rec, find_magic, record_at

log = logging.getLogger("otel_oom.delivery.spool")

OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SEGMENT_NAME = re.compile(r"^seg-(\d{20})\.log$")


class NotRegularFile(OSError):
    """A path the spool owns that is not a regular file (a FIFO, a link, a directory, a device)."""


def kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, flags: int, mode: int = 0o600) -> int:
    """`os.open` that never follows a symbolic link, never blocks, and refuses anything but a regular
    file (NotRegularFile, an OSError whose strerror says what it is)."""
    try:
        fd = os.open(path, flags | OPEN_FLAGS, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise NotRegularFile(e.errno, "a symbolic link", path) from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(0, kind(st.st_mode), path)
    return fd


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Segment:
    __slots__ = ("path", "first", "records", "size", "counted", "fd", "ident", "appending", "durable")

    def __init__(self, path: str, first: int, records: list[Rec], size: int, fd: Optional[int],
                 appending: bool = False) -> None:
        self.path = path
        self.first = first          # the seq in the file name: next_seq when the file was created
        self.records = records      # valid records, seq ascending
        self.size = size            # bytes this spool wrote or scanned
        self.counted = size         # of them, what the spool counts against its bound
        self.fd = fd                # held while the segment is known (None: too many open files)
        self.ident = self._ident()  # (device, inode) of the file the descriptor reads
        self.appending = appending  # the one segment this process appends to (fd is O_RDWR | O_APPEND)
        self.durable = True         # False once it vanished and could not be written again

    def _ident(self) -> Optional[tuple[int, int]]:
        if self.fd is None:
            return None
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def last(self) -> int:
        """Highest seq this file may have held, even if its records are unreadable now (an empty
        file held none: the agent died between creating it and writing its first record)."""
        if self.records:
            return max(self.first, self.records[-1].seq)
        return self.first if self.size > 0 else self.first - 1

    def on_disk(self) -> bool:
        """Whether the file at `path` is still the one this spool reads (not removed or replaced)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if self.ident is None:
            return True  # nothing to compare with: read by path, and trusted as far as checked on read
        return (st.st_dev, st.st_ino) == self.ident

    def read(self, rec: Rec) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, rec.head + rec.length, rec.offset)
        fd = open_regular(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, rec.head + rec.length, rec.offset)
        finally:
            os.close(fd)

    def restore(self, fsync: bool) -> None:
        """Write the file again at its path from the held descriptor (same bytes, same name), then
        read the new file; a segment being appended to is sealed (the next append starts a new one)."""
        assert self.fd is not None, "only a held segment can be restored"
        data = os.pread(self.fd, self.size, 0)
        tmp = self.path + ".restore"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | OPEN_FLAGS, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        if fsync:
            fsync_dir(os.path.dirname(self.path))
        fresh = open_regular(self.path, os.O_RDONLY)
        os.close(self.fd)
        self.fd, self.appending, self.durable = fresh, False, True
        self.ident = self._ident()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.appending = False


def load(directory: str, limit: int, corrupt: Callable[[str], None]) -> tuple[list[Segment], int]:
    """The segments of `directory`, scanned, each with its descriptor held; and the highest seq
    their names and records may have used. At most `limit` bytes are read of one segment and twice
    that in all (what a spool within its bound ever holds, and more); the rest is left in place."""
    names = sorted(n for n in os.listdir(directory) if SEGMENT_NAME.match(n))
    hold = _raise_open_files_limit(len(names)) - 256  # past that, a segment is read by its path
    segments: list[Segment] = []
    last, budget = 0, 2 * limit
    for name in names:
        path, first = os.path.join(directory, name), int(name[4:24])
        last = max(last, first - 1)
        try:
            fd = _open_segment(path)
        except OSError as e:
            # not the spool's (a FIFO, a link, a directory...) or unreadable: left in place
            log.warning("spool %s: %s is %s: not read, left in place", directory, name,
                        e.strerror if isinstance(e, NotRegularFile) else f"unreadable ({e.strerror})")
            last = max(last, first)  # numbering stays above whatever it may have held
            continue
        if budget <= 0:
            os.close(fd)
            log.warning("spool %s: %s not read: the segments before it hold twice the spool's bound", directory, name)
            last = max(last, first)
            continue
        records, size = scan(fd, name, min(limit, budget), last, corrupt)
        budget -= size
        held: Optional[int] = fd
        if len(segments) >= hold:
            os.close(fd)
            held = None
        seg = Segment(path, first, records, size, held)
        last = max(last, seg.last)
        if not size:  # created, then the agent died before its first record: it held nothing
            seg.close()
            os.unlink(path)
            continue
        segments.append(seg)
    return segments, last


def _open_segment(path: str) -> int:
    try:
        return open_regular(path, os.O_RDONLY)
    except PermissionError:
        # its mode was changed (an agent without CAP_DAC_OVERRIDE then cannot read it): the file is
        # the spool's own, in the spool's own directory, so its mode is set back
        os.chmod(path, 0o600, follow_symlinks=False)
        log.warning("spool %s: %s had lost its permissions: set back to 0600", os.path.dirname(path),
                    os.path.basename(path))
        return open_regular(path, os.O_RDONLY)


def _raise_open_files_limit(segments: int) -> int:
    """Every segment's descriptor stays open: make room for them (a full spool has ~1024); the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = segments + 1024
    if soft < want and (hard == resource.RLIM_INFINITY or soft < hard):
        new = want * 2 if hard == resource.RLIM_INFINITY else min(want * 2, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return soft


def scan(fd: int, name: str, limit: int, last: int, corrupt: Callable[[str], None]) -> tuple[list[Rec], int]:
    """The valid records of a segment file with seqs above `last` and how many bytes were scanned: at
    most `limit` (the spool's bound); what lies beyond is skipped and counted once."""
    size = os.fstat(fd).st_size
    chunks, have = [], 0
    while have < min(size, limit):
        chunk = os.pread(fd, min(size, limit) - have, have)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    data = b"".join(chunks)
    records = parse(name, data, last, limit, corrupt)
    if size > limit:
        corrupt(f"{name}: {size - limit} bytes beyond the spool's bound of {limit} bytes not read")
    return records, len(data)


def parse(name: str, data: bytes, last: int, max_length: int, corrupt: Callable[[str], None]) -> list[Rec]:
    """Every valid record in `data`, in order; garbage between them is skipped (resynchronising on the
    next magic that starts a valid record) and reported to `corrupt`."""
    records: list[Rec] = []
    pos, n = 0, len(data)
    while pos < n:
        rec = record_at(data, pos, last, max_length)
        if rec is not None:
            records.append(rec)
            last = rec.seq
            pos = rec.end
            continue
        nxt = find_magic(data, pos + 1)
        while nxt != -1 and record_at(data, nxt, last, max_length) is None:
            nxt = find_magic(data, nxt + 1)
        end = n if nxt == -1 else nxt
        what = "a truncated or garbage tail" if nxt == -1 else "a corrupt record"
        corrupt(f"{name}: skipped {end - pos} bytes at offset {pos}, {what}")
        pos = end
    return records
