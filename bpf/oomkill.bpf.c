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

/* Keeps struct oom_event in the object's BTF: the agent checks its Python mirror against it. */
struct oom_event *unused_event_for_btf __attribute__((unused));

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

		if (!css)
			return;
		kn = BPF_CORE_READ(css, cgroup, kn);
		e->victim_memcg[i].id = kernfs_id(kn);
		bpf_probe_read_kernel_str(e->victim_memcg[i].name, OOM_CGROUP_NAME_LEN,
					  BPF_CORE_READ(kn, name));
		read_page_counter((struct mem_cgroup *)css, &e->victim_memcg[i].usage_pages,
				  &e->victim_memcg[i].limit_pages);
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
	BPF_CORE_READ_STR_INTO(&e->victim_comm, task, comm);
	read_victim_memcgs(e, task);
	e->flags |= OOM_F_VICTIM_TASK;

	mm = BPF_CORE_READ(task, mm);
	if (!mm)
		return;
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

static __always_inline void finish_event(struct oom_event *e)
{
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
