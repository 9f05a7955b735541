"""OOM storms for tests and benchmarks: many real kills, confined to throwaway memory cgroups.

Built on `otel_oom.trigger` (the same cgroup creation, limits read back, and clean-up) but not part
of the shipped package: only tests and bench cause hundreds of kills on purpose.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from otel_oom.trigger import (
    ThrowawayCgroup,
    TriggerError,
    check_limit,
    memory_hierarchy,
    oom_kill_counter,
    read_line,
    require_root,
    stop_child,
)

# A storm spawner lives inside its cgroup and forks victims one at a time: forking a warm interpreter
# is far cheaper than starting a new one. Each victim raises its oom_score_adj to 1000 so the kernel
# always picks it over the spawner (its badness then exceeds the memcg's whole limit); the spawner
# does not lower its own, as some kernels (this project's CI VM among them) refuse negative values.
_SPAWNER = r"""
import os, sys
procs = sys.argv[1]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
sys.stdout.write("ready\n")
sys.stdout.flush()
count = int(sys.stdin.readline())
out = []
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
            chunks = []
            while True:
                chunk = bytearray(1 << 20)
                chunk[::4096] = b"\1" * 256
                chunks.append(chunk)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    out.append("%d %d" % (pid, 1 if killed else 0))
sys.stdout.write("\n".join(out) + "\n")
sys.stdout.flush()
"""



@dataclass(frozen=True)
class StormResult:
    kills_caused: int         # sum of the storm cgroups' oom_kill counters
    victim_pids: list[int] = field(default_factory=list)
    seconds: float = 0.0



def trigger_storm(cgroups: int = 8, kills: int = 800, limit_bytes: int = 4 * 2**20,
                  parallel: Optional[int] = None, timeout: float = 300.0, sys_root: str = "") -> StormResult:
    """Cause `kills` OOM kills spread over `cgroups` throwaway memcgs, as fast as the machine allows.

    One spawner per cgroup lives inside it and forks victims one after another; `parallel` caps how
    many cgroups are worked at once (default: all of them). kills_caused is what the kernel counted.
    """
    check_limit(limit_bytes)
    if cgroups < 1 or kills < 1:
        raise ValueError(f"cgroups={cgroups} and kills={kills} must both be at least 1")
    parallel = cgroups if parallel is None else parallel
    if parallel < 1:
        raise ValueError(f"parallel={parallel} must be at least 1")
    require_root()
    mount, version = memory_hierarchy(sys_root)
    base = f"otel-oom-storm-{os.getpid()}-{secrets.token_hex(2)}"
    shares = [kills // cgroups + (1 if i < kills % cgroups else 0) for i in range(cgroups)]
    work = [(ThrowawayCgroup(mount, version, [f"{base}-{i}"]), n) for i, n in enumerate(shares) if n]
    victims: list[int] = []
    caused = 0
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    for at in range(0, len(work), parallel):
        batch = work[at:at + parallel]
        procs: list[subprocess.Popen] = []
        try:
            for cg, _ in batch:
                cg.create(limit_bytes)
                procs.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _SPAWNER,
                     os.fsencode(os.path.join(cg.leaf, "cgroup.procs"))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for proc, (cg, _) in zip(procs, batch, strict=False):
                try:
                    read_line(proc, deadline)
                except (TimeoutError, EOFError):
                    raise TriggerError(f"storm spawner for {cg.rel!r} did not start: "
                                       f"{stop_child(proc) or 'timed out'}") from None
                if proc.pid not in cg.procs():
                    raise TriggerError(f"storm spawner {proc.pid} is not in {cg.rel!r}; stopping")
            for proc, (_, share) in zip(procs, batch, strict=False):
                proc.stdin.write(f"{share}\n".encode())  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            for proc, (cg, _) in zip(procs, batch, strict=False):
                try:
                    out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise TriggerError(f"OOM storm did not finish within {timeout}s; stopped it and "
                                       "removed its cgroups") from None
                if proc.returncode != 0:
                    raise TriggerError(f"storm spawner for {cg.rel!r} failed with status {proc.returncode}")
                for line in out.decode().splitlines():
                    pid, killed = line.split()
                    if killed == "1":
                        victims.append(int(pid))
            for cg, _ in batch:
                caused += oom_kill_counter(cg.leaf, version)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    stop_child(proc)
            for cg, _ in batch:
                cg.remove()
    return StormResult(kills_caused=caused, victim_pids=victims, seconds=time.monotonic() - start)


def kill_repeatedly(cgroup: ThrowawayCgroup, count: int, timeout: float = 300.0) -> list[int]:
    """`count` OOM kills, one after another as fast as they come, in `cgroup` (created by the caller,
    with its limit, and left for the caller to remove: its own kill counter stays readable). Returns
    the pids the kernel killed (SIGKILL), in order."""
    procs = os.fsencode(os.path.join(cgroup.leaf, "cgroup.procs"))
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SPAWNER, procs],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        read_line(proc, deadline)
        if proc.pid not in cgroup.procs():
            raise TriggerError(f"spawner {proc.pid} is not in {cgroup.rel!r}; stopping")
        out, _ = proc.communicate(f"{count}\n".encode(), timeout=max(0.0, deadline - time.monotonic()))
    finally:
        if proc.returncode is None:
            stop_child(proc)
    return [int(pid) for pid, killed in (line.split() for line in out.decode().splitlines()) if killed == "1"]
