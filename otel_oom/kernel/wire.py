"""Decoding of ring-buffer samples: the ctypes mirror of `struct oom_event` (bpf/oomkill.h).

The mirror must match the compiled object field by field; `btf.check_event_layout` compares it
with the object's BTF before the object is loaded, and tests/test_layout.py does the same in CI.
Decoding turns raw bytes into an `OomEvent` with kernel units and flags resolved; attribution
and policy happen later, in `attribution/enrich.py`.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

from ..text import from_kernel_cstr

OOM_EVENT_VERSION = 2  # 2: per-level watermark, failcnt, OOM count, oom_lock; hook signal_generate
COMM_LEN = 16
CGROUP_DEPTH = 8
CGROUP_NAME_LEN = 128

# enum oom_hook / oom_context_hook / oom_constraint_kind
HOOKS = {0: "none", 1: "tp_btf", 2: "tracepoint", 3: "synthetic", 4: "signal_generate"}
HOOK_SIGNAL = "signal_generate"  # a user-space OOM killer's SIGKILL; the trigger fields hold the killer
CONTEXT_HOOKS = {0: "none", 1: "fentry", 2: "kprobe"}
CONSTRAINTS = {0: "unknown", 1: "global", 2: "cpuset", 3: "mempolicy", 4: "memcg"}

# oom_event.flags
F_VICTIM_TASK = 1 << 0
F_TP_FIELDS = 1 << 1
F_CONTEXT = 1 << 2
F_BOOT_CLOCK = 1 << 3
F_CGROUP_DEEPER = 1 << 4
F_MM_SIZES = 1 << 5
F_SIGKILLED = 1 << 6        # with F_VICTIM_TASK: exiting on SIGKILL; without it, only marked (already exiting)
F_CGROUP_NAME_CUT = 1 << 7  # a captured memcg name is cut at CGROUP_NAME_LEN - 1 bytes

# oom_cgroup_level.level_flags
L_OOM_LOCK, L_HAS_OOM_LOCK, L_HAS_OOM_COUNT = 1 << 0, 1 << 1, 1 << 2
L_OOM_GROUP, L_HAS_OOM_GROUP = 1 << 3, 1 << 4  # memory.oom.group as the kernel read it at the kill
F_TASK_FENTRY = 1 << 16  # the victim's task came from fentry/mark_oom_victim
F_TASK_KPROBE = 1 << 17  # ... from kprobe/mark_oom_victim

# OomEvent.victim_source: where the victim's details came from
VICTIM_FROM_TASK = "task"              # its task_struct, read in the kernel: everything
VICTIM_FROM_TRACEPOINT = "tracepoint"  # the rich tracepoint's fields: comm, uid, sizes (no parent, no cgroups)
VICTIM_FROM_PID = "pid"                # the pid alone (pid-only tracepoint, no task hook): the rest from /proc

# stats map indexes
STAT_SUBMITTED, STAT_RINGBUF_FULL, STAT_CONTEXT_SEEN, STAT_SIGNAL_KILLS, STAT_RECLAIM, STAT_MAX = 0, 1, 2, 3, 4, 5

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s16, s32, s64 = ctypes.c_int16, ctypes.c_int32, ctypes.c_int64


class RawCgroupLevel(ctypes.Structure):
    _fields_ = [
        ("id", u64),
        ("usage_pages", u64),
        ("limit_pages", u64),
        ("watermark_pages", u64),
        ("failcnt", u64),
        ("oom_events", u64),
        ("level_flags", u32),
        ("__pad", u32),
        ("name", ctypes.c_char * CGROUP_NAME_LEN),
    ]


class RawEvent(ctypes.Structure):
    _fields_ = [
        ("timestamp_ns", u64),
        ("total_vm", u64),
        ("anon_rss", u64),
        ("file_rss", u64),
        ("shmem_rss", u64),
        ("swap_ents", u64),
        ("pgtables_bytes", u64),
        ("ctx_timestamp_ns", u64),
        ("ctx_totalpages", u64),
        ("ctx_chosen_points", s64),
        ("ctx_memcg_id", u64),
        ("ctx_memcg_usage_pages", u64),
        ("ctx_memcg_limit_pages", u64),
        ("trigger_memcg_ids", u64 * CGROUP_DEPTH),
        ("victim_memcg", RawCgroupLevel * CGROUP_DEPTH),
        ("version", u32),
        ("flags", u32),
        ("victim_tgid", u32),
        ("victim_pid", u32),
        ("victim_ppid", u32),
        ("victim_uid", u32),
        ("trigger_tgid", u32),
        ("trigger_pid", u32),
        ("ctx_gfp_mask", u32),
        ("ctx_order", s32),
        ("ctx_chosen_tgid", u32),
        ("oom_score_adj", s16),
        ("hook", u8),
        ("context_hook", u8),
        ("ctx_constraint", u8),
        ("victim_memcg_levels", u8),
        ("trigger_memcg_levels", u8),
        ("__pad0", u8),
        ("victim_comm", ctypes.c_char * COMM_LEN),
        ("trigger_comm", ctypes.c_char * COMM_LEN),
        ("__pad1", u32),
    ]


EVENT_SIZE = ctypes.sizeof(RawEvent)


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class MemcgLevel:
    id: int
    name: str
    usage_bytes: int
    limit_bytes: Optional[int]  # None: unlimited
    # what an uncharge never lowers (the sturdier OOMing-memcg derivation, enrich.derive_oom_memcg)
    watermark_bytes: Optional[int] = None   # highest usage since reset
    failcnt: Optional[int] = None           # charges refused at this limit (0 on v2 kernels since 6.12)
    oom_events: Optional[int] = None        # OOMs declared in this cgroup (memory.events.local oom)
    oom_lock: Optional[bool] = None         # None: the kernel has no memcg->oom_lock
    oom_group: Optional[bool] = None        # memory.oom.group at the kill; None: not read (or before 4.19)


@dataclass(frozen=True)
class OomEvent:
    """One victim as the kernel reported it, sizes in bytes."""

    timestamp_ns: int
    boot_clock: bool
    hook: str
    context_hook: str
    victim_tgid: Optional[int]   # None: the tracepoint gave only the thread id
    victim_pid: int
    victim_comm: str
    victim_ppid: Optional[int]
    victim_uid: Optional[int]
    oom_score_adj: Optional[int]
    total_vm_bytes: Optional[int]
    anon_rss_bytes: Optional[int]
    file_rss_bytes: Optional[int]
    shmem_rss_bytes: Optional[int]
    pgtables_bytes: Optional[int]
    victim_memcgs: tuple[MemcgLevel, ...]  # leaf first, root last
    victim_memcgs_complete: bool           # False: deeper than captured
    trigger_tgid: int
    trigger_pid: int
    trigger_comm: str
    trigger_memcg_ids: tuple[int, ...]     # leaf first
    # the OOM decision, when a context hook ran
    context: bool
    decision_ns: Optional[int]
    domain_bytes: Optional[int]
    badness_points: Optional[int]
    chosen_tgid: Optional[int]
    memcg_id: Optional[int]
    memcg_usage_bytes: Optional[int]
    memcg_limit_bytes: Optional[int]
    gfp_mask: Optional[int]
    order: Optional[int]
    constraint: str
    # True: the kernel sent SIGKILL; False: it only marked a task already exiting (no kill counted);
    # None: unknown (no task was read: the pid-only tracepoint)
    killed: Optional[bool] = None
    cgroup_name_cut: bool = False          # a name in victim_memcgs is cut: resolve the path by id
    victim_source: str = VICTIM_FROM_TASK
    task_hook: str = "none"                # "fentry" | "kprobe": the task hook supplied the victim's task


# page_counter's "no limit" is PAGE_COUNTER_MAX = LONG_MAX / PAGE_SIZE; anything this large is unlimited
_UNLIMITED_PAGES = (1 << 63) // (64 << 10)


def _limit_bytes(pages: int, page_size: int) -> Optional[int]:
    return None if pages >= _UNLIMITED_PAGES else pages * page_size


def decode(data: bytes, page_size: int) -> OomEvent:
    if len(data) < EVENT_SIZE:
        raise DecodeError(f"sample of {len(data)} bytes, expected {EVENT_SIZE}")
    r = RawEvent.from_buffer_copy(data)
    if r.version != OOM_EVENT_VERSION:
        raise DecodeError(f"event version {r.version}, this agent understands {OOM_EVENT_VERSION}")
    flags = r.flags
    has_task = bool(flags & F_VICTIM_TASK)
    has_mm = bool(flags & F_MM_SIZES)
    # the rich tracepoint reports kB, task reads report pages
    unit = 1024 if flags & F_TP_FIELDS else page_size

    def mm(value: int) -> Optional[int]:
        return value * unit if has_mm else None

    levels = tuple(
        MemcgLevel(
            id=lvl.id,
            name=from_kernel_cstr(lvl.name),
            usage_bytes=lvl.usage_pages * page_size,
            limit_bytes=_limit_bytes(lvl.limit_pages, page_size),
            watermark_bytes=lvl.watermark_pages * page_size if has_task else None,
            failcnt=lvl.failcnt if has_task else None,
            oom_events=lvl.oom_events if lvl.level_flags & L_HAS_OOM_COUNT else None,
            oom_lock=bool(lvl.level_flags & L_OOM_LOCK) if lvl.level_flags & L_HAS_OOM_LOCK else None,
            oom_group=bool(lvl.level_flags & L_OOM_GROUP) if lvl.level_flags & L_HAS_OOM_GROUP else None,
        )
        for lvl in r.victim_memcg[: min(r.victim_memcg_levels, CGROUP_DEPTH)]
    )
    ctx = bool(flags & F_CONTEXT)
    task_hook = "fentry" if flags & F_TASK_FENTRY else "kprobe" if flags & F_TASK_KPROBE else "none"
    source = VICTIM_FROM_TASK if has_task else VICTIM_FROM_TRACEPOINT if flags & F_TP_FIELDS else VICTIM_FROM_PID

    def c(value: int) -> Optional[int]:
        return value if ctx else None

    return OomEvent(
        timestamp_ns=r.timestamp_ns,
        boot_clock=bool(flags & F_BOOT_CLOCK),
        hook=HOOKS.get(r.hook, f"unknown-{r.hook}"),
        context_hook=CONTEXT_HOOKS.get(r.context_hook, f"unknown-{r.context_hook}") if ctx else "none",
        victim_tgid=r.victim_tgid if has_task else None,
        victim_pid=r.victim_pid,
        victim_comm=from_kernel_cstr(r.victim_comm),
        victim_ppid=r.victim_ppid if has_task else None,
        victim_uid=r.victim_uid if (has_task or flags & F_TP_FIELDS) else None,
        oom_score_adj=r.oom_score_adj if (has_task or flags & F_TP_FIELDS) else None,
        total_vm_bytes=mm(r.total_vm),
        anon_rss_bytes=mm(r.anon_rss),
        file_rss_bytes=mm(r.file_rss),
        shmem_rss_bytes=mm(r.shmem_rss),
        pgtables_bytes=r.pgtables_bytes if has_mm else None,
        victim_memcgs=levels,
        victim_memcgs_complete=not (flags & F_CGROUP_DEEPER),
        cgroup_name_cut=bool(flags & F_CGROUP_NAME_CUT),
        trigger_tgid=r.trigger_tgid,
        trigger_pid=r.trigger_pid,
        trigger_comm=from_kernel_cstr(r.trigger_comm),
        trigger_memcg_ids=tuple(r.trigger_memcg_ids[: min(r.trigger_memcg_levels, CGROUP_DEPTH)]),
        context=ctx,
        decision_ns=c(r.ctx_timestamp_ns),
        domain_bytes=c(r.ctx_totalpages * page_size),
        badness_points=c(r.ctx_chosen_points),
        chosen_tgid=c(r.ctx_chosen_tgid),
        memcg_id=(r.ctx_memcg_id or None) if ctx else None,
        memcg_usage_bytes=(r.ctx_memcg_usage_pages * page_size) if ctx and r.ctx_memcg_id else None,
        memcg_limit_bytes=_limit_bytes(r.ctx_memcg_limit_pages, page_size) if ctx and r.ctx_memcg_id else None,
        gfp_mask=c(r.ctx_gfp_mask),
        order=c(r.ctx_order),
        constraint=CONSTRAINTS.get(r.ctx_constraint, "unknown") if ctx else "unknown",
        killed=bool(flags & F_SIGKILLED) if has_task else None,
        victim_source=source,
        task_hook=task_hook,
    )
