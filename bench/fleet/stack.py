"""The simulated fleet's processes, on loopback addresses of the simulation's own network namespace:

    node Collectors (agent.yaml + node-to-gateway.yaml)   127.1.x.y:4317/4318, one address per node
      -> 2 gateways (gateway.yaml)                        127.0.0.2:4317, 127.0.0.3:4317
        -> VictoriaLogs cluster, every record twice (the gateways' two logs exporters):
             copy A: vlinsert-a 127.0.0.1:9481 -> vlstorage-1 127.0.0.1:9491
             copy B: vlinsert-b 127.0.0.1:9482 -> vlstorage-2 127.0.0.1:9492
             vlselect 127.0.0.1:9471 (queries) -> both vlstorage nodes
        -> Prometheus (remote write receiver)

The shipped configurations run as they are; only addresses, queue directories and the Kubernetes
API (the test double of testing/k8s_api_double.py, serving every node's pods, and how long a node
Collector waits for it at start) are set by
`--config=yaml:` overrides and the files' environment variables. The gateway resolver is either
`static` (the two gateway addresses, by override) or the shipped `dns` one: then each node
Collector runs in a mount namespace of its own whose /etc/hosts is the simulation's file naming the
ready gateways, which the simulation rewrites as Kubernetes' endpoints controller would rewrite a
headless Service's records (`set_ready`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from testing.k8s_api_double import KubernetesApiDouble, make_pod
from testing.prometheus_server import PrometheusServer

from .procs import Proc, start_all, stop_all
from .workload import Node

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "collector-config"
GATEWAYS = ("127.0.0.2", "127.0.0.3")
STORAGE = ("127.0.0.1:9491", "127.0.0.1:9492")      # one per copy
VLINSERT = ("127.0.0.1:9481", "127.0.0.1:9482")     # copy A -> STORAGE[0], copy B -> STORAGE[1]
VLSELECT = "127.0.0.1:9471"
# vlstorage writes what it holds in memory to disk at least this often; what it acknowledged
# since the last write is what a SIGKILL of it loses from its copy (VictoriaLogs' default, 5 s)
VL_FLUSH = "5s"
GATEWAY_NAME = "otel-oom-gateway-headless.fleet.test"
# agent.yaml waits for its node's pods before it takes a record (wait_for_metadata), 10 s at
# most; the API here is a Python test double in the simulation's own process, answering 50
# Collectors at once on a loaded 2-core machine, where a real API server answers a node's pod
# list in milliseconds
API_SYNC_TIMEOUT = "60s"
# a node Collector with the simulation's hosts file as its /etc/hosts (a private mount namespace)
WITH_HOSTS = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"']


def node_address(index: int) -> str:
    return f"127.1.{index // 250}.{index % 250 + 1}"


def _overrides(values: dict[str, object]) -> list[str]:
    return [f"--config=yaml:{k}: {json.dumps(v)}" for k, v in values.items()]


def _listen(ip: str, scratch: Path) -> dict[str, object]:
    return {
        "receivers::otlp::protocols::grpc::endpoint": f"{ip}:4317",
        "receivers::otlp::protocols::http::endpoint": f"{ip}:4318",
        "extensions::health_check::endpoint": f"{ip}:13133",
        "extensions::file_storage/queue::directory": str(scratch / "queue"),
        "service::telemetry::metrics::readers": [{"pull": {"exporter": {"prometheus": {"host": ip, "port": 8888}}}}],
    }


class Stack:
    """Every process of the simulation; `start()` brings them up in dependency order."""

    def __init__(self, collector: str, victorialogs: str, nodes: list[Node], scratch: Path,
                 resolver: str = "static") -> None:
        self.collector, self.victorialogs, self.nodes, self.scratch = collector, victorialogs, nodes, scratch
        self.resolver = resolver
        self.hosts = scratch / "hosts"
        self.ready = set(GATEWAYS)
        self.prometheus = PrometheusServer(remote_write_receiver=True)
        self.k8s_api = KubernetesApiDouble([
            make_pod(uid=p.uid, name=p.name, namespace=p.namespace, node=n.name,
                     containers=[(p.container, f"containerd://{p.container_id}", p.image + ":1.4.2")],
                     owner=("ReplicaSet", p.name.rsplit("-", 1)[0]))
            for n in nodes for p in n.pods])
        self.storage = [self._vl(f"vlstorage-{i + 1}", "vlstorage", addr, [
            f"-storageDataPath={scratch / f'vlstorage-{i + 1}'}", f"-inmemoryDataFlushInterval={VL_FLUSH}",
            "-retentionPeriod=1d"]) for i, addr in enumerate(STORAGE)]
        # each copy's vlinsert stores to its own vlstorage node only (in a real cluster: a group of them)
        self.vlinsert = [self._vl(f"vlinsert-{c}", "vlinsert", addr, [f"-storageNode={storage}", "-select.disable"])
                         for c, addr, storage in zip("ab", VLINSERT, STORAGE, strict=True)]
        # reads both copies; a storage node down: an answer from the other copy, not a 502
        self.vlselect = self._vl("vlselect", "vlselect", VLSELECT, ["-storageNode=" + ",".join(STORAGE),
                                                                    "-insert.disable", "-search.allowPartialResponse"])
        self.gateways: list[Proc] = []
        self.node_procs: list[Proc] = []

    def _vl(self, name: str, tier: str, addr: str, flags: list[str]) -> Proc:
        return Proc(name, tier, [self.victorialogs, f"-httpListenAddr={addr}", "-loggerLevel=WARN", *flags],
                    self.scratch / f"{name}.log", f"http://{addr}/health")

    @property
    def processes(self) -> list[Proc]:
        return [*self.storage, *self.vlinsert, self.vlselect, *self.gateways, *self.node_procs]

    @property
    def query_url(self) -> str:
        return f"http://{VLSELECT}"

    @property
    def copy_urls(self) -> list[str]:
        """Each copy's vlstorage node, queried directly (a vlstorage node is also a single-node
        VictoriaLogs): what each copy holds, row by row."""
        return [f"http://{addr}" for addr in STORAGE]

    def start(self, timeout: float = 300.0) -> "Stack":
        self.prometheus.start()
        self.k8s_api.start()
        start_all([*self.storage, *self.vlinsert, self.vlselect], timeout)
        self.gateways = [self._gateway(i, ip) for i, ip in enumerate(GATEWAYS)]
        start_all(self.gateways, timeout)
        kubeconfig = self.k8s_api.write_kubeconfig(self.scratch)
        self.set_ready(GATEWAYS)
        self.node_procs = [self._node(n, kubeconfig) for n in self.nodes]
        start_all(self.node_procs, timeout)
        return self

    def _gateway(self, i: int, ip: str) -> Proc:
        d = self.scratch / f"gateway-{i + 1}"
        d.mkdir(exist_ok=True)
        env = {"PATH": "/usr/bin:/bin", "OTEL_OOM_LOGS_OTLP_ENDPOINT": f"http://{VLINSERT[0]}/insert/opentelemetry",
               "OTEL_OOM_LOGS_REPLICA_OTLP_ENDPOINT": f"http://{VLINSERT[1]}/insert/opentelemetry",
               "OTEL_OOM_PROMETHEUS_REMOTE_WRITE_URL": self.prometheus.remote_write_url}
        return Proc(f"gateway-{i + 1}", "gateway",
                    [self.collector, f"--config={CONFIGS / 'gateway.yaml'}", *_overrides(_listen(ip, d))],
                    d / "collector.log", f"http://{ip}:13133/", env)

    def _node(self, node: Node, kubeconfig: str) -> Proc:
        d = self.scratch / "nodes" / node.name
        d.mkdir(parents=True, exist_ok=True)
        ip = node_address(node.index)
        values: dict[str, object] = {**_listen(ip, d), "processors::k8s_attributes::auth_type": "kubeConfig",
                                     "processors::k8s_attributes::wait_for_metadata_timeout": API_SYNC_TIMEOUT}
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "K8S_NODE_NAME": node.name, "KUBECONFIG": kubeconfig}
        argv = [self.collector, f"--config={CONFIGS / 'agent.yaml'}", f"--config={CONFIGS / 'node-to-gateway.yaml'}"]
        if self.resolver == "static":
            static = {"static": {"hostnames": [f"{g}:4317" for g in GATEWAYS]}, "dns": None}
            values.update({"exporters::load_balancing/logs::resolver": static,
                           "exporters::load_balancing/metrics::resolver": static})
        else:  # the shipped dns resolver, reading the simulation's hosts file
            env["OTEL_OOM_GATEWAY_HOSTNAME"] = GATEWAY_NAME
            argv = [*WITH_HOSTS, str(self.hosts), *argv]
        return Proc(node.name, "node", [*argv, *_overrides(values)], d / "collector.log", f"http://{ip}:13133/", env)

    def set_ready(self, gateways: Iterable[str]) -> None:
        """The gateway addresses the headless Service's name resolves to (dns resolver only). Written
        in place: each node Collector's /etc/hosts is this very file (a bind mount of its inode)."""
        self.ready = set(gateways)
        text = "127.0.0.1 localhost\n" + "".join(f"{g} {GATEWAY_NAME}\n" for g in sorted(self.ready))
        with open(self.hosts, "r+" if self.hosts.exists() else "w") as f:
            f.truncate(0)
            f.write(text)

    def stop(self) -> None:
        # the senders first, so nothing is left half-way: nodes, gateways, then the backends
        stop_all(self.node_procs)
        stop_all(self.gateways)
        stop_all([*self.vlinsert, self.vlselect])
        stop_all(self.storage)
        self.k8s_api.stop()
        self.prometheus.stop()

    def prometheus_pid(self) -> Optional[int]:
        return self.prometheus.proc.pid if self.prometheus.proc is not None else None
