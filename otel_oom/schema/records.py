"""The record types: what one victim's death looks like once decoded and attributed (`OomKill`),
and the records around it (`OomPressure`, `OomNoKill`, `OomReclaim`, and the episode span `OomEpisode`).

Everything downstream of enrichment and the watchers (the schema's mappings, and through them the
OTLP encoder, console and JSON output, webhook) consumes these records and nothing else. Each
round-trips through JSON losslessly (`to_json`, `record_from_json`). Agents before the direct OTLP
encoder spooled that JSON, and a spool they left behind is read through it: a record's JSON names
its type in a "type" field, and one without is an `OomKill` (spools written before the other types
existed). The spool holds the encoded OTLP messages now (`otlp/spooled.py`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

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
# oom.killer of a kill by the kernel's OOM killer; a user-space killer's kill names the killer
KILLER_KERNEL = "kernel"


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
    # False: the kernel only marked a task already exiting so it frees its memory (no SIGKILL, not
    # counted as a kill by the kernel); None: not known (no task read)
    killed: Optional[bool] = None
    cgroup_truncated: bool = False           # a cgroup name was cut in the kernel and the path not found by id
    # ---- issue 13: who killed, how the OOMing memcg was derived, and the episode's trace ----
    killer: str = KILLER_KERNEL              # "kernel", or the user-space OOM killer's name ("earlyoom", ...)
    killer_pid: Optional[int] = None         # the user-space killer's process (tgid)
    memcg_evidence: Optional[str] = None     # how a derived OOMing memcg was found: "oom_lock" | "usage" | "watermark"
    trace_id: Optional[str] = None           # 32 hex digits: the OOM episode's trace (--traces)
    span_id: Optional[str] = None            # 16 hex digits: the episode's span
    # how the victim was observed: "task" (its task_struct, in the kernel), "tracepoint" (the
    # tracepoint's fields), "pid" (the pid alone, the rest from /proc); None for recovered kills
    victim_source: Optional[str] = None
    task_hook: Optional[str] = None          # "fentry" | "kprobe": mark_oom_victim supplied the victim's task

    TYPE: ClassVar[str] = "oom.kill"

    def to_json(self) -> str:
        return _to_json(self)

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


# ---- issue 13: the records around the kill -------------------------------------------------------
# Every record has event_id (stable across retries and restarts: the deduplication key),
# time_unix_nano, and trace_id/span_id when --traces put it into an OOM episode's trace.

# oom.pressure / oom.no_kill states: an episode is reported when it starts and when it ends
STATE_START = "start"
STATE_END = "end"


@dataclass(frozen=True)
class OomPressure:
    """Memory pressure on the host or in one memory cgroup: one record when an episode starts, one when it ends."""

    event_id: str
    time_unix_nano: int
    state: str                    # "start" | "end"
    scope: str                    # "host" | "memcg"
    source: str                   # what started it: "psi", "usage", "memory.events.max", "memory.events.high", "vmpressure"
    episode_id: str               # the same in the start and the end record
    cgroup_path: Optional[str] = None        # scope memcg: the cgroup, inside the memory hierarchy
    container_runtime: Optional[str] = None
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    limit_bytes: Optional[int] = None        # memory.max / memory.limit_in_bytes (None: unlimited)
    usage_bytes: Optional[int] = None        # memory.current / memory.usage_in_bytes
    psi_some_avg10: Optional[float] = None   # percent of the last 10 s some task stalled on memory
    psi_full_avg10: Optional[float] = None   # percent of the last 10 s all tasks stalled on memory
    failcnt: Optional[int] = None            # v1 memory.failcnt: charges that hit the limit, ever
    events_high: Optional[int] = None        # v2 memory.events.local counters
    events_max: Optional[int] = None
    events_oom: Optional[int] = None
    events_oom_kill: Optional[int] = None
    vmpressure_level: Optional[str] = None   # v1 memory.pressure_level notification level
    host_available_bytes: Optional[int] = None  # scope host: MemAvailable
    host_total_bytes: Optional[int] = None      # scope host: MemTotal
    # the end record only
    duration_ns: Optional[int] = None
    peak_usage_bytes: Optional[int] = None
    peak_psi_some_avg10: Optional[float] = None
    ended_by: Optional[str] = None           # "cleared" | "cgroup_removed" | "shutdown"
    trace_id: Optional[str] = None
    span_id: Optional[str] = None

    TYPE: ClassVar[str] = "oom.pressure"

    def to_json(self) -> str:
        return _to_json(self)

    @property
    def usage_ratio(self) -> Optional[float]:
        if self.usage_bytes is None or not self.limit_bytes:
            return None
        return self.usage_bytes / self.limit_bytes


# oom.no_kill reasons
NO_KILL_DISABLED = "oom_kill_disable"     # v1 memory.oom_control: the killer is off, tasks wait
NO_KILL_NOTHING = "nothing_killable"      # every task is unkillable (oom_score_adj -1000) or none is left
NO_KILL_EXITING = "victim_exiting"        # the kernel marked a task that was already exiting; no SIGKILL


@dataclass(frozen=True)
class OomNoKill:
    """The kernel declared an OOM in a memory cgroup but killed no one: once when it starts, once when it ends."""

    event_id: str
    time_unix_nano: int
    state: str                    # "start" | "end"
    reason: str                   # NO_KILL_*
    episode_id: str
    cgroup_path: Optional[str] = None        # the memory cgroup that is out of memory
    container_runtime: Optional[str] = None
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    limit_bytes: Optional[int] = None
    usage_bytes: Optional[int] = None
    tasks: Optional[int] = None              # tasks in the cgroup (and below) when read
    task_pids: tuple[int, ...] = ()          # some of them (at most NO_KILL_PIDS_MAX), lowest first
    tasks_waiting: Optional[int] = None      # of those, in uninterruptible sleep (waiting for memory)
    ooms: Optional[int] = None               # OOM invocations seen in the episode
    victim_pid: Optional[int] = None         # victim_exiting: the task the kernel marked
    victim_tid: Optional[int] = None
    victim_comm: Optional[str] = None
    duration_ns: Optional[int] = None        # the end record only
    ended_by: Optional[str] = None           # "resolved" | "killed" | "cgroup_removed" | "shutdown"
    trace_id: Optional[str] = None
    span_id: Optional[str] = None

    TYPE: ClassVar[str] = "oom.no_kill"

    def to_json(self) -> str:
        return _to_json(self)


NO_KILL_PIDS_MAX = 32

# oom.reclaim methods: how the victim's memory came back
RECLAIM_EXIT_MMAP = "exit_mmap"  # mmap:exit_mmap: the victim's address space was torn down, its pages freed
RECLAIM_EXIT = "exit"        # its last thread passed sched_process_exit (kernels without exit_mmap, or no mm seen)
RECLAIM_REAPER = "reaper"    # the OOM reaper finished unmapping it (oom:finish_task_reaping)
RECLAIM_TIMEOUT = "timeout"  # neither within the timeout: the memory is still held


@dataclass(frozen=True)
class OomReclaim:
    """After a kill: when the victim's memory was given back, and how."""

    event_id: str
    time_unix_nano: int
    kill_event_id: str
    method: str                              # RECLAIM_*
    duration_ns: Optional[int]               # from the kill (mark_victim or the user-space SIGKILL); None on timeout
    victim_pid: int
    victim_tid: int
    victim_comm: str
    killer: str = KILLER_KERNEL
    reaper_woken: bool = False               # oom:wake_reaper fired for the victim
    reaper_skipped: bool = False             # oom:skip_task_reaping fired for the victim
    rss_bytes: Optional[int] = None          # the victim's RSS at the kill
    cgroup_path: Optional[str] = None
    container_runtime: Optional[str] = None
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    memcg_path: Optional[str] = None
    trace_id: Optional[str] = None
    span_id: Optional[str] = None

    TYPE: ClassVar[str] = "oom.reclaim"

    def to_json(self) -> str:
        return _to_json(self)


@dataclass(frozen=True)
class OomEpisode:
    """One OOM episode as a span (--traces): pressure start or kill -> memory reclaimed (or the end of the pressure).

    `events` are the span events, in time order: {"name", "time_unix_nano", "attributes"}.
    """

    trace_id: str
    span_id: str
    start_unix_nano: int
    end_unix_nano: int
    scope: str                               # "host" | "memcg"
    outcome: str                             # "kill" | "no_kill" | "pressure"
    ended_by: str                            # "reclaimed" | "cleared" | "timeout" | "shutdown"
    kills: int = 0
    cgroup_path: Optional[str] = None
    container_runtime: Optional[str] = None
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    events: tuple[dict[str, Any], ...] = ()

    TYPE: ClassVar[str] = "oom.episode"

    @property
    def event_id(self) -> str:
        return f"{self.trace_id}:{self.span_id}"

    @property
    def time_unix_nano(self) -> int:
        return self.end_unix_nano

    def to_json(self) -> str:
        return _to_json(self)


Record = Union[OomKill, OomPressure, OomNoKill, OomReclaim, OomEpisode]
RECORD_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (OomKill, OomPressure, OomNoKill, OomReclaim, OomEpisode)}


def record_fields(record: Record) -> dict[str, Any]:
    """The record's own fields by name, in declaration order: what its JSON holds (and, for a kill,
    the `oom` object of a webhook message), strings as decoded (raw kernel bytes as lone surrogates)."""
    names = _FIELDS.get(type(record))
    if names is None:
        names = _FIELDS[type(record)] = tuple(f.name for f in dataclasses.fields(record))
    # a shallow dict: asdict's deep copy was a third of the worker's time in a storm; the same JSON
    data = {name: getattr(record, name) for name in names}
    if any(isinstance(v, (list, dict)) or dataclasses.is_dataclass(v) for v in data.values()):
        data = dataclasses.asdict(record)
    return data


def _to_json(record: Any) -> str:
    data = record_fields(record)
    if not isinstance(record, OomKill):
        data = {"type": record.TYPE, **data}  # kills stay as they always were: old agents read new spools
    # ensure_ascii keeps lone surrogates and control characters escaped and lossless
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


_FIELDS: dict[type, tuple[str, ...]] = {}  # field names per record class, for _to_json


def record_from_json(text: str | bytes) -> Record:
    """Any record from its spool JSON; no "type" means an OomKill. ValueError/TypeError if unreadable."""
    data: dict[str, Any] = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a spool record must be a JSON object")
    kind = data.pop("type", OomKill.TYPE)
    cls = RECORD_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown record type {kind!r} (written by a newer otel-oom?)")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
    return cls(**values)
