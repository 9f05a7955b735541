"""cgroup v2 container naming for real: containerd + runc with the systemd cgroup driver in a cgroup v2
QEMU guest (the newest Debian kernel the harness has), a container OOM-killed over its memory.max, the
agent (libbpf) naming it through the real CRI. The guest side is tests/qemu/cri_v2_case.py.

Two pods, one after the other, in the same guest: one made by crictl with the kubelet's cgroup parent
and metadata (as the host tests make theirs), and a static pod of a real standalone kubelet (v1.34,
no API server: `tests/qemu/guest_kubelet.py`), which lays out its pod slice through systemd itself.

The build host is cgroup v1, so without this v2 container naming was tested on fixtures only. In the
guest systemd is not the harness's init (a busybox /init runs the command), so the case boots Debian's
systemd as PID 1 of a PID + mount namespace; with no cgroup namespace it owns the guest's real cgroup2
root, so the container's cgroup is the node's own path, /kubepods.slice/..., with no prefix.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require, require_tool

from testing.containerd import CRICTL, IMAGE, PAUSE_IMAGE
from testing.images import VICTIM_COMM, build_rootfs, oci_archive, rootfs_tar

KERNEL = "sid"  # the newest Debian kernel the harness boots (7.2 when written)
MiB = 1 << 20
PODS = ("crictl", "kubelet")
REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(900), pytest.mark.qemu]


def _kubelet() -> str:
    """The kubelet `make test` builds with the cluster's binaries (tools/kube/build.sh; not built here)."""
    r = subprocess.run([str(REPO / "tools" / "kube" / "build.sh"), "--check"], capture_output=True, text=True,
                       timeout=60)
    path = Path(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "/nonexistent") / "kubelet"
    require(r.returncode == 0 and path.exists(), "needs the kubelet built by tools/kube/build.sh (make test-tools)")
    return str(path)



def _images(out: Path) -> Path:
    """The victim and pause images as OCI archives, built on the host (clang under TCG is slow)."""
    d = out / "images"
    d.mkdir()
    layer = rootfs_tar(build_rootfs(out / "rootfs"))
    # different configs, so two image ids: each container's image is then named unambiguously
    for i, (name, cmd) in enumerate(((IMAGE, ["/bin/sh"]), (PAUSE_IMAGE, ["/victim", "pause"]))):
        oci_archive(layer, name, d / f"{i}.tar", cmd)
    return d


@pytest.fixture(scope="module")
def guest(tmp_path_factory) -> dict:
    if os.environ.get("OTEL_OOM_QEMU_GUEST"):
        pytest.skip("already inside a QEMU test guest: guests are not nested")
    from tests.qemu import harness as h

    usable, reason = h.qemu_usable()
    require(usable, f"QEMU cannot run here: {reason}")
    for path in ("/usr/bin/containerd", "/usr/sbin/runc", "/lib/systemd/systemd", "/usr/bin/ctr"):
        require(os.path.exists(path), f"needs {path} (containerd, runc and systemd are in the Makefile's packages)")
    require(CRICTL.exists(), f"needs crictl {CRICTL} (make crictl)")
    require_tool("clang")  # the victim image's static binary
    kubelet = _kubelet()
    share = tmp_path_factory.mktemp("cgv2")
    images = _images(share)
    out = share / "result.json"
    t0 = time.monotonic()
    r = h.boot(KERNEL, ["python3", "-m", "tests.qemu.cri_v2_case", "--images", str(images), "--out", str(out),
                        "--kubelet", kubelet], cgroup="v2", share_dir=str(share), timeout=720)
    wall = time.monotonic() - t0
    assert r.exit_code == 0, f"guest exited {r.exit_code}:\n{r.output[-4000:]}\n{r.console[-2000:]}"
    doc = json.loads(out.read_text())
    print(f"\ncgroup v2 CRI guest ({r.kernel_release}): {wall:.0f} s wall, boot {r.boot_s:.1f} s, "
          f"case {doc['seconds']} s\n{r.output}")
    assert "error" not in doc, (f"{doc['error']}\nguest output:\n{r.output[-3000:]}\nagent:\n"
                                f"{doc.get('agent_stderr', '')}\ncontainerd:\n{doc.get('containerd_log', '')}\n"
                                f"kubelet:\n{doc.get('kubelet', {}).get('log', '')}\n"
                                f"systemd:\n{doc.get('systemd_log', '')}")
    for pod in PODS:
        assert doc[pod]["record"] is not None, f"no oom.kill for {pod}'s pid {doc[pod]['pid']}\n{doc['agent_stderr']}"
    return doc


@pytest.mark.parametrize("pod", PODS)
def test_the_container_runs_in_the_systemd_drivers_v2_scope(guest, pod):
    """The systemd driver made the scope in the guest's cgroup2 root, with the limit the pod asked for."""
    p = guest[pod]
    uid = p["inspectp"]["status"]["metadata"]["uid"]
    slice_ = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    assert p["scope"] == f"/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{p['container_id']}.scope"
    # the systemd driver's form of the path (slice:prefix:id): SystemdCgroup=true reached runc
    assert p["inspect"]["info"]["runtimeSpec"]["linux"]["cgroupsPath"] == f"{slice_}:cri-containerd:{p['container_id']}"
    assert p["memory_max"] == str(32 * MiB)
    events = dict(line.split() for line in p["pod_memory_events"].splitlines())
    if pod == "kubelet":
        # the kubelet (1.34, v2, singleProcessOOMKill false) sets memory.oom.group=1 on every container and
        # a pod-level limit (the sum of its containers'); the kernel counts a group kill's chosen task twice
        assert p["oom_group"] == "1" and p["pod_memory_max"] == str(32 * MiB)
        assert events["oom_kill"] == "2"
    else:
        assert p["oom_group"] == "0" and p["pod_memory_max"] == "max"
        assert events["oom_kill"] == "1"  # the kernel killed exactly one process in the pod
    assert p["kills_of_pid"] == 1  # one record for the one victim, either way


@pytest.mark.parametrize("pod", PODS)
def test_the_kill_is_named_through_the_real_cri_on_cgroup_v2(guest, pod):
    p = guest[pod]
    a = p["record"]
    container_meta, pod_meta = p["inspect"]["status"]["metadata"], p["inspectp"]["status"]["metadata"]
    assert a["event_name"] == "oom.kill"
    assert a["oom.victim.cgroup.path"] == p["scope"]
    if pod == "kubelet":  # the limit hit is the pod's (the kubelet's pod slice), the group the container
        assert a["oom.memcg.path"] == p["scope"].rsplit("/", 1)[0] and a["oom.group.path"] == p["scope"]
    else:
        assert a["oom.memcg.path"] == p["scope"] and "oom.group.path" not in a
    assert a["container.id"] == p["container_id"] == p["inspect"]["status"]["id"]
    assert a["container.runtime.name"] == "containerd"
    assert (a["k8s.pod.name"], a["k8s.namespace.name"], a["k8s.pod.uid"]) == (
        pod_meta["name"], pod_meta["namespace"], pod_meta["uid"])
    assert a["k8s.container.name"] == container_meta["name"] == "api"
    assert a["oom.victim.pod.qos_class"] == "burstable"
    image = p["inspect"]["status"]["image"]["image"]
    assert image == IMAGE and (a["container.image.name"], a["container.image.tags"]) == tuple(
        [image.rsplit(":", 1)[0], [image.rsplit(":", 1)[1]]])
    assert a["container.image.id"] == p["inspect"]["status"]["imageRef"]
    assert a["k8s.container.restart_count"] == container_meta["attempt"] == 0
    assert a["oom.memcg.limit"] == 32 * MiB
    assert a["oom.constraint"] == "memcg"


def test_the_pods_are_the_ones_asked_for(guest):
    """crictl's pod has the uid the test chose; the kubelet's static pod the name the kubelet gives one."""
    assert guest["crictl"]["record"]["k8s.pod.uid"] == guest["crictl"]["uid"]
    assert guest["crictl"]["record"]["k8s.pod.name"] == "checkout-v2"
    assert guest["kubelet"]["record"]["k8s.pod.name"] == "checkout-kubelet-otel-oom-cgv2-node"
    assert guest["kubelet"]["record"]["k8s.namespace.name"] == "otel-oom-cgv2-shop"


@pytest.mark.parametrize("pod", PODS)
def test_the_victims_pid_is_the_nodes_and_crictl_knows_it_by_its_namespace_pid(guest, pod):
    p = guest[pod]
    a = p["record"]
    assert a["process.pid"] == p["pid"]  # the pid in the guest's initial namespace
    # NSpid: the guest's pid, then the pid in systemd's namespace (containerd's view), then the pod's
    assert p["nspid"][0] == p["pid"]
    assert p["nspid"][1] == p["inspect"]["info"]["pid"]
    assert a["process.executable.name"] == VICTIM_COMM


@pytest.mark.parametrize("pod", PODS)
def test_containerd_reports_the_same_kill_as_oomkilled(guest, pod):
    """What the kubelet is told: the container exited, OOMKilled, 137 (containerd 1.6 reads the scope's
    memory.events on v2)."""
    status = guest[pod]["inspect_after"]["status"]
    assert (status["state"], status["reason"], status["exitCode"]) == ("CONTAINER_EXITED", "OOMKilled", 137)
