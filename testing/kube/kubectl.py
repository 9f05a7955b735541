"""kubectl (the one built with the node) from the host, with the node's admin kubeconfig.

Its discovery cache goes to the node's state directory (KUBECACHEDIR), not ~/.kube.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")


class KubectlError(RuntimeError):
    pass


# what kubectl says when the API server is slow or restarting, not when the request is wrong
TRANSIENT = ("Client.Timeout exceeded", "connection refused", "TLS handshake timeout", "i/o timeout",
             "the server is currently unable to handle the request", "etcdserver: request timed out",
             "http2: client connection lost", "unexpected EOF", "context deadline exceeded")


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path, cache_dir: Path) -> None:
        self.binary, self.kubeconfig, self.cache_dir = binary, kubeconfig, cache_dir

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.cache_dir)}

    def run(self, *args: str, input: Optional[str] = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.binary), *args], input=input, capture_output=True, text=True,
                           env=self.env(), timeout=timeout)
        if check and r.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, *objects: dict, within: float = 180.0) -> None:
        """kubectl apply; tried again while the API server is only slow or briefly away (it is
        idempotent): a just-restarted API server on a loaded node can take over kubectl's 32 s to
        build the OpenAPI document that apply's validation fetches first."""
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        deadline = time.monotonic() + within
        while True:
            try:
                self.run("apply", "-f", "-", input=manifest)
                return
            except KubectlError as e:
                if time.monotonic() > deadline or not any(t in str(e) for t in TRANSIENT):
                    raise
            time.sleep(2)

    def get(self, kind: str, name: str, namespace: Optional[str] = "default") -> Optional[dict]:
        """The object, or None if there is none (namespace None: a cluster-scoped kind)."""
        ns = ["-n", namespace] if namespace else []
        r = self.run("get", kind, name, *ns, "-o", "json", "--ignore-not-found", check=False)
        if r.returncode != 0:
            raise KubectlError(f"kubectl get {kind} {name}: {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def wait_until(self, what: str, probe: Callable[[], Optional[T]], timeout: float = 180.0,
                   interval: float = 1.0, describe: Callable[[], str] = lambda: "") -> T:
        """Call probe() until it returns something other than None (or False)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = probe()
            except KubectlError:
                got = None
            if got is not None and got is not False:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{describe()}")
            time.sleep(interval)


def pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
