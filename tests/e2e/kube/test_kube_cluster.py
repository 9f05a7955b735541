"""The node itself: `make kube-up`'s code starts a node of its own (not the session's), with the
chart's agent running, and `make kube-down`'s stops it; nothing of it may stay on the host
(processes, cgroups, mounts, namespaces, the veth, BPF programs, the state directory), and the
host's sysctls and iptables never see it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kube_fixtures as kf
import pytest

from testing.kube import chart
from testing.kube.cluster import Cluster
from testing.kube.layout import Node
from testing.kube.leftovers import bpf_programs_of, bpf_programs_present, cgroup_dirs, host_mounts, leftovers
from testing.kube.namespaces import KUBELET_SYSCTLS

# the first test of a session starts the node (and may rebuild the image): minutes on a loaded machine
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]


def host_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in KUBELET_SYSCTLS}


def host_iptables() -> str:
    r = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=60)
    return r.stdout


def test_the_node_starts_and_stops_leaving_nothing_behind():
    found = kf.found_tools()
    node = Node("kubelife")
    before = host_sysctls()
    cluster = Cluster(node, found)
    ns_ids: set[str] = set()
    programs: set[int] = set()
    try:
        cluster.up()
        chart.install(cluster)
        ns_ids = set(cluster.ns_ids)
        assert len(ns_ids) == 2
        # the node runs inside its namespaces: the kubelet's view of the tunables is its own
        inside = subprocess.run([*node.enter(), "cat", *(f"/proc/sys/{k}" for k in KUBELET_SYSCTLS)],
                                capture_output=True, text=True, check=True).stdout.split()
        assert inside == list(KUBELET_SYSCTLS.values())
        assert host_sysctls() == before
        # the host's own firewall has none of the node's rules (kube-proxy, portmap run in its netns)
        rules = host_iptables()
        assert "KUBE-SERVICES" not in rules and node.pod_cidr.rsplit(".", 1)[0] not in rules
        # of all the node's mounts (its /run, /var/lib, /var/log, sysctls, overlays, pod volumes)
        # the host sees only the namespace pins
        assert sorted(host_mounts(node)) == sorted(map(str, (node.ns_dir, node.netns, node.mntns)))
        # something to clean up: the agent's pod, its BPF programs, the pods' cgroups
        agent = chart.agent_pod(cluster)
        pid = kf.container_init_pid(cluster, kf.bare_id(agent["status"]["containerStatuses"][0]["containerID"]))
        programs = bpf_programs_of([pid])
        assert programs
        assert any(d.name == f"pod{agent['metadata']['uid']}" for d in cgroup_dirs(node))
        kubelet = int((node.state / "pids" / "kubelet").read_text().split()[0])
        assert os.readlink(f"/proc/{kubelet}/ns/net") in ns_ids and os.readlink(f"/proc/{kubelet}/ns/mnt") in ns_ids
    finally:
        cluster.down()
    assert leftovers(node, ns_ids) == []
    assert bpf_programs_present(programs) == set()
    assert not any(Path(h, node.cgroup_root.lstrip("/")).exists() for h in Path("/sys/fs/cgroup").iterdir())
    assert not Path(f"/sys/class/net/{node.host_veth}").exists()
    assert host_sysctls() == before
    Cluster(node).down()   # a second down is harmless
