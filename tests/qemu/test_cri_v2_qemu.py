"""cgroup v2 container naming for real: containerd + runc with the systemd cgroup driver in a cgroup v2
QEMU guest (the newest Debian kernel the harness has), a container OOM-killed over its memory.max, the
agent (libbpf) naming it through the real CRI. The guest side is tests/qemu/cri_v2_case.py.

The build host is cgroup v1, so without this v2 container naming was tested on fixtures only. In the
guest systemd is not the harness's init (a busybox /init runs the command), so the case boots Debian's
systemd as PID 1 of a PID + mount namespace; with no cgroup namespace it owns the guest's real cgroup2
root, so the container's cgroup is the node's own path, /kubepods.slice/..., with no prefix.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import require, require_tool

from testing.containerd import CRICTL, IMAGE, PAUSE_IMAGE
from testing.images import VICTIM_COMM, build_rootfs, oci_archive, rootfs_tar

KERNEL = "sid"  # the newest Debian kernel the harness boots (7.2 when written)
MiB = 1 << 20
pytestmark = [pytest.mark.timeout(900), pytest.mark.qemu]


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
    share = tmp_path_factory.mktemp("cgv2")
    images = _images(share)
    out = share / "result.json"
    t0 = time.monotonic()
    r = h.boot(KERNEL, ["python3", "-m", "tests.qemu.cri_v2_case", "--images", str(images), "--out", str(out)],
               cgroup="v2", share_dir=str(share), timeout=600)
    wall = time.monotonic() - t0
    assert r.exit_code == 0, f"guest exited {r.exit_code}:\n{r.output[-4000:]}\n{r.console[-2000:]}"
    doc = json.loads(out.read_text())
    print(f"\ncgroup v2 CRI guest ({r.kernel_release}): {wall:.0f} s wall, boot {r.boot_s:.1f} s, "
          f"case {doc['seconds']} s\n{r.output}")
    assert "error" not in doc, (f"{doc['error']}\nguest output:\n{r.output[-3000:]}\nagent:\n"
                                f"{doc.get('agent_stderr', '')}\ncontainerd:\n{doc.get('containerd_log', '')}\n"
                                f"systemd:\n{doc.get('systemd_log', '')}")
    assert doc["record"] is not None, f"no oom.kill for pid {doc['pid']}\nagent:\n{doc['agent_stderr']}"
    return doc


def test_the_container_runs_in_the_systemd_drivers_v2_scope(guest):
    """runc's systemd driver made the scope in the guest's cgroup2 root, with the limit the CRI asked for."""
    slice_ = guest["pod_slice"]
    assert guest["scope"] == (f"/kubepods.slice/kubepods-burstable.slice/{slice_}/"
                              f"cri-containerd-{guest['container_id']}.scope")
    # the systemd driver's form of the path (slice:prefix:id): SystemdCgroup=true reached runc
    spec_path = guest["inspect"]["info"]["runtimeSpec"]["linux"]["cgroupsPath"]
    assert spec_path == f"{slice_}:cri-containerd:{guest['container_id']}"
    assert guest["memory_max"] == str(32 * MiB)
    events = dict(line.split() for line in guest["pod_memory_events"].splitlines())
    assert events["oom_kill"] == "1"  # the kernel killed exactly one process in the pod


def test_the_kill_is_named_through_the_real_cri_on_cgroup_v2(guest):
    a = guest["record"]
    meta = guest["inspect"]["status"]["metadata"], guest["inspectp"]["status"]["metadata"]
    container_meta, pod_meta = meta
    assert a["event_name"] == "oom.kill"
    assert a["oom.victim.cgroup.path"] == guest["scope"]
    assert a["container.id"] == guest["container_id"] == guest["inspect"]["status"]["id"]
    assert a["container.runtime.name"] == "containerd"
    assert (a["k8s.pod.name"], a["k8s.namespace.name"], a["k8s.pod.uid"]) == (
        pod_meta["name"], pod_meta["namespace"], pod_meta["uid"])
    assert a["k8s.pod.uid"] == guest["uid"]
    assert a["k8s.container.name"] == container_meta["name"] == "api"
    assert a["oom.victim.pod.qos_class"] == "burstable"
    image = guest["inspect"]["status"]["image"]["image"]
    assert image == IMAGE and (a["container.image.name"], a["container.image.tags"]) == tuple(
        [image.rsplit(":", 1)[0], [image.rsplit(":", 1)[1]]])
    assert a["container.image.id"] == guest["inspect"]["status"]["imageRef"]
    assert a["k8s.container.restart_count"] == container_meta["attempt"] == 0
    assert a["oom.memcg.limit"] == 32 * MiB
    assert a["oom.constraint"] == "memcg"


def test_the_victims_pid_is_the_nodes_and_crictl_knows_it_by_its_namespace_pid(guest):
    a = guest["record"]
    assert a["process.pid"] == guest["pid"]  # the pid in the guest's initial namespace
    # NSpid: the guest's pid, then the pid in systemd's namespace (containerd's view), then the pod's
    assert guest["nspid"][0] == guest["pid"]
    assert guest["nspid"][1] == guest["inspect"]["info"]["pid"]
    assert a["process.executable.name"] == VICTIM_COMM

def test_containerd_reports_the_same_kill_as_oomkilled(guest):
    """What the kubelet would be told: the container exited, OOMKilled, 137 (containerd 1.6 reads the
    scope's memory.events on v2)."""
    status = guest["inspect_after"]["status"]
    assert (status["state"], status["reason"], status["exitCode"]) == ("CONTAINER_EXITED", "OOMKilled", 137)
