"""A real Prometheus server for tests: the Debian `prometheus` binary on a free loopback port.

It scrapes the given targets every second from a throwaway config and TSDB directory, and
answers PromQL through its HTTP API, so tests check what a real Prometheus sees and parses.
With `remote_write_receiver=True` it also accepts remote write at `remote_write_url`
(`--web.enable-remote-write-receiver`, Prometheus >= 2.33), for a Collector to push to.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Sequence


class PromQLError(Exception):
    """Prometheus refused a query (bad_data carries the parser's message)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """`with PrometheusServer(["127.0.0.1:9464"]) as prom: prom.query("up")`."""

    def __init__(self, targets: Sequence[str] = (), binary: Optional[str] = None,
                 scrape_interval: str = "1s", ready_timeout: float = 30.0,
                 remote_write_receiver: bool = False) -> None:
        found = binary or shutil.which("prometheus")
        if found is None:
            raise FileNotFoundError("the `prometheus` binary is not on PATH (Debian: apt-get install prometheus)")
        self.binary: str = found
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.ready_timeout = ready_timeout
        self.remote_write_receiver = remote_write_receiver
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def start(self) -> "PrometheusServer":
        self._tmp = tempfile.TemporaryDirectory(prefix="otel-oom-prom-")
        root = Path(self._tmp.name)
        # JSON is valid YAML: no YAML library needed to write the config
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": "otel-oom", "static_configs": [{"targets": self.targets}]}]
            if self.targets else [],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))
        self.port = free_port()
        self._log = open(root / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             *(["--web.enable-remote-write-receiver"] if self.remote_write_receiver else [])],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("prometheus did not become ready in time")

    def log_text(self) -> str:
        if self._tmp is None:
            return ""
        p = Path(self._tmp.name) / "prometheus.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def api(self, path: str, params: dict) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            # 400/422 carry the JSON error (bad_data for a PromQL parse error)
            body = json.load(e)
        if body.get("status") != "success":
            raise PromQLError(body.get("errorType", "?"), body.get("error", "?"))
        return body["data"]

    def query(self, promql: str) -> list:
        """Instant query; the `result` list (vector samples) of the API answer."""
        return self.api("query", {"query": promql})["result"]

    def wait_for(self, promql: str, timeout: float = 20.0) -> list:
        """Query until the result is not empty (a scrape has happened)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
