"""Cause real OOM kills on purpose, confined to throwaway memory cgroups with small limits.

This is the project's ground truth for tests, self-checks and benchmarks: every kill it causes
happens inside a memory cgroup it created itself, with a limit it wrote and read back before the
victim was allowed to allocate, so the host's memory is never under pressure.
"""
from __future__ import annotations

import errno
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, Union

from .cgroupfs import memcg
from .cgroupfs.hierarchy import CgroupError, detect_memory_hierarchy

MIN_LIMIT_BYTES = 4 * 2**20
MAX_LIMIT_BYTES = 2**30

# The victim joins the leaf cgroup before it allocates anything of its own, names itself, reports
# the comm the kernel now holds (hex, so control characters survive the pipe), then waits for the
# parent's go byte: the parent only sends it once the limit is read back and the pid is in the leaf.
_VICTIM = r"""
import os, sys, ctypes
procs, comm_hex = sys.argv[1], sys.argv[2]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
if comm_hex:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(15, ctypes.c_char_p(bytes.fromhex(comm_hex)), 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_NAME) failed: errno %d" % ctypes.get_errno())
with open("/proc/self/comm", "rb") as f:
    comm = f.read()[:-1]
sys.stdout.write(comm.hex() + "\n")
sys.stdout.flush()
if sys.stdin.buffer.read(1) != b"g":
    sys.exit(3)
chunks = []
while True:
    chunk = bytearray(1 << 20)
    chunk[::4096] = b"\1" * 256
    chunks.append(chunk)
"""

class TriggerError(Exception):
    """An OOM kill could not be caused safely; the message says what to do."""


@dataclass(frozen=True)
class TriggerResult:
    victim_pid: int
    cgroup_path: str          # relative to the memory hierarchy mount, e.g. "/otel-oom-trigger-1234-ab12"
    cgroup_id: int            # inode of the leaf cgroup directory
    memcg_oom_kills: int      # the leaf memcg's oom_kill counter after the kill
    victim_comm: bytes = b""  # /proc/<pid>/comm as the victim saw it just before allocating
    hierarchy_version: int = 0  # 1 or 2
    mount: str = ""           # where the memory hierarchy is mounted


# ---------------------------------------------------------------------------------------------
# memory hierarchy detection

def memory_hierarchy(sys_root: str = "") -> tuple[str, int]:
    """Return (mount point, cgroup version) of the memory controller, or raise TriggerError."""
    try:
        h = detect_memory_hierarchy(mountinfo=f"{sys_root}/proc/self/mountinfo",
                                    proc_cgroups=f"{sys_root}/proc/cgroups", sys_root=sys_root)
    except (CgroupError, OSError) as e:
        raise TriggerError(f"cannot find the memory cgroup hierarchy: {e}") from None
    if h is None:
        raise TriggerError("no memory cgroup controller is mounted (neither a v1 'memory' hierarchy nor a "
                           "cgroup2 mount offering 'memory'); mount one to cause OOM kills")
    return sys_root + h.mount, h.version


# ---------------------------------------------------------------------------------------------
# small file helpers

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def oom_kill_counter(leaf: str, version: int) -> int:
    """The memcg's own count of OOM kills (it and below: v1 memory.oom_control, v2 memory.events)."""
    n = memcg.oom_kills(version, leaf)
    if n is None:
        raise TriggerError(f"no 'oom_kill' counter readable in {leaf}; kernel too old (needs 4.13+)")
    return n


def _components(cgroup: Union[str, bytes]) -> list[str]:
    text = os.fsdecode(cgroup)
    parts = [p for p in text.split("/") if p]
    if not parts:
        raise ValueError(f"cgroup {text!r} names the hierarchy root; give a path below it, "
                         "e.g. '/otel-oom-test'")
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"cgroup {text!r} contains '.' or '..'; give a plain path below the mount")
    return parts


class ThrowawayCgroup:
    """A leaf memory cgroup (and any missing ancestors) that this process created and will remove."""

    def __init__(self, mount: str, version: int, parts: list[str]):
        self.mount, self.version, self.parts = mount, version, parts
        self.rel = "/" + "/".join(parts)
        self.leaf = os.path.join(mount, *parts)
        self.created: list[str] = []

    def create(self, limit_bytes: int) -> None:
        if os.path.exists(self.leaf):
            raise TriggerError(f"cgroup {self.rel!r} already exists; trigger_oom only puts limits on a "
                               "cgroup it creates itself: choose another path")
        cur = self.mount
        for i, part in enumerate(self.parts):
            parent, cur = cur, os.path.join(cur, part)
            if self.version == 2:
                self._enable_memory(parent)
            if i < len(self.parts) - 1 and os.path.isdir(cur):
                continue
            try:
                os.mkdir(cur)
            except OSError as e:
                raise TriggerError(f"cannot create cgroup {cur!r}: {e.strerror} (the kernel refuses "
                                   "names with a newline, and needs a writable hierarchy)") from None
            self.created.append(cur)
        try:
            self._limit(limit_bytes)
        except OSError as e:
            raise TriggerError(f"cannot set the memory limit of cgroup {self.rel!r}: {e.strerror} "
                               f"({e.filename})") from None

    @staticmethod
    def _enable_memory(parent: str) -> None:
        # cgroup2 only hands the memory controller to children the parent enables it for.
        # Left enabled afterwards: turning it off again could break siblings that now rely on it.
        ctl = os.path.join(parent, "cgroup.subtree_control")
        if "memory" in _read(ctl).split():
            return
        try:
            _write(ctl, "+memory")
        except OSError as e:
            raise TriggerError(f"cannot enable the memory controller in {ctl}: {e.strerror} "
                               "(cgroup2 refuses it on a cgroup that holds processes)") from None

    def _limit(self, limit_bytes: int) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        want = limit_bytes // page * page
        if self.version == 1:
            limit_file = os.path.join(self.leaf, "memory.limit_in_bytes")
            _write(limit_file, str(limit_bytes))
            memsw = os.path.join(self.leaf, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # so swap cannot absorb the allocation
                _write(memsw, str(limit_bytes))
                if int(_read(memsw)) != want:
                    raise TriggerError(f"{memsw} did not take the limit {want}")
            # v1 children inherit oom_kill_disable; a disabled killer would hang the victim instead
            _write(os.path.join(self.leaf, "memory.oom_control"), "0")
        else:
            limit_file = os.path.join(self.leaf, "memory.max")
            _write(limit_file, str(limit_bytes))
            swap = os.path.join(self.leaf, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
        got = memcg.limit_bytes(self.version, self.leaf)  # None: unlimited (or unreadable)
        if got != want:
            shown = "no limit" if got is None else got
            raise TriggerError(f"{limit_file} reads {shown} after writing {limit_bytes}; refusing to let "
                               "a victim allocate without a limit")

    def procs(self) -> list[int]:
        return memcg.procs(self.leaf)

    def remove(self, wait: float = 5.0) -> None:
        """rmdir what we created, leaf first; a just-reaped victim can keep the cgroup busy briefly."""
        deadline = time.monotonic() + wait
        while self.created:
            path = self.created[-1]
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise TriggerError(f"cannot remove cgroup {path!r}: {e.strerror}; remove it by hand "
                                   "once its tasks are gone") from None
            self.created.pop()


def check_limit(limit_bytes: int) -> None:
    if not isinstance(limit_bytes, int) or isinstance(limit_bytes, bool):
        raise ValueError(f"limit_bytes must be an int, got {limit_bytes!r}")
    if limit_bytes < MIN_LIMIT_BYTES:
        raise ValueError(f"limit_bytes={limit_bytes} is below 4 MiB: the victim interpreter could not "
                         "even start its allocation loop reliably; use at least 4194304")
    if limit_bytes > MAX_LIMIT_BYTES:
        raise ValueError(f"limit_bytes={limit_bytes} is above 1 GiB: trigger_oom never lets a victim "
                         "take that much of the host; use at most 1073741824")


def _comm_bytes(comm: Union[str, bytes, None]) -> bytes:
    if comm is None:
        return b""
    raw = comm.encode("utf-8", "surrogateescape") if isinstance(comm, str) else bytes(comm)
    if not raw or len(raw) > 15 or b"\0" in raw:
        raise ValueError(f"comm {comm!r} must be 1-15 bytes without NUL (the kernel's TASK_COMM_LEN)")
    return raw


def require_root() -> None:
    if os.geteuid() != 0:
        raise TriggerError("causing an OOM kill needs root (to create a memory cgroup); run as root")


def read_line(proc: subprocess.Popen, deadline: float) -> bytes:
    buf = b""
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def stop_child(proc: subprocess.Popen) -> str:
    """Kill (if still running) and reap a child; return the last line it wrote to stderr."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    err = proc.stderr.read() if proc.stderr else b""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def trigger_oom(limit_bytes: int = 32 * 2**20, cgroup: Union[str, bytes, None] = None,
                comm: Union[str, bytes, None] = None, timeout: float = 30.0, keep_cgroup: bool = False,
                sys_root: str = "") -> TriggerResult:
    """Start a victim in a fresh memory cgroup limited to limit_bytes and let the kernel OOM-kill it."""
    check_limit(limit_bytes)
    comm_raw = _comm_bytes(comm)
    parts = _components(cgroup if cgroup is not None
                        else f"/otel-oom-trigger-{os.getpid()}-{secrets.token_hex(2)}")
    require_root()
    mount, version = memory_hierarchy(sys_root)
    cg = ThrowawayCgroup(mount, version, parts)
    deadline = time.monotonic() + timeout
    proc: Optional[subprocess.Popen] = None
    done = False
    try:
        cg.create(limit_bytes)
        before = oom_kill_counter(cg.leaf, version)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _VICTIM,
             os.fsencode(os.path.join(cg.leaf, "cgroup.procs")), comm_raw.hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
        try:
            comm_seen = bytes.fromhex(read_line(proc, deadline).decode().strip())
        except TimeoutError:
            stop_child(proc)
            raise TriggerError(f"victim did not start within {timeout}s; machine overloaded?") from None
        except EOFError:
            why = stop_child(proc)
            raise TriggerError(f"victim exited before allocating: {why or 'no message'}") from None
        if proc.pid not in cg.procs():
            stop_child(proc)
            raise TriggerError(f"victim {proc.pid} is not in {cg.rel!r}; refusing to let it allocate")
        try:
            proc.stdin.write(b"g")  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # it died already: its exit status below says how
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_child(proc)
            raise TriggerError(f"victim {proc.pid} was not OOM-killed within {timeout}s (limit "
                               f"{limit_bytes} bytes); killed it and removed the cgroup") from None
        why = stop_child(proc)
        if proc.returncode != -signal.SIGKILL:
            raise TriggerError(f"victim {proc.pid} ended with status {proc.returncode}, not SIGKILL: "
                               f"{why or 'no message'}")
        after = oom_kill_counter(cg.leaf, version)
        if after <= before:
            raise TriggerError(f"victim {proc.pid} got SIGKILL but the memcg oom_kill counter stayed at "
                               f"{after}: something other than the OOM killer killed it")
        result = TriggerResult(victim_pid=proc.pid, cgroup_path=cg.rel, cgroup_id=os.stat(cg.leaf).st_ino,
                               memcg_oom_kills=after, victim_comm=comm_seen, hierarchy_version=version,
                               mount=mount)
        done = True
        return result
    finally:
        if proc is not None and proc.returncode is None:
            stop_child(proc)
        if not keep_cgroup:
            try:
                cg.remove()
            except TriggerError:
                if done:  # otherwise the error already on its way says more
                    raise
