"""A real Jaeger (all-in-one v1.76, built from the Go module proxy) for the --traces tests.

`build()` runs tools/jaeger/build.sh (`make jaeger`; `make test-tools` runs it too), which fetches
github.com/jaegertracing/jaeger@v1.76.0 through the Go module proxy, builds `cmd/all-in-one` as
the main module (its go.mod carries a replace directive, which `go install pkg@version` refuses)
and caches the binary under /var/cache/otel-oom-jaeger-1.76.0; it prints the binary's path.

    with Jaeger() as j:                                   # in-memory storage, every port free and local
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = j.otlp_grpc_endpoint
        trace = j.wait_for_trace(trace_id, lambda t: ..., timeout=30)   # the query API's /api/traces/<id>
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from testing.otlp_receiver import free_port

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "tools" / "jaeger" / "build.sh"
BINARY = Path("/var/cache/otel-oom-jaeger-1.76.0/jaeger-all-in-one")


class JaegerError(Exception):
    pass


def build() -> Path:
    """The cached binary; built first when missing (minutes cold). Raises JaegerError."""
    p = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=3600)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not os.path.isfile(lines[-1]):
        raise JaegerError(f"{BUILD} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}")
    return Path(lines[-1])


class Jaeger:
    """A running all-in-one with in-memory storage on free loopback ports; stopped on exit."""

    def __init__(self, binary: Optional[Path] = None) -> None:
        self.binary = binary or BINARY
        self.otlp_grpc_port, self.otlp_http_port = free_port(), free_port()
        self.query_port, self.admin_port = free_port(), free_port()
        self._proc: Optional[subprocess.Popen] = None
        self._log = tempfile.TemporaryFile()

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.otlp_grpc_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def __enter__(self) -> "Jaeger":
        if not Path(self.binary).exists():
            raise JaegerError(f"{self.binary} is missing: run `python -m testing.jaeger` (make jaeger) to build it")
        loop = "127.0.0.1"
        argv = [str(self.binary),
                f"--collector.otlp.grpc.host-port={loop}:{self.otlp_grpc_port}",
                f"--collector.otlp.http.host-port={loop}:{self.otlp_http_port}",
                f"--collector.grpc-server.host-port={loop}:{free_port()}",
                f"--collector.http-server.host-port={loop}:{free_port()}",
                f"--query.http-server.host-port={loop}:{self.query_port}",
                f"--query.grpc-server.host-port={loop}:{free_port()}",
                f"--admin.http.host-port={loop}:{self.admin_port}"]
        env = {"PATH": os.environ.get("PATH", ""), "SPAN_STORAGE_TYPE": "memory", "HOME": tempfile.gettempdir()}
        self._proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise JaegerError(f"jaeger exited with {self._proc.returncode}: {self.log()[-1500:]}")
            try:
                with urllib.request.urlopen(f"http://{loop}:{self.admin_port}/", timeout=2) as r:
                    if r.status == 200 and self._query_up():
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.__exit__()
        raise JaegerError("jaeger did not become healthy within 60 s")

    def _query_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/services", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def log(self) -> str:
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def trace(self, trace_id: str) -> Optional[dict[str, Any]]:
        """The trace as the query API answers /api/traces/<id> (Jaeger's JSON model), or None."""
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/traces/{trace_id}", timeout=5) as r:
                data = json.load(r).get("data") or []
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return data[0] if data else None

    def wait_for_trace(self, trace_id: str, predicate: Callable[[dict[str, Any]], bool] = lambda t: True,
                       timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.trace(trace_id)
            if last is not None and predicate(last):
                return last
            time.sleep(0.3)
        raise AssertionError(f"Jaeger never returned trace {trace_id} as expected; last answer: {last}")
