"""Start and stop the node: namespaces, control plane, containerd, kubelet, backends, images.

    cluster = Cluster(Node("e2e"), tools.find()).up()   # node Ready, images imported
    chart.install(cluster)                              # what `make kube-up` adds
    cluster.down()                                      # nothing left (leftovers.py)

`up()` first sweeps whatever a previous run of the same node left (a crashed test session),
so both are idempotent. Start order: containerd, etcd and the backends together; the API server;
the images imported while the controller-manager, scheduler, kube-proxy and kubelet start.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Optional

from . import configs, images, namespaces, pki
from .backends import http_ok, prometheus_daemon, victorialogs_daemon
from .configs import CONTAINERD_SOCKET
from .daemons import Daemon
from .kubectl import Kubectl
from .layout import APISERVER_PORT, Node
from .leftovers import cgroup_hierarchies, kill_all, leftovers, remove_cgroups
from .tools import CRICTL, Tools

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# stopped in this order: nothing restarts pods once the kubelet is gone
STOP_ORDER = ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd",
              "containerd", "victorialogs", "prometheus")


class Cluster:
    def __init__(self, node: Node, tools: Optional[Tools] = None) -> None:
        """`tools` (tools.find()) is needed to start the node, not to stop it."""
        self.node, self._tools = node, tools
        self.collector_image = ""
        self.ns_ids: set[str] = set()
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()

    @property
    def tools(self) -> Tools:
        if self._tools is None:
            raise RuntimeError("Cluster(node) without tools can only stop the node")
        return self._tools

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(self.tools.kube_bin / "kubectl", self.node.admin_kubeconfig, self.node.state / "kubectl-cache")

    # ---- the processes -----------------------------------------------------------------------
    def daemons(self) -> dict[str, Daemon]:
        n, p, b = self.node, self.node.pki, self.tools.bin
        s = n.state
        argv = {
            "containerd": ["/usr/bin/containerd", "--config", f"{s}/containerd.toml"],
            "etcd": [b("etcd"), "--name=node", f"--data-dir={s}/etcd", "--log-level=warn",
                     "--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
                     "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                     "--initial-cluster=node=http://127.0.0.1:2380"],
            "kube-apiserver": [
                b("kube-apiserver"), "--etcd-servers=http://127.0.0.1:2379",
                f"--bind-address={n.node_ip}", f"--advertise-address={n.node_ip}", f"--secure-port={APISERVER_PORT}",
                f"--service-cluster-ip-range={n.service_cidr}",
                f"--client-ca-file={p}/ca.crt", f"--tls-cert-file={p}/apiserver.crt",
                f"--tls-private-key-file={p}/apiserver.key",
                f"--kubelet-client-certificate={p}/apiserver-kubelet-client.crt",
                f"--kubelet-client-key={p}/apiserver-kubelet-client.key",
                f"--kubelet-certificate-authority={p}/ca.crt", "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}", f"--service-account-key-file={p}/sa.pub",
                f"--service-account-signing-key-file={p}/sa.key",
                # as kubeadm: the Node authorizer and NodeRestriction for the kubelet, RBAC for the rest
                "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true", "--profiling=false"],
            "kube-controller-manager": [
                b("kube-controller-manager"), *self._component_auth("controller-manager"),
                f"--service-account-private-key-file={p}/sa.key", f"--root-ca-file={p}/ca.crt",
                "--use-service-account-credentials=true", f"--cluster-signing-cert-file={p}/ca.crt",
                f"--cluster-signing-key-file={p}/ca.key", f"--service-cluster-ip-range={n.service_cidr}"],
            "kube-scheduler": [b("kube-scheduler"), *self._component_auth("scheduler")],
            "kube-proxy": [b("kube-proxy"), f"--config={s}/kube-proxy.yaml"],
            "kubelet": [b("kubelet"), f"--config={s}/kubelet.yaml", f"--kubeconfig={s}/kubelet.kubeconfig",
                        f"--hostname-override={n.node_name}", f"--node-ip={n.node_ip}"],
        }
        out = {name: Daemon(n, name, a) for name, a in argv.items()}
        out["victorialogs"] = victorialogs_daemon(n, self.tools.victorialogs)
        out["prometheus"] = prometheus_daemon(n)
        return out

    def _component_auth(self, name: str) -> list[str]:
        kc = f"{self.node.state}/{name}.kubeconfig"
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--bind-address=127.0.0.1"]

    def logs(self, lines: int = 20) -> str:
        return "\n".join(Daemon(self.node, name).log_tail(lines) for name in STOP_ORDER)

    # ---- up ------------------------------------------------------------------------------------
    def up(self, timeout: float = 300.0) -> "Cluster":
        """Start the node; `timings` then holds when each step was done, in seconds since the start."""
        self._t0 = time.monotonic()
        self.down()
        try:
            self._up(timeout)
        except BaseException:
            print(self.logs(), flush=True)
            raise
        return self

    def _up(self, timeout: float) -> None:
        n = self.node
        n.state.mkdir(parents=True)
        n.state.chmod(0o700)
        namespaces.create(n)
        self.ns_ids = namespaces.namespace_ids(n)
        pki.make_pki(n)
        configs.write_all(n)
        self._make_cgroup_root()
        # kubectl beside the kubeconfig, for whoever uses `make kube-up`'s output
        (n.state / "kubectl").symlink_to(self.tools.bin("kubectl"))
        d = self.daemons()
        for name in ("containerd", "etcd", "victorialogs", "prometheus", "kube-apiserver"):
            d[name].start()
        self._wait("containerd", lambda: self._ctr_ok(), d, timeout)
        imported: dict[str, object] = {}
        importer = threading.Thread(target=self._import_images, args=(imported,), daemon=True)
        importer.start()
        self._wait("the API server", lambda: self.kubectl.run("get", "--raw=/readyz", check=False).returncode == 0,
                   d, timeout)
        for name in ("kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"):
            d[name].start()
        self._wait("VictoriaLogs", lambda: http_ok(f"{n.victorialogs_url}/health"), d, timeout)
        self._wait("Prometheus", lambda: http_ok(f"{n.prometheus_url}/-/ready"), d, timeout)
        self._wait(f"node {n.node_name} Ready", self._node_ready, d, timeout)
        self._wait("the default ServiceAccount", lambda: self.kubectl.get("serviceaccount", "default") is not None,
                   d, timeout)
        importer.join(timeout)
        if "error" in imported or importer.is_alive():
            raise RuntimeError(f"importing the images failed: {imported.get('error', 'timed out')}")
        self.collector_image = str(imported["collector"])
        self.timings["images imported"] = time.monotonic() - self._t0

    def _make_cgroup_root(self) -> None:
        """The kubelet wants its cgroupRoot to exist in every hierarchy; cpuset needs cpus and mems."""
        for hierarchy in cgroup_hierarchies():
            d = hierarchy / self.node.cgroup_root.lstrip("/")
            d.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((hierarchy / f).read_text())

    def _import_images(self, out: dict) -> None:
        try:
            out["collector"] = images.import_all(self.node, self.tools.collector, self.tools.agent_image)
        except BaseException as e:  # noqa: BLE001 - handed to the starting thread
            out["error"] = e

    def _ctr_ok(self) -> bool:
        r = subprocess.run([*self.node.enter(), "ctr", "--address", CONTAINERD_SOCKET, "version"],
                           capture_output=True, timeout=30)
        return r.returncode == 0

    def _node_ready(self) -> bool:
        node = self.kubectl.get("node", self.node.node_name, namespace=None)
        return node is not None and any(c["type"] == "Ready" and c["status"] == "True"
                                  for c in node["status"].get("conditions", []))

    def _wait(self, what: str, probe, daemons: dict[str, Daemon], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            dead = [name for name, dm in daemons.items() if dm.pid_file.exists() and not dm.running()]
            if dead:
                raise RuntimeError(f"waiting for {what}: {', '.join(dead)} exited\n"
                                   + "\n".join(daemons[x].log_tail(40) for x in dead))
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(0.5)
        self.timings[what] = time.monotonic() - self._t0

    def running(self) -> bool:
        """Every daemon of the node up, the API server ready and the node Ready."""
        if not all(Daemon(self.node, name).running() for name in STOP_ORDER):
            return False
        try:
            return self.kubectl.run("get", "--raw=/readyz", check=False).returncode == 0 and self._node_ready()
        except (OSError, RuntimeError):
            return False

    # ---- down ----------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop everything of this node and remove every trace of it; safe to call twice."""
        n = self.node
        ns_ids = namespaces.namespace_ids(n) | self.ns_ids
        daemons = {name: Daemon(n, name) for name in STOP_ORDER}
        if daemons["containerd"].running():
            for name in STOP_ORDER[:4]:
                daemons[name].stop()
            self._remove_pods()
        for name in STOP_ORDER:
            daemons[name].stop()
        kill_all(n, ns_ids)
        remove_cgroups(n)
        namespaces.remove(n)
        if n.state.exists():
            if any(m for m in _mounts_under(str(n.state))):
                raise RuntimeError(f"mounts left under {n.state}: refusing to delete it")
            shutil.rmtree(n.state)
        left = leftovers(n, ns_ids)
        if left:
            raise RuntimeError("the node left behind:\n" + "\n".join(left))

    def _remove_pods(self) -> None:
        """Through the CRI (crictl), so the CNI releases each pod's network: stop and remove every
        sandbox. Without crictl the sweep that follows kills them, and their namespaces go with the node's."""
        if not CRICTL.exists():
            return
        endpoint = f"unix://{CONTAINERD_SOCKET}"
        subprocess.run([*self.node.enter(), str(CRICTL), "--runtime-endpoint", endpoint, "--timeout", "30s",
                        "rmp", "--all", "--force"], capture_output=True, timeout=180)


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix + "/") or line.split()[4] == prefix]
