"""The whole downstream chain on one machine, for tests and benchmarks:

    real agent -> real Collector running collector-config/agent.yaml -> VictoriaLogs (logs)
                                                                     -> Prometheus (remote write)
                  k8s_attributes -> the Kubernetes API test double (testing/k8s_api_double.py)

`DownstreamStack` starts the three servers and the Collector (its listen ports and queue
directory moved by overrides, its exporters pointed at the local backends through the
`${env:...}` variables the shipped file reads, its Kubernetes client at the API double through a
kubeconfig); the agent is started by the caller with `stack.agent_endpoint`.
`kube_cgroup(pod_uid, container_id)` is a Kubernetes-shaped (cgroupfs driver) memory cgroup path
under this branch's own prefix, so trigger_oom victims there are attributed to that pod and
container without touching other runs' cgroups.
"""
from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Mapping, Optional, Sequence

import yaml

from .collector_process import REPO, CollectorProcess, collector_env, loopback_overrides
from .k8s_api_double import KubernetesApiDouble, make_pod
from .prometheus_server import PrometheusServer
from .victorialogs import VictoriaLogsServer

AGENT_CONFIG = REPO / "collector-config" / "agent.yaml"
CGROUP_PREFIX = "/otel-oom-downstream"
NODE = "node-otel-oom-test"


def kube_cgroup(pod_uid: str, container_id: str, qos: str = "burstable") -> str:
    return f"{CGROUP_PREFIX}/kubepods/{qos}/pod{pod_uid}/{container_id}"


def new_container_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def shop_pod(pod_uid: str, container_id: str, node: str = NODE) -> dict:
    """A Deployment's pod `shop/web-7d9f8c6b5-<x>` with one container `app` (containerd)."""
    return make_pod(uid=pod_uid, name=f"web-7d9f8c6b5-{pod_uid[:5]}", namespace="shop", node=node,
                    containers=[("app", f"containerd://{container_id}", "registry.example/shop/web:1.4")],
                    owner=("ReplicaSet", "web-7d9f8c6b5"), labels={"app": "web", "pod-template-hash": "7d9f8c6b5"})


class DownstreamStack:
    def __init__(self, collector: str, victorialogs: str, scratch: Path, pods: Sequence[dict] = (),
                 overrides: Mapping[str, object] = {}) -> None:
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.collector_binary = collector
        self.vl = VictoriaLogsServer(victorialogs)
        self.prom = PrometheusServer(remote_write_receiver=True)
        self.api = KubernetesApiDouble(pods)
        self.overrides = dict(loopback_overrides(yaml.safe_load(AGENT_CONFIG.read_text()), self.scratch / "queue"))
        self.overrides["processors::k8s_attributes::auth_type"] = "kubeConfig"
        self.overrides.update(overrides)
        self.collector: Optional[CollectorProcess] = None
        self.collector_logs: list[str] = []

    @property
    def agent_endpoint(self) -> str:
        return f"http://{self.overrides['receivers::otlp::protocols::grpc::endpoint']}"

    def start(self) -> "DownstreamStack":
        try:
            self.vl.start()
            self.prom.start()
            self.api.start()
            self.start_collector()
        except BaseException:
            self.close()
            raise
        return self

    def start_collector(self) -> CollectorProcess:
        env = collector_env(K8S_NODE_NAME=NODE, KUBECONFIG=self.api.write_kubeconfig(self.scratch),
                            OTEL_OOM_LOGS_OTLP_ENDPOINT=self.vl.otlp_base,
                            OTEL_OOM_PROMETHEUS_REMOTE_WRITE_URL=self.prom.remote_write_url)
        self.collector = CollectorProcess(self.collector_binary, [str(AGENT_CONFIG)], self.overrides, env).start()
        return self.collector

    def stop_collector(self, sig: int = signal.SIGTERM) -> None:
        if self.collector is not None:
            self.collector.stop(sig)
            self.collector_logs.append(self.collector.log_text())
            self.collector = None

    def collector_log(self) -> str:
        return "".join(self.collector_logs) + (self.collector.log_text() if self.collector else "")

    def close(self) -> None:
        self.stop_collector()
        self.api.stop()
        self.prom.stop()
        self.vl.close()

    def __enter__(self) -> "DownstreamStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
