"""Durable on-disk spool of encoded OOM events awaiting acknowledgement by the OTLP collector,
and the agent's ledger of the kernel's OOM kills.

Its one responsibility: an event appended here survives the agent being SIGKILLed or the
collector being away, and is handed out again, in append order, until it is acknowledged; and
the count of this boot's kernel OOM kills the agent has accounted for survives with it, written in
the same record as the kill it counts (`ledger`, `account`). The bytes are in `spool_format.py`,
the directory, its lock and its ack file in `spool_dir.py`, the segment files in `segments.py`.
It is over 400 lines because what is left is that one job (append, hand out, acknowledge, bound,
repair) and its crash-safety argument, which reads best whole.

  <directory>/lock, ack        spool_dir.py: one agent at a time; the floor (the highest sequence
                               number acknowledged *or dropped*) and the ledger's count. The floor
                               is fdatasync'ed; the ledger's count alone is not (a SIGKILL keeps
                               the page cache, and after a power loss the boot id differs, which
                               starts a new ledger anyway).
  <directory>/seg-<first seq:020d>.log   append-only segment files of records, in sequence order.

On open every segment is scanned (segments.py: only regular files, at most the spool's bound each);
a record that does not check (header, length, crc, sequence order, cut short) is skipped, logged
and counted as `spool_corrupt`. Records of the earlier format (v1, before the ledger) are read and
delivered like the others. Each process appends to a segment of its own (garbage left by a crash is
never followed by good records in the same file); a failed append truncates its partial record away
and seals the segment; its sequence number is burnt, never reused.

Sequence numbers increase across restarts (above every number in the segments, their names and the
floor). A segment is deleted once a floor covering all its records is on disk. Bounds drop whole
segments (max_bytes: oldest first, `spool_full`) or advance the floor past old records
(max_age_seconds by CLOCK_BOOTTIME, not the wall clock, which can be stepped: `spool_expired`), logged
with the count each time. Dropping by segment really
frees disk; segments are sized from the bound (max_bytes / 1024, 1 KiB to 1 MiB) so one overflow
drops about 0.1 % of the spool. A dropped or expired kill stays accounted for in the ledger.

Damage behind the agent's back is repaired from what it holds: a segment file removed, renamed or
replaced is written again from the descriptor the spool keeps open on it; a directory removed or
replaced is made again with the floor and the ledger as this process knows them, every segment
written back into it; its ack file likewise. Records cut or overwritten in a file are counted as
`spool_corrupt` when read. A segment that cannot be written again is still delivered through its
descriptor (/readyz says so meanwhile), and counted as `spool_lost` if the agent stops first, as are
the waiting events of a segment read without a descriptor that disappeared. Each is logged once.

fsync=False keeps every guarantee against a process crash (the page cache survives) but not
against power loss.
"""
from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

from .segments import Segment, fsync_dir, load
from .spool_dir import SpoolDirectory, SpoolError
from .spool_format import HEAD, MAGIC, NO_LEDGER, AckState, Rec, boot_tag, record_at, record_bytes

log = logging.getLogger(__name__)

__all__ = ["MAGIC", "NO_LEDGER", "DROP_REASONS", "Ledger", "Spool", "SpoolError", "segment_size"]

DROP_REASONS = ("spool_full", "spool_expired", "spool_corrupt", "spool_lost")
SEGMENT_MIN, SEGMENT_MAX = 1 << 10, 1 << 20


def segment_size(max_bytes: int) -> int:
    """Segment file size for a spool bound: a segment is the unit dropped when the spool is full."""
    return max(SEGMENT_MIN, min(SEGMENT_MAX, max_bytes // 1024))


class Ledger(NamedTuple):
    """What the spool holds of the ledger for the running boot, as found when it was opened."""
    accounted: Optional[int]  # this boot's kernel kills accounted for; None if the ledger has no value for it
    seen: bool                # the ledger has a value, for this boot or an earlier one
    problem: Optional[str]    # the ledger could not be read (its ack file is damaged), None if fine


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Spool:
    """Append-only, crash-safe queue of event payloads in `directory`; see the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 64 * 2**20, max_age_seconds: float = 7 * 86400,
                 segment_bytes: Optional[int] = None, fsync: bool = True, clock: Callable[[], float] = time.time,
                 boot_id: Optional[str] = None, uptime: Optional[Callable[[], float]] = None):
        """`clock`: the wall clock (seconds), for display; `uptime`: CLOCK_BOOTTIME (seconds), which
        ages the events: it does not jump when the wall clock is stepped."""
        segment_bytes = segment_size(max_bytes) if segment_bytes is None else segment_bytes
        if max_bytes <= HEAD.size or segment_bytes <= 0 or max_age_seconds <= 0:
            raise SpoolError("spool max_bytes, segment_bytes and max_age_seconds must be positive "
                             f"(max_bytes > {HEAD.size})")
        self._dir = os.fspath(directory)
        self._max_bytes = max_bytes
        self._max_age_ns = int(max_age_seconds * 1e9)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._clock = clock
        self._uptime = uptime or _boottime
        self._boot = boot_tag(_read_boot_id() if boot_id is None else boot_id)
        self._lock = threading.RLock()
        self._closed = True
        self.dropped: dict[str, int] = {reason: 0 for reason in DROP_REASONS}
        self._segments: list[Segment] = []
        self._active: Optional[Segment] = None
        self._bytes = 0
        self._accounted = NO_LEDGER          # this boot's ledger count, as written last (or found)
        self._ledger_seen = False
        self._files = SpoolDirectory(self._dir, fsync)
        state, ack_missing = self._files.open(AckState(0, 0, self._boot, NO_LEDGER))
        problem = "its ack file was missing" if ack_missing else None
        if state is None:
            problem = "its ack file is unreadable"
            log.warning("spool %s: ack file is unreadable; every event still on disk will be delivered again",
                        self._dir)
            state = AckState(0, 0, 0, NO_LEDGER)
        self._floor = self._floor_disk = state.floor
        self._generation = max(0, state.generation)
        self._note_ledger(state.boot, state.accounted)
        try:
            self._scan()
        except OSError as e:
            self._close_files()
            raise SpoolError(f"cannot open spool {self._dir}: {e.strerror}; "
                             "check the directory's permissions and free space") from None
        self.ledger = Ledger(None if self._accounted == NO_LEDGER else self._accounted, self._ledger_seen, problem)
        self._closed = False
        with self._lock:
            self._delete_consumed()
            self._expire(self._uptime_ns())
            self._make_room(0)

    # ---- opening ----

    def _note_ledger(self, boot: int, accounted: int) -> None:
        """A ledger value found on disk: this boot's count is the highest found for it."""
        if accounted == NO_LEDGER:
            return
        self._ledger_seen = True
        if boot == self._boot and (self._accounted == NO_LEDGER or accounted > self._accounted):
            self._accounted = accounted

    def _scan(self) -> None:
        self._segments, last = load(self._dir, self._max_bytes, self._corrupt)
        for seg in self._segments:
            for rec in seg.records:
                self._note_ledger(rec.boot, rec.accounted)
            # only what holds records counts against the bound: garbage must not push events out
            seg.counted = seg.records[-1].end if seg.records else 0
            self._bytes += seg.counted
        self._next_seq = max(last, self._floor) + 1

    # ---- damage while running ----

    def _check_directory(self) -> None:
        if self._files.gone():
            self._recreate()
        elif self._files.ack_replaced():
            try:
                self._files.remake_ack(self._ack_state())
            except OSError as e:
                raise SpoolError(f"cannot write the ack file of spool {self._dir} again: {e.strerror}") from None

    def _recreate(self) -> None:
        """The directory (or its lock) was removed or replaced: make it again, with the floor and the
        ledger as this process knows them, and every segment still waiting written back into it."""
        self._files.close()
        self._files = SpoolDirectory(self._dir, self._fsync)
        self._files.open(self._ack_state())  # raises SpoolError if it cannot be made again: tried at the next call
        self._persist_floor()   # numbering goes on above everything handed out before; the ledger too
        log.error("spool %s was removed or replaced while the agent ran: created it again", self._dir)
        self._repair(list(self._segments))

    def _repair(self, segments: list[Segment]) -> None:
        """Segments whose file is not the one the spool reads any more (removed or replaced) are
        written again from their descriptor; fully acknowledged ones are forgotten; one read without
        a descriptor has its waiting events counted as lost. One log line for each outcome."""
        restored, lost, stuck = [], 0, []
        for seg in segments:
            if seg.on_disk():
                continue
            waiting = len(seg.records) - self._first_pending(seg)
            if not waiting or seg.fd is None:
                lost += waiting
                self._forget(seg)
                continue
            try:
                seg.restore(self._fsync)
            except OSError as e:
                if seg.durable:
                    seg.durable = False
                    stuck.append(f"{seg.name} ({e.strerror})")
                continue
            if seg is self._active:
                self._active = None  # sealed: the next append starts a new segment
            restored.append((seg.name, waiting))
        if restored:
            log.error("spool %s: %d segment(s) removed or replaced behind the agent's back written again from its "
                      "open descriptors (%s), %d waiting OOM event(s) kept", self._dir, len(restored),
                      ", ".join(name for name, _ in restored), sum(n for _, n in restored))
        if lost:
            self.dropped["spool_lost"] += lost
            log.error("spool %s: segment(s) removed or replaced behind the agent's back, read without a descriptor: "
                      "%d waiting OOM event(s) lost (counted as spool_lost)", self._dir, lost)
        if stuck:
            log.error("spool %s: segment(s) removed or replaced behind the agent's back cannot be written again: %s; "
                      "their waiting OOM events are delivered from the agent's open descriptors, and lost if it "
                      "stops first (/readyz says so meanwhile)", self._dir, ", ".join(stuck))

    def _check_active(self) -> None:
        """Before appending: the segment appended to must still be the file, of the size, it wrote."""
        seg = self._active
        if seg is None:
            return
        if not seg.on_disk():
            self._repair(list(self._segments))  # the others are likely gone with it: one line for all
        elif seg.fd is not None and os.fstat(seg.fd).st_size != seg.size:
            # cut (or written to) behind its back: an append would not land where its index says
            seg.appending, self._active = False, None

    def _forget(self, seg: Segment) -> None:
        seg.close()
        if seg is self._active:
            self._active = None
        self._segments.remove(seg)
        self._bytes -= seg.counted

    @property
    def problem(self) -> Optional[str]:
        """What is wrong with the spool now (for /readyz), or None."""
        with self._lock:
            broken = [seg.name for seg in self._segments if not seg.durable]
        return f"segments {', '.join(broken)} vanished and cannot be written again" if broken else None

    # ---- public API ----

    def append(self, payload: bytes, accounted: Optional[int] = None) -> int:
        """Write one event durably; returns its sequence number. Raises SpoolError if it cannot."""
        return self.append_many([payload], None if accounted is None else [accounted])[0]

    def append_many(self, payloads: Sequence[bytes], accounted: Optional[Sequence[Optional[int]]] = None) -> list[int]:
        """Write a burst of events durably (group commit); returns their sequence numbers.

        `accounted[i]` is the ledger's count once payload i is written (its own kill included), or
        None to carry the record before it's: a kill is stored and accounted for in one write.
        The burst goes out in one write() and one fdatasync (into one segment, which may grow past
        segment_bytes by it): nothing returns before its records are on disk, and a SIGKILL leaves
        all of it or none (a short write, e.g. on a full disk, is truncated away by `_abandon`);
        only a burst larger than max_bytes is split into several writes. Raises SpoolError if any
        cannot be written; its `written` lists the seqs of the first ones, which are on disk.
        """
        payloads = [bytes(p) for p in payloads]
        counts = list(accounted) if accounted is not None else [None] * len(payloads)
        assert len(counts) == len(payloads), "one ledger value (or None) per payload"
        with self._lock:
            self._check_open()
            for payload in payloads:
                if HEAD.size + len(payload) > self._max_bytes or len(payload) >= 2**32:
                    raise SpoolError(f"event of {len(payload)} bytes does not fit in spool max_bytes="
                                     f"{self._max_bytes}; raise max_bytes")
            self._check_directory()
            self._check_active()
            self._expire(self._uptime_ns())
            now = self._now_ns()
            seqs: list[int] = []
            while len(seqs) < len(payloads):
                try:
                    seqs += self._write(payloads[len(seqs):], counts[len(seqs):], now)
                except SpoolError as e:
                    e.written = seqs  # the first ones are on disk already (an earlier segment's write)
                    raise
            return seqs

    def _write(self, payloads: list[bytes], counts: Sequence[Optional[int]], now: int) -> list[int]:
        """`payloads` (as many as fit in max_bytes: all, unless the burst alone is larger) in one
        write, in one segment (which may grow past segment_bytes by that burst); their seqs."""
        # called with self._lock held
        sizes: list[int] = []
        total = 0
        for payload in payloads:
            size = HEAD.size + len(payload)
            if sizes and total + size > self._max_bytes:
                break
            sizes.append(len(payload))
            total += size
        self._make_room(total)
        seg = self._writable(total)
        uptime = self._uptime_ns()
        records: list[bytes] = []
        heads: list[Rec] = []
        accounted = self._accounted
        offset = seg.size
        for payload, count in zip(payloads[:len(sizes)], counts[:len(sizes)], strict=True):
            seq = self._next_seq
            self._next_seq += 1  # burnt even on failure: a half-failed write may still hold it
            if count is not None:
                accounted = count
            records.append(record_bytes(payload, seq, self._boot, uptime, now, accounted))
            heads.append(Rec(seq, offset, HEAD.size, len(payload), self._boot, uptime, now, accounted))
            offset += HEAD.size + len(payload)
        assert seg.fd is not None
        try:
            view = memoryview(b"".join(records))
            while view:
                view = view[os.write(seg.fd, view):]
            if self._fsync:
                os.fdatasync(seg.fd)
        except OSError as e:
            self._abandon(seg)
            raise SpoolError(f"cannot write OOM event to spool {self._dir}: {e.strerror}; "
                             "free disk space on that filesystem") from None
        self._bytes += offset - seg.counted
        seg.records.extend(heads)
        seg.size = seg.counted = offset
        if accounted != self._accounted:
            self._accounted = accounted
            self._persist_floor(sync=False)  # the ledger's mirror in the ack file
        return [h.seq for h in heads]

    def account(self, accounted: int, durable: bool = False) -> None:
        """The ledger's count moved without a record to carry it (kills counted as unobserved, the
        start-up's accounting, events delivered from memory): kept in the ack file."""
        with self._lock:
            self._check_open()
            if self._accounted != NO_LEDGER and accounted <= self._accounted:
                if not durable:
                    return
            else:
                self._accounted = accounted
            self._check_directory()
            if not self._persist_floor(sync=durable):
                raise SpoolError(f"cannot record the ledger in spool {self._dir}")

    def pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """Up to `limit` unacknowledged events, oldest first, as (seq, payload)."""
        with self._lock:
            self._check_open()
            self._check_directory()
            self._expire(self._uptime_ns())
            out: list[tuple[int, bytes]] = []
            bad: list[tuple[Segment, Rec]] = []
            self._repair(list({id(seg): seg for seg, _ in self._iter_pending(limit)}.values()))
            try:
                for seg, rec in self._iter_pending(limit):
                    if len(out) >= limit:
                        break
                    raw = seg.read(rec)
                    # re-verified: the file may have been damaged since it was scanned or written
                    if record_at(raw, 0, rec.seq - 1, self._max_bytes) != rec._replace(offset=0):
                        bad.append((seg, rec))
                        self._corrupt(f"{seg.name}: record {rec.seq} at offset {rec.offset} "
                                      "changed on disk since it was written")
                        continue
                    out.append((rec.seq, raw[rec.head:]))
            except OSError as e:
                raise SpoolError(f"cannot read spool {self._dir}: {e.strerror}") from None
            finally:
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

    @property
    def accounted(self) -> Optional[int]:
        """The ledger's count for this boot as written last (None: none yet)."""
        with self._lock:
            return None if self._accounted == NO_LEDGER else self._accounted

    def stats(self) -> dict:
        """pending, bytes, segments, oldest_pending_age_seconds (None if none), acked_seq, next_seq, dropped."""
        with self._lock:
            oldest = next(self._iter_pending(), None)
            return {
                "pending": sum(len(s.records) - self._first_pending(s) for s in self._segments),
                "bytes": self._bytes,
                "segments": len(self._segments),
                "oldest_pending_age_seconds":
                    None if oldest is None else max(0.0, self._age_ns(oldest[1], self._uptime_ns()) / 1e9),
                "acked_seq": self._floor,
                "next_seq": self._next_seq,
                "dropped": dict(self.dropped),
            }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # a segment removed behind the agent's back that no read has looked at since (a read
            # repairs only the segments it reads): written again now, or its events counted
            self._repair(list(self._segments))
            for seg in self._segments:
                waiting = len(seg.records) - self._first_pending(seg)
                if not seg.durable and waiting:
                    self.dropped["spool_lost"] += waiting
                    log.error("spool %s: %d waiting OOM event(s) of %s, which could not be written again, are lost "
                              "with the agent's stop (counted as spool_lost)", self._dir, waiting, seg.name)
            if self._files.ack_fd >= 0:
                self._persist_floor()  # (also mends an ack file overwritten in place meanwhile)
            self._close_files()

    def _close_files(self) -> None:
        for seg in self._segments:
            seg.close()
        self._active = None
        self._files.close()

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

    def _uptime_ns(self) -> int:
        return int(self._uptime() * 1e9)

    def _age_ns(self, rec: Rec, now_uptime_ns: int) -> int:
        """How old a record is by CLOCK_BOOTTIME. One of an earlier boot (or of the format before the
        ledger, which has no boot) is at least as old as this boot: aged from its start, which keeps
        it up to max_age longer than it should rather than dropping a fresh one when the wall clock
        was stepped."""
        if rec.boot == self._boot and rec.uptime_ns >= 0:
            return now_uptime_ns - rec.uptime_ns
        return now_uptime_ns

    def _first_pending(self, seg: Segment) -> int:
        return bisect.bisect_right(seg.records, self._floor, key=lambda r: r.seq)

    def _iter_pending(self, limit: Optional[int] = None) -> Iterator[tuple[Segment, Rec]]:
        n = 0
        for seg in self._segments:
            for rec in seg.records[self._first_pending(seg):]:
                if limit is not None and n > limit:
                    return
                n += 1
                yield seg, rec

    def _corrupt(self, what: str) -> None:
        self.dropped["spool_corrupt"] += 1
        log.warning("spool %s: %s (counted as spool_corrupt)", self._dir, what)

    def _writable(self, size: int) -> Segment:
        seg = self._active
        if seg is not None and seg.size > 0 and seg.size + size > self._segment_bytes:
            seg.appending, self._active = False, None  # its descriptor stays open for reading
        if self._active is None:
            path = os.path.join(self._dir, f"seg-{self._next_seq:020d}.log")
            try:
                # read-write: if the file is removed, what it holds can still be read and written again
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
                if self._fsync:
                    fsync_dir(self._dir)
            except OSError as e:
                raise SpoolError(f"cannot create spool segment {path}: {e.strerror}; "
                                 "free disk space on that filesystem") from None
            self._active = Segment(path, self._next_seq, [], 0, fd, appending=True)
            self._segments.append(self._active)
        return self._active

    def _abandon(self, seg: Segment) -> None:
        """After a failed write: cut the partial record off and never append to this file again."""
        assert seg.fd is not None
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError:
            pass  # the tail then fails its crc on the next open; nothing follows it in this file
        seg.appending, self._active = False, None
        if not seg.records:
            try:
                os.unlink(seg.path)
            except OSError:
                pass
            self._forget(seg) if seg in self._segments else seg.close()

    def _ack_state(self) -> AckState:
        return AckState(self._generation, self._floor, self._boot, self._accounted)

    def _persist_floor(self, sync: bool = True) -> bool:
        """Write the floor and the ledger's count into the older ack slot (fdatasync'ed if `sync`)."""
        floor = self._floor
        state = AckState(self._generation + 1, floor, self._boot, self._accounted)
        try:
            self._files.write_slot(state, sync)
        except OSError as e:
            log.warning("spool %s: cannot record acknowledgement up to %d (%s); "
                        "will retry, a restart now would deliver those events again",
                        self._dir, floor, e.strerror)
            return False
        self._generation = state.generation
        if sync:
            self._floor_disk = floor
            self._delete_consumed()
        return True

    def _delete_consumed(self) -> None:
        for seg in list(self._segments):
            if seg.last > self._floor_disk:
                continue
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("spool %s: cannot delete %s: %s", self._dir, seg.path, e.strerror)
                continue
            self._forget(seg)

    def _expire(self, now_uptime_ns: int) -> None:
        count, upto = 0, self._floor
        for _, rec in self._iter_pending():
            if self._age_ns(rec, now_uptime_ns) <= self._max_age_ns:
                break
            count, upto = count + 1, rec.seq
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


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)
