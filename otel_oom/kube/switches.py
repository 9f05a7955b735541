"""The variables that turn the Kubernetes extras on, in a module of their own: config.py reads them
at every start, and must import nothing else of kube/ when they are off."""
from __future__ import annotations

ENV_EVENTS = "OTEL_OOM_K8S_EVENTS"                # "true": an Event on the victim's Pod per kill
ENV_KUBELET_CHECK = "OTEL_OOM_K8S_KUBELET_CHECK"  # "true": an oom.kubelet record per kill in a pod
ENV_KUBECONFIG = "OTEL_OOM_KUBECONFIG"            # a kubeconfig file instead of the in-cluster config
