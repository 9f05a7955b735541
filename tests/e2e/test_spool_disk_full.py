"""The spool keeps every acknowledged-durable OOM event across SIGKILL, corruption and a full disk."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from conftest import require

from otel_oom.delivery.spool import Spool, SpoolError
from testing.agent_process import REPO

ROOT = str(REPO)
HEAD = 28  # record header size, see the format in otel_oom/delivery/spool.py





def payload(i: int, size: int = 200) -> bytes:
    filler = hashlib.sha256(str(i).encode()).hexdigest() * (size // 64 + 1)
    return f"{i}:{filler[:size]}".encode()


@pytest.mark.parametrize("segment_bytes", [8192, 2**20])  # fails on a fresh file / mid-file
def test_disk_full_raises_and_recovers_without_loss(tmp_path, segment_bytes):
    require(os.geteuid() == 0, "mounting a small tmpfs to fill the disk needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        filler = mnt / "filler"
        d = mnt / "s"
        sp = Spool(d, segment_bytes=segment_bytes)
        with open(filler, "wb") as f:
            f.write(b"\0" * 24576)
        ok = []
        with pytest.raises(SpoolError, match=r"cannot (write OOM event to|create) spool .*No space left on "
                                             r"device; free disk space on that filesystem$"):
            for i in range(100):
                ok.append((sp.append(payload(i, 1500)), payload(i, 1500)))
        assert 3 < len(ok) < 40
        with pytest.raises(SpoolError):  # still full: still a clear error, nothing half-written
            sp.append(payload(999, 1500))
        assert sp.pending(limit=1000) == ok
        sp.ack(ok[0][0])  # acknowledging works on a full disk
        os.unlink(filler)
        ok += [(sp.append(payload(i, 1500)), payload(i, 1500)) for i in range(100, 110)]
        sp.close()
        with Spool(d) as sp:
            assert sp.pending(limit=1000) == ok[1:]
            assert sp.dropped["spool_corrupt"] == 0  # the failed appends left nothing behind
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
