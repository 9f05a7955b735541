"""Durable on-disk spool of encoded OOM events awaiting acknowledgement by the OTLP collector.

Its one responsibility: an event appended here survives the agent being SIGKILLed or the
collector being away, and is handed out again, in append order, until it is acknowledged.
It is over 400 lines because that one job (format, recovery, bounds, acknowledgement) reads best
whole: splitting it would scatter the crash-safety argument across files.

Directory layout (created with mode 0700, one process at a time):

  lock                        flock()ed by the owning process; holds its pid for the error message.
  ack                         1024 bytes, two 16-byte slots at offsets 0 and 512, each
                              b"\\x8fACK" | u64 floor | u32 crc32(floor).  The floor is the highest
                              sequence number that is acknowledged *or dropped*; the valid slot with
                              the highest floor wins.  Updates overwrite the older slot in place and
                              fdatasync, so a torn write costs at most the previous update, and no
                              new block is ever allocated: acknowledging (which is what frees
                              space) keeps working on a full disk, unlike write-temp-and-rename.
  seg-<first seq:020d>.log    append-only segment files of records, in sequence order.

Record (all integers little-endian), 28-byte header then payload:

  b"\\x8fOOM" | u32 length | u32 crc32 | u64 seq | i64 append time (ns, from `clock`) | payload

The crc32 covers length, seq, time and payload.  The magic starts with a non-ASCII byte (never in
the JSON payloads of older agents; payloads are binary OTLP messages now, where a stray one is only
taken for a record if length, sequence and crc32 agree too).  On open every segment is scanned; a
record whose header, length, crc or sequence order is wrong, or that is cut short, is skipped by
resynchronising on the next magic that starts a valid record, logged and counted as
`spool_corrupt`.  Segments from earlier runs are never appended to: each process starts a new
segment on its first append, so garbage left by a crash is never followed by good records in the
same file.  A failed append truncates its partial record away and seals the segment; its
sequence number is burnt, never reused, so no two records on disk share one.

Sequence numbers are > every number in the segments, in the segment names and in the ack floor,
so they increase across restarts.  A segment is deleted as soon as a floor covering all its
records is on disk (the one being appended to included: the next append starts a new file).
Bounds drop whole segments (max_bytes: oldest first, counted `spool_full`) or advance the floor
past old records (max_age_seconds, `spool_expired`); both are logged with the count every time
they happen.  Dropping by segment keeps the code simple and really frees disk; it drops up to
`segment_bytes` of events at once, so segments are sized from the bound: max_bytes / 1024
(1 KiB to 1 MiB): one event at 64 KiB, about 0.1 % of the spool (~40 events) at 64 MiB.

A spool directory removed (or replaced) while the agent runs is noticed at the next append or
read: it is created again with a fresh lock and ack file, the events of the segment being
appended to are rescued through its still open descriptor and written again, and those of
older segments, gone with the directory, are counted as `spool_lost`.

fsync=False keeps every guarantee against a process crash (the page cache survives) but not
against power loss.
"""
from __future__ import annotations

import bisect
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

MAGIC = b"\x8fOOM"
_HEAD = struct.Struct("<4sIIQq")  # magic, payload length, crc32, seq, append time ns
_ACK_MAGIC = b"\x8fACK"
_ACK = struct.Struct("<4sQI")     # magic, floor, crc32
_ACK_SLOTS = (0, 512)             # different sectors: one torn write cannot hit both
_SEGMENT = re.compile(r"^seg-(\d{20})\.log$")

DROP_REASONS = ("spool_full", "spool_expired", "spool_corrupt", "spool_lost")
SEGMENT_MIN, SEGMENT_MAX = 1 << 10, 1 << 20


def segment_size(max_bytes: int) -> int:
    """Segment file size for a spool bound: a segment is the unit dropped when the spool is full."""
    return max(SEGMENT_MIN, min(SEGMENT_MAX, max_bytes // 1024))


class SpoolError(Exception):
    """The spool cannot do what was asked; the message says why and what to do."""

    written: list[int] = []  # append_many: the seqs of the burst's first events, written before it failed


def _crc(length: int, seq: int, ts_ns: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<IQq", length, seq, ts_ns)))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("path", "first", "records", "size", "fd")

    def __init__(self, path: str, first: int, records: list, size: int, fd: Optional[int] = None):
        self.path = path
        self.first = first      # the seq in the file name: next_seq when the file was created
        self.records = records  # [(seq, offset, payload length, append time ns)], seq ascending
        self.size = size
        self.fd = fd            # set only on the one segment this process appends to

    def handle(self) -> int:
        """The fd of the segment being appended to (only that one is open)."""
        assert self.fd is not None, f"{self.path} is not open for appending"
        return self.fd

    @property
    def last(self) -> int:
        """Highest seq this file may have held, even if its records are unreadable now (an empty
        file held none: the agent died between creating it and writing its first record)."""
        if self.records:
            return max(self.first, self.records[-1][0])
        return self.first if self.size > 0 else self.first - 1


class Spool:
    """Append-only, crash-safe queue of event payloads in `directory`; see the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 64 * 2**20, max_age_seconds: float = 7 * 86400,
                 segment_bytes: Optional[int] = None, fsync: bool = True,
                 clock: Callable[[], float] = time.time):
        segment_bytes = segment_size(max_bytes) if segment_bytes is None else segment_bytes
        if max_bytes <= _HEAD.size or segment_bytes <= 0 or max_age_seconds <= 0:
            raise SpoolError("spool max_bytes, segment_bytes and max_age_seconds must be positive "
                             f"(max_bytes > {_HEAD.size})")
        self._dir = os.fspath(directory)
        self._max_bytes = max_bytes
        self._max_age_ns = int(max_age_seconds * 1e9)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = True
        self.dropped: dict[str, int] = {reason: 0 for reason in DROP_REASONS}
        self._segments: list[_Segment] = []
        self._active: Optional[_Segment] = None
        self._rescued: list[tuple[int, bytes]] = []  # (append time, payload) from a removed directory
        self._bytes = 0
        self._floor = self._floor_disk = 0  # set from the ack file by _lock_directory
        self._lock_directory()
        try:
            self._scan()
        except OSError as e:
            os.close(self._ack_fd)
            os.close(self._lock_fd)
            raise SpoolError(f"cannot open spool {self._dir}: {e.strerror}; "
                             "check the directory's permissions and free space") from None
        self._closed = False
        with self._lock:
            self._delete_consumed()
            self._expire(self._now_ns())
            self._make_room(0)

    # ---- opening ----

    def _lock_directory(self) -> None:
        """Create the directory if needed, take its lock, open its ack file; remember which directory it is."""
        try:
            if not os.path.isdir(self._dir):
                os.makedirs(self._dir, 0o700, exist_ok=True)
                os.chmod(self._dir, 0o700)  # mkdir's mode is filtered by the umask
            self._lock_fd = os.open(os.path.join(self._dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise SpoolError(f"cannot use spool directory {self._dir}: {e.strerror}; "
                             "point the spool at a writable local directory") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self._lock_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self._dir} is in use by another otel-oom (pid {pid})") from None
        self._ack_fd = -1
        try:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
            self._open_ack()
            st = os.fstat(self._lock_fd)
            self._dir_id = (os.stat(self._dir).st_dev, os.stat(self._dir).st_ino, st.st_ino)
        except OSError as e:
            if self._ack_fd >= 0:
                os.close(self._ack_fd)
            os.close(self._lock_fd)
            raise SpoolError(f"cannot open spool {self._dir}: {e.strerror}; "
                             "check the directory's permissions and free space") from None

    def _directory_gone(self) -> bool:
        try:
            st = os.stat(self._dir)
            lock = os.stat(os.path.join(self._dir, "lock"))
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            return False  # unreadable for another reason: the operation itself will say so
        return (st.st_dev, st.st_ino, lock.st_ino) != self._dir_id

    def _recreate(self) -> None:
        """The directory was removed or replaced: make it again, rescue what the open segment holds."""
        active = self._active
        if active is not None:
            for seq, offset, length, ts_ns in active.records:
                if seq > self._floor:
                    try:
                        self._rescued.append((ts_ns, os.pread(active.handle(), length, offset + _HEAD.size)))
                    except OSError:
                        break
            os.close(active.handle())
            active.fd = self._active = None
        lost = sum(len(seg.records) - self._first_pending(seg) for seg in self._segments if seg is not active)
        if lost:
            self.dropped["spool_lost"] += lost
        for fd in (self._ack_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._ack_fd = self._lock_fd = -1
        self._segments, self._bytes = [], 0
        floor = self._floor
        self._lock_directory()  # raises SpoolError if it cannot be made again: tried at the next call
        self._floor = floor
        self._persist_floor()   # numbering goes on above everything handed out before
        log.error("spool %s was removed or replaced while the agent ran: created it again; %d waiting OOM "
                  "event(s) rescued, %d lost with it (counted as spool_lost)", self._dir, len(self._rescued), lost)
        while self._rescued:
            ts_ns, payload = self._rescued[0]
            self._write([payload], ts_ns)
            self._rescued.pop(0)

    def _check_directory(self) -> None:
        if self._lock_fd < 0 or self._directory_gone():
            self._recreate()

    def _open_ack(self) -> None:
        path = os.path.join(self._dir, "ack")
        if not os.path.exists(path):
            # created whole via rename so a crash never leaves a short ack file behind
            tmp = path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, self._ack_slot(0).ljust(1024, b"\0"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            _fsync_dir(self._dir)
        self._ack_fd = os.open(path, os.O_RDWR)
        floors = []
        for offset in _ACK_SLOTS:
            magic, floor, crc = _ACK.unpack(os.pread(self._ack_fd, _ACK.size, offset).ljust(_ACK.size, b"\0"))
            floors.append(floor if magic == _ACK_MAGIC and crc == zlib.crc32(struct.pack("<Q", floor)) else -1)
        if max(floors) < 0:
            log.warning("spool %s: ack file is unreadable; every event still on disk will be delivered again",
                        self._dir)
        self._floor = self._floor_disk = max(max(floors), 0)
        self._ack_next = 1 - floors.index(max(floors))  # overwrite the older slot

    @staticmethod
    def _ack_slot(floor: int) -> bytes:
        return _ACK.pack(_ACK_MAGIC, floor, zlib.crc32(struct.pack("<Q", floor)))

    def _scan(self) -> None:
        names = sorted((n for n in os.listdir(self._dir) if _SEGMENT.match(n)))
        last = 0
        for name in names:
            path = os.path.join(self._dir, name)
            with open(path, "rb") as f:
                data = f.read()
            match = _SEGMENT.match(name)
            assert match is not None  # names were filtered by it
            seg = _Segment(path, int(match.group(1)), self._parse(name, data, last), len(data))
            last = max(last, seg.last)
            if not data:  # created, then the agent died before its first record: it held nothing
                os.unlink(path)
                continue
            self._segments.append(seg)
            self._bytes += len(data)
        self._next_seq = max(last, self._floor) + 1

    def _parse(self, name: str, data: bytes, last: int) -> list:
        records, pos, n = [], 0, len(data)
        while pos < n:
            rec = self._record_at(data, pos, last)
            if rec is not None:
                records.append(rec)
                last = rec[0]
                pos += _HEAD.size + rec[2]
                continue
            nxt = data.find(MAGIC, pos + 1)
            while nxt != -1 and self._record_at(data, nxt, last) is None:
                nxt = data.find(MAGIC, nxt + 1)
            end = n if nxt == -1 else nxt
            what = "a truncated or garbage tail" if nxt == -1 else "a corrupt record"
            self._corrupt(f"{name}: skipped {end - pos} bytes at offset {pos}, {what}")
            pos = end
        return records

    @staticmethod
    def _record_at(data: bytes, pos: int, last: int) -> Optional[tuple[int, int, int, int]]:
        """(seq, offset, length, time) of the valid record starting at pos with seq > last, or None."""
        if len(data) - pos < _HEAD.size:
            return None
        magic, length, crc, seq, ts_ns = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if magic != MAGIC or end > len(data) or seq <= last:
            return None
        if _crc(length, seq, ts_ns, memoryview(data)[pos + _HEAD.size:end]) != crc:
            return None
        return (seq, pos, length, ts_ns)

    # ---- public API ----

    def append(self, payload: bytes) -> int:
        """Write one event durably; returns its sequence number. Raises SpoolError if it cannot."""
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[bytes]) -> list[int]:
        """Write a burst of events durably (group commit); returns their sequence numbers.

        The burst goes out in one write() and one fdatasync (into one segment, which may grow past
        segment_bytes by it), so it costs one flush instead of one per event. The guarantees are
        append()'s for each event: nothing returns before its records are on disk, and a SIGKILL
        during the write() leaves all of the burst or none of it (a regular file's write is not
        cut by a signal; a short write, e.g. on a full disk, is truncated away by `_abandon`); only
        a burst larger than max_bytes is split into several writes. Raises SpoolError if
        any of them cannot be written; its `written` lists the seqs of the first ones, which are on disk
        (the rest is not).
        """
        payloads = [bytes(p) for p in payloads]
        with self._lock:
            self._check_open()
            for payload in payloads:
                if _HEAD.size + len(payload) > self._max_bytes or len(payload) >= 2**32:
                    raise SpoolError(f"event of {len(payload)} bytes does not fit in spool max_bytes="
                                     f"{self._max_bytes}; raise max_bytes")
            self._check_directory()
            now = self._now_ns()
            self._expire(now)
            seqs: list[int] = []
            while len(seqs) < len(payloads):
                try:
                    seqs += self._write(payloads[len(seqs):], now)
                except SpoolError as e:
                    e.written = seqs  # the first ones are on disk already (an earlier segment's write)
                    raise
            return seqs

    def _write(self, payloads: list[bytes], now: int) -> list[int]:
        """`payloads` (as many as fit in max_bytes: all, unless the burst alone is larger) in one
        write, in one segment (which may grow past segment_bytes by that burst); their seqs."""
        # called with self._lock held
        records: list[bytes] = []
        sizes: list[int] = []
        seqs: list[int] = []
        total = 0
        for payload in payloads:
            size = _HEAD.size + len(payload)
            if sizes and total + size > self._max_bytes:
                break
            sizes.append(len(payload))
            total += size
        self._make_room(total)
        seg = self._writable(total)
        for payload in payloads[:len(sizes)]:
            seq = self._next_seq
            self._next_seq += 1  # burnt even on failure: a half-failed write may still hold it
            records.append(_HEAD.pack(MAGIC, len(payload), _crc(len(payload), seq, now, payload), seq, now))
            records.append(payload)
            seqs.append(seq)
        try:
            view = memoryview(b"".join(records))
            while view:
                view = view[os.write(seg.handle(), view):]
            if self._fsync:
                os.fdatasync(seg.handle())
        except OSError as e:
            self._abandon(seg)
            raise SpoolError(f"cannot write OOM event to spool {self._dir}: {e.strerror}; "
                             "free disk space on that filesystem") from None
        for seq, length in zip(seqs, sizes, strict=True):
            seg.records.append((seq, seg.size, length, now))
            seg.size += _HEAD.size + length
        self._bytes += total
        return seqs

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """Up to `limit` unacknowledged events, oldest first, as (seq, payload)."""
        with self._lock:
            self._check_open()
            self._check_directory()
            self._expire(self._now_ns())
            out: list[tuple[int, bytes]] = []
            bad, files = [], {}
            try:
                for seg, rec in self._iter_pending():
                    if len(out) >= limit:
                        break
                    seq, offset, length, ts_ns = rec
                    if seg.path not in files:
                        files[seg.path] = os.open(seg.path, os.O_RDONLY)
                    raw = os.pread(files[seg.path], _HEAD.size + length, offset)
                    # re-verified: the file may have been damaged since it was scanned or written
                    if self._record_at(raw, 0, seq - 1) != (seq, 0, length, ts_ns):
                        bad.append((seg, rec))
                        self._corrupt(f"{os.path.basename(seg.path)}: record {seq} at offset {offset} "
                                      "changed on disk since it was written")
                        continue
                    out.append((seq, raw[_HEAD.size:]))
            except OSError as e:
                raise SpoolError(f"cannot read spool {self._dir}: {e.strerror}") from None
            finally:
                for fd in files.values():
                    os.close(fd)
                for seg, rec in bad:
                    seg.records.remove(rec)
            return out

    def ack(self, upto_seq: int) -> None:
        """Everything with seq <= upto_seq was accepted by the collector."""
        with self._lock:
            self._check_open()
            if upto_seq >= self._next_seq:
                raise ValueError(f"ack({upto_seq}) is beyond the last appended seq {self._next_seq - 1}")
            if upto_seq > self._floor:
                self._floor = upto_seq
                self._persist_floor()

    @property
    def burst_bytes(self) -> int:
        """The most payload bytes worth one append_many: a segment's worth (what a full spool drops at once)."""
        return self._segment_bytes

    @property
    def next_seq(self) -> int:
        """The seq the next append gets; persisted implicitly (segments, names and the ack floor)."""
        with self._lock:
            return self._next_seq

    def stats(self) -> dict:
        """pending, bytes, segments, oldest_pending_age_seconds (None if none), acked_seq, next_seq, dropped."""
        with self._lock:
            oldest = next(self._iter_pending(), None)
            return {
                "pending": sum(len(s.records) - self._first_pending(s) for s in self._segments),
                "bytes": self._bytes,
                "segments": len(self._segments),
                "oldest_pending_age_seconds":
                    None if oldest is None else max(0.0, (self._now_ns() - oldest[1][3]) / 1e9),
                "acked_seq": self._floor,
                "next_seq": self._next_seq,
                "dropped": dict(self.dropped),
            }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._rescued:
                self.dropped["spool_lost"] += len(self._rescued)
                log.error("spool %s: %d rescued OOM event(s) could not be written again (counted as spool_lost)",
                          self._dir, len(self._rescued))
            if self._floor != self._floor_disk and self._ack_fd >= 0:
                self._persist_floor()
            if self._active is not None:
                os.close(self._active.handle())
                self._active.fd = None
            for fd in (self._ack_fd, self._lock_fd):  # closing the lock releases the flock
                if fd >= 0:
                    os.close(fd)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals (called with self._lock held) ----

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self._dir} is closed")

    def _now_ns(self) -> int:
        return int(self._clock() * 1e9)

    def _first_pending(self, seg: _Segment) -> int:
        return bisect.bisect_right(seg.records, self._floor, key=lambda r: r[0])

    def _iter_pending(self) -> Iterator[tuple[_Segment, tuple]]:
        for seg in self._segments:
            for rec in seg.records[self._first_pending(seg):]:
                yield seg, rec

    def _corrupt(self, what: str) -> None:
        self.dropped["spool_corrupt"] += 1
        log.warning("spool %s: %s (counted as spool_corrupt)", self._dir, what)

    def _writable(self, size: int) -> _Segment:
        seg = self._active
        if seg is not None and seg.size > 0 and seg.size + size > self._segment_bytes:
            os.close(seg.handle())
            seg.fd = self._active = None
        if self._active is None:
            path = os.path.join(self._dir, f"seg-{self._next_seq:020d}.log")
            try:
                # read-write: if the directory is removed, what this open file holds can still be rescued
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                if self._fsync:
                    _fsync_dir(self._dir)
            except OSError as e:
                raise SpoolError(f"cannot create spool segment {path}: {e.strerror}; "
                                 "free disk space on that filesystem") from None
            self._active = _Segment(path, self._next_seq, [], 0, fd)
            self._segments.append(self._active)
        return self._active

    def _abandon(self, seg: _Segment) -> None:
        """After a failed write: cut the partial record off and never append to this file again."""
        try:
            os.ftruncate(seg.handle(), seg.size)
        except OSError:
            pass  # the tail then fails its crc on the next open; nothing follows it in this file
        os.close(seg.handle())
        seg.fd = self._active = None
        if not seg.records:
            try:
                os.unlink(seg.path)
                self._segments.remove(seg)
            except OSError:
                pass

    def _persist_floor(self) -> bool:
        floor = self._floor
        try:
            os.pwrite(self._ack_fd, self._ack_slot(floor), _ACK_SLOTS[self._ack_next])
            if self._fsync:
                os.fdatasync(self._ack_fd)
        except OSError as e:
            log.warning("spool %s: cannot record acknowledgement up to %d (%s); "
                        "will retry, a restart now would deliver those events again",
                        self._dir, floor, e.strerror)
            return False
        self._ack_next ^= 1
        self._floor_disk = floor
        self._delete_consumed()
        return True

    def _delete_consumed(self) -> None:
        for seg in list(self._segments):
            if seg.last > self._floor_disk:
                continue
            if seg is self._active:
                os.close(seg.handle())
                seg.fd = self._active = None
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("spool %s: cannot delete %s: %s", self._dir, seg.path, e.strerror)
                continue
            self._segments.remove(seg)
            self._bytes -= seg.size

    def _expire(self, now_ns: int) -> None:
        cutoff, count, upto = now_ns - self._max_age_ns, 0, self._floor
        for _, rec in self._iter_pending():
            if rec[3] >= cutoff:
                break
            count, upto = count + 1, rec[0]
        if count:
            self.dropped["spool_expired"] += count
            log.warning("spool %s: dropped %d undelivered OOM events older than %ds (spool_expired)",
                        self._dir, count, self._max_age_ns // 10**9)
            self._floor = upto
            self._persist_floor()

    def _make_room(self, size: int) -> None:
        count = 0
        while self._segments and self._bytes + size > self._max_bytes:
            seg = self._segments[0]
            count += len(seg.records) - self._first_pending(seg)
            self._floor = max(self._floor, seg.last)
            # the floor must be on disk before the records go, or seqs could repeat after a restart;
            # persisting it deletes the segment
            if not self._persist_floor() or seg in self._segments:
                break
        if count:
            self.dropped["spool_full"] += count
            log.warning("spool %s: over max_bytes=%d, dropped the %d oldest undelivered OOM events "
                        "(spool_full)", self._dir, self._max_bytes, count)
