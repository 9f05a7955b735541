"""`oom.kubelet`: what the kubelet reported for a killed container, next to what the kernel did (pure).

Upstream cannot trust its own `OOMKilled` reason (kubernetes #119600), and a process other than the
container's main one can be killed with no trace in the Pod at all (#50632, #78973). After each kill
in a pod, kube/kubelet_check.py reads the Pod from the API server until the killed container's
status says how it ended, or `--k8s-kubelet-wait` (30 s) passed, and reports it as this record,
joined to the kill by `oom.kill.event.id` (`oom.event.id` stays on kill records only), and in the
`oom.kills.kubelet` metric.

`oom.kubelet.reported` (bounded, also the metric's attribute):
- `oom_killed`: the container instance the kill was in terminated, reason OOMKilled;
- `terminated`: it terminated with another reason (`oom.kubelet.reason`: Error, ...: misreported
  when the victim was its main process);
- `running`: still running at the end of the wait (expected for a process other than the main one:
  the kubelet never reports such a kill);
- `missing`: the Pod has no status for that container instance (never listed, or long replaced);
- `pod_gone`: the Pod was deleted (or replaced by one of the same name) before it could be read.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ..text import for_terminal

REPORTED_OOM_KILLED = "oom_killed"
REPORTED_TERMINATED = "terminated"
REPORTED_RUNNING = "running"
REPORTED_MISSING = "missing"
REPORTED_POD_GONE = "pod_gone"
REPORTED = (REPORTED_OOM_KILLED, REPORTED_TERMINATED, REPORTED_RUNNING, REPORTED_MISSING, REPORTED_POD_GONE)


@dataclass(frozen=True)
class OomKubelet:
    event_id: str                          # "<the kill's oom.event.id>:kubelet"
    time_unix_nano: int                    # when the Pod was read
    kill_event_id: str
    reported: str                          # REPORTED_*
    delay_ns: int                          # from the kill to that reading
    victim_pid: int
    victim_comm: str
    main: Optional[bool] = None            # the victim was the container's main process (None: unknown)
    memcg_scope: Optional[str] = None      # whose limit was hit: schema.pod_event SCOPE_*
    pod_uid: Optional[str] = None
    pod_name: Optional[str] = None
    pod_namespace: Optional[str] = None
    k8s_container_name: Optional[str] = None
    container_id: Optional[str] = None
    container_runtime: Optional[str] = None
    reason: Optional[str] = None           # the kubelet's reason for that container's termination
    exit_code: Optional[int] = None
    restart_count: Optional[int] = None    # the container's restartCount when read
    state: Optional[str] = None            # the container's state when read: running, waiting, terminated
    trace_id: Optional[str] = None
    span_id: Optional[str] = None

    TYPE: ClassVar[str] = "oom.kubelet"

    def to_json(self) -> str:
        data = {"type": self.TYPE, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        return json.dumps(data, ensure_ascii=True, separators=(",", ":"))

    @property
    def misreported(self) -> bool:
        """The victim was the main process (the container ended) and the kubelet did not say OOMKilled."""
        return self.main is True and self.reported not in (REPORTED_OOM_KILLED, REPORTED_POD_GONE)


def main_label(main: Optional[bool]) -> str:
    return "unknown" if main is None else "true" if main else "false"


def kubelet_attributes(r: OomKubelet) -> dict[str, Any]:
    """The record's attributes, unknown values left out (strings as they are: log_records cleans them)."""
    return {
        "oom.record.id": r.event_id,
        "oom.kill.event.id": r.kill_event_id,
        "oom.kubelet.reported": r.reported,
        "oom.kubelet.reason": r.reason,
        "oom.kubelet.exit_code": r.exit_code,
        "oom.kubelet.delay": r.delay_ns / 1e9,
        "oom.victim.main": r.main,
        "oom.memcg.scope": r.memcg_scope,
        "process.pid": r.victim_pid,
        "process.executable.name": r.victim_comm,
        "k8s.pod.uid": r.pod_uid,
        "k8s.pod.name": r.pod_name,
        "k8s.namespace.name": r.pod_namespace,
        "k8s.container.name": r.k8s_container_name,
        "k8s.container.restart_count": r.restart_count,
        "k8s.container.status.state": r.state,
        "container.id": r.container_id,
        "container.runtime.name": r.container_runtime,
    }


def kubelet_body(r: OomKubelet) -> str:
    container = f"container {for_terminal(r.k8s_container_name or '?')} of pod " \
                f"{for_terminal(r.pod_namespace or '?')}/{for_terminal(r.pod_name or '?')}"
    whose = {True: "its main process", False: "not its main process"}.get(r.main, "main process unknown")  # type: ignore[arg-type]
    kill = f"the OOM kill of process {for_terminal(r.victim_comm)} (pid {r.victim_pid}, {whose})"
    after = f"{r.delay_ns / 1e9:.1f} s after {kill}"
    restarts = f", restarts {r.restart_count}" if r.restart_count is not None else ""
    code = f"exit code {r.exit_code}" if r.exit_code is not None else "no exit code"
    if r.reported == REPORTED_OOM_KILLED:
        return f"Kubelet reported {container} OOMKilled ({code}{restarts}) {after}"
    if r.reported == REPORTED_TERMINATED:
        return (f"Kubelet reported {container} terminated: {for_terminal(r.reason or '?')} ({code}{restarts}), "
                f"not OOMKilled, {after}")
    if r.reported == REPORTED_RUNNING:
        return f"Kubelet still reports {container} running ({(restarts or ', restarts ?')[2:]}) {after}"
    if r.reported == REPORTED_POD_GONE:
        return f"Pod {for_terminal(r.pod_namespace or '?')}/{for_terminal(r.pod_name or '?')} was gone {after}"
    return f"Kubelet reported nothing of the killed instance of {container} {after}"


def kubelet_metric_attributes(r: OomKubelet) -> dict[str, str]:
    """oom.kills.kubelet: at most 5 x 3 series."""
    return {"oom.kubelet.reported": r.reported, "oom.victim.main": main_label(r.main)}
