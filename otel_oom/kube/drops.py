"""What a Kubernetes extra (the Pod Events, the kubelet cross-check) could not do, counted by kind.

Such a failure never costs the kill's own record, which is delivered as usual. Each one is counted
in the agent's `otel_oom.events.dropped{reason="<prefix><kind>"}` and logged once per kind until
the extra works again (`recovered`), so an API server that refuses for an hour is one log line.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Optional

log = logging.getLogger("otel_oom.kube")


class ExtraDrops:
    """`by_kind` and `total` for this extra; `agent_drops` is the agent's exported counter."""

    def __init__(self, prefix: str, failure: str, agent_drops: Optional[Counter[str]]) -> None:
        self.prefix = prefix      # "k8s_event_", "kubelet_check_": the reason is prefix + kind
        self.failure = failure    # what did not happen, for the log line
        self.by_kind: Counter[str] = Counter()
        self._agent_drops = agent_drops
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.by_kind.values())

    def count(self, kind: str, detail: str) -> None:
        with self._lock:
            self.by_kind[kind] += 1
            if self._agent_drops is not None:
                self._agent_drops[self.prefix + kind] += 1
            first = kind not in self._logged
            self._logged.add(kind)
        if first:
            log.warning("%s (%s: %s); the kill's record is delivered as usual; counted in "
                        "otel_oom.events.dropped{reason=%s}, logged once per kind",
                        self.failure, kind, detail, self.prefix + kind)

    def recovered(self) -> bool:
        """After a success: whether failures were logged before it (they will be logged again)."""
        with self._lock:
            logged = bool(self._logged)
            self._logged.clear()
        return logged
