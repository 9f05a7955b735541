"""The simulation's child processes: start, wait until healthy, SIGKILL, stall (SIGSTOP), restart,
and what each cost (CPU seconds and resident memory, read from /proc while it runs, summed over
restarts)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def read_usage(pid: int) -> Optional[tuple[float, int, int]]:
    """(CPU seconds, RSS bytes, peak RSS bytes) of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            hwm = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15, rss 24
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE, hwm


@dataclass
class Proc:
    """One component process (`tier` groups them: node, gateway, vlinsert, ...)."""
    name: str
    tier: str
    argv: list[str]
    log: Path
    health: str                              # URL answering 2xx once it is ready
    env: Optional[dict[str, str]] = None
    popen: Optional[subprocess.Popen] = None
    cpu_done: float = 0.0                    # CPU seconds of incarnations that ended
    cpu_now: float = 0.0                     # of the running one, at the last sample
    rss_now: int = 0
    hwm: int = 0                             # the highest peak RSS of any incarnation
    starts: int = 0
    events: list[tuple[str, float]] = field(default_factory=list)

    def start(self) -> "Proc":
        self.cpu_now = self.rss_now = 0
        with open(self.log, "ab") as out:
            # cwd: a VictoriaLogs node writes nothing outside its flags' paths, but keep it in scratch anyway
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                          cwd=self.log.parent, start_new_session=True)
        self.starts += 1
        self.events.append(("start", time.monotonic()))
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until the health URL answered; RuntimeError (with the log's tail) if it did not."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.running():
                break
            if http_ok(self.health):
                self.events.append(("healthy", time.monotonic()))
                return time.monotonic() - t0
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s:\n{tail}")

    def sample(self) -> None:
        if self.popen is None:
            return
        usage = read_usage(self.popen.pid)
        if usage is not None:
            self.cpu_now, self.rss_now, hwm = usage
            self.hwm = max(self.hwm, hwm)

    def _ended(self) -> None:
        self.cpu_done += self.cpu_now
        self.cpu_now = self.rss_now = 0
        self.popen = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and wait for the exit (what it used is sampled just before)."""
        if not self.running():
            return
        assert self.popen is not None
        self.sample()
        self.events.append(("signal" if sig != signal.SIGKILL else "sigkill", time.monotonic()))
        self.popen.send_signal(sig)
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._ended()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the process stalls (as a CPU-throttled or paused pod does); its sockets stay open
        and the kernel keeps taking what its peers send."""
        if self.running():
            assert self.popen is not None
            self.events.append(("sigstop", time.monotonic()))
            self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            assert self.popen is not None
            self.events.append(("sigcont", time.monotonic()))
            self.popen.send_signal(signal.SIGCONT)

    @property
    def cpu_s(self) -> float:
        return self.cpu_done + self.cpu_now


def start_all(procs: Sequence[Proc], timeout: float) -> None:
    """Start every process at once, then wait until each is healthy (start-up in parallel)."""
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait_healthy(max(5.0, deadline - time.monotonic()))


def stop_all(procs: Sequence[Proc], timeout: float = 60.0) -> None:
    """SIGTERM to every process at once, then wait for each (SIGKILL after `timeout`)."""
    live = [p for p in procs if p.running()]
    for p in live:
        p.sample()
        assert p.popen is not None
        p.popen.send_signal(signal.SIGTERM)
        p.popen.send_signal(signal.SIGCONT)  # a stalled process could not act on it
    deadline = time.monotonic() + timeout
    for p in live:
        assert p.popen is not None
        try:
            p.popen.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
        p._ended()
