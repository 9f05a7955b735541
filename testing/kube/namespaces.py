"""The node's own network and mount namespaces, pinned to files, and the one link to the host.

What the host gets, and loses again at `remove`: a private bind mount of `<state>/ns` holding the
two pins, and a veth pair whose host end (`okube-<name>`, <host_ip>/30) reaches the node's address
(<node_ip>/30 on the node's `eth0`): that is how `kubectl` on the host reaches the API server and
the tests reach the backends. No sysctl, iptables rule or route of the host changes.

Inside the mount namespace: slave of the host's (the host's mounts show, the node's stay inside),
and shared within the node as on a systemd host (`/` rshared): a mount made in the node later (the
kernel's automount of tracefs at /sys/kernel/tracing, the kubelet's volumes) is then shared too,
which containerd requires of a hostPath mounted with HostToContainer propagation;
- a tmpfs on /run (containerd's state and shim sockets, the CNI's netns pins, iptables' lock),
  shared, because the chart mounts /run with HostToContainer propagation;
- <state>/var-lib on /var/lib and <state>/var-log on /var/log: /var/lib/kubelet (whose
  device-plugins path is hard-coded), the CNI's IPAM, the chart's hostPath spool and Collector
  queue, /var/log/pods;
- a file holding the value the kubelet expects over each /proc/sys entry it checks
  (`protectKernelDefaults: true` refuses to start otherwise, and without it the kubelet would
  rewrite the host's vm.overcommit_memory, kernel.panic and kernel.panic_on_oops).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .layout import Node

# what the kubelet's setupKernelTunables wants (pkg/kubelet/cm/container_manager_linux.go, v1.34)
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def create(node: Node) -> None:
    """Pin fresh namespaces and set them up; the caller removed any previous ones first."""
    node.ns_dir.mkdir(parents=True, exist_ok=True)
    run("mount", "--bind", str(node.ns_dir), str(node.ns_dir))
    run("mount", "--make-private", str(node.ns_dir))
    node.netns.touch()
    node.mntns.touch()
    run("unshare", f"--net={node.netns}", f"--mount={node.mntns}", "--propagation", "slave", "true")
    sysctl_dir = node.state / "sysctl"
    sysctl_dir.mkdir(exist_ok=True)
    binds = []
    for key, want in KUBELET_SYSCTLS.items():
        if Path("/proc/sys", key).read_text().strip() != want:
            f = sysctl_dir / key.replace("/", ".")
            f.write_text(want + "\n")
            binds.append(f"mount --bind {f} /proc/sys/{key}")
    for d in ("var-lib", "var-log"):
        (node.state / d).mkdir(exist_ok=True)
    script = " && ".join([
        "mount --make-rshared /",
        "mount -t tmpfs -o mode=0755,size=256m tmpfs /run", "mount --make-rshared /run",
        f"mount --bind {node.state}/var-lib /var/lib", f"mount --bind {node.state}/var-log /var/log",
        *binds, "ip link set lo up"])
    run(*node.enter(), "sh", "-c", script)
    # the link: made inside, its peer placed in this (the host's) network namespace
    inside = " && ".join([f"ip link add eth0 type veth peer name {node.host_veth} netns /proc/{os.getpid()}/ns/net",
                          f"ip addr add {node.node_ip}/30 dev eth0", "ip link set eth0 up"])
    run(*node.enter(), "sh", "-c", inside)
    run("ip", "addr", "add", f"{node.host_ip}/30", "dev", node.host_veth)
    run("ip", "link", "set", node.host_veth, "up")


def exists(node: Node) -> bool:
    return _is_mountpoint(node.netns) or _is_mountpoint(node.mntns)


def remove(node: Node) -> None:
    """Drop the link and the pins; the namespaces go once no process is left in them."""
    if Path(f"/sys/class/net/{node.host_veth}").exists():
        run("ip", "link", "del", node.host_veth, check=False)
    for pin in (node.netns, node.mntns, node.ns_dir):
        while _is_mountpoint(pin):
            run("umount", str(pin))


def namespace_ids(node: Node) -> set[str]:
    """The node's namespaces as /proc/<pid>/ns links read ("net:[4026...]"), while pinned."""
    ids = set()
    for kind, pin in (("net", node.netns), ("mnt", node.mntns)):
        if _is_mountpoint(pin):
            ids.add(f"{kind}:[{os.stat(pin).st_ino}]")
    return ids


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)
