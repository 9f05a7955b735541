"""A real OpenTelemetry Collector (the `make collector` build) as a child process, for tests.

    binary = collector_binary()                       # None until `make collector` ran
    with CollectorProcess(binary, [CONFIG], overrides={"receivers::otlp::protocols::grpc::endpoint": "127.0.0.1:4317"},
                          env={...}) as col:
        ...

Shipped configurations are run as they are: tests change single keys only through the
Collector's own `--config=yaml:<path>: <value>` overrides (ports, directories, the Kubernetes
auth type, the retry window), and endpoints through the `${env:...}` variables the files use.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .otlp_receiver import free_port

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "tools" / "collector" / "build.sh"
READY_LINE = "Everything is ready"


def collector_binary() -> Optional[str]:
    """The absolute path of the cached `make collector` build, or None if it is not built."""
    r = subprocess.run([str(BUILD_SCRIPT), "--check"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None


def override_args(overrides: Mapping[str, object]) -> list[str]:
    """`--config=yaml:a::b: <value as JSON>` (JSON is YAML flow syntax) for each key path."""
    return [f"--config=yaml:{path}: {json.dumps(value)}" for path, value in overrides.items()]


def loopback_overrides(config: Mapping, scratch: Path) -> dict[str, object]:
    """Overrides that move everything a config listens on to free loopback ports and every
    file_storage directory under scratch, so several Collectors (and other test runs) can share
    a machine. `config` is the parsed YAML."""
    out: dict[str, object] = {}
    for rid, rcfg in (config.get("receivers") or {}).items():
        for proto in ((rcfg or {}).get("protocols") or {}):
            out[f"receivers::{rid}::protocols::{proto}::endpoint"] = f"127.0.0.1:{free_port()}"
    for eid in config.get("extensions") or {}:
        if eid.split("/")[0] == "health_check":
            out[f"extensions::{eid}::endpoint"] = f"127.0.0.1:{free_port()}"
        if eid.split("/")[0] == "file_storage":
            out[f"extensions::{eid}::directory"] = str(scratch / eid.replace("/", "-"))
    # the Collector's own metrics: a free port instead of 8888
    out["service::telemetry::metrics::readers"] = [
        {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": free_port()}}}}]
    return out


def collector_env(**extra: str) -> dict[str, str]:
    """This process's environment without OTEL_* and K8S_* (the configs read a few), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "K8S_", "KUBE"))}
    env.update(extra)
    return env


def validate(binary: str, configs: Sequence[str], overrides: Mapping[str, object] = {},
             env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "validate", *(f"--config={c}" for c in configs), *override_args(overrides)],
                          capture_output=True, text=True, env=dict(env) if env is not None else collector_env(),
                          timeout=60)


class CollectorProcess:
    """`otelcol-otel-oom --config=...` started and waited for until it logs that it is ready."""

    def __init__(self, binary: str, configs: Sequence[str], overrides: Mapping[str, object] = {},
                 env: Optional[Mapping[str, str]] = None, ready_timeout: float = 60.0) -> None:
        self.argv = [binary, *(f"--config={c}" for c in configs), *override_args(overrides)]
        self.env = dict(env) if env is not None else collector_env()
        self.ready_timeout = ready_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.lines: list[str] = []

    def start(self) -> "CollectorProcess":
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(self.ready_timeout) or not any(READY_LINE in line for line in self.lines):
            self.stop(9)
            raise RuntimeError(f"the Collector did not become ready:\n{self.log_text()}")
        # otelcol installs its SIGTERM handler only after it logged that it is ready: a signal
        # in that window kills it with the default action (exit status -15)
        time.sleep(0.3)
        return self

    def _pump(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if READY_LINE in line:
                ready.set()
        proc.stdout.close()
        ready.set()  # exited: wake the waiter, which finds no ready line

    def log_text(self) -> str:
        return "".join(self.lines)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = 15, timeout: float = 30.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def __enter__(self) -> "CollectorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def wait_http_ok(url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url):
            return True
        time.sleep(0.1)
    return False
