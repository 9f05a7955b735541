"""The node's long-running processes: started in the node's namespaces, found again by pid file.

`make kube-up` returns while the node keeps running, and `make kube-down` is another process:
each daemon runs in a session of its own (so neither make nor a test's Ctrl-C signals it), writes
its output to <state>/logs/<name>.log, and is remembered in <state>/pids/<name>. A pid is only
signalled while /proc/<pid>/cmdline still names the binary it was started as, never by name.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional, Sequence

from .layout import Node


class Daemon:
    def __init__(self, node: Node, name: str, argv: Sequence[str] = ()) -> None:
        self.node, self.name, self.argv = node, name, list(argv)

    @property
    def pid_file(self) -> Path:
        return self.node.state / "pids" / self.name

    @property
    def log_file(self) -> Path:
        return self.node.logs / f"{self.name}.log"

    def start(self) -> "Daemon":
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.node.logs.mkdir(parents=True, exist_ok=True)
        argv = [*self.node.enter(), *self.argv]
        # a bare spawn, not a Popen: the daemon outlives this object (and `make kube-up`), and is
        # reaped by pid (running_pid) while this process is its parent
        pid = os.posix_spawnp(argv[0], argv, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(self.log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2)])
        self.pid_file.write_text(f"{pid} {self.argv[0]}\n")
        # nsenter execs the binary, so the pid is the daemon's own; until then its command line is nsenter's
        deadline = time.monotonic() + 10
        while self.pid() is None and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def _recorded(self) -> tuple[int, str]:
        try:
            pid_text, binary = self.pid_file.read_text().split(maxsplit=1)
            return int(pid_text), binary.strip()
        except (OSError, ValueError):
            return 0, ""

    def pid(self) -> Optional[int]:
        """The daemon's pid while it runs (not a zombie, still the binary it was started as), else None."""
        pid, binary = self._recorded()
        return running_pid(pid, binary) if pid else None

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, timeout: float = 20.0) -> None:
        """Needs only the pid file: `make kube-down` knows no argv."""
        pid, binary = self._recorded()
        if pid and running_pid(pid, binary) is not None:
            terminate(pid, binary, timeout)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return f"({self.name}: no log)"
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def running_pid(pid: int, binary: str) -> Optional[int]:
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode(errors="replace")
    except (OSError, IndexError):
        return None
    if state in ("Z", "X") or argv0 != binary:
        return None
    return pid


def terminate(pid: int, binary: str, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if running_pid(pid, binary) is None:
                return
            time.sleep(0.1)
    raise RuntimeError(f"pid {pid} ({binary}) survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect our own exited child (started by this process), so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
