"""Inside a throwaway QEMU guest (cgroup v2): the records around the kill, for real; judged by
tests/qemu/test_around_qemu.py on the host.

`python3 -m tests.qemu.around_cases --out FILE` starts a real OTLP gRPC receiver and one real
`otel-oom run` (fast clear and sweep intervals), then, one after another:

  usage     a holder at 94 % of a 64 MiB memory.max, then released   -> oom.pressure start/end (v2 usage)
  high      memory.high 16 MiB below a 256 MiB memory.max, a holder allocating 24 MiB
                                                                     -> oom.pressure (memory.events.high, PSI)
  nokill    the only task of a 32 MiB cgroup has oom_score_adj -1000 and asks for 48 MiB: the kernel
            declares OOM again and again and can kill nobody; then memory.max is raised
                                                                     -> oom.no_kill start/end (nothing_killable)
  kill      a plain memcg OOM kill (trigger_oom)                     -> oom.kill with its evidence, oom.reclaim
  host      the guest held at 93 % of its memory while a reader churns the page cache, then let go
                                                                     -> oom.pressure scope host, start/end
  global    the whole guest runs out of memory (an allocator at oom_score_adj 1000)
                                                                     -> oom.kill (global), oom.reclaim

and writes every log record the receiver got, with each case's pids and cgroups. The global case
puts the guest out of memory, so this refuses to run anywhere but in a harness guest (as
tests/qemu/guest_cases.py does).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from typing import Callable

from testing.agent_process import AgentProcess, agent_env
from tests.qemu.guest_cases import REPO, _refuse_outside_a_test_guest, _write, progress

MiB = 1 << 20
CASES = ("usage", "high", "nokill", "kill", "host", "global")
AGENT_ARGS = ["--pressure-clear-seconds=2", "--pressure-scan-interval=2"]

_GLOBAL = r"""
import sys
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
sys.stdout.write("ready\n"); sys.stdout.flush()
if sys.stdin.buffer.read(1) != b"g":
    sys.exit(3)
held = []
while True:
    chunk = bytearray(8 << 20)
    chunk[::4096] = b"\1" * 2048
    held.append(chunk)
"""


# fills memory in 4 MiB steps until MemAvailable is at most `floor` kB, says so, holds until told
_FILL = r"""
import sys
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
floor = int(sys.argv[1])
held = []
def available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
while available() > floor:
    chunk = bytearray(4 << 20)
    chunk[::4096] = b"\1" * 1024
    held.append(chunk)
sys.stdout.write("full\n"); sys.stdout.flush()
sys.stdin.buffer.read(1)
"""

# reads every file under a tree again and again: the page cache it needs is what the kernel must reclaim
_CHURN = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for d, _, files in os.walk(sys.argv[1]):
        for f in files:
            try:
                with open(os.path.join(d, f), "rb") as fh:
                    while fh.read(1 << 20):
                        pass
            except OSError:
                pass
            if time.monotonic() > end:
                break
"""


def _until(what: str, check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    progress(f"timed out waiting for {what}")
    return False


def _has(receiver, event: str, key: str, value, state=None) -> Callable[[], bool]:
    def check() -> bool:
        return any(r["event_name"] == event and r["attributes"].get(key) == value
                   and (state is None or state in r["attributes"].values()) for r in receiver.log_records())
    return check


def usage_case(receiver) -> dict:
    from testing.around import MemoryHolder

    with MemoryHolder(64 * MiB, 60 * MiB, name="around-usage") as h:
        h.start()
        h.wait_held(120)
        _until("the usage start", _has(receiver, "oom.pressure", "oom.memcg.path", h.path, "start"), 60)
        h.release(60)
        _until("the usage end", _has(receiver, "oom.pressure", "oom.memcg.path", h.path, "end"), 60)
        return {"cgroup": h.path, "pid": h.pid}


def high_case(receiver) -> dict:
    from testing.around import MemoryHolder

    with MemoryHolder(256 * MiB, 24 * MiB, name="around-high") as h:
        _write(os.path.join(h.cgroup.leaf, "memory.high"), str(16 * MiB))
        h.start()
        _until("the high start", _has(receiver, "oom.pressure", "oom.memcg.path", h.path, "start"), 90)
        _write(os.path.join(h.cgroup.leaf, "memory.high"), "max")  # let it finish
        h.wait_held(120)
        h.release(60)
        _until("the high end", _has(receiver, "oom.pressure", "oom.memcg.path", h.path, "end"), 60)
        return {"cgroup": h.path, "pid": h.pid}


def nokill_case(receiver) -> dict:
    from testing.around import MemoryHolder

    with MemoryHolder(32 * MiB, 48 * MiB, oom_score_adj=-1000, name="around-nokill") as h:
        h.start()
        _until("the no-kill start", _has(receiver, "oom.no_kill", "oom.memcg.path", h.path, "start"), 90)
        events = open(os.path.join(h.cgroup.leaf, "memory.events")).read()
        h.raise_limit(128 * MiB)  # released by the test: the allocation completes
        h.wait_held(120)
        rc = h.release(60)
        _until("the no-kill end", _has(receiver, "oom.no_kill", "oom.memcg.path", h.path, "end"), 60)
        return {"cgroup": h.path, "pid": h.pid, "returncode": rc, "memory_events": events}


def kill_case(receiver) -> dict:
    from otel_oom.trigger import trigger_oom

    k = trigger_oom(limit_bytes=32 * MiB, cgroup="/around-kill", timeout=120)
    _until("the reclaim", _has(receiver, "oom.reclaim", "process.pid", k.victim_pid), 60)
    return {"cgroup": k.cgroup_path, "pid": k.victim_pid}


def host_case(receiver) -> dict:
    total = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:")))
    fill = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILL, str(total * 7 // 100)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert fill.stdout is not None and fill.stdin is not None
    line = fill.stdout.readline().strip()
    churn = subprocess.Popen([sys.executable, "-I", "-S", "-c", _CHURN, sys.prefix, "60"])
    started = _until("the host pressure start", _has(receiver, "oom.pressure", "oom.pressure.scope", "host", "start"), 60)
    churn.kill()
    churn.wait()
    fill.stdin.write(b"x")
    fill.stdin.close()
    rc = fill.wait(60)
    _until("the host pressure end", _has(receiver, "oom.pressure", "oom.pressure.scope", "host", "end"), 60)
    return {"filled": line.decode(), "fill_rc": rc, "started": started, "mem_total_kb": total}


def global_case(receiver) -> dict:
    # as guest_cases.global_case: this process (and its receiver) must not be the victim, and keeps
    # its own pages resident so the OOM comes quickly under TCG
    _write("/proc/self/oom_score_adj", "-1000")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlockall(1 | 4)
    try:
        p = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GLOBAL], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None and p.stdin is not None
        p.stdout.readline()
        p.stdin.write(b"g")
        p.stdin.flush()
        rc = p.wait(240)
    finally:
        libc.munlockall()
        _write("/proc/self/oom_score_adj", "0")
    _until("the reclaim", _has(receiver, "oom.reclaim", "process.pid", p.pid), 60)
    return {"pid": p.pid, "returncode": rc}


def run(out_path: str, cases: list[str]) -> dict:
    from testing.otlp_receiver import OtlpGrpcReceiver

    doc: dict = {"release": os.uname().release, "cases": {}}
    receiver = OtlpGrpcReceiver().start()
    # metrics are not judged here: keep the guest's one CPU for the cases
    env = agent_env(receiver.endpoint, OTEL_METRIC_EXPORT_INTERVAL="60000")
    agent = AgentProcess(["--spool-dir=/tmp/around-spool", *AGENT_ARGS], env, ready_timeout=180)
    doc["agent_ready"] = next((line for line in agent.stderr_lines if " ready in " in line), None)
    try:
        for case in cases:
            t0 = time.monotonic()
            progress(f"case {case}")
            try:
                doc["cases"][case] = globals()[f"{case}_case"](receiver)
            except Exception as e:  # noqa: BLE001 - recorded; the host test says which case failed
                doc["cases"][case] = {"error": f"{type(e).__name__}: {e}"}
            doc["cases"][case]["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        doc["agent_rc"] = agent.stop(timeout=60)
        doc["agent_stderr"] = agent.stderr[-20000:]
        doc["records"] = receiver.log_records()
        receiver.stop()
    with open(out_path, "w") as f:
        json.dump(doc, f, ensure_ascii=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.qemu.around_cases", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    why = _refuse_outside_a_test_guest()
    if why:
        print(f"around_cases: refusing: {why}", file=sys.stderr)
        return 2
    os.chdir(REPO)
    doc = run(args.out, [c for c in args.cases.split(",") if c])
    print(json.dumps({c: ("error" in r) for c, r in doc["cases"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
