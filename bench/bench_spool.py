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
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from otel_oom.kill import OomKill, SOURCE_KERNEL  # noqa: E402
from otel_oom.spool import Spool  # noqa: E402


def typical_kill(i: int) -> bytes:
    pod = "8f3c2a71-5b2e-4c1d-9a7e-2f6b4d1e0c9a"
    cid = "4b6f0d1e9c2a7b3f5e8d6c1a0b9e7f2d3c5a8b1e6d4f7a9c0b2e5d8f1a3c6b9e"
    path = f"/kubepods/burstable/pod{pod}/{cid}"
    return OomKill(
        event_id=f"3f1e6a2c-8b4d-4e7f-9a1c-5d2b7e0f4a6c:{1_234_567_890_123 + i}:{40_000 + i}",
        time_unix_nano=1_732_500_000_000_000_000 + i, boot_time_ns=1_234_567_890_123 + i,
        hook="tp_btf", context_hook="fentry", recovered=False,
        victim_pid=40_000 + i, victim_tid=40_000 + i, victim_comm="java", victim_ppid=39_998,
        victim_uid=1000, oom_score_adj=968, total_vm_bytes=4_831_838_208, anon_rss_bytes=536_358_912,
        file_rss_bytes=12_582_912, shmem_rss_bytes=0, pgtables_bytes=2_129_920,
        cgroup_path=path, cgroup_line=f"4:memory:{path}", container_runtime="containerd",
        container_id=cid, pod_uid=pod, pod_qos_class="burstable",
        trigger_pid=40_000 + i, trigger_tid=40_017 + i, trigger_comm="C2 CompilerThre",
        constraint="memcg", constraint_source=SOURCE_KERNEL, memcg_path=path,
        memcg_limit_bytes=536_870_912, memcg_usage_bytes=536_866_816, memcg_source=SOURCE_KERNEL,
        domain_bytes=536_870_912, badness_points=1_139, gfp_mask=0xcc0, order=0,
        decision_id=f"3f1e6a2c-8b4d-4e7f-9a1c-5d2b7e0f4a6c:{1_234_567_890_123 + i}",
    ).to_json().encode()


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="directory to benchmark in (default: a new one under /var/tmp)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each run (default 3)")
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="bench-spool-", dir="/var/tmp")
    os.makedirs(base, exist_ok=True)
    directory = os.path.join(base, "spool")
    fs = subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()
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
