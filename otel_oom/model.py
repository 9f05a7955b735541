"""The record type: what one victim's death looks like once decoded and attributed (`OomKill`).

Everything downstream of enrichment (spool, OTLP mapping, console and JSON output, webhook)
consumes `OomKill` and nothing else. It round-trips through JSON losslessly so the spool can
persist it and a replay carries the very same `event_id`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

# oom.constraint values
CONSTRAINTS = ("memcg", "global", "cpuset", "mempolicy", "unknown")
# how a derived field was obtained (oom.constraint.source, oom.memcg.source)
SOURCE_KERNEL = "kernel"    # read by the context hook inside oom_kill_process
SOURCE_DERIVED = "derived"  # inferred from the cgroups captured at mark_victim
SOURCE_KMSG = "kmsg"        # parsed from the kernel log (recovered kills)
SOURCE_NONE = "none"        # not known
# how the container and pod names were obtained (oom.names.source); absent when no runtime was asked
NAMES_CACHE = "cache"              # known to the agent's runtime cache before the kill
NAMES_LOOKUP = "lookup"            # asked of the runtime at the kill, answered within the bound
NAMES_TIMEOUT = "timeout"          # the runtime did not answer within the bound: sent without names
NAMES_NOT_FOUND = "not_found"      # every runtime asked answered that it does not know the container
NAMES_UNAVAILABLE = "unavailable"  # no runtime socket answering: sent without names


@dataclass(frozen=True)
class OomKill:
    # identity and time
    event_id: str                 # boot id + kernel timestamp + pid: stable across retries and restarts
    time_unix_nano: int           # wall-clock time of the kill
    boot_time_ns: int             # kernel CLOCK_BOOTTIME timestamp of the kill (0 if unknown)
    hook: str                     # "tp_btf" | "tracepoint" | "kmsg" (recovered from the kernel log)
    context_hook: str             # "fentry" | "kprobe" | "none"
    recovered: bool               # True: happened while the agent was not running
    # victim (the process the kernel killed)
    victim_pid: int               # tgid (process.pid)
    victim_tid: int               # the thread marked as victim
    victim_comm: str              # untrusted: may hold control characters; never escaped here
    victim_ppid: Optional[int] = None
    victim_uid: Optional[int] = None
    oom_score_adj: Optional[int] = None
    total_vm_bytes: Optional[int] = None
    anon_rss_bytes: Optional[int] = None
    file_rss_bytes: Optional[int] = None
    shmem_rss_bytes: Optional[int] = None
    pgtables_bytes: Optional[int] = None
    # victim's memory cgroup and what it says about the workload
    cgroup_path: Optional[str] = None        # path inside the memory hierarchy, e.g. "/kubepods/burstable/pod<uid>/<id>"
    cgroup_line: Optional[str] = None        # /proc/<pid>/cgroup form ("0::/p" or "4:memory:/p"): process.linux.cgroup
    container_runtime: Optional[str] = None  # "docker" | "containerd" | "cri-o" | "podman"
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    pod_qos_class: Optional[str] = None      # "guaranteed" | "burstable" | "besteffort"
    # names from the container runtime's API (untrusted: set by whoever created the container)
    container_name: Optional[str] = None
    container_image: Optional[str] = None    # image name without tag or digest, e.g. "docker.io/x/y"
    container_image_tag: Optional[str] = None  # e.g. "1.2"
    container_image_id: Optional[str] = None
    pod_name: Optional[str] = None
    pod_namespace: Optional[str] = None
    k8s_container_name: Optional[str] = None
    restart_count: Optional[int] = None
    names_source: Optional[str] = None       # NAMES_* above; None: no runtime was asked
    # trigger (the task whose allocation failed; a kworker for sysrq-f)
    trigger_pid: Optional[int] = None
    trigger_tid: Optional[int] = None
    trigger_comm: Optional[str] = None
    # why (the OOM decision)
    constraint: str = "unknown"
    constraint_source: str = SOURCE_NONE
    memcg_path: Optional[str] = None         # the memory cgroup whose limit was hit
    memcg_limit_bytes: Optional[int] = None
    memcg_usage_bytes: Optional[int] = None
    memcg_source: str = SOURCE_NONE
    domain_bytes: Optional[int] = None       # oc->totalpages in bytes: size of the OOM domain
    badness_points: Optional[int] = None     # oc->chosen_points
    gfp_mask: Optional[int] = None
    order: Optional[int] = None
    decision_id: Optional[str] = None        # same for every victim of one decision (group kills)
    oom_group_path: Optional[str] = None     # cgroup v2 memory.oom.group that made this a group kill
    # how the victim was observed: "task" (its task_struct, in the kernel), "tracepoint" (the
    # tracepoint's fields), "pid" (the pid alone, the rest from /proc); None for recovered kills
    victim_source: Optional[str] = None
    task_hook: Optional[str] = None          # "fentry" | "kprobe": mark_oom_victim supplied the victim's task

    def to_json(self) -> str:
        # ensure_ascii keeps lone surrogates and control characters escaped and lossless
        return json.dumps(dataclasses.asdict(self), ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "OomKill":
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def rss_bytes(self) -> Optional[int]:
        """Resident memory at the kill: anon + file + shmem, as the kernel's "Killed process" line."""
        parts = (self.anon_rss_bytes, self.file_rss_bytes, self.shmem_rss_bytes)
        if any(p is None for p in parts):
            return None
        return sum(parts)  # type: ignore[arg-type]
