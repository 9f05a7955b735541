"""The OomKill -> OTLP mapping: a log record's attributes and body, and the metric attributes.

Pure functions of the record, importing nothing from OpenTelemetry, so console/JSON output and the
webhook use them without paying for the SDK's imports, and tests check them without an exporter.
Every string attribute goes through `text.for_otlp` (protobuf strings must be valid UTF-8: a string
with raw kernel bytes is sent as bytes_value).
"""
from __future__ import annotations

from typing import Any

from ..text import for_otlp, for_otlp_label, for_terminal
from .records import KILLER_KERNEL, OomKill

SCOPE_NAME = "otel_oom"
EVENT_NAME = "oom.kill"

MiB = 1 << 20
# 1 MiB, 4 MiB, ... 64 GiB: powers of 4 cover a tiny sidecar to a whole node in 9 buckets
RSS_BUCKETS = tuple(float(MiB * 4**i) for i in range(9))


def log_attributes(kill: OomKill, raw: bool = False) -> dict[str, Any]:
    """The record's attributes: the victim's identity in semconv names, the rest under oom.*.

    `raw` keeps kernel strings as decoded (lone surrogates for raw bytes), for encoders that escape
    them losslessly themselves (the JSON line); otherwise each goes through `text.for_otlp`."""
    k = kill
    attrs: dict[str, Any] = {
        # the victim, with the standard process/container/k8s attributes
        "process.pid": k.victim_pid,
        "process.parent_pid": k.victim_ppid,
        "process.executable.name": k.victim_comm,
        "process.real_user.id": k.victim_uid,
        "process.linux.cgroup": k.cgroup_line,
        "container.id": k.container_id,
        "container.runtime.name": k.container_runtime,
        "container.name": k.container_name,
        "container.image.name": k.container_image,
        "container.image.tags": [k.container_image_tag] if k.container_image_tag else None,
        "container.image.id": k.container_image_id,
        "k8s.pod.uid": k.pod_uid,
        "k8s.pod.name": k.pod_name,
        "k8s.namespace.name": k.pod_namespace,
        "k8s.container.name": k.k8s_container_name,
        "k8s.container.restart_count": k.restart_count,
        "oom.names.source": k.names_source,
        "oom.victim.tid": k.victim_tid,
        "oom.victim.killed": k.killed,
        "oom.victim.cgroup.path": k.cgroup_path,
        "oom.victim.cgroup.truncated": True if k.cgroup_truncated else None,
        "oom.victim.pod.qos_class": k.pod_qos_class,
        "oom.victim.oom_score_adj": k.oom_score_adj,
        "oom.victim.memory.total_vm": k.total_vm_bytes,
        "oom.victim.memory.anon_rss": k.anon_rss_bytes,
        "oom.victim.memory.file_rss": k.file_rss_bytes,
        "oom.victim.memory.shmem_rss": k.shmem_rss_bytes,
        "oom.victim.memory.rss": k.rss_bytes,
        "oom.victim.memory.page_tables": k.pgtables_bytes,
        # the task whose allocation failed
        "oom.trigger.pid": k.trigger_pid,
        "oom.trigger.tid": k.trigger_tid,
        "oom.trigger.executable.name": k.trigger_comm,
        # the decision
        "oom.constraint": k.constraint,
        "oom.constraint.source": k.constraint_source,
        "oom.memcg.path": k.memcg_path,
        "oom.memcg.limit": k.memcg_limit_bytes,
        "oom.memcg.usage": k.memcg_usage_bytes,
        "oom.memcg.source": k.memcg_source,
        "oom.domain.size": k.domain_bytes,
        "oom.badness": k.badness_points,
        "oom.gfp_mask": k.gfp_mask,
        "oom.order": k.order,
        "oom.decision.id": k.decision_id,
        "oom.group.path": k.oom_group_path,
        "oom.memcg.evidence": k.memcg_evidence,
        # who killed: the kernel's OOM killer or a user-space one (issue 13)
        "oom.killer": k.killer,
        "oom.killer.pid": k.killer_pid,
        # how it was observed
        "oom.event.id": k.event_id,
        "oom.hook": k.hook,
        "oom.context_hook": k.context_hook,
        "oom.task_hook": k.task_hook,
        "oom.victim.source": k.victim_source,
        "oom.recovered": bool(k.recovered),
    }
    if raw:
        return {key: v for key, v in attrs.items() if v is not None}
    return {key: _otlp_value(v) for key, v in attrs.items() if v is not None}


def _otlp_value(v: Any) -> Any:
    if isinstance(v, str):
        return for_otlp(v)
    if isinstance(v, list):
        return [for_otlp(x) if isinstance(x, str) else x for x in v]
    return v


def _kb(n: int) -> str:
    return f"{n // 1024}kB"


def log_body(kill: OomKill) -> str:
    """One line in the kernel's own wording; unknown fields are left out, names are escaped."""
    k = kill
    prefix = "Memory cgroup out of memory" if k.constraint == "memcg" else "Out of memory"
    if k.killer != KILLER_KERNEL:
        # a user-space OOM killer sent the SIGKILL: say who, where the kernel would say why
        killer_pid = k.killer_pid if k.killer_pid is not None else "?"
        prefix = f"User-space OOM killer {for_terminal(k.killer)} (pid {killer_pid})"
    # a task already exiting is only marked (it frees its memory itself): the kernel prints no kill
    verb = "Marked exiting process" if k.killed is False else "Killed process"
    text = f"{prefix}: {verb} {k.victim_pid} ({for_terminal(k.victim_comm)})"
    memory = [f"{label}:{_kb(v)}" for label, v in (("total-vm", k.total_vm_bytes), ("anon-rss", k.anon_rss_bytes),
                                                   ("file-rss", k.file_rss_bytes), ("shmem-rss", k.shmem_rss_bytes))
              if v is not None]
    tail = []
    if k.victim_uid is not None:
        tail.append(f"UID:{k.victim_uid}")
    if k.pgtables_bytes is not None:
        tail.append(f"pgtables:{_kb(k.pgtables_bytes)}")
    if k.oom_score_adj is not None:
        tail.append(f"oom_score_adj:{k.oom_score_adj}")
    # the kernel's punctuation: "total-vm:..kB, anon-rss:..kB, ..., UID:0 pgtables:..kB oom_score_adj:0"
    details = ", ".join(filter(None, (", ".join(memory), " ".join(tail))))
    return f"{text} {details}" if details else text


def kill_metric_attributes(kill: OomKill) -> dict[str, str]:
    """Bounded attributes for oom.kills: the constraint, the killer, and the container runtime and pod QoS class when
    known (at most 5 x 5 x 4 series). Never a container id, pod uid or pid: each restart would add a series
    forever. Per-container and per-pod counts come from counting the `oom.kill` log records (the Collector's
    count connector, see docs/schema.md)."""
    attrs = {"oom.constraint": kill.constraint, "oom.killer": for_otlp_label(kill.killer)}
    if kill.container_runtime:
        attrs["container.runtime.name"] = for_otlp_label(kill.container_runtime)
    if kill.pod_qos_class:
        attrs["oom.victim.pod.qos_class"] = for_otlp_label(kill.pod_qos_class)
    return attrs
