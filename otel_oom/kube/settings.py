"""The Kubernetes extras' settings: flags > OTEL_OOM_* environment > defaults (both off), checked once.

`--k8s-events` (Events on the victim's Pod) and `--k8s-kubelet-check` (what the kubelet reported)
need the API server. Inside a pod the agent finds it as every in-cluster client does: the
`KUBERNETES_SERVICE_HOST`/`_PORT` variables, and the pod's service-account token and CA under
/var/run/secrets/kubernetes.io/serviceaccount (the chart mounts them only when the extras are on).
Outside a pod, `--kubeconfig PATH` names a kubeconfig: its current context's server, CA and a token,
token file or client certificate (exec plugins and auth providers are not supported). Everything
is read and checked here, at start: a missing variable, an unreadable token or CA, a malformed
server URL is one line naming the setting, before anything runs.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import UsageError
from ..urls import parse_url
from .api import Connection, read_token
from .switches import ENV_EVENTS, ENV_KUBECONFIG, ENV_KUBELET_CHECK

ENV_KUBELET_WAIT = "OTEL_OOM_K8S_KUBELET_WAIT"    # seconds the kubelet gets to report a kill, default 30
ENV_NODE_NAME = "K8S_NODE_NAME"                   # the Events' reportingInstance (the chart sets it)
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_KUBELET_WAIT_S = 30.0


@dataclass(frozen=True)
class KubeSettings:
    events: bool
    kubelet_check: bool
    connection: Connection
    node_name: str                    # reportingInstance of the Events
    kubelet_wait_s: float = DEFAULT_KUBELET_WAIT_S


def _flag(flags: Mapping[str, object], name: str, environ: Mapping[str, str], env: str) -> bool:
    if flags.get(name):
        return True
    value = (environ.get(env) or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"{env} must be true or false, got {environ.get(env)!r}")


def resolve_kube(flags: Mapping[str, object], environ: Mapping[str, str],
                 service_account_dir: str = SERVICE_ACCOUNT_DIR) -> Optional[KubeSettings]:
    """The settings, or None when both extras are off (then nothing here is read or imported)."""
    events = _flag(flags, "k8s_events", environ, ENV_EVENTS)
    check = _flag(flags, "k8s_kubelet_check", environ, ENV_KUBELET_CHECK)
    kubeconfig = flags.get("kubeconfig") or environ.get(ENV_KUBECONFIG) or None
    wait_text = flags.get("k8s_kubelet_wait") or environ.get(ENV_KUBELET_WAIT) or DEFAULT_KUBELET_WAIT_S
    try:
        wait = float(wait_text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        wait = -1.0
    if not 1.0 <= wait <= 600.0:
        raise UsageError(f"--k8s-kubelet-wait must be between 1 and 600 seconds, got {wait_text!r}")
    if not (events or check):
        if kubeconfig:
            raise UsageError("--kubeconfig is used by --k8s-events and --k8s-kubelet-check: turn one of them on "
                             f"({ENV_EVENTS}=true, {ENV_KUBELET_CHECK}=true) or drop it")
        return None
    what = "--k8s-events" if events else "--k8s-kubelet-check"
    conn = load_kubeconfig(str(kubeconfig)) if kubeconfig else in_cluster(environ, what, service_account_dir)
    try:
        conn.ssl_context()
    except (ssl.SSLError, OSError, ValueError) as e:
        raise UsageError(f"{what}: the API server's CA or client certificate from {conn.source} cannot be used: "
                         f"{' '.join(str(e).split())[:200]}") from None
    node = (environ.get(ENV_NODE_NAME) or "").strip() or socket.gethostname()
    if not node or len(node) > 128:
        raise UsageError(f"{ENV_NODE_NAME} must be the node's name (1-128 characters), got {node!r}")
    return KubeSettings(events, check, conn, node, wait)


def in_cluster(environ: Mapping[str, str], what: str, sa_dir: str = SERVICE_ACCOUNT_DIR) -> Connection:
    """The in-cluster configuration, as client-go's rest.InClusterConfig reads it."""
    host = (environ.get("KUBERNETES_SERVICE_HOST") or "").strip()
    port = (environ.get("KUBERNETES_SERVICE_PORT") or "").strip()
    if not host or not port:
        raise UsageError(f"{what} needs the Kubernetes API: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                         "are not set (not running in a pod?); give --kubeconfig PATH outside a pod")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what}: KUBERNETES_SERVICE_PORT must be a port number, got {port!r}")
    token_file = os.path.join(sa_dir, "token")
    try:
        read_token(token_file)
    except (OSError, ValueError) as e:
        raise UsageError(f"{what}: cannot read the service-account token {token_file} ({_why(e)}); the pod needs "
                         "its token mounted (the chart does so with events.enabled=true)") from None
    ca = os.path.join(sa_dir, "ca.crt")
    if not os.access(ca, os.R_OK):
        raise UsageError(f"{what}: cannot read the API server's CA {ca}; the pod needs its service-account "
                         "token mounted (the chart does so with events.enabled=true)")
    return Connection("https", host.strip("[]"), int(port), source="in-cluster", ca_file=ca, token_file=token_file)


def _why(e: BaseException) -> str:
    return e.strerror or str(e) if isinstance(e, OSError) else str(e)


def load_kubeconfig(path: str) -> Connection:
    """A kubeconfig's current context; relative file paths in it are relative to the file."""
    where = f"--kubeconfig {path}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: cannot read it ({_why(e)})") from None
    doc = _parse(text, where)
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: not a kubeconfig (a mapping with clusters, users and contexts)")
    contexts = _named(doc, "contexts", "context", where)
    current = doc.get("current-context")
    if not current or current not in contexts:
        raise UsageError(f"{where}: its current-context {current!r} is not one of its contexts; "
                         "set one with kubectl config use-context")
    ctx = contexts[current]
    clusters, users = _named(doc, "clusters", "cluster", where), _named(doc, "users", "user", where)
    cluster = clusters.get(str(ctx.get("cluster")))
    if cluster is None:
        raise UsageError(f"{where}: context {current!r} names cluster {ctx.get('cluster')!r}, which it does not hold")
    user = users.get(str(ctx.get("user")), {}) if ctx.get("user") else {}
    base = os.path.dirname(os.path.abspath(path))

    def file(value: Any) -> Optional[str]:
        return None if not value else os.path.join(base, str(value))

    url = parse_url(f"{where}: cluster {ctx.get('cluster')!r} server", str(cluster.get("server") or ""),
                    "https://203.0.113.10:6443")
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise UsageError(f"{where}: user {ctx.get('user')!r} authenticates with {unsupported}, which otel-oom "
                             "does not run; give it a token, tokenFile or client certificate")
    if user.get("username") or user.get("password"):
        raise UsageError(f"{where}: basic authentication (username/password) is not supported; use a token")
    conn = Connection(
        url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80), base_path=url.path.rstrip("/"),
        source=path, ca_file=file(cluster.get("certificate-authority")),
        ca_data=_pem(cluster.get("certificate-authority-data"), where, "certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")), server_name=cluster.get("tls-server-name") or None,
        token=str(user["token"]) if user.get("token") else None, token_file=file(user.get("tokenFile")),
        cert_file=file(user.get("client-certificate")), key_file=file(user.get("client-key")),
        cert_data=_pem(user.get("client-certificate-data"), where, "client-certificate-data"),
        key_data=_pem(user.get("client-key-data"), where, "client-key-data"))
    if conn.token_file:
        try:
            read_token(conn.token_file)
        except (OSError, ValueError) as e:
            raise UsageError(f"{where}: cannot read its tokenFile {conn.token_file} ({_why(e)})") from None
    if bool(conn.cert_file or conn.cert_data) != bool(conn.key_file or conn.key_data):
        raise UsageError(f"{where}: a client certificate needs its key (and the key its certificate)")
    return conn


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # not a dependency of the agent: kubeconfigs in YAML are read where PyYAML is installed
    except ImportError:
        raise UsageError(f"{where}: not JSON, and reading YAML needs PyYAML, which is not installed: "
                         "write it as JSON with `kubectl config view --raw --minify -o json`") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{where}: not valid YAML ({' '.join(str(e).split())[:150]})") from None


def _named(doc: dict, key: str, inner: str, where: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in doc.get(key) or []:
        if not isinstance(item, dict) or not isinstance(item.get(inner), dict) or "name" not in item:
            raise UsageError(f"{where}: an entry of {key} is not a name and a {inner}")
        out[str(item["name"])] = item[inner]
    return out


def _pem(value: Any, where: str, field: str) -> Optional[str]:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: {field} is not base64-encoded PEM") from None
