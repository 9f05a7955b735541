"""Which runtime sockets to ask for names, and how: flags > OTEL_OOM_* environment > auto-detection.

Each of `--cri-socket`, `--docker-socket`, `--podman-socket` takes `auto` (the default: the
runtime's usual socket paths, watched for whenever they appear; below `--runtime-root` when the
host's /run is mounted elsewhere, as in deploy/daemonset.yaml), `none`, or comma-separated
absolute paths. Validated once, at
start-up, by `config.resolve`; `build_names` turns the settings into the running watchers.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ...errors import UsageError

if TYPE_CHECKING:
    from .cache import RuntimeNames

ENV_CRI_SOCKET = "OTEL_OOM_CRI_SOCKET"                    # auto | none | PATH[,PATH]
ENV_DOCKER_SOCKET = "OTEL_OOM_DOCKER_SOCKET"              # auto | none | PATH[,PATH]
ENV_PODMAN_SOCKET = "OTEL_OOM_PODMAN_SOCKET"              # auto | none | PATH[,PATH]
ENV_RUNTIME_REFRESH = "OTEL_OOM_RUNTIME_REFRESH"          # seconds between full lists, default 1
ENV_RUNTIME_LOOKUP_WAIT = "OTEL_OOM_RUNTIME_LOOKUP_WAIT_MS"  # longest wait for a name at a kill, default 50
ENV_RUNTIME_ROOT = "OTEL_OOM_RUNTIME_ROOT"                # where the host's / is: auto paths below it, default /

# where the runtimes put their API sockets by default (/var/run is a link to /run on current systems)
AUTO_SOCKETS = {
    "cri": ("/run/containerd/containerd.sock", "/run/crio/crio.sock", "/run/k3s/containerd/containerd.sock"),
    "docker": ("/run/docker.sock", "/var/run/docker.sock"),
    "podman": ("/run/podman/podman.sock",),
}
DEFAULT_REFRESH_S = 1.0
DEFAULT_LOOKUP_WAIT_MS = 50


@dataclass(frozen=True)
class RuntimeSocket:
    kind: str        # "cri" | "docker" | "podman"
    path: str
    explicit: bool   # named by the user (a missing socket is warned about) rather than auto-detected


@dataclass(frozen=True)
class RuntimeSettings:
    sockets: tuple[RuntimeSocket, ...] = ()
    refresh_s: float = DEFAULT_REFRESH_S
    lookup_wait_s: float = DEFAULT_LOOKUP_WAIT_MS / 1000


def _sockets(kind: str, value: str, what: str, root: str) -> list[RuntimeSocket]:
    value = value.strip()
    if value == "none":
        return []
    if value == "auto":
        return [RuntimeSocket(kind, os.path.join(root, p.lstrip("/")), False) for p in AUTO_SOCKETS[kind]]
    paths = [p.strip() for p in value.split(",") if p.strip()]
    if not paths:
        raise UsageError(f"{what} must be auto, none or socket paths, got {value!r}")
    for p in paths:
        if not os.path.isabs(p):
            raise UsageError(f"{what} takes absolute socket paths (or auto, none), got {p!r}")
    return [RuntimeSocket(kind, p, True) for p in paths]


def _number(value: Any, what: str, lo: float, hi: float) -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {value!r}") from None
    if not lo <= n <= hi:
        raise UsageError(f"{what} must be between {lo:g} and {hi:g}, got {n:g}")
    return n


def resolve_runtimes(flags: Mapping[str, object], environ: Mapping[str, str]) -> RuntimeSettings:
    def pick(flag: str, env: str, default: Any) -> Any:
        value = flags.get(flag)
        if value is None:
            value = environ.get(env) or None
        return default if value is None else value

    root = str(pick("runtime_root", ENV_RUNTIME_ROOT, "/"))
    if not os.path.isabs(root):
        raise UsageError(f"--runtime-root must be an absolute directory, got {root!r}")
    sockets: list[RuntimeSocket] = []
    seen: set[str] = set()
    for kind, flag, env in (("cri", "cri_socket", ENV_CRI_SOCKET), ("docker", "docker_socket", ENV_DOCKER_SOCKET),
                            ("podman", "podman_socket", ENV_PODMAN_SOCKET)):
        for s in _sockets(kind, str(pick(flag, env, "auto")), f"--{flag.replace('_', '-')}", root):
            real = os.path.realpath(s.path)
            if real not in seen:  # /var/run/docker.sock and /run/docker.sock are one socket
                seen.add(real)
                sockets.append(s)
    refresh = _number(pick("runtime_refresh", ENV_RUNTIME_REFRESH, DEFAULT_REFRESH_S), "--runtime-refresh", 0.1, 3600)
    wait_ms = _number(pick("runtime_lookup_wait_ms", ENV_RUNTIME_LOOKUP_WAIT, DEFAULT_LOOKUP_WAIT_MS),
                      "--runtime-lookup-wait-ms", 0, 1000)
    return RuntimeSettings(tuple(sockets), refresh, wait_ms / 1000)


def build_names(settings: RuntimeSettings, faults: Counter[str]) -> Optional["RuntimeNames"]:
    """The RuntimeNames for these settings (None when every runtime is off); threads not started."""
    from .cache import RuntimeNames, RuntimeWatcher

    if not settings.sockets:
        return None
    watchers = []
    for s in settings.sockets:
        if s.kind == "cri":
            from .cri import CriClient

            client: Any = CriClient(s.path)
        else:
            from .engine_api import EngineApiClient

            client = EngineApiClient(s.kind, s.path)
        watchers.append(RuntimeWatcher(client, faults, refresh_s=settings.refresh_s, explicit=s.explicit))
    return RuntimeNames(watchers, faults, lookup_wait_s=settings.lookup_wait_s)
