"""The node's certificates and kubeconfigs, made with the openssl command line (P-256 keys: fast).

One CA signs everything: the API server's serving certificate (the node's address, the
`kubernetes` Service's ClusterIP and DNS names), the kubelet's serving certificate, and a client
certificate per component with the identity the API server's default RBAC (and the Node
authorizer) expects. The service-account token signing key pair is a plain P-256 key.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .layout import Node

DAYS = "30"
SERVICE_NAMES = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost"]


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]}: {r.stderr.strip()}")


def _cert(pki: Path, name: str, cn: str, org: str = "", usage: str = "clientAuth", sans: str = "",
          ca: bool = False) -> None:
    cfg = pki / f"{name}.cnf"
    ext = (["basicConstraints = critical,CA:TRUE", "keyUsage = critical,keyCertSign,cRLSign,digitalSignature"] if ca
           else ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage = {usage}"])
    if sans:
        ext.append(f"subjectAltName = {sans}")
    cfg.write_text("\n".join(["[req]", "distinguished_name = dn", "prompt = no", "[dn]", f"CN = {cn}",
                              *([f"O = {org}"] if org else []), "[ext]", *ext, ""]))
    signer = [] if ca else ["-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key")]
    _openssl("req", "-x509", "-new", "-config", str(cfg), "-extensions", "ext", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", DAYS,
             "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.crt"), *signer)
    cfg.unlink()


# component -> (CN, O): the users the API server's bootstrap RBAC binds
CLIENTS = {
    "admin": ("otel-oom-kube-admin", "system:masters"),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "kube-proxy": ("system:kube-proxy", ""),
}


def make_pki(node: Node) -> None:
    pki = node.pki
    pki.mkdir(parents=True, exist_ok=True)
    _cert(pki, "ca", f"{node.node_name}-ca", ca=True)
    ips = f"IP:{node.node_ip},IP:{node.kubernetes_service_ip},IP:127.0.0.1"
    _cert(pki, "apiserver", "kube-apiserver", usage="serverAuth",
          sans=",".join([ips, *(f"DNS:{n}" for n in SERVICE_NAMES)]))
    _cert(pki, "kubelet-serving", node.node_name, usage="serverAuth", sans=f"IP:{node.node_ip},DNS:{node.node_name}")
    _cert(pki, "kubelet", f"system:node:{node.node_name}", "system:nodes")
    for name, (cn, org) in CLIENTS.items():
        _cert(pki, name, cn, org)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / "sa.key"))
    _openssl("ec", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for component in ("admin", "controller-manager", "scheduler", "kube-proxy", "kubelet"):
        write_kubeconfig(node, component, node.state / f"{component}.kubeconfig")


def write_kubeconfig(node: Node, component: str, path: Path) -> Path:
    """A kubeconfig for `component`'s client certificate (JSON is YAML), absolute file paths."""
    pki = node.pki
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": node.node_name, "preferences": {},
        "clusters": [{"name": node.node_name, "cluster": {"server": node.apiserver_url,
                                                         "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": component, "user": {"client-certificate": str(pki / f"{component}.crt"),
                                               "client-key": str(pki / f"{component}.key")}}],
        "contexts": [{"name": node.node_name, "context": {"cluster": node.node_name, "user": component}}],
    }
    path.write_text(json.dumps(config, indent=1) + "\n")
    path.chmod(0o600)
    return path
