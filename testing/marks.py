"""A real OOM *mark* that is not a kill, for tests: the kernel marks a victim that is already exiting.

When the task the OOM killer chooses is already exiting (`task_will_free_mem`), the kernel does not
kill it: it only marks it (`mark_victim` fires) so that it may use the memory reserves and let the
OOM reaper free its memory; nothing is counted in /proc/vmstat `oom_kill` and no "Killed process"
line is printed. To hold a task in that state: a process P in a throwaway memory cgroup allocates
most of the limit and exits while traced with PTRACE_O_TRACEEXIT, so it stops inside do_exit with its
memory still attached; a second process Q then allocates in the same cgroup, the OOM killer picks P
(the biggest), finds it exiting and marks it; the reaper frees P's memory and Q finishes. Then P is
let go. Only the throwaway cgroup is ever under pressure.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from otel_oom.trigger import ThrowawayCgroup, memory_hierarchy, oom_kill_counter

PTRACE_CONT, PTRACE_DETACH, PTRACE_SEIZE = 7, 17, 0x4206
PTRACE_O_TRACEEXIT, PTRACE_EVENT_EXIT = 0x40, 6
MiB = 1 << 20

_ALLOCATE = r"""
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
size = int(sys.argv[2])
buf = bytearray(size)
buf[::4096] = b"\1" * (size // 4096)
sys.stdout.write("allocated\n")
sys.stdout.flush()
sys.stdin.buffer.read(1)
os._exit(0)
"""


@dataclass(frozen=True)
class Mark:
    pid: int            # the task that was marked, not killed
    cgroup_path: str    # its memory cgroup, relative to the hierarchy
    finisher_exit: int  # the second process's exit code (0: it got its memory, nobody was killed)
    memcg_oom_kills: int  # the cgroup's own oom_kill counter at the end: 0, the kernel killed nobody


def _spawn(procs: str, size: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _ALLOCATE, procs, str(size)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"allocated\n"
    return p


def mark_without_kill(limit_bytes: int = 64 * MiB, name: str = "") -> Mark:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    mount, version = memory_hierarchy()
    cg = ThrowawayCgroup(mount, version, [name or f"otel-oom-mark-{os.getpid()}-{time.monotonic_ns() % 10**6}"])
    cg.create(limit_bytes)
    try:
        procs = os.path.join(cg.leaf, "cgroup.procs")
        exiting = _spawn(procs, limit_bytes * 5 // 8)
        if libc.ptrace(PTRACE_SEIZE, exiting.pid, None, ctypes.c_void_p(PTRACE_O_TRACEEXIT)) != 0:
            raise OSError(ctypes.get_errno(), "ptrace(PTRACE_SEIZE)")
        assert exiting.stdin is not None
        exiting.stdin.write(b"x")
        exiting.stdin.flush()
        _, status = os.waitpid(exiting.pid, 0)
        assert os.WIFSTOPPED(status) and status >> 16 == PTRACE_EVENT_EXIT, status  # stopped inside do_exit
        finisher = _spawn(procs, limit_bytes * 5 // 8)  # only gets its memory once the exiting one's is reaped
        assert finisher.stdin is not None
        finisher.stdin.write(b"x")
        finisher.stdin.flush()
        code = finisher.wait(30)
        kills = oom_kill_counter(cg.leaf, version)
        libc.ptrace(PTRACE_DETACH, exiting.pid, None, None)
        exiting.wait(30)
        for p in (exiting, finisher):
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    stream.close()
        return Mark(exiting.pid, cg.rel, code, kills)
    finally:
        cg.remove()
