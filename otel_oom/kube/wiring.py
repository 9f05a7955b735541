"""The Kubernetes extras as the agent runs them: built from the settings, three services at most.

    pipeline worker --notify(kill)--> main-process thread --(kill, main)--> Events thread  (--k8s-events)
                                      (CRI: was it the main process?)   \\-> kubelet check (--k8s-kubelet-check)
                                                                              \\-> submit(oom.kubelet record)

The agent registers `services` after its worker, so at a stop they end first: the Events queued by
then are posted within the stop's budget, what comes later is counted (`shutdown`).
"""
from __future__ import annotations

import functools
import os
from collections import Counter
from typing import Any, Callable, Optional, Sequence

from ..attribution.runtime.settings import RuntimeSettings
from ..schema.records import OomKill
from ..service import Resource
from .api import ApiClient
from .main_process import MainProcesses, MainProcessWatch
from .settings import KubeSettings


class Kube:
    def __init__(self, settings: KubeSettings, runtimes: RuntimeSettings, submit: Callable[[Any], None],
                 drops: Optional[Counter[str]] = None) -> None:
        self.settings = settings
        make_client = functools.partial(ApiClient, settings.connection)
        self.events: Any = None
        self.check: Any = None
        consumers = []
        if settings.events:
            from .pod_events import PodEvents

            self.events = PodEvents(make_client, settings.node_name, drops=drops)
            consumers.append(self.events)
        if settings.kubelet_check:
            from .kubelet_check import KubeletCheck

            self.check = KubeletCheck(make_client, submit, wait_s=settings.kubelet_wait_s, drops=drops)
            consumers.append(self.check)
        self._cri = _cri_clients(runtimes)
        self.processes = MainProcesses(self._cri)
        self._consumers = consumers
        self.watch = MainProcessWatch(self.processes, [c.notify for c in consumers], on_drop=self._dropped)
        # in the supervisor's order: the CRI channels (closed last), the consumers, what feeds them
        self.services = [Resource("otel-oom-k8s-cri", self.close), *consumers, self.watch]

    def _dropped(self, kill: OomKill) -> None:
        for consumer in self._consumers:
            consumer.drop(kill)

    def close(self) -> None:
        """After the services stopped: the CRI clients' channels."""
        for c in self._cri:
            c.client.close()

    def notify(self, kill: OomKill) -> None:
        """From the pipeline's worker, for every kill it handled (never blocks)."""
        self.watch.notify(kill)

    def describe(self) -> str:
        what = [w for w, on in (("Pod Events", self.settings.events), ("kubelet cross-check",
                                                                       self.settings.kubelet_check)) if on]
        return f"{' and '.join(what)} via {self.settings.connection.address} ({self.settings.connection.source})"


def _cri_clients(runtimes: RuntimeSettings) -> list["_Existing"]:
    """A client of our own per CRI socket (one whose socket does not exist is skipped at each round)."""
    from ..attribution.runtime.cri import CriClient

    return [_Existing(CriClient(s.path)) for s in runtimes.sockets if s.kind == "cri"]


class _Existing:
    """A CRI client asked only while its socket exists (auto-detection lists several paths)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.path = client.path

    def running(self) -> Sequence[str]:
        return self.client.running() if os.path.exists(self.path) else ()

    def main_pid(self, container_id: str) -> Any:
        return self.client.main_pid(container_id) if os.path.exists(self.path) else None
