/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The ring-buffer contract between the kernel side (bpf/kill_logic.h, built by oomkill.bpf.c and
 * oomkill.bcc.c) and user space (otel_oom/kernel/wire.py, reclaim_wire.py).
 *
 * Only fixed-width fields, widest first, explicit padding, no kernel types,
 * so user space could include it too. otel_oom/kernel/wire.py mirrors it with
 * ctypes; tests/test_layout.py and the agent at start-up compare that mirror
 * field by field with this struct as the compiled object's BTF records it.
 * Any change of a field bumps OOM_EVENT_VERSION (a new flag bit does not: an
 * agent that does not know it ignores it, and an older object leaves it 0).
 */
#ifndef OTEL_OOM_OOMKILL_H
#define OTEL_OOM_OOMKILL_H

/* 2: per-level watermark, failcnt, OOM count and oom_lock (issue 13, the sturdier OOMing-memcg
 * derivation); hook OOM_HOOK_SIGNAL */
#define OOM_EVENT_VERSION 2
#define OOM_COMM_LEN 16
/* memory-cgroup levels captured, leaf first; kubepods paths are 4 deep */
#define OOM_CGROUP_DEPTH 8
/* covers "kubepods-burstable-pod<uid>.slice" and "cri-containerd-<64 hex>.scope" */
#define OOM_CGROUP_NAME_LEN 128

/* Which program produced the event (oom_event.hook). */
enum oom_hook {
	OOM_HOOK_NONE = 0,
	OOM_HOOK_TP_BTF = 1,      /* tp_btf/mark_victim: task pointer, everything */
	OOM_HOOK_TRACEPOINT = 2,  /* tracepoint/oom/mark_victim: fields only */
	OOM_HOOK_SYNTHETIC = 3,   /* bench/: written by BPF_PROG_TEST_RUN, never a real kill */
	OOM_HOOK_SIGNAL = 4,      /* signal:signal_generate: a user-space OOM killer's SIGKILL (trigger = the killer) */
};

/* Which program supplied the per-decision context (oom_event.context_hook). */
enum oom_context_hook {
	OOM_CONTEXT_NONE = 0,
	OOM_CONTEXT_FENTRY = 1,   /* fentry/oom_kill_process */
	OOM_CONTEXT_KPROBE = 2,   /* kprobe/oom_kill_process */
};

/* Our own stable numbering; the kernel's enum oom_constraint is read through CO-RE. */
enum oom_constraint_kind {
	OOM_CONSTRAINT_UNKNOWN = 0,
	OOM_CONSTRAINT_GLOBAL = 1,
	OOM_CONSTRAINT_CPUSET = 2,
	OOM_CONSTRAINT_MEMPOLICY = 3,
	OOM_CONSTRAINT_MEMCG = 4,
};

/* oom_event.flags: where each group of fields came from. */
#define OOM_F_VICTIM_TASK   (1u << 0) /* victim task_struct read: cgroup chain, parent, mm figures */
#define OOM_F_TP_FIELDS     (1u << 1) /* victim figures from the rich tracepoint layout (6.9+), in kB */
#define OOM_F_CONTEXT       (1u << 2) /* ctx_* fields come from oom_kill_process */
#define OOM_F_BOOT_CLOCK    (1u << 3) /* timestamp_ns is CLOCK_BOOTTIME, else CLOCK_MONOTONIC */
#define OOM_F_CGROUP_DEEPER (1u << 4) /* victim memcg is deeper than OOM_CGROUP_DEPTH */
#define OOM_F_MM_SIZES      (1u << 5) /* total_vm/rss/pgtables are valid */
/* With OOM_F_VICTIM_TASK: the victim's thread group is exiting on SIGKILL (the OOM killer's signal).
 * Without it, the kernel only marked a task that was already exiting (task_will_free_mem): no
 * SIGKILL, no "Killed process" line, not counted in /proc/vmstat oom_kill. */
#define OOM_F_SIGKILLED     (1u << 6)
/* A victim memcg name was longer than OOM_CGROUP_NAME_LEN - 1 bytes and is cut: resolve by id. */
#define OOM_F_CGROUP_NAME_CUT (1u << 7)
/* bits 8-15: kept for flags about the victim and its cgroups */
/* The victim's task_struct came from the per-victim hook on mark_oom_victim (pid-only kernels):
 * the tracepoint emits the event, the hook that ran just before it in the same call gave the task. */
#define OOM_F_TASK_FENTRY   (1u << 16) /* fentry/mark_oom_victim */
#define OOM_F_TASK_KPROBE   (1u << 17) /* kprobe/mark_oom_victim */

/* Indexes of the per-CPU "stats" array map. */
enum oom_stat {
	OOM_STAT_SUBMITTED = 0,     /* events written into the ring buffer */
	OOM_STAT_RINGBUF_FULL = 1,  /* events lost: ring buffer full */
	OOM_STAT_CONTEXT_SEEN = 2,  /* oom_kill_process entries (decisions) */
	OOM_STAT_SIGNAL_KILLS = 3,  /* user-space killers' SIGKILLs reported */
	OOM_STAT_RECLAIM = 4,       /* reclaim events written */
	OOM_STAT_MAX = 5,
};

/* oom_cgroup_level.level_flags */
#define OOM_L_OOM_LOCK      (1u << 0) /* memcg->oom_lock: an OOM of this cgroup or an ancestor is running */
#define OOM_L_HAS_OOM_LOCK  (1u << 1) /* the kernel has memcg->oom_lock (cgroup v1 code built in) */
#define OOM_L_HAS_OOM_COUNT (1u << 2) /* oom_events is memory_events_local[MEMCG_OOM] */
/* memcg->oom_group (cgroup v2 memory.oom.group), read at the kill: the group a decision kills is
 * named by the event itself, not by reading the cgroup's file later (it may be gone by then) */
#define OOM_L_OOM_GROUP     (1u << 3)
#define OOM_L_HAS_OOM_GROUP (1u << 4) /* the kernel has memcg->oom_group (4.19+) */

/* One memory cgroup on the victim's path, leaf first. */
struct oom_cgroup_level {
	__u64 id;              /* kernfs id == inode number of the cgroup directory */
	__u64 usage_pages;     /* memcg page_counter usage at the kill */
	__u64 limit_pages;     /* memcg page_counter max (PAGE_COUNTER_MAX: unlimited) */
	__u64 watermark_pages; /* page_counter watermark: highest usage since reset; never lowered by an uncharge */
	__u64 failcnt;         /* page_counter failcnt: charges refused at this level's limit (0 where not counted) */
	__u64 oom_events;      /* memory_events_local[MEMCG_OOM]: OOMs declared in this cgroup (OOM_L_HAS_OOM_COUNT) */
	__u32 level_flags;     /* OOM_L_* */
	__u32 __pad;
	char name[OOM_CGROUP_NAME_LEN]; /* directory name; "" for the root */
};

/* The second ring-buffer record: what happened to a victim's memory after the kill. Told apart
 * from struct oom_event by its size; otel_oom/kernel/reclaim_wire.py mirrors it. */
#define OOM_RECLAIM_EVENT_VERSION 1
enum oom_reclaim_kind {
	OOM_RECLAIM_EXIT = 1,           /* the victim's last thread passed exit_mm (sched_process_exit) */
	OOM_RECLAIM_REAPER_WAKE = 2,    /* oom:wake_reaper: the reaper was queued for it */
	OOM_RECLAIM_REAPER_START = 3,   /* oom:start_task_reaping */
	OOM_RECLAIM_REAPER_FINISH = 4,  /* oom:finish_task_reaping: its memory was unmapped */
	OOM_RECLAIM_REAPER_SKIP = 5,    /* oom:skip_task_reaping: the reaper could not or need not */
	OOM_RECLAIM_MM_FREED = 6,       /* mmap:exit_mmap (6.1+): the victim's address space was torn down */
	OOM_RECLAIM_EXITED = 7,         /* its last thread is exiting; exit_mmap will tell when the pages are freed */
};

/* Index 0 of the "settings" array map, written by the agent after attaching. */
#define OOM_SETTING_EXIT_MMAP (1u << 0) /* mmap:exit_mmap is attached: a victim's exit waits for it */

struct oom_reclaim_event {
	__u64 timestamp_ns;  /* same clock as oom_event.timestamp_ns */
	__u64 marked_ns;     /* when the victim was marked (mark_victim, or the killer's SIGKILL) */
	__u32 version;       /* OOM_RECLAIM_EVENT_VERSION */
	__u32 flags;         /* OOM_F_BOOT_CLOCK */
	__u32 pid;           /* the marked thread (mark_victim's pid) */
	__u32 tgid;          /* its thread group; 0 when not known */
	__u8 kind;           /* enum oom_reclaim_kind */
	__u8 __pad[7];
};

struct oom_event {
	__u64 timestamp_ns;          /* bpf_ktime_get_boot_ns() at mark_victim */
	/* victim's mm: in pages, or in kB with OOM_F_TP_FIELDS (the tracepoint's unit) */
	__u64 total_vm;
	__u64 anon_rss;
	__u64 file_rss;
	__u64 shmem_rss;
	__u64 swap_ents;             /* pages; 0 with OOM_F_TP_FIELDS */
	__u64 pgtables_bytes;
	/* per-decision context from oom_kill_process (OOM_F_CONTEXT) */
	__u64 ctx_timestamp_ns;      /* decision id, with trigger_tgid */
	__u64 ctx_totalpages;        /* size of the OOM domain, not the victim's */
	__s64 ctx_chosen_points;     /* badness of oc->chosen */
	__u64 ctx_memcg_id;          /* 0: global OOM */
	__u64 ctx_memcg_usage_pages;
	__u64 ctx_memcg_limit_pages;
	/* memory cgroups of the trigger (current), leaf first: ids only */
	__u64 trigger_memcg_ids[OOM_CGROUP_DEPTH];
	struct oom_cgroup_level victim_memcg[OOM_CGROUP_DEPTH];
	__u32 version;               /* OOM_EVENT_VERSION */
	__u32 flags;                 /* OOM_F_* */
	__u32 victim_tgid;
	__u32 victim_pid;
	__u32 victim_ppid;           /* real parent's tgid */
	__u32 victim_uid;            /* real uid */
	__u32 trigger_tgid;          /* the task whose allocation failed */
	__u32 trigger_pid;
	__u32 ctx_gfp_mask;
	__s32 ctx_order;
	__u32 ctx_chosen_tgid;       /* oc->chosen: the first victim of the decision */
	__s16 oom_score_adj;
	__u8 hook;                   /* enum oom_hook */
	__u8 context_hook;           /* enum oom_context_hook */
	__u8 ctx_constraint;         /* enum oom_constraint_kind */
	__u8 victim_memcg_levels;    /* valid entries in victim_memcg */
	__u8 trigger_memcg_levels;   /* valid entries in trigger_memcg_ids */
	__u8 __pad0;
	char victim_comm[OOM_COMM_LEN];
	char trigger_comm[OOM_COMM_LEN];
	__u32 __pad1;
};

_Static_assert(sizeof(struct oom_cgroup_level) == 184, "oom_cgroup_level layout");
_Static_assert(sizeof(struct oom_event) == 1728, "oom_event layout: bump OOM_EVENT_VERSION");
_Static_assert(sizeof(struct oom_reclaim_event) == 40, "oom_reclaim_event layout: bump OOM_RECLAIM_EVENT_VERSION");

#endif /* OTEL_OOM_OOMKILL_H */
