"""Benchmark of the OOM event spool: appends/s with and without fsync, and bytes per event on disk.

Prints figures, asserts nothing. Run from the repository root:
    python3 bench/bench_spool.py [--dir DIR] [--seconds S]
DIR defaults to a fresh directory under /var/tmp (disk-backed on most hosts; /tmp may be tmpfs,
where fsync costs nothing and the figures mean little).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import fs_type  # noqa: E402
from bench.common import typical_kill as common_typical_kill
from otel_oom.delivery.spool import Spool  # noqa: E402
from otel_oom.otlp.spooled import SpoolCodec  # noqa: E402


def typical_kill(i: int) -> bytes:
    return SpoolCodec().encode(common_typical_kill(i))  # as the worker spools it


def run(directory: str, fsync: bool, seconds: float, deliver: bool = False) -> tuple[int, float, int]:
    """Append for `seconds` (stopping short of max_bytes, so nothing is dropped); with `deliver`
    each append is followed by its ack, as when the collector keeps up."""
    shutil.rmtree(directory, ignore_errors=True)
    payloads = [typical_kill(i) for i in range(100)]
    with Spool(directory, fsync=fsync) as sp:
        limit = 60 * 2**20 // (len(payloads[0]) + 64)
        n, start = 0, time.perf_counter()
        while n < limit and time.perf_counter() - start < seconds:
            for p in payloads:
                seq = sp.append(p)
                if deliver:
                    sp.ack(seq)
            n += len(payloads)
        elapsed = time.perf_counter() - start
        on_disk = sp.stats()["bytes"]
        assert sp.dropped["spool_full"] == 0
    return n, elapsed, on_disk


def figures(base: str, seconds: float = 2.0, log=print) -> dict:
    """The same measurements as main(), returned as a dict for the report."""
    directory = os.path.join(base, "spool")
    out = {"filesystem": fs_type(base), "payload_bytes": len(typical_kill(0))}
    for fsync, deliver in ((True, False), (False, False), (True, True)):
        n, elapsed, on_disk = run(directory, fsync, seconds, deliver)
        key = f"fsync={fsync} {'append+ack' if deliver else 'append'}"
        out[key] = {"events_per_s": round(n / elapsed), "us_per_event": round(elapsed / n * 1e6, 1)}
        log(f"  spool {key}: {n / elapsed:.0f} events/s")
    shutil.rmtree(directory, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="directory to benchmark in (default: a new one under /var/tmp)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each run (default 3)")
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="bench-spool-", dir="/var/tmp")
    os.makedirs(base, exist_ok=True)
    directory = os.path.join(base, "spool")
    fs = fs_type(base)
    size = len(typical_kill(0))
    print(f"spool in {directory} ({fs or 'unknown filesystem'}), OomKill JSON payload {size} bytes")
    try:
        for fsync, deliver in ((True, False), (False, False), (True, True)):
            n, elapsed, on_disk = run(directory, fsync, args.seconds, deliver)
            what = "append+ack" if deliver else "append"
            print(f"fsync={str(fsync):5} {what:10} {n / elapsed:9.0f} events/s  ({n} in {elapsed:.2f}s)"
                  + ("" if deliver else f"  {on_disk / n:.0f} bytes/event on disk"))
        run(directory, False, 60, False)  # a nearly full spool (60 MiB) to reopen
        start = time.perf_counter()
        with Spool(directory) as sp:
            opened = time.perf_counter() - start
            count, mib = sp.stats()["pending"], sp.stats()["bytes"] / 2**20
            start = time.perf_counter()
            while batch := sp.pending(limit=100):
                sp.ack(batch[-1][0])
            drained = time.perf_counter() - start
        print(f"reopen (scan + crc of {count} events, {mib:.1f} MiB): {opened * 1000:.0f} ms; "
              f"drain via pending(100)+ack: {count / drained:.0f} events/s")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
