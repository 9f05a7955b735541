"""A real `otel-oom run` child process for tests and benchmarks, its stdout and stderr collected."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent


class AgentProcess:
    """A real `otel-oom run` child process, its stdout and stderr collected by threads."""

    def __init__(self, args: list[str], env: dict[str, str], ready_timeout: float = 30.0,
                 prefix: tuple[str, ...] = ()) -> None:
        """`prefix`: a command that execs the rest (e.g. unshare into a namespace first)."""
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "otel_oom", "run", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.ready_at: Optional[float] = None
        self._ready = threading.Event()
        self._pumps = [threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
                       for stream, sink in ((self.proc.stdout, self.stdout_lines), (self.proc.stderr, self.stderr_lines))]
        for pump in self._pumps:
            pump.start()
        if not self._ready.wait(ready_timeout):
            self.stop()
            raise AssertionError("agent not ready in time; stderr:\n" + self.stderr)

    def _pump(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "backslashreplace")
            sink.append(line)
            if sink is self.stderr_lines and " ready " in f" {line} " and self.ready_at is None:
                self.ready_at = time.monotonic()
                self._ready.set()
        stream.close()
        if sink is self.stderr_lines:
            self._ready.set()  # exited: wake the waiter, which then sees no ready line

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_stdout(self, predicate, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.stdout):
                return self.stdout
            time.sleep(0.05)
        raise AssertionError(f"stdout never matched; stdout:\n{self.stdout}\nstderr:\n{self.stderr}")

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        """Stop the agent; its exit code, once all it wrote has been read (stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for pump in self._pumps:   # on a loaded machine the readers lag behind the exit
            pump.join(30)
        return code


def agent_env(endpoint: Optional[str] = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "K8S_"))}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "500"
    env.update(extra)
    return env
