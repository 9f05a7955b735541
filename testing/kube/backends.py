"""The Collector's backends for the node: VictoriaLogs (OTLP logs in, LogsQL out) and Prometheus
(remote write in, PromQL out), as daemons in the node's network namespace on the node's address.

The Collector's pod reaches them there (a local address of its node), and the host reaches them
over the node's veth, so tests query them from the host as a user would query their backends.
testing/victorialogs.py and testing/prometheus_server.py run the same binaries on the host's
loopback for the other tests; these outlive the process that started them (`make kube-up`).
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from .daemons import Daemon
from .layout import PROMETHEUS_PORT, VICTORIALOGS_PORT, Node


def victorialogs_daemon(node: Node, binary: str) -> Daemon:
    return Daemon(node, "victorialogs", [binary, f"-storageDataPath={node.state}/victorialogs",
                                         f"-httpListenAddr={node.node_ip}:{VICTORIALOGS_PORT}",
                                         "-loggerLevel=WARN", "-retentionPeriod=1d"])


def prometheus_daemon(node: Node) -> Daemon:
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("the `prometheus` binary is not on PATH (Debian: apt-get install prometheus)")
    config = node.state / "prometheus.yml"   # written by configs.write_all
    return Daemon(node, "prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={node.state}/prometheus",
                                       f"--web.listen-address={node.node_ip}:{PROMETHEUS_PORT}",
                                       "--web.enable-remote-write-receiver", "--log.level=warn"])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LogsQL:
    """LogsQL queries against the node's VictoriaLogs, from the host."""

    def __init__(self, node: Node) -> None:
        self.url = node.victorialogs_url

    def query(self, logsql: str, limit: int = 10000) -> list[dict]:
        data = urllib.parse.urlencode({"query": logsql, "limit": str(limit)}).encode()
        with urllib.request.urlopen(f"{self.url}/select/logsql/query", data=data, timeout=30) as r:
            body = r.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_for(self, logsql: str, predicate: Callable[[list[dict]], bool] = bool,
                 timeout: float = 90.0) -> list[dict]:
        """Query until predicate(rows) holds or the time is up; the last rows either way."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(logsql)
            if predicate(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.5)


class PromQL:
    def __init__(self, node: Node) -> None:
        self.url = node.prometheus_url

    def query(self, promql: str) -> list:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)["data"]["result"]
