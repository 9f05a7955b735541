"""The Kubernetes API, for two optional extras (both off by default, nothing imported when off):

- `pod_events.py`: a Kubernetes Event on the victim's Pod for every kill (`--k8s-events`), so that
  `kubectl describe pod` and `kubectl get events` show which process was killed, in which
  container, at which limit, holding how much memory;
- `kubelet_check.py`: what the kubelet reported for the killed container (`--k8s-kubelet-check`):
  an `oom.kubelet` record and the `oom.kills.kubelet` metric.

`settings.py` reads the switches and the connection (in-cluster, or `--kubeconfig`) once at start,
`api.py` talks to the API server with the standard library, `main_process.py` tells whether the
victim was its container's main process (from the CRI), `wiring.py` builds the services.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from ..attribution.runtime.settings import RuntimeSettings
    from .settings import KubeSettings
    from .wiring import Kube


def build(settings: Optional["KubeSettings"], runtimes: "RuntimeSettings", submit: Callable[[Any], None],
          drops: Counter[str]) -> Optional["Kube"]:
    """The extras' services for the agent (None when both are off: nothing of this package is imported).
    `submit` takes the oom.kubelet records to the worker; `drops` is the agent's drop counter."""
    if settings is None:
        return None
    from .wiring import Kube

    kube = Kube(settings, runtimes, submit, drops)
    logging.getLogger("otel_oom.kube").info("Kubernetes: %s", kube.describe())
    return kube
