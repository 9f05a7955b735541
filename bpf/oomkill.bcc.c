// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * otel-oom kernel side for the bcc backend: the same hooks and the same event (struct oom_event,
 * bpf/oomkill.h) as oomkill.bpf.c, for kernels without BTF, where CO-RE cannot relocate. BCC
 * compiles this at run time against the node's own kernel headers, so struct layouts come from
 * those headers and version differences are settled by the preprocessor.
 *
 *   tracepoint oom:mark_victim   one event per victim (TRACEPOINT_PROBE: attached by BCC)
 *   kprobe mark_oom_victim       the victim's task, for the tracepoint that fires inside it
 *   kprobe/kretprobe oom_kill_process   the OOM decision (struct oom_control), per current task
 *
 * The agent defines: OTEL_OOM_PERF_BUFFER (kernels before 5.8: no ring buffer), OTEL_OOM_RING_PAGES,
 * OTEL_OOM_TP_RICH (the tracepoint has the 6.9 field set). Every kernel pointer is read with
 * bpf_probe_read_kernel() explicitly, so nothing depends on BCC rewriting dereferences. Helpers carry
 * an oo_ prefix: the kernel headers are in scope and define many short names (mm_counter, ...).
 */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/cred.h>
#include <linux/mm_types.h>
#include <linux/oom.h>
#include <linux/memcontrol.h>
#include <linux/cgroup-defs.h>
#include <linux/kernfs.h>
#include <linux/version.h>
#include "oomkill.h"

#define CONTEXT_MAX_AGE_NS (5ULL * 1000 * 1000 * 1000)
#define KREAD(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))

#ifdef OTEL_OOM_PERF_BUFFER
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct oom_event, 1);
#else
BPF_RINGBUF_OUTPUT(events, OTEL_OOM_RING_PAGES);
#endif
BPF_PERCPU_ARRAY(stats, u64, OOM_STAT_MAX);
BPF_ARRAY(zero, struct oom_event, 1); /* never written: the all-zero source for clearing an event */

struct oom_context {
	u64 timestamp_ns;
	u64 totalpages;
	s64 chosen_points;
	u64 chosen;
	u64 memcg_id;
	u64 memcg_usage_pages;
	u64 memcg_limit_pages;
	u32 chosen_tgid;
	u32 gfp_mask;
	s32 order;
	u8 constraint;
};
BPF_HASH(contexts, u64, struct oom_context, 256);

struct pending_victim {
	u64 task;
	u64 timestamp_ns;
	u32 pid;
};
BPF_HASH(pending_victims, u64, struct pending_victim, 256);

static __always_inline void oo_stat_inc(u32 idx)
{
	u64 *v = stats.lookup(&idx);

	if (v)
		(*v)++;
}

static __always_inline u64 oo_now_ns(u32 *flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 8, 0)
	*flags |= OOM_F_BOOT_CLOCK;
	return bpf_ktime_get_boot_ns();
#else
	return bpf_ktime_get_ns();
#endif
}

static __always_inline u64 oo_kernfs_id(struct kernfs_node *kn)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 5, 0)
	u64 id = 0;

	KREAD(id, kn->id);
	return id;
#else
	u32 ino = 0;

	KREAD(ino, kn->id.ino);
	return ino;
#endif
}

static __always_inline struct cgroup_subsys_state *oo_memory_css(struct task_struct *task)
{
	struct css_set *cgroups = NULL;
	struct cgroup_subsys_state *css = NULL;

	KREAD(cgroups, task->cgroups);
	if (cgroups)
		KREAD(css, cgroups->subsys[memory_cgrp_id]);
	return css;
}

static __always_inline void oo_read_page_counter(struct mem_cgroup *memcg, u64 *usage, u64 *limit)
{
	long u = 0;
	unsigned long l = 0;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 18, 0)
	KREAD(u, memcg->memory.usage.counter);
	KREAD(l, memcg->memory.max);
#else
	KREAD(u, memcg->memory.count.counter);
	KREAD(l, memcg->memory.limit);
#endif
	*usage = u;
	*limit = l;
}

/* What a level's counters say about an OOM, as oomkill.bpf.c's read_level: watermark, fail count,
 * oom_lock (cgroup v1 code: always before 6.11, CONFIG_MEMCG_V1 after) and the OOM count (5.3+). */
static __always_inline void oo_read_level(struct mem_cgroup *memcg, struct oom_cgroup_level *l)
{
	unsigned long watermark = 0, failcnt = 0;

	oo_read_page_counter(memcg, &l->usage_pages, &l->limit_pages);
	KREAD(watermark, memcg->memory.watermark);
	KREAD(failcnt, memcg->memory.failcnt);
	l->watermark_pages = watermark;
	l->failcnt = failcnt;
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 11, 0) || defined(CONFIG_MEMCG_V1)
	{
		bool locked = 0;

		KREAD(locked, memcg->oom_lock);
		l->level_flags |= OOM_L_HAS_OOM_LOCK | (locked ? OOM_L_OOM_LOCK : 0);
	}
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 3, 0)
	{
		long ooms = 0;

		KREAD(ooms, memcg->memory_events_local[MEMCG_OOM].counter);
		l->oom_events = ooms < 0 ? 0 : ooms;
		l->level_flags |= OOM_L_HAS_OOM_COUNT;
	}
#endif
}

static __always_inline void oo_read_victim_memcgs(struct oom_event *e, struct task_struct *task)
{
	struct cgroup_subsys_state *css = oo_memory_css(task);
	int i;

#pragma unroll
	for (i = 0; i < OOM_CGROUP_DEPTH; i++) {
		struct cgroup *cgrp = NULL;
		struct kernfs_node *kn = NULL;
		const char *name = NULL;

		if (!css)
			return;
		KREAD(cgrp, css->cgroup);
		if (cgrp)
			KREAD(kn, cgrp->kn);
		if (kn) {
			e->victim_memcg[i].id = oo_kernfs_id(kn);
			KREAD(name, kn->name);
			/* a full buffer: cut, unless the name is exactly OOM_CGROUP_NAME_LEN - 1 bytes long */
			if (name && bpf_probe_read_kernel_str(e->victim_memcg[i].name, OOM_CGROUP_NAME_LEN, name) ==
			    OOM_CGROUP_NAME_LEN) {
				char next = 0;

				if (!bpf_probe_read_kernel(&next, 1, name + OOM_CGROUP_NAME_LEN - 1) && next)
					e->flags |= OOM_F_CGROUP_NAME_CUT;
			}
		}
		oo_read_level((struct mem_cgroup *)css, &e->victim_memcg[i]);
		e->victim_memcg_levels = i + 1;
		KREAD(css, css->parent);
	}
	if (css)
		e->flags |= OOM_F_CGROUP_DEEPER;
}

static __always_inline void oo_read_trigger_memcgs(struct oom_event *e, struct task_struct *task)
{
	struct cgroup_subsys_state *css = oo_memory_css(task);
	int i;

#pragma unroll
	for (i = 0; i < OOM_CGROUP_DEPTH; i++) {
		struct cgroup *cgrp = NULL;
		struct kernfs_node *kn = NULL;

		if (!css)
			return;
		KREAD(cgrp, css->cgroup);
		if (cgrp)
			KREAD(kn, cgrp->kn);
		if (kn)
			e->trigger_memcg_ids[i] = oo_kernfs_id(kn);
		e->trigger_memcg_levels = i + 1;
		KREAD(css, css->parent);
	}
}

static __always_inline u64 oo_mm_counter(struct mm_struct *mm, int idx)
{
	long v = 0;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
	KREAD(v, mm->rss_stat[idx].count);
#else
	KREAD(v, mm->rss_stat.count[idx].counter);
#endif
	return v < 0 ? 0 : v;  /* percpu sums can be transiently negative */
}

static __always_inline void oo_read_victim_task(struct oom_event *e, struct task_struct *task)
{
	struct task_struct *parent = NULL;
	const struct cred *cred = NULL;
	struct signal_struct *signal = NULL;
	struct mm_struct *mm = NULL;
	long pgtables = 0;
	int pid = 0, tgid = 0, ptgid = 0;
	kuid_t uid = {};
	short adj = 0;

	KREAD(pid, task->pid);
	KREAD(tgid, task->tgid);
	e->victim_pid = pid;
	e->victim_tgid = tgid;
	KREAD(parent, task->real_parent);
	if (parent)
		KREAD(ptgid, parent->tgid);
	e->victim_ppid = ptgid;
	KREAD(cred, task->real_cred);
	if (cred)
		KREAD(uid, cred->uid);
	e->victim_uid = uid.val;
	KREAD(signal, task->signal);
	if (signal) {
		unsigned int sflags = 0;
		int exit_code = 0;

		KREAD(adj, signal->oom_score_adj);
		/* __oom_kill_process sends SIGKILL before it marks the victim; a task only marked because
		 * it is already exiting has no group exit on SIGKILL (SIGNAL_GROUP_EXIT is 0x4) */
		KREAD(sflags, signal->flags);
		KREAD(exit_code, signal->group_exit_code);
		if ((sflags & 0x4) && (exit_code & 0x7f) == 9)
			e->flags |= OOM_F_SIGKILLED;
	}
	e->oom_score_adj = adj;
	bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm), task->comm);
	oo_read_victim_memcgs(e, task);
	e->flags |= OOM_F_VICTIM_TASK;

	KREAD(mm, task->mm);
	if (!mm)
		return;
	KREAD(e->total_vm, mm->total_vm);
	e->anon_rss = oo_mm_counter(mm, MM_ANONPAGES);
	e->file_rss = oo_mm_counter(mm, MM_FILEPAGES);
	e->shmem_rss = oo_mm_counter(mm, MM_SHMEMPAGES);
	e->swap_ents = oo_mm_counter(mm, MM_SWAPENTS);
	KREAD(pgtables, mm->pgtables_bytes.counter);
	e->pgtables_bytes = pgtables;
	e->flags |= OOM_F_MM_SIZES;
}

static __always_inline void oo_merge_context(struct oom_event *e, u64 pid_tgid)
{
	struct oom_context *ctx = contexts.lookup(&pid_tgid);

	if (!ctx || e->timestamp_ns - ctx->timestamp_ns >= CONTEXT_MAX_AGE_NS)
		return;
	e->flags |= OOM_F_CONTEXT;
	e->context_hook = OOM_CONTEXT_KPROBE;
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
}

/* The victim's task: the task hook's entry, else oc->chosen or current when it is this pid.
 * Returns 0 when none of them is this victim (the tracepoint's own fields are all there is). */
static __always_inline int oo_read_victim(struct oom_event *e, u64 pid_tgid, int pid)
{
	struct pending_victim *v = pending_victims.lookup(&pid_tgid);
	struct oom_context *ctx;
	struct task_struct *current_task = (struct task_struct *)bpf_get_current_task();
	int cpid = 0;

	if (v) {
		int ok = v->pid == pid && e->timestamp_ns - v->timestamp_ns < CONTEXT_MAX_AGE_NS;
		struct task_struct *task = (struct task_struct *)v->task;

		pending_victims.delete(&pid_tgid);
		if (ok) {
			oo_read_victim_task(e, task);
			e->flags |= OOM_F_TASK_KPROBE;
			return 1;
		}
	}
	ctx = contexts.lookup(&pid_tgid);
	if (ctx && ctx->chosen && e->timestamp_ns - ctx->timestamp_ns < CONTEXT_MAX_AGE_NS) {
		struct task_struct *chosen = (struct task_struct *)ctx->chosen;

		KREAD(cpid, chosen->pid);
		if (cpid == pid) {
			oo_read_victim_task(e, chosen);
			return 1;
		}
	}
	KREAD(cpid, current_task->pid);
	if (cpid == pid) {
		oo_read_victim_task(e, current_task);
		return 1;
	}
	return 0;
}

TRACEPOINT_PROBE(oom, mark_victim)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_struct *current_task = (struct task_struct *)bpf_get_current_task();
	struct oom_event *e;
	u32 zero_key = 0;
	void *blank = zero.lookup(&zero_key);

	if (!blank)
		return 0;
#ifdef OTEL_OOM_PERF_BUFFER
	e = scratch.lookup(&zero_key);
#else
	e = events.ringbuf_reserve(sizeof(struct oom_event));
#endif
	if (!e) {
		oo_stat_inc(OOM_STAT_RINGBUF_FULL);
		return 0;
	}
	bpf_probe_read_kernel(e, sizeof(*e), blank);
	e->version = OOM_EVENT_VERSION;
	e->hook = OOM_HOOK_TRACEPOINT;
	e->timestamp_ns = oo_now_ns(&e->flags);
	e->trigger_tgid = pid_tgid >> 32;
	e->trigger_pid = (u32)pid_tgid;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
	oo_read_trigger_memcgs(e, current_task);
	oo_merge_context(e, pid_tgid);
	if (!oo_read_victim(e, pid_tgid, args->pid)) {
		e->victim_pid = args->pid;  /* tgid unknown: the agent resolves it */
#ifdef OTEL_OOM_TP_RICH
		TP_DATA_LOC_READ_STR(e->victim_comm, comm, sizeof(e->victim_comm));
		e->total_vm = args->total_vm;
		e->anon_rss = args->anon_rss;
		e->file_rss = args->file_rss;
		e->shmem_rss = args->shmem_rss;
		e->pgtables_bytes = (u64)args->pgtables * 1024;
		e->victim_uid = args->uid;
		e->oom_score_adj = args->oom_score_adj;
		e->flags |= OOM_F_TP_FIELDS | OOM_F_MM_SIZES;
#endif
	}
#ifdef OTEL_OOM_PERF_BUFFER
	if (events.perf_submit(args, e, sizeof(*e)) < 0) {
		oo_stat_inc(OOM_STAT_RINGBUF_FULL);
		return 0;
	}
#else
	events.ringbuf_submit(e, 0);
#endif
	oo_stat_inc(OOM_STAT_SUBMITTED);
	return 0;
}

static __always_inline u8 oo_constraint_kind(struct oom_control *oc)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 19, 0)
	enum oom_constraint c = CONSTRAINT_NONE;

	KREAD(c, oc->constraint);
	switch (c) {
	case CONSTRAINT_NONE:
		return OOM_CONSTRAINT_GLOBAL;
	case CONSTRAINT_CPUSET:
		return OOM_CONSTRAINT_CPUSET;
	case CONSTRAINT_MEMORY_POLICY:
		return OOM_CONSTRAINT_MEMPOLICY;
	case CONSTRAINT_MEMCG:
		return OOM_CONSTRAINT_MEMCG;
	}
	return OOM_CONSTRAINT_UNKNOWN;
#else
	struct mem_cgroup *memcg = NULL;

	KREAD(memcg, oc->memcg);
	return memcg ? OOM_CONSTRAINT_MEMCG : OOM_CONSTRAINT_UNKNOWN;
#endif
}

int oom_kill_kprobe(struct pt_regs *ctx, struct oom_control *oc)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct oom_context c = {};
	struct task_struct *chosen = NULL;
	struct mem_cgroup *memcg = NULL;
	struct cgroup *cgrp = NULL;
	struct kernfs_node *kn = NULL;
	u32 flags = 0;
	int tgid = 0;

	c.timestamp_ns = oo_now_ns(&flags);
	KREAD(c.totalpages, oc->totalpages);
	KREAD(c.chosen_points, oc->chosen_points);
	KREAD(c.gfp_mask, oc->gfp_mask);
	KREAD(c.order, oc->order);
	c.constraint = oo_constraint_kind(oc);
	KREAD(chosen, oc->chosen);
	c.chosen = (u64)chosen;
	if (chosen) {
		KREAD(tgid, chosen->tgid);
		c.chosen_tgid = tgid;
	}
	KREAD(memcg, oc->memcg);
	if (memcg) {
		KREAD(cgrp, memcg->css.cgroup);
		if (cgrp)
			KREAD(kn, cgrp->kn);
		if (kn)
			c.memcg_id = oo_kernfs_id(kn);
		oo_read_page_counter(memcg, &c.memcg_usage_pages, &c.memcg_limit_pages);
	}
	contexts.update(&pid_tgid, &c);
	oo_stat_inc(OOM_STAT_CONTEXT_SEEN);
	return 0;
}

int oom_kill_kretprobe(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();

	contexts.delete(&pid_tgid);
	return 0;
}

int mark_oom_victim_kprobe(struct pt_regs *ctx, struct task_struct *task)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pending_victim v = {};
	u32 unused = 0;
	int pid = 0;

	KREAD(pid, task->pid);
	v.task = (u64)task;
	v.timestamp_ns = oo_now_ns(&unused);
	v.pid = pid;
	pending_victims.update(&pid_tgid, &v);
	return 0;
}
