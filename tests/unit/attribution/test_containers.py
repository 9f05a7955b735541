"""Cgroup path -> runtime / container id / pod: one table line per layout, then hostile input."""
from __future__ import annotations

import pytest

from otel_oom.attribution.containers import Workload, parse_cgroup_path

C = "4f1a3c9be2d07a65b8c0e9d1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5"    # container id
C2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"   # inner container
N = "9e8d7c6b5a49382716051f2e3d4c5b6a79881726354a5b6c7d8e9f0a1b2c3d4e"    # kind/k3d node
UID = "0f6b0d5c-3b53-4a67-9a1e-7c2f2f3e6c11"
U_ = UID.replace("-", "_")
H32 = "b1b7bc2a8d0bc5b7ed8b0fa2c5b4e0a9"   # static pod uid: the manifest hash

SD = "/kubepods.slice"
SD_BU = f"{SD}/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice"
SD_BE = f"{SD}/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice"
SD_GU = f"{SD}/kubepods-pod{U_}.slice"
KIND = "/kubelet.slice/kubelet-kubepods.slice"

W = Workload
NONE = Workload(None, None, None, None)

# (layouts the path occurs in, path, expected)
CASES = [
    # docker
    ("v1,v2 cgroupfs", f"/docker/{C}", W("docker", C)),
    ("v1,v2 systemd", f"/system.slice/docker-{C}.scope", W("docker", C)),
    ("v2 systemd rootless", f"/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{C}.scope", W("docker", C)),
    # containerd without Kubernetes
    ("v1,v2 cgroupfs", f"/default/{C}", W("containerd", C)),
    ("v1,v2 systemd", f"/system.slice/nerdctl-{C}.scope", W("containerd", C)),
    # Kubernetes + containerd
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/{C}", W(None, C, UID, "burstable")),
    ("v1,v2 cgroupfs", f"/kubepods/pod{UID}/{C}", W(None, C, UID, "guaranteed")),
    ("v1,v2 cgroupfs", f"/kubepods/besteffort/pod{UID}/{C}", W(None, C, UID, "besteffort")),
    ("v1,v2 systemd", f"{SD_BU}/cri-containerd-{C}.scope", W("containerd", C, UID, "burstable")),
    ("v1,v2 systemd", f"{SD_GU}/cri-containerd-{C}.scope", W("containerd", C, UID, "guaranteed")),
    ("v1,v2 systemd", f"{SD_BE}/cri-containerd-{C}.scope", W("containerd", C, UID, "besteffort")),
    # Kubernetes + cri-o (conmon is the runtime's monitor: the pod's, not a container's)
    ("v1,v2 systemd", f"{SD_BE}/crio-{C}.scope", W("cri-o", C, UID, "besteffort")),
    ("v1,v2 systemd", f"{SD_GU}/crio-{C}.scope", W("cri-o", C, UID, "guaranteed")),
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/crio-{C}", W("cri-o", C, UID, "burstable")),
    ("v1,v2 systemd", f"{SD_BU}/crio-conmon-{C}.scope", W("cri-o", None, UID, "burstable")),
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/crio-conmon-{C}", W("cri-o", None, UID, "burstable")),
    ("v1,v2 systemd", f"/system.slice/crio-conmon-{C}.scope", W("cri-o", None)),
    # Kubernetes + docker through cri-dockerd
    ("v1,v2 systemd", f"{SD_BU}/docker-{C}.scope", W("docker", C, UID, "burstable")),
    ("v1,v2 cgroupfs", f"/kubepods/besteffort/pod{UID}/{C}", W(None, C, UID, "besteffort")),
    # podman
    ("v1,v2 systemd", f"/machine.slice/libpod-{C}.scope", W("podman", C)),
    ("v1,v2 systemd", f"/machine.slice/libpod-conmon-{C}.scope", W("podman", None)),
    ("v2 systemd rootless", f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C}.scope", W("podman", C)),
    ("v1,v2 cgroupfs", f"/libpod_parent/libpod-{C}", W("podman", C)),
    ("v1,v2 cgroupfs", f"/libpod_parent/libpod-conmon-{C}", W("podman", None)),
    ("v1,v2 systemd pod", f"/machine.slice/machine-libpod_pod_{N}.slice/libpod-{C}.scope", W("podman", C)),
    ("v2 systemd", f"/machine.slice/libpod-{C}.scope/container", W("podman", C)),
    # kubepods nested in another parent (a node container): the pod and its container win
    ("v2 kind", f"{KIND}/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{U_}.slice/cri-containerd-{C}.scope", W("containerd", C, UID, "burstable")),  # noqa: E501
    ("v2 kind", f"{KIND}/kubelet-kubepods-pod{U_}.slice/cri-containerd-{C}.scope", W("containerd", C, UID, "guaranteed")),
    ("v2 kind host view", f"/system.slice/docker-{N}.scope{KIND}/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{U_}.slice/cri-containerd-{C}.scope", W("containerd", C, UID, "besteffort")),  # noqa: E501
    ("v1 kind host view", f"/docker/{N}/kubelet/kubepods/burstable/pod{UID}/{C}", W(None, C, UID, "burstable")),
    ("v1,v2 k3d", f"/docker/{N}/kubepods/besteffort/pod{UID}/{C}", W(None, C, UID, "besteffort")),
    ("v1,v2 k3d", f"/docker/{N}/kubepods/pod{UID}/{C}", W(None, C, UID, "guaranteed")),
    ("v1 kind node's kubelet", f"/docker/{N}/kubelet", W("docker", N)),
    ("v2 kind node's kubelet", f"/system.slice/docker-{N}.scope/kubelet.slice", W("docker", N)),
    ("v1 kind pod level", f"/docker/{N}/kubelet/kubepods/burstable/pod{UID}", W(None, None, UID, "burstable")),
    # below the container's own cgroup: still that container
    ("v1,v2 systemd", f"{SD_BU}/cri-containerd-{C}.scope/init.scope", W("containerd", C, UID, "burstable")),
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/{C}/made-by/workload", W(None, C, UID, "burstable")),
    ("v1,v2 cgroupfs", f"/docker/{C}/sub", W("docker", C)),
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/crio-{C}/x", W("cri-o", C, UID, "burstable")),
    # a container inside a pod's container (docker in docker) is the workload's own choice: the
    # pod's container it runs in is the one attributed, never the inner, workload-chosen id
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/{C}/docker/{C2}", W(None, C, UID, "burstable")),
    ("v1,v2 systemd", f"{SD_BU}/cri-containerd-{C}.scope/docker-{C2}.scope", W("containerd", C, UID, "burstable")),
    ("v1,v2 cgroupfs", f"/docker/{C}/docker/{C2}", W("docker", C)),
    # a workload faking a pod tree inside its own pod's container: the outer pod stays
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{UID}/{C}/kubepods/pod{H32}/{C2}", W(None, C, UID, "burstable")),
    # pod level only (the pod's own memcg)
    ("v1,v2 systemd", SD_BU, W(None, None, UID, "burstable")),
    ("v1,v2 systemd", SD_GU, W(None, None, UID, "guaranteed")),
    ("v1,v2 cgroupfs", f"/kubepods/pod{UID}", W(None, None, UID, "guaranteed")),
    ("v1,v2 cgroupfs", f"/kubepods/besteffort/pod{UID}/not-a-container", W(None, None, UID, "besteffort")),
    # static pods: the uid is the manifest's 32-hex hash, kept as is
    ("v1,v2 cgroupfs", f"/kubepods/burstable/pod{H32}/{C}", W(None, C, H32, "burstable")),
    ("v1,v2 systemd", f"{SD}/kubepods-burstable.slice/kubepods-burstable-pod{H32}.slice/crio-{C}.scope", W("cri-o", C, H32, "burstable")),  # noqa: E501
    # no workload
    ("v1,v2", "/", NONE),
    ("v1,v2", "", NONE),
    ("v1,v2", "/user.slice/user-1000.slice/session-1.scope", NONE),
    ("v1,v2", "/system.slice/containerd.service", NONE),
    ("v1,v2", "/system.slice/docker.service", NONE),
    ("v1,v2", "/kubepods", NONE),
    ("v1,v2", "/kubepods/burstable", NONE),
    ("v1,v2", "/kubepods.slice/kubepods-burstable.slice", NONE),
    ("v1 this VM", "/process_api/e3e397ebf461628acd01ee76401de7a5", NONE),
    ("v1,v2", f"/somewhere/{C}", NONE),       # bare id under an unknown parent: not guessed
    ("v1,v2", f"/{C}", NONE),
]


@pytest.mark.parametrize("layout, path, expected", CASES, ids=[f"{c[0]}:{c[1][-60:]}" for c in CASES])
def test_parse(layout, path, expected):
    assert parse_cgroup_path(path) == expected


HOSTILE = [
    f"/docker/{C.upper()}",                                     # uppercase id
    f"/system.slice/docker-{C.upper()}.scope",
    f"/docker/{'g' * 64}",                                      # 64 characters, not hex
    f"/system.slice/docker-{'z' * 64}.scope",
    f"/docker/{C[:-1]}",                                        # 63 and 65 hex
    f"/docker/{C}a",
    f"/system.slice/docker-{C}a.scope",
    f"/docker/{C}\n",                                           # trailing newline ($ would match)
    f"/system.slice/docker-{C}.scope\n",
    f"/docker/\n{C}",
    f"/docker/{C}\udcff",                                       # undecodable byte
    f"/docker/{C}.scope",                                       # scope suffix on a bare parent
    f"/system.slice/docker-{C}.scope.bak",
    f"/system.slice/cri-containerd-{C}.scope-x",
    f"/docker/{'٠' * 64}",                                      # non-ASCII digits
    f"/docker/{'a' * 100_000}",                                 # very long name
    f"/kubepods/burstable/pod{UID.upper()}/{C}",                # uppercase pod uid: no pod, no bare id
    f"/kubepods/burstable/pod{U_}/{C}",                         # systemd separator under cgroupfs
    f"/kubepods/burstable/pod{UID}\n/{C}",
    f"/kubepods/weird/pod{UID}/{C}",                            # not a QoS class
    f"/burstable/pod{UID}/{C}",                                 # no kubepods above
    f"/notkubepods/pod{UID}/{C}",
    f"/kubepods/burstable/pod{UID[:-1]}/{C}",                   # short uid
]


@pytest.mark.parametrize("path", HOSTILE, ids=[repr(p[-50:]) for p in HOSTILE])
def test_hostile_input_is_not_attributed(path):
    assert parse_cgroup_path(path) == NONE


@pytest.mark.parametrize("path, expected", [
    # a proper container below a malformed pod directory: the container stands, the pod does not
    (f"{SD}/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/cri-containerd-{C}.scope", W("containerd", C)),
    (f"{SD}/kubepods-burstable.slice/kubepods-burstable-pod{U_.upper()}.slice/cri-containerd-{C}.scope", W("containerd", C)),
    # a pod slice outside the slice its name says it belongs to
    (f"{SD}/kubepods-besteffort-pod{U_}.slice/cri-containerd-{C}.scope", W("containerd", C)),
    (f"/system.slice/kubepods-burstable-pod{U_}.slice/crio-{C}.scope", W("cri-o", C)),
    (f"{SD}/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice\n/crio-{C}.scope", W("cri-o", C)),
])
def test_malformed_pod_keeps_only_the_container(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.timeout(120)  # a hang guard: a backtracking parser takes hours on these, a linear one ms
def test_long_hostile_names_parse_in_linear_time():
    worst = [
        "/" + "kubepods-" * 20_000 + f"pod{U_}.slice",
        "/" + "a_" * 50_000 + "-kubepods-pod.slice",
        "/" + "/".join(["kubepods"] * 5_000) + f"/pod{UID}/{C}",
        "/" + "-".join(["a"] * 50_000) + "-kubepods-burstable-pod" + "0" * 31 + ".slice",
    ]
    for path in worst:
        parse_cgroup_path(path)
    assert parse_cgroup_path(worst[2]) == W(None, C, UID, "guaranteed")


def test_pod_uid_is_canonical_lowercase_dashed():
    for path, _ in [(c[1], c[2]) for c in CASES]:
        uid = parse_cgroup_path(path).pod_uid
        assert uid is None or uid in (UID, H32)


