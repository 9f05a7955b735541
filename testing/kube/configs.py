"""The node's configuration files: containerd, the CNI network, the kubelet, kube-proxy.

Every setting that differs from a stock node says why. The written files are JSON where the
component reads YAML (JSON is YAML).
"""
from __future__ import annotations

import json
from pathlib import Path

from .layout import Node

MiB = 1 << 20
# The node-allocatable ("kubepods") cgroup's memory limit: kubeReserved is set to the machine's
# memory minus this, so a pod without limits that grows past it is OOM-killed inside kubepods
# (upstream's "pod using more memory than node allocatable" case) long before the host runs short.
KUBEPODS_MEMORY = 768 * MiB
PAUSE_IMAGE = "localhost/pause:latest"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"  # the usual path, inside the node's own /run
CNI_BIN = "/usr/lib/cni"                               # Debian's containernetworking-plugins


def containerd_config(node: Node) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{node.state}/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{CONTAINERD_SOCKET}"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{node.state}/containerd-opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # root here has no CAP_SYS_RESOURCE: a negative oom_score_adj (-998 for every sandbox) is
  # refused and runc fails with "can't get final child's PID from pipe: EOF". Restricted, the
  # kubelet's values are clamped to containerd's own (0) instead.
  restrict_oom_score_adj = true
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{node.state}/cni"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  SystemdCgroup = false
"""


def cni_config(node: Node) -> dict:
    """ptp rather than a bridge: every pod's traffic is routed through the node's network stack,
    so a hostPort DNAT between two pods (the agent -> $(HOST_IP):4317 -> the Collector) is undone
    on the way back without br_netfilter."""
    return {
        "cniVersion": "0.4.0", "name": node.node_name,
        "plugins": [
            {"type": "ptp", "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/cni/networks"}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def memory_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def kubelet_config(node: Node) -> dict:
    pki = node.pki
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node.node_ip, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        # this machine: cgroup v1 (allowed up to 1.34 by default, and with failCgroupV1 false later)
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        # pods under a root of this node's own, never the host's /kubepods (another test's)
        "cgroupRoot": node.cgroup_root,
        # the kubelet only checks the kernel tunables (bind-mounted in the node's mount namespace)
        "protectKernelDefaults": True,
        # lowering its own oom_score_adj needs CAP_SYS_RESOURCE, which root lacks here
        "oomScoreAdj": 0,
        "kubeReserved": {"memory": str(memory_total() - KUBEPODS_MEMORY)},
        "enforceNodeAllocatable": ["pods"],
        "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
        "maxPods": 32, "serializeImagePulls": False,
        # image garbage collection would delete the locally imported images (no registry to pull from)
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "syncFrequency": "10s", "fileCheckFrequency": "10s",
    }


def kube_proxy_config(node: Node) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(node.state / "kube-proxy.kubeconfig")},
        "mode": "iptables", "clusterCIDR": node.pod_cidr, "hostnameOverride": node.node_name,
        "bindAddress": node.node_ip,
        "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
        # 0: leave the conntrack sysctls alone (nf_conntrack_max is the host's, not per namespace)
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }


def write_all(node: Node) -> dict[str, Path]:
    files = {
        "containerd": (node.state / "containerd.toml", containerd_config(node)),
        "cni": (node.state / "cni" / "10-otel-oom-kube.conflist", json.dumps(cni_config(node), indent=1)),
        "kubelet": (node.state / "kubelet.yaml", json.dumps(kubelet_config(node), indent=1)),
        "kube-proxy": (node.state / "kube-proxy.yaml", json.dumps(kube_proxy_config(node), indent=1)),
        # remote write in only: nothing to scrape
        "prometheus": (node.state / "prometheus.yml", json.dumps({"global": {"scrape_interval": "5s"},
                                                                  "scrape_configs": []})),
    }
    out = {}
    for key, (path, text) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        out[key] = path
    return out
