"""The kernel's side of the reconciliation, in files: a /proc with a boot id and the OOM kill counter
(`vmstat` oom_kill), and a kernel log holding each kill's "Killed process" line, as
`reconcile/kcounters.py` and `reconcile/kmsg.py` read them. A test double of the kernel's own record
of its kills (the real one counts every kill on the host, other tests' included), for tests of what
the agent recovers and counts; the kills themselves come from `events.ScriptedSource` or are
"missed" by leaving them out of it."""
from __future__ import annotations

import os
from pathlib import Path

from otel_oom.kernel import wire
from testing.inprocess import sample


class FakeKernel:
    def __init__(self, root: "str | os.PathLike[str]", boot_id: str = "4d3c2b1a-0f9e-4d8c-b7a6-958473625140") -> None:
        self.root = Path(root)
        self.boot_id = boot_id
        self.count = 0
        self.seq = 0
        self.usec: dict[int, int] = {}   # victim pid -> the printk time of its line
        random = self.root / "proc" / "sys" / "kernel" / "random"
        random.mkdir(parents=True, exist_ok=True)
        (random / "boot_id").write_text(boot_id + "\n")
        self.kmsg_file.write_bytes(b"")
        self._write_count()

    @property
    def proc_root(self) -> str:
        return str(self.root / "proc")

    @property
    def kmsg_file(self) -> Path:
        return self.root / "kmsg"

    @property
    def kmsg_path(self) -> str:
        return str(self.kmsg_file)

    def _write_count(self) -> None:
        (self.root / "proc" / "vmstat").write_text(f"nr_free_pages 1\noom_kill {self.count}\n")

    def _line(self, text: str, prio: int = 3) -> int:
        self.seq += 1
        usec = self.seq * 1_000_000
        with open(self.kmsg_file, "a") as f:
            f.write(f"{prio},{self.seq},{usec},-;{text}\n")
        return usec

    def user_line(self, text: str) -> None:
        """A line a root process wrote to /dev/kmsg: the kernel stores it with facility 1 (user)."""
        self._line(text, prio=12)

    def kill(self, pid: int, cgroup: "str | None" = None) -> None:
        """A kernel OOM kill of `pid`: counted, and its line in the log; with `cgroup`, the OOM
        report's summary line (naming the victim's memory cgroup, the one whose limit was hit) before it."""
        prefix = ""
        if cgroup is not None:
            self._line(f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
                       f"oom_memcg={cgroup},task_memcg={cgroup},task=victim{pid},pid={pid},uid=0", prio=6)
            prefix = "Memory cgroup out of memory: "
        self.usec[pid] = self._line(f"{prefix}Killed process {pid} (victim{pid}) total-vm:1000kB, anon-rss:900kB, "
                                    "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:64kB oom_score_adj:0")
        self.count += 1
        self._write_count()

    def group_kill(self, path: str, pids: tuple[int, ...]) -> None:
        """A memory.oom.group kill: the chosen victim, the group line, every member (the chosen one
        again: the kernel counts it twice)."""
        self.kill(pids[0])
        first = self.usec[pids[0]]
        self._line(f"Tasks in {path} are going to be killed due to memory.oom.group set")
        for pid in pids:
            self.kill(pid)
        self.usec[pids[0]] = first  # its first line is the one a recovery reads

    def kmsg_id(self, pid: int) -> str:
        """The oom.event.id a kill recovered from the log gets: the boot, its printk time, the pid."""
        return f"{self.boot_id}:{self.usec[pid] * 1000}:{pid}"


# a kernel kill (the victim was sent SIGKILL), as opposed to sample()'s default: a victim marked while exiting
KILLED = wire.F_VICTIM_TASK | wire.F_MM_SIZES | wire.F_BOOT_CLOCK | wire.F_SIGKILLED


def kernel_kill(kernel: FakeKernel, pid: int) -> bytes:
    """The kernel kills `pid`: counted, logged, and the probe's sample of it."""
    kernel.kill(pid)
    return sample(pid, flags=KILLED)


def userspace_kill(pid: int) -> bytes:
    """earlyoom's SIGKILL: the probe sees it, the kernel's OOM counter does not move."""
    return sample(pid, flags=KILLED, hook=4, trigger_comm=b"earlyoom", trigger_tgid=999, trigger_pid=999)


def kills(rx) -> list[tuple[int, bool, str]]:
    return [(r["attributes"]["process.pid"], r["attributes"]["oom.recovered"], r["attributes"]["oom.event.id"])
            for r in rx.log_records() if r["event_name"] == "oom.kill"]
