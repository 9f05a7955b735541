"""The spool's bytes on disk: record headers and ack slots, both versions, encoded and checked.

Record (all integers little-endian), a header then the payload:

  v2 (52 bytes): b"\\x8fOOL" | u32 length | u32 crc32 | u64 seq | u64 boot | i64 uptime ns | i64 wall ns
                 | u64 accounted
  v1 (28 bytes): b"\\x8fOOM" | u32 length | u32 crc32 | u64 seq | i64 wall ns   (read, never written)

The crc32 covers every header field after it, then the payload. `boot` is a 64-bit tag of the
boot id (`boot_tag`), `uptime` CLOCK_BOOTTIME at the append (the clock that does not jump; only
comparable within one boot), `wall` the wall clock at the append (for display). `accounted` is the
ledger: how many of this boot's kernel OOM kills (as /proc/vmstat oom_kill counts them) the agent
had accounted for once this record was written, this record's own kill included
(`NO_LEDGER` when the writer keeps no ledger). So a kill and its accounting are one write.

Ack slot, two of them in the 1024-byte `ack` file at offsets 0 and 512 (different sectors: one torn
write cannot hit both), the valid one with the highest generation wins:

  v2 (40 bytes): b"\\x8fAK2" | u64 generation | u64 floor | u64 boot | u64 accounted | u32 crc32
  v1 (16 bytes): b"\\x8fACK" | u64 floor | u32 crc32(floor)                (read, never written)

`floor` is the highest sequence number acknowledged or dropped; `accounted` the ledger's count for
`boot` as last known (a mirror of the records', which survives their deletion or damage).
Both magics start with a non-ASCII byte, so they never occur inside the JSON (ensure_ascii) payloads of
earlier agents; payloads are binary OTLP messages now, where a stray magic is only taken for a record
if length, sequence and crc32 agree too.
"""
from __future__ import annotations

import struct
import zlib
from typing import NamedTuple, Optional

MAGIC = b"\x8fOOL"
MAGIC_V1 = b"\x8fOOM"
HEAD = struct.Struct("<4sIIQQqqQ")   # magic, length, crc, seq, boot, uptime ns, wall ns, accounted
HEAD_V1 = struct.Struct("<4sIIQq")   # magic, length, crc, seq, wall ns
_CRC_FIELDS = struct.Struct("<IQQqqQ")
_CRC_FIELDS_V1 = struct.Struct("<IQq")
NO_LEDGER = (1 << 64) - 1            # a record written without a ledger value

ACK_MAGIC = b"\x8fAK2"
ACK_MAGIC_V1 = b"\x8fACK"
ACK = struct.Struct("<4sQQQQI")      # magic, generation, floor, boot, accounted, crc
ACK_V1 = struct.Struct("<4sQI")      # magic, floor, crc
ACK_SLOTS = (0, 512)
ACK_FILE_BYTES = 1024


class Rec(NamedTuple):
    """Where one valid record is and what its header says."""
    seq: int
    offset: int       # of the header in its segment
    head: int         # header size: HEAD.size, or HEAD_V1.size for a record of the earlier format
    length: int       # payload bytes
    boot: int         # boot tag (0: unknown, a v1 record)
    uptime_ns: int    # CLOCK_BOOTTIME at the append (-1: unknown, a v1 record)
    wall_ns: int
    accounted: int    # NO_LEDGER when none

    @property
    def end(self) -> int:
        return self.offset + self.head + self.length


class AckState(NamedTuple):
    generation: int   # -1 for a v1 slot
    floor: int
    boot: int
    accounted: int


def boot_tag(boot_id: str) -> int:
    """64 bits that tell boots apart: the first half of the boot id (a random UUID), else a checksum."""
    digits = boot_id.replace("-", "")
    try:
        tag = int(digits[:16], 16)
    except ValueError:
        raw = boot_id.encode("utf-8", "surrogateescape")
        tag = zlib.crc32(raw) << 32 | zlib.crc32(raw[::-1], 0x5BD1E995)
    return tag or 1  # 0 means "unknown"


def record_bytes(payload: bytes, seq: int, boot: int, uptime_ns: int, wall_ns: int, accounted: int) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(len(payload), seq, boot, uptime_ns, wall_ns, accounted)))
    return HEAD.pack(MAGIC, len(payload), crc, seq, boot, uptime_ns, wall_ns, accounted) + payload


def record_at(data: "bytes | memoryview", pos: int, last: int, max_length: int) -> Optional[Rec]:
    """The valid record (either version) starting at `pos` with seq > last, or None."""
    magic = bytes(data[pos:pos + 4])
    view = memoryview(data)
    if magic == MAGIC and len(data) - pos >= HEAD.size:
        _, length, crc, seq, boot, uptime, wall, accounted = HEAD.unpack_from(data, pos)
        head, fields = HEAD.size, _CRC_FIELDS.pack(length, seq, boot, uptime, wall, accounted)
    elif magic == MAGIC_V1 and len(data) - pos >= HEAD_V1.size:
        _, length, crc, seq, wall = HEAD_V1.unpack_from(data, pos)
        boot, uptime, accounted = 0, -1, NO_LEDGER
        head, fields = HEAD_V1.size, _CRC_FIELDS_V1.pack(length, seq, wall)
    else:
        return None
    end = pos + head + length
    if length > max_length or end > len(data) or seq <= last:
        return None
    if zlib.crc32(view[pos + head:end], zlib.crc32(fields)) != crc:
        return None
    return Rec(seq, pos, head, length, boot, uptime, wall, accounted)


def find_magic(data: "bytes | memoryview", start: int) -> int:
    """The next offset >= start where a record of either version may begin, or -1."""
    raw = data if isinstance(data, bytes) else bytes(data)
    found = [i for i in (raw.find(MAGIC, start), raw.find(MAGIC_V1, start)) if i != -1]
    return min(found) if found else -1


def ack_slot(generation: int, floor: int, boot: int, accounted: int) -> bytes:
    fields = struct.pack("<QQQQ", generation, floor, boot, accounted)
    return ACK.pack(ACK_MAGIC, generation, floor, boot, accounted, zlib.crc32(fields))


def read_ack_slot(raw: bytes) -> Optional[AckState]:
    """The slot's state if it is valid (either version), else None."""
    raw = raw.ljust(ACK.size, b"\0")
    if raw[:4] == ACK_MAGIC:
        _, generation, floor, boot, accounted, crc = ACK.unpack_from(raw)
        if crc == zlib.crc32(struct.pack("<QQQQ", generation, floor, boot, accounted)):
            return AckState(generation, floor, boot, accounted)
    elif raw[:4] == ACK_MAGIC_V1:
        _, floor, crc = ACK_V1.unpack_from(raw)
        if crc == zlib.crc32(struct.pack("<Q", floor)):
            return AckState(-1, floor, 0, NO_LEDGER)
    return None


def newest(slots: list[Optional[AckState]]) -> tuple[Optional[AckState], int]:
    """(the winning slot or None, the index of the slot to overwrite next: the other one)."""
    valid = [(s.generation, s.floor, i) for i, s in enumerate(slots) if s is not None]
    if not valid:
        return None, 0
    _, _, i = max(valid)
    return slots[i], 1 - i
