// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * otel-oom kernel side: one ring-buffer event per OOM victim.
 *
 * Victim hooks (one is loaded, chosen by the agent from the running kernel's BTF):
 *   tp_btf/mark_victim          6.9+ (and 2025 stable backports): the victim's task_struct, so
 *                               everything is read from it, including its memory-cgroup path.
 *   tracepoint/oom/mark_victim  stable ABI fallback: the tracepoint's fields (pid only before 6.9).
 * Task hook (optional, with the classic tracepoint on kernels whose mark_victim passes only the
 * pid): fentry or kprobe on mark_oom_victim(struct task_struct *), the function that fires the
 * tracepoint, once per marking, for every victim (group members and the task_will_free_mem()
 * shortcut included; __oom_kill_process misses the shortcut). It stores the task for the task
 * running it; the tracepoint, which fires inside that same call unless the task was marked
 * already, takes it from there: still one event per victim, with everything read from its task.
 * Context hooks (optional, one at most): fentry or kprobe on oom_kill_process, with the matching
 * fexit/kretprobe. They store the OOM decision (struct oom_control) per current task; the
 * mark_victim events fired inside that call, one per victim (several for a memory.oom.group
 * kill), merge it.
 *
 * Who is who, since 4.9 (oom_kill_process(struct oom_control *oc, const char *message)):
 * the victim is oc->chosen (and every task mark_victim reports), the trigger is `current` (the
 * task whose allocation failed), and oc->totalpages is the size of the OOM domain (the memcg
 * limit or RAM+swap), not the victim's size.
 *
 * Around the kill (issue 13; optional, the agent loads them when it reports these records):
 *   tp_btf|tracepoint signal:signal_generate  a SIGKILL from a process named in `killers` (a
 *                               user-space OOM killer) becomes an oom_event with hook
 *                               OOM_HOOK_SIGNAL, the victim read from its task like a kernel kill's.
 *   tracepoint oom:wake_reaper, start_task_reaping, finish_task_reaping, skip_task_reaping,
 *   tracepoint mmap:exit_mmap (6.1+: the victim's address space torn down, its pages freed) and
 *   tracepoint sched:sched_process_exit (the victim's last thread; the time of the memory coming
 *                               back where exit_mmap is missing, or the victim's mm was not seen)
 *                               one struct oom_reclaim_event each, for the victims in `victims`.
 *
 * Only collection happens here; names, lookups and policy live in the agent.
 */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "oomkill.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ignore a stored decision older than this: its fexit/kretprobe was missed */
#define CONTEXT_MAX_AGE_NS (5ULL * 1000 * 1000 * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* the agent may resize it before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OOM_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

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
	__u8 hook;
	__u8 __pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);   /* pid_tgid of the task running the OOM killer */
	__type(value, struct oom_context);
} contexts SEC(".maps");

/* The user-space OOM killers' process names (comm), set by the agent before attaching. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32);
	__type(key, char[OOM_COMM_LEN]);
	__type(value, __u8);
} killers SEC(".maps");

/* Victims whose memory is awaited, by thread group (and by marked thread when it differs). */
struct victim_mark {
	__u64 marked_ns;
	__u64 mm;              /* struct mm_struct *, 0 when the victim's task was not read */
	__u32 pid;
	__u32 tgid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct victim_mark);
} victims SEC(".maps");

/* The same victims by address space, for mmap:exit_mmap (which may run in another task). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct victim_mark);
} victim_mms SEC(".maps");

/* The victim's mm read by read_victim_task, for note_victim in the same program run. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} victim_mm_scratch SEC(".maps");

/* OOM_SETTING_* bits, set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");
/* The victim mark_oom_victim is marking right now, for the tracepoint it fires next. */
struct pending_victim {
	__u64 task;          /* struct task_struct *, pinned by mark_oom_victim's caller */
	__u64 timestamp_ns;
	__u32 pid;
	__u32 flag;          /* OOM_F_TASK_FENTRY or OOM_F_TASK_KPROBE */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);   /* pid_tgid of the task marking the victim */
	__type(value, struct pending_victim);
} pending_victims SEC(".maps");

/* Ring-buffer memory is not zeroed and the event is too large for an inlined memset:
 * clear it by copying from this all-zero read-only block. */
const volatile char zero_event[sizeof(struct oom_event)] = {};

/* Keep the record structs in the object's BTF: the agent checks its Python mirrors against them. */
struct oom_event *unused_event_for_btf __attribute__((unused));
struct oom_reclaim_event *unused_reclaim_for_btf __attribute__((unused));

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		(*v)++;
}

static __always_inline __u64 now_ns(__u32 *flags)
{
	/* CLOCK_BOOTTIME keeps counting across suspend, so wall-clock conversion stays right */
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ktime_get_boot_ns)) {
		*flags |= OOM_F_BOOT_CLOCK;
		return bpf_ktime_get_boot_ns();
	}
	return bpf_ktime_get_ns();
}

static __always_inline __u64 kernfs_id(struct kernfs_node *kn)
{
	if (bpf_core_type_exists(union kernfs_node_id___old)) {
		struct kernfs_node___old *old = (void *)kn;

		return BPF_CORE_READ(old, id.ino);
	}
	return BPF_CORE_READ(kn, id);
}

static __always_inline struct cgroup_subsys_state *memory_css(struct task_struct *task)
{
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

	if (id < 0 || id >= 16)
		return NULL;
	return BPF_CORE_READ(task, cgroups, subsys[id]);
}

/* Everything the kernel knows about one level at the kill, without reading anything racy twice:
 * usage (can already have dropped: the reaper uncharges concurrently), and what an uncharge never
 * lowers: the watermark, the fail count, the OOM count, and oom_lock (held for the OOMing memcg
 * and the cgroups below it while the OOM killer runs, on kernels with the cgroup v1 code). */
static __always_inline void read_level(struct mem_cgroup *memcg, struct oom_cgroup_level *l)
{
	int oom = bpf_core_enum_value(enum memcg_memory_event, MEMCG_OOM);

	if (bpf_core_field_exists(struct page_counter___old, limit)) {
		struct page_counter___old *pc = (void *)&memcg->memory;

		l->usage_pages = BPF_CORE_READ(pc, count.counter);
		l->limit_pages = BPF_CORE_READ(pc, limit);
	} else {
		l->usage_pages = BPF_CORE_READ(memcg, memory.usage.counter);
		l->limit_pages = BPF_CORE_READ(memcg, memory.max);
	}
	l->watermark_pages = BPF_CORE_READ(memcg, memory.watermark);
	l->failcnt = BPF_CORE_READ(memcg, memory.failcnt);
	if (bpf_core_field_exists(memcg->oom_lock)) {
		l->level_flags |= OOM_L_HAS_OOM_LOCK;
		if (BPF_CORE_READ(memcg, oom_lock))
			l->level_flags |= OOM_L_OOM_LOCK;
	}
	if (bpf_core_field_exists(memcg->memory_events_local) && oom >= 0 &&
	    oom < bpf_core_field_size(memcg->memory_events_local) / sizeof(atomic_long_t)) {
		atomic_long_t *counts = __builtin_preserve_access_index(&memcg->memory_events_local[0]);

		bpf_probe_read_kernel(&l->oom_events, sizeof(l->oom_events), &counts[oom & 0xff]);
		l->level_flags |= OOM_L_HAS_OOM_COUNT;
	}
}

static __always_inline void read_page_counter(struct mem_cgroup *memcg, __u64 *usage, __u64 *limit)
{
	if (bpf_core_field_exists(struct page_counter___old, limit)) {
		struct page_counter___old *pc = (void *)&memcg->memory;

		*usage = BPF_CORE_READ(pc, count.counter);
		*limit = BPF_CORE_READ(pc, limit);
		return;
	}
	*usage = BPF_CORE_READ(memcg, memory.usage.counter);
	*limit = BPF_CORE_READ(memcg, memory.max);
}

/* The victim's memory cgroup and its ancestors, leaf first, with names so the path survives
 * the cgroup being removed before the agent looks it up. */
static __always_inline void read_victim_memcgs(struct oom_event *e, struct task_struct *task)
{
	struct cgroup_subsys_state *css = memory_css(task);
	int i;

	for (i = 0; i < OOM_CGROUP_DEPTH; i++) {
		struct kernfs_node *kn;
		const char *name;
		char next = 0;

		if (!css)
			return;
		kn = BPF_CORE_READ(css, cgroup, kn);
		e->victim_memcg[i].id = kernfs_id(kn);
		name = BPF_CORE_READ(kn, name);
		/* a full buffer: cut, unless the name is exactly OOM_CGROUP_NAME_LEN - 1 bytes long */
		if (bpf_probe_read_kernel_str(e->victim_memcg[i].name, OOM_CGROUP_NAME_LEN, name) ==
		    OOM_CGROUP_NAME_LEN &&
		    !bpf_probe_read_kernel(&next, 1, name + OOM_CGROUP_NAME_LEN - 1) && next)
			e->flags |= OOM_F_CGROUP_NAME_CUT;
		read_level((struct mem_cgroup *)css, &e->victim_memcg[i]);
		e->victim_memcg_levels = i + 1;
		css = BPF_CORE_READ(css, parent);
	}
	if (css)
		e->flags |= OOM_F_CGROUP_DEEPER;
}

/* The trigger's memory cgroups (ids only): without a context hook the OOMing memcg is derived
 * as the lowest limited ancestor shared by the trigger and the victim. */
static __always_inline void read_trigger_memcgs(struct oom_event *e, struct task_struct *task)
{
	struct cgroup_subsys_state *css = memory_css(task);
	int i;

	for (i = 0; i < OOM_CGROUP_DEPTH; i++) {
		if (!css)
			return;
		e->trigger_memcg_ids[i] = kernfs_id(BPF_CORE_READ(css, cgroup, kn));
		e->trigger_memcg_levels = i + 1;
		css = BPF_CORE_READ(css, parent);
	}
}

static __always_inline void scratch_mm(__u64 mm)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&victim_mm_scratch, &zero);

	if (slot)
		*slot = mm;
}

static __always_inline __u64 take_scratch_mm(void)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&victim_mm_scratch, &zero);
	__u64 mm = 0;

	if (slot) {
		mm = *slot;
		*slot = 0;
	}
	return mm;
}

static __always_inline __u64 clamp_counter(long v)
{
	/* percpu sums can be transiently negative */
	return v < 0 ? 0 : v;
}

/* The index must be a literal: CO-RE relocates constant array indexes with the kernel's element
 * size, while a computed index would be scaled by our 8-byte stand-in for struct percpu_counter. */
#define MM_COUNTER(mm, idx)                                                          \
	clamp_counter(bpf_core_type_exists(struct mm_rss_stat___old)                 \
		? BPF_CORE_READ((struct mm_struct___old *)(mm), rss_stat.count[idx].counter) \
		: BPF_CORE_READ((mm), rss_stat[idx].count))

static __always_inline void read_victim_task(struct oom_event *e, struct task_struct *task)
{
	struct mm_struct *mm;

	e->victim_pid = BPF_CORE_READ(task, pid);
	e->victim_tgid = BPF_CORE_READ(task, tgid);
	e->victim_ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->victim_uid = BPF_CORE_READ(task, real_cred, uid.val);
	e->oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);
	/* __oom_kill_process sends SIGKILL before it marks the victim; a task the kernel only marks
	 * because it is already exiting has no group exit on SIGKILL (SIGNAL_GROUP_EXIT is 0x4) */
	if ((BPF_CORE_READ(task, signal, flags) & 0x4) &&
	    (BPF_CORE_READ(task, signal, group_exit_code) & 0x7f) == 9)
		e->flags |= OOM_F_SIGKILLED;
	BPF_CORE_READ_STR_INTO(&e->victim_comm, task, comm);
	read_victim_memcgs(e, task);
	e->flags |= OOM_F_VICTIM_TASK;

	mm = BPF_CORE_READ(task, mm);
	if (!mm)
		return;
	scratch_mm((__u64)mm);
	e->total_vm = BPF_CORE_READ(mm, total_vm);
	e->anon_rss = MM_COUNTER(mm, MM_ANONPAGES);
	e->file_rss = MM_COUNTER(mm, MM_FILEPAGES);
	e->shmem_rss = MM_COUNTER(mm, MM_SHMEMPAGES);
	e->swap_ents = MM_COUNTER(mm, MM_SWAPENTS);
	e->pgtables_bytes = BPF_CORE_READ(mm, pgtables_bytes.counter);
	e->flags |= OOM_F_MM_SIZES;
}

/* Reserve and fill what every event has: version, time, trigger, merged decision. */
static __always_inline struct oom_event *start_event(__u8 hook, struct oom_context **decisionp)
{
	struct task_struct *current = (void *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct oom_context *ctx;
	struct oom_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(OOM_STAT_RINGBUF_FULL);
		return NULL;
	}
	bpf_probe_read_kernel(e, sizeof(*e), (const void *)zero_event);
	scratch_mm(0);
	e->version = OOM_EVENT_VERSION;
	e->hook = hook;
	e->timestamp_ns = now_ns(&e->flags);
	e->trigger_tgid = pid_tgid >> 32;
	e->trigger_pid = (__u32)pid_tgid;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
	read_trigger_memcgs(e, current);

	*decisionp = NULL;
	ctx = bpf_map_lookup_elem(&contexts, &pid_tgid);
	if (ctx && e->timestamp_ns - ctx->timestamp_ns < CONTEXT_MAX_AGE_NS) {
		e->flags |= OOM_F_CONTEXT;
		e->context_hook = ctx->hook;
		e->ctx_timestamp_ns = ctx->timestamp_ns;
		e->ctx_totalpages = ctx->totalpages;
		e->ctx_chosen_points = ctx->chosen_points;
		e->ctx_chosen_tgid = ctx->chosen_tgid;
		e->ctx_memcg_id = ctx->memcg_id;
		e->ctx_memcg_usage_pages = ctx->memcg_usage_pages;
		e->ctx_memcg_limit_pages = ctx->memcg_limit_pages;
		e->ctx_gfp_mask = ctx->gfp_mask;
		e->ctx_order = ctx->order;
		e->ctx_constraint = ctx->constraint;
		*decisionp = ctx;
	}
	return e;
}

/* A victim the kernel marked (or a user-space killer's): await its memory. */
static __always_inline void note_victim(struct oom_event *e)
{
	__u32 pid = e->victim_pid, tgid = e->victim_tgid;
	struct victim_mark mark = { .marked_ns = e->timestamp_ns, .mm = take_scratch_mm(), .pid = pid, .tgid = tgid };

	bpf_map_update_elem(&victims, tgid ? &tgid : &pid, &mark, BPF_ANY);
	if (tgid && tgid != pid)
		bpf_map_update_elem(&victims, &pid, &mark, BPF_ANY);  /* the reaper names the marked thread */
	if (mark.mm)
		bpf_map_update_elem(&victim_mms, &mark.mm, &mark, BPF_ANY);
}

static __always_inline void finish_event(struct oom_event *e)
{
	note_victim(e);
	bpf_ringbuf_submit(e, 0);
	stat_inc(OOM_STAT_SUBMITTED);
}

SEC("tp_btf/mark_victim")
int BPF_PROG(mark_victim_btf, struct task_struct *task)
{
	struct oom_context *decision;
	struct oom_event *e = start_event(OOM_HOOK_TP_BTF, &decision);

	if (!e)
		return 0;
	read_victim_task(e, task);
	finish_event(e);
	return 0;
}

/* The victim the task hook stored for the current task, when it is `pid`; the entry is used once. */
static __always_inline int read_pending_victim(struct oom_event *e, int pid)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pending_victim *v = bpf_map_lookup_elem(&pending_victims, &pid_tgid);
	int found = 0;

	if (!v)
		return 0;
	if (v->pid == pid && e->timestamp_ns - v->timestamp_ns < CONTEXT_MAX_AGE_NS) {
		read_victim_task(e, (struct task_struct *)v->task);
		e->flags |= v->flag;
		found = 1;
	}
	bpf_map_delete_elem(&pending_victims, &pid_tgid);
	return found;
}

SEC("tracepoint/oom/mark_victim")
int mark_victim_tp(struct trace_event_raw_mark_victim *args)
{
	struct oom_context *decision;
	struct oom_event *e = start_event(OOM_HOOK_TRACEPOINT, &decision);
	struct task_struct *current;
	int pid;

	if (!e)
		return 0;
	pid = BPF_CORE_READ(args, pid);
	/* the task hook ran a moment ago in this same mark_oom_victim call: it holds exactly this victim */
	if (read_pending_victim(e, pid)) {
		finish_event(e);
		return 0;
	}
	/* oc->chosen is still pinned inside oom_kill_process: read the full task when it is this victim */
	if (decision && decision->chosen) {
		struct task_struct *chosen = (void *)decision->chosen;

		if (BPF_CORE_READ(chosen, pid) == pid) {
			read_victim_task(e, chosen);
			finish_event(e);
			return 0;
		}
	}
	/* no decision naming it (e.g. no context hook): the victim is often the task whose charge hit
	 * the limit, i.e. current, whose task (and so cgroups, for the memcg derivation) is readable */
	current = (void *)bpf_get_current_task();
	if (BPF_CORE_READ(current, pid) == pid) {
		read_victim_task(e, current);
		finish_event(e);
		return 0;
	}
	e->victim_pid = pid; /* tgid unknown: the agent resolves it */
	if (bpf_core_field_exists(args->total_vm)) {
		__u32 loc = BPF_CORE_READ(args, __data_loc_comm);

		bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm),
					  (void *)args + (loc & 0xffff));
		e->total_vm = BPF_CORE_READ(args, total_vm);
		e->anon_rss = BPF_CORE_READ(args, anon_rss);
		e->file_rss = BPF_CORE_READ(args, file_rss);
		e->shmem_rss = BPF_CORE_READ(args, shmem_rss);
		e->pgtables_bytes = (__u64)BPF_CORE_READ(args, pgtables) * 1024;
		e->victim_uid = BPF_CORE_READ(args, uid);
		e->oom_score_adj = BPF_CORE_READ(args, oom_score_adj);
		e->flags |= OOM_F_TP_FIELDS | OOM_F_MM_SIZES;
	}
	finish_event(e);
	return 0;
}

static __always_inline __u8 constraint_kind(struct oom_control *oc)
{
	int c;

	if (!bpf_core_field_exists(oc->constraint))
		return BPF_CORE_READ(oc, memcg) ? OOM_CONSTRAINT_MEMCG : OOM_CONSTRAINT_UNKNOWN;
	c = BPF_CORE_READ(oc, constraint);
	if (c == bpf_core_enum_value(enum oom_constraint, CONSTRAINT_NONE))
		return OOM_CONSTRAINT_GLOBAL;
	if (c == bpf_core_enum_value(enum oom_constraint, CONSTRAINT_CPUSET))
		return OOM_CONSTRAINT_CPUSET;
	if (c == bpf_core_enum_value(enum oom_constraint, CONSTRAINT_MEMORY_POLICY))
		return OOM_CONSTRAINT_MEMPOLICY;
	if (c == bpf_core_enum_value(enum oom_constraint, CONSTRAINT_MEMCG))
		return OOM_CONSTRAINT_MEMCG;
	return OOM_CONSTRAINT_UNKNOWN;
}

static __always_inline int store_context(struct oom_control *oc, __u8 hook)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct oom_context c = {};
	struct task_struct *chosen;
	struct mem_cgroup *memcg;
	__u32 flags = 0;

	c.timestamp_ns = now_ns(&flags);
	c.hook = hook;
	c.totalpages = BPF_CORE_READ(oc, totalpages);
	c.chosen_points = BPF_CORE_READ(oc, chosen_points);
	c.gfp_mask = BPF_CORE_READ(oc, gfp_mask);
	c.order = BPF_CORE_READ(oc, order);
	c.constraint = constraint_kind(oc);
	chosen = BPF_CORE_READ(oc, chosen);
	c.chosen = (__u64)chosen;
	if (chosen)
		c.chosen_tgid = BPF_CORE_READ(chosen, tgid);
	memcg = BPF_CORE_READ(oc, memcg);
	if (memcg) {
		c.memcg_id = kernfs_id(BPF_CORE_READ(memcg, css.cgroup, kn));
		read_page_counter(memcg, &c.memcg_usage_pages, &c.memcg_limit_pages);
	}
	bpf_map_update_elem(&contexts, &pid_tgid, &c, BPF_ANY);
	stat_inc(OOM_STAT_CONTEXT_SEEN);
	return 0;
}

static __always_inline int drop_context(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&contexts, &pid_tgid);
	return 0;
}

SEC("fentry/oom_kill_process")
int BPF_PROG(oom_kill_fentry, struct oom_control *oc, const char *message)
{
	return store_context(oc, OOM_CONTEXT_FENTRY);
}

SEC("fexit/oom_kill_process")
int BPF_PROG(oom_kill_fexit, struct oom_control *oc, const char *message)
{
	return drop_context();
}

/* The agent attaches these by the name kallsyms really has (oom_kill_process.constprop.0, ...). */
SEC("kprobe/oom_kill_process")
int BPF_KPROBE(oom_kill_kprobe, struct oom_control *oc)
{
	return store_context(oc, OOM_CONTEXT_KPROBE);
}

SEC("kretprobe/oom_kill_process")
int BPF_KRETPROBE(oom_kill_kretprobe)
{
	return drop_context();
}


/* ---- around the kill (issue 13) ------------------------------------------------------------- */

/* A SIGKILL to report: not the kernel's own (the OOM killer's among them), and sent by a task named
 * in `killers` (1 when to report). */
static __always_inline int killer_sigkill(bool kernel_sent)
{
	char comm[OOM_COMM_LEN] = {};

	if (kernel_sent)
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));
	return bpf_map_lookup_elem(&killers, comm) ? 1 : 0;
}

/* TRACE_SIGNAL_DELIVERED 0, TRACE_SIGNAL_LOSE_INFO 4: the signal was queued; others were dropped */
#define SIGNAL_QUEUED(result) ((result) == 0 || (result) == 4)
#define SIGKILL 9

SEC("tp_btf/signal_generate")
int BPF_PROG(signal_generate_btf, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	struct oom_context *decision;
	struct oom_event *e;

	if (sig != SIGKILL || !SIGNAL_QUEUED(result))
		return 0;
	/* SEND_SIG_PRIV is the pointer value 1: the kernel itself (the OOM killer among others) */
	if (!killer_sigkill((unsigned long)info == 1))
		return 0;
	e = start_event(OOM_HOOK_SIGNAL, &decision);
	if (!e)
		return 0;
	e->flags &= ~OOM_F_CONTEXT;  /* the killer runs no OOM decision */
	read_victim_task(e, task);
	stat_inc(OOM_STAT_SIGNAL_KILLS);
	finish_event(e);
	return 0;
}

SEC("tracepoint/signal/signal_generate")
int signal_generate_tp(struct tp_signal_generate *args)
{
	struct oom_context *decision;
	struct oom_event *e;
	int sig = 0, result = 0, code = 0, pid = 0;

	bpf_probe_read_kernel(&sig, sizeof(sig), &args->sig);
	bpf_probe_read_kernel(&result, sizeof(result), &args->result);
	if (sig != SIGKILL || !SIGNAL_QUEUED(result))
		return 0;
	bpf_probe_read_kernel(&code, sizeof(code), &args->code);
	bpf_probe_read_kernel(&pid, sizeof(pid), &args->pid);
	/* SEND_SIG_PRIV shows as SI_KERNEL (0x80) */
	if (!killer_sigkill(code == 0x80))
		return 0;
	e = start_event(OOM_HOOK_SIGNAL, &decision);
	if (!e)
		return 0;
	e->flags &= ~OOM_F_CONTEXT;
	e->victim_pid = pid;  /* no task here: the agent reads the rest from /proc */
	bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm), args->comm);
	stat_inc(OOM_STAT_SIGNAL_KILLS);
	finish_event(e);
	return 0;
}

static __always_inline int write_reclaim(struct victim_mark *v, __u8 kind)
{
	struct oom_reclaim_event *r;
	__u32 flags = 0;

	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		stat_inc(OOM_STAT_RINGBUF_FULL);
		return 0;
	}
	r->timestamp_ns = now_ns(&flags);
	r->marked_ns = v->marked_ns;
	r->version = OOM_RECLAIM_EVENT_VERSION;
	r->flags = flags;
	r->pid = v->pid;
	r->tgid = v->tgid;
	r->kind = kind;
	__builtin_memset(r->__pad, 0, sizeof(r->__pad));
	bpf_ringbuf_submit(r, 0);
	stat_inc(OOM_STAT_RECLAIM);
	return 0;
}

/* The victim's memory is back: report it and forget the victim under every key. */
static __always_inline int victim_done(struct victim_mark *v, __u8 kind)
{
	struct victim_mark mark = *v;

	write_reclaim(&mark, kind);
	bpf_map_delete_elem(&victims, &mark.tgid);
	bpf_map_delete_elem(&victims, &mark.pid);
	if (mark.mm)
		bpf_map_delete_elem(&victim_mms, &mark.mm);
	return 0;
}

static __always_inline int reclaim_event(__u32 key, __u8 kind, bool last)
{
	struct victim_mark *v = bpf_map_lookup_elem(&victims, &key);

	if (!v)
		return 0;
	return last ? victim_done(v, kind) : write_reclaim(v, kind);
}

static __always_inline __u32 reaper_pid(struct tp_pid_only *args)
{
	int pid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), &args->pid);
	return pid;
}

SEC("tracepoint/oom/wake_reaper")
int reaper_wake(struct tp_pid_only *args)
{
	return reclaim_event(reaper_pid(args), OOM_RECLAIM_REAPER_WAKE, false);
}

SEC("tracepoint/oom/start_task_reaping")
int reaper_start(struct tp_pid_only *args)
{
	return reclaim_event(reaper_pid(args), OOM_RECLAIM_REAPER_START, false);
}

SEC("tracepoint/oom/finish_task_reaping")
int reaper_finish(struct tp_pid_only *args)
{
	return reclaim_event(reaper_pid(args), OOM_RECLAIM_REAPER_FINISH, false);
}

SEC("tracepoint/oom/skip_task_reaping")
int reaper_skip(struct tp_pid_only *args)
{
	return reclaim_event(reaper_pid(args), OOM_RECLAIM_REAPER_SKIP, false);
}

/* do_exit(): exit_mm() has run when this fires; the victim's memory is back once its last thread is here */
SEC("tracepoint/sched/sched_process_exit")
int victim_exit(void *args)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	struct victim_mark *v = bpf_map_lookup_elem(&victims, &tgid);
	__u32 zero = 0, *setting;

	if (!v)
		return 0;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;  /* other threads still hold the address space */
	/* on recent kernels (6.18 here) this fires before exit_mm(): where exit_mmap will report the
	 * pages freed, this is only noted */
	setting = bpf_map_lookup_elem(&settings, &zero);
	if (v->mm && setting && (*setting & OOM_SETTING_EXIT_MMAP)) {
		write_reclaim(v, OOM_RECLAIM_EXITED);
		return 0;
	}
	return victim_done(v, OOM_RECLAIM_EXIT);
}

/* exit_mmap() has unmapped and freed every page of the address space when it fires */
SEC("tracepoint/mmap/exit_mmap")
int victim_mm_freed(struct tp_exit_mmap *args)
{
	struct victim_mark *v;
	__u64 mm = 0;

	bpf_probe_read_kernel(&mm, sizeof(mm), &args->mm);
	v = bpf_map_lookup_elem(&victim_mms, &mm);
	if (!v)
		return 0;
	return victim_done(v, OOM_RECLAIM_MM_FREED);
}

/* ---- the per-victim task hook for pid-only mark_victim kernels (issue 14) ------------------- */

static __always_inline int store_pending_victim(struct task_struct *task, __u32 flag)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pending_victim v = {};
	__u32 unused = 0;

	v.task = (__u64)task;
	v.timestamp_ns = now_ns(&unused);
	v.pid = BPF_CORE_READ(task, pid);
	v.flag = flag;
	bpf_map_update_elem(&pending_victims, &pid_tgid, &v, BPF_ANY);
	return 0;
}

SEC("fentry/mark_oom_victim")
int BPF_PROG(mark_oom_victim_fentry, struct task_struct *task)
{
	return store_pending_victim(task, OOM_F_TASK_FENTRY);
}

/* attached by the name kallsyms has, like the context kprobe */
SEC("kprobe/mark_oom_victim")
int BPF_KPROBE(mark_oom_victim_kprobe, struct task_struct *task)
{
	return store_pending_victim(task, OOM_F_TASK_KPROBE);
}
