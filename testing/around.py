"""The records around the kill, caused for real: memory pressure and OOMs without a kill in throwaway
memory cgroups, and a user-space OOM killer's SIGKILL. Built on `otel_oom.trigger.ThrowawayCgroup`
(a cgroup this process creates, with a limit it read back, removed afterwards), never the host.

    with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=60 * MiB) as h:   # 94 % of the limit, held
        h.start(); h.wait_held()
        ...
        h.release()                                                    # the holder exits normally

With `oom_kill_disable=True` (cgroup v1) a holder that asks for more than the limit hangs in the
kernel's OOM wait instead of being killed: `wait_blocked()` returns once it sleeps there, and
`raise_limit()` lets it finish. `fake_killer()` runs a process named like a user-space OOM killer
that sends SIGKILL to one pid.
"""
from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import sys
import time
from typing import Optional

from otel_oom.trigger import ThrowawayCgroup, memory_hierarchy, require_root

MiB = 1 << 20

# joins the cgroup, (optionally) changes its oom_score_adj, waits for "g", touches `hold` MiB in
# 1 MiB chunks, says "held", then waits for one byte on stdin: "m" allocates on until the kernel
# kills it, anything else (or EOF) exits 0
_HOLDER = r"""
import os, sys
procs, hold_mb, adj = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
if adj:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(adj)
sys.stdout.write("joined\n"); sys.stdout.flush()
if sys.stdin.buffer.read(1) != b"g":
    sys.exit(3)
held = []
for _ in range(hold_mb):
    chunk = bytearray(1 << 20)
    chunk[::4096] = b"\1" * 256
    held.append(chunk)
sys.stdout.write("held\n"); sys.stdout.flush()
if sys.stdin.buffer.read(1) == b"m":
    while True:
        chunk = bytearray(1 << 20)
        chunk[::4096] = b"\1" * 256
        held.append(chunk)
"""

# a stand-in for systemd-oomd & co: named like one (prctl PR_SET_NAME), it sends SIGKILL to one pid
_KILLER = r"""
import ctypes, os, signal, sys
name, pid = sys.argv[1].encode(), int(sys.argv[2])
if ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name), 0, 0, 0) != 0:
    sys.exit("prctl failed")
os.kill(pid, signal.SIGKILL)
print(os.getpid())
"""


class MemoryHolder:
    def __init__(self, limit_bytes: int, hold_bytes: int, *, oom_kill_disable: bool = False,
                 oom_score_adj: Optional[int] = None, name: Optional[str] = None) -> None:
        require_root()
        self.mount, self.version = memory_hierarchy()
        tag = name or f"otel-oom-around-hold-{os.getpid()}-{secrets.token_hex(2)}"
        self.cgroup = ThrowawayCgroup(self.mount, self.version, [tag])
        self.limit_bytes = limit_bytes
        self.hold_bytes = hold_bytes
        self.oom_kill_disable = oom_kill_disable
        self.oom_score_adj = oom_score_adj
        self.proc: Optional[subprocess.Popen] = None

    @property
    def path(self) -> str:
        return self.cgroup.rel

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> "MemoryHolder":
        self.cgroup.create(self.limit_bytes)
        if self.oom_kill_disable:
            if self.version != 1:
                raise RuntimeError("oom_kill_disable exists on cgroup v1 only")
            with open(os.path.join(self.cgroup.leaf, "memory.oom_control"), "w") as f:
                f.write("1")
        return self

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HOLDER, os.path.join(self.cgroup.leaf, "cgroup.procs"),
             str(self.hold_bytes // MiB), "" if self.oom_score_adj is None else str(self.oom_score_adj)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._expect("joined", 30)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"g")
        self.proc.stdin.flush()

    def _expect(self, word: str, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if line != word:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None and self.proc.stderr else ""
            raise AssertionError(f"holder {self.proc.pid} did not say {word!r} (got {line!r}) {err[-300:]}")

    def wait_held(self, timeout: float = 30.0) -> None:
        self._expect("held", timeout)

    def wait_blocked(self, timeout: float = 30.0) -> None:
        """oom_kill_disable: until the holder sleeps in the kernel's OOM wait (under_oom 1, state D)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(os.path.join(self.cgroup.leaf, "memory.oom_control")) as f:
                under = "under_oom 1" in f.read()
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if under and state == "D":
                return
            time.sleep(0.05)
        raise AssertionError(f"holder {self.pid} never blocked in the OOM wait")

    def raise_limit(self, limit_bytes: int) -> None:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        if self.version == 1:
            memsw = os.path.join(self.cgroup.leaf, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                with open(memsw, "w") as f:  # memsw first: it may never be below the memory limit
                    f.write(str(limit_bytes))
        with open(os.path.join(self.cgroup.leaf, name), "w") as f:
            f.write(str(limit_bytes))

    def grow(self) -> None:
        """Allocate on past the limit: the kernel OOM-kills the holder (wait_killed)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"m")
        self.proc.stdin.flush()

    def release(self, timeout: float = 30.0) -> int:
        """Let the holder exit; its exit status."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"x")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if s:
                    try:
                        s.close()
                    except BrokenPipeError:
                        pass
        if self.oom_kill_disable and os.path.isdir(self.cgroup.leaf):
            try:
                with open(os.path.join(self.cgroup.leaf, "memory.oom_control"), "w") as f:
                    f.write("0")
            except OSError:
                pass
        self.cgroup.remove()


def fake_killer(name: str, pid: int, timeout: float = 10.0) -> int:
    """Run a process whose comm is `name` that sends SIGKILL to `pid`; its own pid."""
    p = subprocess.run([sys.executable, "-I", "-S", "-c", _KILLER, name, str(pid)], capture_output=True,
                       text=True, timeout=timeout, check=True)
    return int(p.stdout.strip())


def wait_killed(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    proc.wait(timeout)
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"{proc.pid} ended with {proc.returncode}, not SIGKILL")


# ---- earlyoom, from Debian, unpacked (never installed: its package would start a host-wide daemon) ----
EARLYOOM_CACHE_ROOT = "/var/cache"


def earlyoom_binary() -> str:
    """Debian's earlyoom binary, unpacked with `apt-get download` + `dpkg-deb -x` into
    /var/cache/otel-oom-earlyoom-<version>/ (so no service is installed or started)."""
    import glob
    import shutil
    import tempfile

    found = sorted(glob.glob(f"{EARLYOOM_CACHE_ROOT}/otel-oom-earlyoom-*/usr/bin/earlyoom"))
    if found:
        return found[-1]
    policy = subprocess.run(["apt-cache", "policy", "earlyoom"], capture_output=True, text=True).stdout
    if "Candidate: (none)" in policy or "Candidate:" not in policy:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        policy = subprocess.run(["apt-cache", "policy", "earlyoom"], capture_output=True, text=True).stdout
    version = next((line.split(":", 1)[1].strip() for line in policy.splitlines() if "Candidate:" in line), "")
    if not version or version == "(none)":
        raise RuntimeError("Debian has no earlyoom package here (apt-cache policy earlyoom)")
    dest = f"{EARLYOOM_CACHE_ROOT}/otel-oom-earlyoom-{version}"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "earlyoom"], cwd=tmp, check=True, capture_output=True, timeout=300)
        deb = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".deb"))
        subprocess.run(["dpkg-deb", "-x", deb, f"{tmp}/x"], check=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(f"{tmp}/x", dest)
    return f"{dest}/usr/bin/earlyoom"


# The init of a private PID namespace (with its own /proc): starts a holder in the throwaway cgroup,
# then earlyoom, which sees only these processes and so can only kill them; reports the outcome.
_EARLYOOM_NS = r"""
import os, subprocess, sys
procs, earlyoom, holder = sys.argv[1], sys.argv[2], sys.argv[3]
h = subprocess.Popen([sys.executable, "-I", "-S", "-c", holder, procs, "24", "1000"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
assert h.stdout.readline().strip() == b"joined"
h.stdin.write(b"g"); h.stdin.flush()
assert h.stdout.readline().strip() == b"held"
sys.stdout.write("held\n"); sys.stdout.flush()
# every threshold met at once (available memory below 99 %, swap "below" 100 %): SIGKILL right away
e = subprocess.Popen([earlyoom, "-m", "99,99", "-s", "100,100", "-r", "3600"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
rc = h.wait(60)
e.kill(); e.wait()
sys.stdout.write(f"holder {rc}\n"); sys.stdout.flush()
"""


def earlyoom_kills_a_holder(cgroup_leaf: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run earlyoom against a holder in `cgroup_leaf`, confined to a new PID namespace; returns the
    holder's pid (as this namespace sees it) and what the namespace's init reported."""
    binary = earlyoom_binary()
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-I", "-S", "-c",
                          _EARLYOOM_NS, os.path.join(cgroup_leaf, "cgroup.procs"), binary, _HOLDER],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    if p.stdout.readline().strip() != "held":
        p.kill()
        raise AssertionError(f"the earlyoom namespace did not start: {p.stderr.read() if p.stderr else ''}")
    with open(os.path.join(cgroup_leaf, "cgroup.procs")) as f:
        pid = int(f.read().split()[0])
    out, err = p.communicate(timeout=timeout)
    return pid, (out + err).strip()
