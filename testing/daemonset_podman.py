"""A DaemonSet's pod under podman, for the image tests: `podman run` flags from a pod spec.

(testing/podman.py is the other podman helper: a podman with its own storage and API service for
the runtime-name tests. This one uses the machine's podman storage, so the image `make image`
built is there, and this branch's prefix for every name.)

`pod_security_args(pod_spec, host_paths)` translates what a DaemonSet's pod asks of the node
(host PID namespace, the container's securityContext, every volume and mount) into podman
flags, field by field, and raises on any field it does not know, so the image test runs the
agent with exactly the manifest's privileges and notices when the manifest grows something new.
Every container and image these tests make is named with IMAGE_PREFIX, so other test runs on
the machine (which use their own prefix) are never touched.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from .collector_process import REPO

IMAGE_PREFIX = os.environ.get("IMAGE_PREFIX", "otel-oom-")
CONTAINERS_CONF = REPO / "tools" / "image" / "containers.conf"

# the pod-level fields the translation understands (anything else in the pod spec is ignored
# only if it is listed here as not about the node: scheduling, identity, lifecycle)
_POD_FIELDS_NOT_ABOUT_THE_NODE = {"serviceAccountName", "automountServiceAccountToken", "priorityClassName",
                                  "tolerations", "terminationGracePeriodSeconds", "nodeSelector", "containers",
                                  "volumes", "hostPID"}
_CONTAINER_FIELDS_NOT_ABOUT_THE_NODE = {"name", "image", "imagePullPolicy", "args", "env", "envFrom", "ports",
                                        "livenessProbe", "readinessProbe", "resources", "securityContext",
                                        "volumeMounts"}


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


_WORKDIR = Path(tempfile.gettempdir()) / f"{IMAGE_PREFIX}podman-cwd"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("podman")
    if exe is None:
        raise FileNotFoundError("podman is not installed (apt-get install podman)")
    # cwd: conmon drops an empty `oom` marker file in its working directory when a container is
    # OOM-killed; keep it out of the checkout
    _WORKDIR.mkdir(exist_ok=True)
    return subprocess.run([exe, *args], capture_output=True, text=True, check=check, timeout=timeout,
                          env=podman_env(), cwd=_WORKDIR)


class UnsupportedPodField(Exception):
    """The pod spec asks for something pod_security_args cannot reproduce with podman."""


def pod_security_args(pod: Mapping, host_paths: Optional[Mapping[str, str]] = None,
                      runtime_default_seccomp: Optional[Path] = None) -> list[str]:
    """`podman run` flags for the first container of `pod` (a pod spec), reproducing its host
    namespaces, security context and volumes. host_paths maps a hostPath to the directory to use
    instead (a test's own spool directory rather than the node's /var/lib/otel-oom);
    runtime_default_seccomp is the profile that stands for `RuntimeDefault` (default: podman's)."""
    host_paths = dict(host_paths or {})
    unknown = set(pod) - _POD_FIELDS_NOT_ABOUT_THE_NODE
    if unknown:
        raise UnsupportedPodField(f"pod fields not translated: {sorted(unknown)}")
    (c,) = pod["containers"]
    unknown = set(c) - _CONTAINER_FIELDS_NOT_ABOUT_THE_NODE
    if unknown:
        raise UnsupportedPodField(f"container fields not translated: {sorted(unknown)}")
    args: list[str] = []
    if pod.get("hostPID"):
        args.append("--pid=host")
    args += _security_context(c.get("securityContext", {}), runtime_default_seccomp)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        args += _mount(m, volumes[m["name"]], host_paths)
    return args


def _security_context(sc: Mapping, runtime_default_seccomp: Optional[Path]) -> list[str]:
    args = []
    known = {"privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsUser", "runAsGroup",
             "capabilities", "seccompProfile"}
    if set(sc) - known:
        raise UnsupportedPodField(f"securityContext fields not translated: {sorted(set(sc) - known)}")
    if sc.get("privileged"):
        args.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if "runAsUser" in sc:
        args.append(f"--user={sc['runAsUser']}:{sc.get('runAsGroup', 0)}")
    caps = sc.get("capabilities", {})
    for cap in caps.get("drop", []):
        args.append(f"--cap-drop={cap}")
    for cap in caps.get("add", []):
        args.append(f"--cap-add={cap}")
    seccomp = sc.get("seccompProfile", {}).get("type")
    if seccomp == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    elif seccomp == "RuntimeDefault" and runtime_default_seccomp is not None:
        args.append(f"--security-opt=seccomp={runtime_default_seccomp}")
    elif seccomp not in (None, "RuntimeDefault"):
        raise UnsupportedPodField(f"seccompProfile {seccomp!r} not translated")
    return args


def _mount(m: Mapping, volume: Mapping, host_paths: Mapping[str, str]) -> list[str]:
    known_mount = {"name", "mountPath", "readOnly", "mountPropagation"}
    if set(m) - known_mount:
        raise UnsupportedPodField(f"volumeMount fields not translated: {sorted(set(m) - known_mount)}")
    if "emptyDir" in volume:
        ed = volume["emptyDir"]
        if ed.get("medium") != "Memory":
            raise UnsupportedPodField(f"emptyDir {ed} not translated (only medium: Memory)")
        size = ed.get("sizeLimit", "")
        size_opt = f":size={size[:-2].lower()}m" if size.endswith("Mi") else ""
        return [f"--tmpfs={m['mountPath']}{size_opt}"]
    if "hostPath" not in volume:
        raise UnsupportedPodField(f"volume {volume['name']} is neither hostPath nor emptyDir")
    hp = volume["hostPath"]
    src = host_paths.get(hp["path"], hp["path"])
    kind = hp.get("type", "")
    if kind == "DirectoryOrCreate":
        Path(src).mkdir(parents=True, exist_ok=True)
    elif kind == "Directory" and not Path(src).is_dir():
        raise UnsupportedPodField(f"hostPath {src} (type Directory) does not exist here")
    elif kind == "File" and not Path(src).is_file():
        raise UnsupportedPodField(f"hostPath {src} (type File) does not exist here")
    elif kind == "CharDevice" and not Path(src).is_char_device():
        raise UnsupportedPodField(f"hostPath {src} (type CharDevice) is not a character device here")
    opts = ["ro" if m.get("readOnly") else "rw"]
    propagation = m.get("mountPropagation")
    if propagation == "HostToContainer":
        opts.append("rslave")
    elif propagation not in (None, "None"):
        raise UnsupportedPodField(f"mountPropagation {propagation} not translated")
    # a hostPath of a device is a bind mount of the node, not a --device grant: the device cgroup
    # decides whether it can be opened, as under a CRI runtime
    return [f"--volume={src}:{m['mountPath']}:{','.join(opts)}"]


SYSTEM_SECCOMP = Path("/usr/share/containers/seccomp.json")


def seccomp_default_with_bpf_caps(dest: Path, system_profile: Path = SYSTEM_SECCOMP) -> Path:
    """The runtime's own default seccomp profile, amended as current runtimes amend theirs
    (containerd since 1.6, Docker's profile likewise): `bpf` allowed with CAP_BPF and
    `perf_event_open` with CAP_PERFMON, not only with CAP_SYS_ADMIN. Debian 12's podman 4.3
    (containers-common) predates that and answers EPERM to an unprivileged BPF loader."""
    import json

    profile = json.loads(system_profile.read_text())
    amended = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
    for rule in profile["syscalls"]:
        # the "deny unless CAP_SYS_ADMIN" rule would refuse them before the new allow rules apply
        if rule.get("action") == "SCMP_ACT_ERRNO" and "CAP_SYS_ADMIN" in rule.get("excludes", {}).get("caps", []):
            rule["names"] = [n for n in rule["names"] if n not in amended]
    for name, cap in amended.items():
        profile["syscalls"].append({"names": [name], "action": "SCMP_ACT_ALLOW", "args": [],
                                    "includes": {"caps": [cap]}, "excludes": {}})
    dest.write_text(json.dumps(profile))
    return dest
