"""A real VictoriaLogs server (the `make victorialogs` build) for tests: OTLP logs in, LogsQL out.

    with VictoriaLogsServer(binary) as vl:
        env["OTEL_OOM_LOGS_OTLP_ENDPOINT"] = vl.otlp_base     # the exporter appends /v1/logs
        vl.query('oom.event.id:* | fields process.pid')      # list of dicts, one per record

`stop()` and `start()` take it down and bring it back on the same port with the same data, for
outage tests. VictoriaLogs makes an ingested record searchable within about a second.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .collector_process import REPO, wait_http_ok
from .otlp_receiver import free_port

BUILD_SCRIPT = REPO / "tools" / "victorialogs" / "build.sh"


def victorialogs_binary() -> Optional[str]:
    """The absolute path of the cached `make victorialogs` build, or None if it is not built."""
    r = subprocess.run([str(BUILD_SCRIPT), "--check"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None


class LogsQLError(Exception):
    """VictoriaLogs refused a query."""


class VictoriaLogsServer:
    def __init__(self, binary: str, ready_timeout: float = 30.0) -> None:
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="otel-oom-vl-")
        self.data = Path(self._tmp.name) / "data"
        self.proc: Optional[subprocess.Popen] = None
        self._log = open(Path(self._tmp.name) / "victorialogs.log", "ab")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_base(self) -> str:
        """The OTLP/HTTP base URL: POST <this>/v1/logs (what an otlp_http exporter's endpoint wants)."""
        return f"{self.url}/insert/opentelemetry"

    def start(self) -> "VictoriaLogsServer":
        self.proc = subprocess.Popen(
            [self.binary, f"-storageDataPath={self.data}", f"-httpListenAddr=127.0.0.1:{self.port}",
             "-loggerLevel=WARN", "-retentionPeriod=1d"],
            stdout=self._log, stderr=subprocess.STDOUT)
        if not wait_http_ok(f"{self.url}/health", self.ready_timeout):
            self.stop()
            raise RuntimeError(f"VictoriaLogs did not become ready:\n{self.log_text()}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> "VictoriaLogsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        p = Path(self._tmp.name) / "victorialogs.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def query(self, logsql: str, limit: int = 10000) -> list[dict]:
        """Run a LogsQL query over all time; one dict per result row."""
        data = urllib.parse.urlencode({"query": logsql, "limit": str(limit)}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/select/logsql/query", data=data, timeout=30) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as e:
            raise LogsQLError(f"{e.code}: {e.read().decode(errors='replace')}") from None
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_for(self, logsql: str, predicate: Callable[[list[dict]], bool] = bool,
                 timeout: float = 30.0, interval: float = 0.2) -> list[dict]:
        """Query until predicate(rows) holds; return the last rows (the caller asserts on them)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(logsql)
            if predicate(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(interval)
