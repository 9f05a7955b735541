/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The state bpf/kill_logic.h keeps between programs, and the maps holding it: one definition for
 * both backends. Included by the access layer (access_core.h, access_bcc.h) once it has defined
 * the MAP_* declaration macros, so the CO-RE object and the BCC program have the same maps with
 * the same keys, values and sizes. The ring buffer (`events`) is the access layer's own: each
 * backend writes its records its own way.
 */
#ifndef OTEL_OOM_KILL_TYPES_H
#define OTEL_OOM_KILL_TYPES_H

/* One OOM decision, stored by the context hook for the duration of oom_kill_process. */
struct oom_context {
	__u64 timestamp_ns;
	__u64 totalpages;
	__s64 chosen_points;
	__u64 chosen;          /* struct task_struct *, valid while oom_kill_process runs */
	__u64 memcg_id;
	__u64 memcg_usage_pages;
	__u64 memcg_limit_pages;
	__u32 chosen_tgid;
	__u32 gfp_mask;
	__s32 order;
	__u8 constraint;
	__u8 hook;             /* enum oom_context_hook */
	__u8 __pad[2];
};

/* The victim mark_oom_victim is marking right now, for the tracepoint it fires next. */
struct pending_victim {
	__u64 task;            /* struct task_struct *, pinned by mark_oom_victim's caller */
	__u64 timestamp_ns;
	__u32 pid;
	__u32 flag;            /* OOM_F_TASK_FENTRY or OOM_F_TASK_KPROBE */
};

/* A victim whose memory is awaited (by thread group, and by marked thread when it differs). */
struct victim_mark {
	__u64 marked_ns;
	__u64 mm;              /* struct mm_struct *, 0 when the victim's task was not read */
	__u32 pid;
	__u32 tgid;
};

/* A process name, as the `killers` map's key. */
struct oom_comm {
	char comm[OOM_COMM_LEN];
};

/* The classic oom:mark_victim tracepoint's own fields, as the access layer read them from its
 * record (pid only before 6.9; `rich`: the 6.9+ layout and its 2025 stable backports). */
struct mark_victim_fields {
	__u64 total_vm;        /* kB, like every size below */
	__u64 anon_rss;
	__u64 file_rss;
	__u64 shmem_rss;
	__u64 pgtables;
	__u32 uid;
	int pid;
	short oom_score_adj;
	__u8 rich;
	__u8 __pad[5];
	char comm[OOM_COMM_LEN];
};

/* Classic tracepoint records read at their fixed offsets (stable since 3.x, identical on every
 * kernel), deliberately without CO-RE: a kernel lacking a type would otherwise fail the load. */
struct tp_signal_generate {
	__u64 common;
	int sig;
	int errno_;
	int code;
	char comm[16];
	int pid;
	int group;
	int result;
};

struct tp_pid_only {  /* oom:wake_reaper, start_task_reaping, finish_task_reaping, skip_task_reaping */
	__u64 common;
	int pid;
};

struct tp_exit_mmap {  /* mmap:exit_mmap (6.1+) */
	__u64 common;
	__u64 mm;
};

/* Per-CPU counters, indexed by enum oom_stat; the agent sums them. */
MAP_PERCPU_ARRAY(stats, __u64, OOM_STAT_MAX);
/* The decision being carried out, by pid_tgid of the task running the OOM killer. */
MAP_HASH(contexts, __u64, struct oom_context, 256);
/* The task hook's victim, by pid_tgid of the task marking it. */
MAP_HASH(pending_victims, __u64, struct pending_victim, 256);
/* The user-space OOM killers' process names, set by the agent before attaching. */
MAP_HASH(killers, struct oom_comm, __u8, 32);
/* Victims whose memory is awaited, by tgid (and by marked thread id when it differs). */
MAP_LRU_HASH(victims, __u32, struct victim_mark, 16384);
/* The same victims by address space, for mmap:exit_mmap (which may run in another task). */
MAP_LRU_HASH(victim_mms, __u64, struct victim_mark, 16384);
/* The victim's mm read by oo_read_victim_task, for oo_note_victim in the same program run. */
MAP_PERCPU_ARRAY(victim_mm_scratch, __u64, 1);
/* OOM_SETTING_* bits, set by the agent after attaching. */
MAP_ARRAY(settings, __u32, 1);

#endif /* OTEL_OOM_KILL_TYPES_H */
