/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * otel-oom's kernel side, once for both backends: what each program reads and reports.
 *
 * Built into the CO-RE object by oomkill.bpf.c (after access_core.h) and into the bcc program by
 * oomkill.bcc.c (after access_bcc.h); those two files only define the programs' entry points,
 * each a call into the functions below. The kernel, the maps and the ring buffer are reached
 * only through the access layer's names, so a difference between the backends can only be a
 * difference in how a field is read, never in what is done with it:
 *   KREAD(lvalue), KREAD_STR(dst, lvalue), OO_ENUM(type, name)    one field, one string, one enumerator
 *   oo_now_ns, oo_kernfs_id, oo_task_memory_css, oo_page_counter, oo_memcg_oom_lock,
 *   oo_memcg_oom_group, oo_memcg_oom_events, OO_MM_COUNTER, oo_mm_pgtables_bytes, oo_oc_constraint
 *                                                                   what changed across kernels
 *   oo_map_lookup / oo_map_update / oo_map_delete(MAP(name), ...)   the maps of kill_types.h
 *   oo_zero_event, oo_event_reserve, oo_reclaim_reserve, oo_record_submit   the records
 *   OO_UNROLL                                                       before a loop the kernel may not allow
 *
 * Victim hooks (one is loaded, chosen by the agent):
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
 * Around the kill (optional, the agent loads them when it reports these records):
 *   signal:signal_generate      a SIGKILL from a process named in `killers` (a user-space OOM
 *                               killer) becomes an oom_event with hook OOM_HOOK_SIGNAL, the victim
 *                               read from its task like a kernel kill's (tp_btf), or its pid and
 *                               comm from the classic tracepoint's record.
 *   oom:wake_reaper, start_task_reaping, finish_task_reaping, skip_task_reaping,
 *   mmap:exit_mmap (6.1+: the victim's address space torn down, its pages freed) and
 *   sched:sched_process_exit (the victim's last thread; the time of the memory coming back where
 *                               exit_mmap is missing, or the victim's mm was not seen)
 *                               one struct oom_reclaim_event each, for the victims in `victims`.
 *
 * Only collection happens here; names, lookups and policy live in the agent. Helpers carry an oo_
 * prefix: the bcc program has the kernel's headers in scope, which define many short names.
 */
#ifndef OTEL_OOM_KILL_LOGIC_H
#define OTEL_OOM_KILL_LOGIC_H

/* ignore a stored decision or task older than this: its fexit/kretprobe was missed */
#define OO_MAX_AGE_NS (5ULL * 1000 * 1000 * 1000)
#define OO_SIGKILL 9
/* TRACE_SIGNAL_DELIVERED 0, TRACE_SIGNAL_LOSE_INFO 4: the signal was queued; others were dropped */
#define OO_SIGNAL_QUEUED(result) ((result) == 0 || (result) == 4)
#define OO_SIGNAL_GROUP_EXIT 0x4

static __always_inline void oo_stat_inc(__u32 idx)
{
	__u64 *v = oo_map_lookup(MAP(stats), &idx);

	if (v)
		(*v)++;  /* per-CPU */
}

/* ---- the victim --------------------------------------------------------------------------- */

/* Everything the kernel knows about one level at the kill, without reading anything racy twice:
 * usage (can already have dropped: the reaper uncharges concurrently), and what an uncharge never
 * lowers: the watermark, the fail count, the OOM count, and oom_lock (held for the OOMing memcg
 * and the cgroups below it while the OOM killer runs, on kernels with the cgroup v1 code); and
 * memory.oom.group, which decides the group a decision kills, read now because the cgroup may be
 * removed before user space could read its file. */
static __always_inline void oo_read_level(struct mem_cgroup *memcg, struct oom_cgroup_level *l)
{
	int locked = oo_memcg_oom_lock(memcg), group = oo_memcg_oom_group(memcg);

	oo_page_counter(memcg, &l->usage_pages, &l->limit_pages);
	l->watermark_pages = KREAD(memcg->memory.watermark);
	l->failcnt = KREAD(memcg->memory.failcnt);
	if (locked >= 0)
		l->level_flags |= OOM_L_HAS_OOM_LOCK | (locked ? OOM_L_OOM_LOCK : 0);
	if (oo_memcg_oom_events(memcg, &l->oom_events))
		l->level_flags |= OOM_L_HAS_OOM_COUNT;
	if (group >= 0)
		l->level_flags |= OOM_L_HAS_OOM_GROUP | (group ? OOM_L_OOM_GROUP : 0);
}

static __always_inline int oo_byte_set(const char *p)
{
	char c = 0;

	return !bpf_probe_read_kernel(&c, 1, p) && c;
}

/* The victim's memory cgroup and its ancestors, leaf first, with names so the path survives
 * the cgroup being removed before the agent looks it up. */
static __always_inline void oo_read_victim_memcgs(struct oom_event *e, struct task_struct *task)
{
	struct cgroup_subsys_state *css = oo_task_memory_css(task);
	int i;

	OO_UNROLL
	for (i = 0; i < OOM_CGROUP_DEPTH; i++) {
		struct kernfs_node *kn;
		const char *name;

		if (!css)
			return;
		kn = KREAD(KREAD(css->cgroup)->kn);
		e->victim_memcg[i].id = oo_kernfs_id(kn);
		name = KREAD(kn->name);
		/* a full buffer: cut, unless the name is exactly OOM_CGROUP_NAME_LEN - 1 bytes long */
		if (bpf_probe_read_kernel_str(e->victim_memcg[i].name, OOM_CGROUP_NAME_LEN, name) ==
		    OOM_CGROUP_NAME_LEN && oo_byte_set(name + OOM_CGROUP_NAME_LEN - 1))
			e->flags |= OOM_F_CGROUP_NAME_CUT;
		oo_read_level((struct mem_cgroup *)css, &e->victim_memcg[i]);
		e->victim_memcg_levels = i + 1;
		css = KREAD(css->parent);
	}
	if (css)
		e->flags |= OOM_F_CGROUP_DEEPER;
}

/* The trigger's memory cgroups (ids only): without a context hook the OOMing memcg is derived
 * as the lowest limited ancestor shared by the trigger and the victim. */
static __always_inline void oo_read_trigger_memcgs(struct oom_event *e, struct task_struct *task)
{
	struct cgroup_subsys_state *css = oo_task_memory_css(task);
	int i;

	OO_UNROLL  /* no early exit: with one, clang 14 sees a runtime trip count here and cannot unroll */
	for (i = 0; i < OOM_CGROUP_DEPTH; i++) {
		if (css) {
			e->trigger_memcg_ids[i] = oo_kernfs_id(KREAD(KREAD(css->cgroup)->kn));
			e->trigger_memcg_levels = i + 1;
			css = KREAD(css->parent);
		}
	}
}

static __always_inline void oo_scratch_mm(__u64 mm)
{
	__u32 zero = 0;
	__u64 *slot = oo_map_lookup(MAP(victim_mm_scratch), &zero);

	if (slot)
		*slot = mm;
}

static __always_inline __u64 oo_take_scratch_mm(void)
{
	__u32 zero = 0;
	__u64 *slot = oo_map_lookup(MAP(victim_mm_scratch), &zero);
	__u64 mm = 0;

	if (slot) {
		mm = *slot;
		*slot = 0;
	}
	return mm;
}

static __always_inline __u64 oo_clamp(long v)
{
	return v < 0 ? 0 : v;  /* percpu sums can be transiently negative */
}

static __always_inline void oo_read_victim_task(struct oom_event *e, struct task_struct *task)
{
	struct signal_struct *signal = KREAD(task->signal);
	struct mm_struct *mm;

	e->victim_pid = KREAD(task->pid);
	e->victim_tgid = KREAD(task->tgid);
	e->victim_ppid = KREAD(KREAD(task->real_parent)->tgid);
	e->victim_uid = KREAD(KREAD(task->real_cred)->uid.val);
	e->oom_score_adj = KREAD(signal->oom_score_adj);
	/* __oom_kill_process sends SIGKILL before it marks the victim; a task the kernel only marks
	 * because it is already exiting has no group exit on SIGKILL */
	if ((KREAD(signal->flags) & OO_SIGNAL_GROUP_EXIT) && (KREAD(signal->group_exit_code) & 0x7f) == OO_SIGKILL)
		e->flags |= OOM_F_SIGKILLED;
	KREAD_STR(e->victim_comm, task->comm);
	oo_read_victim_memcgs(e, task);
	e->flags |= OOM_F_VICTIM_TASK;

	mm = KREAD(task->mm);
	if (!mm)
		return;
	oo_scratch_mm((__u64)mm);
	e->total_vm = KREAD(mm->total_vm);
	e->anon_rss = oo_clamp(OO_MM_COUNTER(mm, MM_ANONPAGES));
	e->file_rss = oo_clamp(OO_MM_COUNTER(mm, MM_FILEPAGES));
	e->shmem_rss = oo_clamp(OO_MM_COUNTER(mm, MM_SHMEMPAGES));
	e->swap_ents = oo_clamp(OO_MM_COUNTER(mm, MM_SWAPENTS));
	e->pgtables_bytes = oo_mm_pgtables_bytes(mm);
	e->flags |= OOM_F_MM_SIZES;
}

/* ---- one event per victim ----------------------------------------------------------------- */

/* Reserve and fill what every event has: version, time, trigger, merged decision. */
static __always_inline struct oom_event *oo_start_event(__u8 hook, struct oom_context **decisionp)
{
	struct task_struct *trigger = (void *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	const void *zero = oo_zero_event();
	struct oom_context *decision;
	struct oom_event *e;

	*decisionp = NULL;
	if (!zero)
		return NULL;
	e = oo_event_reserve();
	if (!e) {
		oo_stat_inc(OOM_STAT_RINGBUF_FULL);
		return NULL;
	}
	bpf_probe_read_kernel(e, sizeof(*e), zero);
	oo_scratch_mm(0);
	e->version = OOM_EVENT_VERSION;
	e->hook = hook;
	e->timestamp_ns = oo_now_ns(&e->flags);
	e->trigger_tgid = pid_tgid >> 32;
	e->trigger_pid = (__u32)pid_tgid;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
	oo_read_trigger_memcgs(e, trigger);

	decision = oo_map_lookup(MAP(contexts), &pid_tgid);
	if (decision && e->timestamp_ns - decision->timestamp_ns < OO_MAX_AGE_NS) {
		e->flags |= OOM_F_CONTEXT;
		e->context_hook = decision->hook;
		e->ctx_timestamp_ns = decision->timestamp_ns;
		e->ctx_totalpages = decision->totalpages;
		e->ctx_chosen_points = decision->chosen_points;
		e->ctx_chosen_tgid = decision->chosen_tgid;
		e->ctx_memcg_id = decision->memcg_id;
		e->ctx_memcg_usage_pages = decision->memcg_usage_pages;
		e->ctx_memcg_limit_pages = decision->memcg_limit_pages;
		e->ctx_gfp_mask = decision->gfp_mask;
		e->ctx_order = decision->order;
		e->ctx_constraint = decision->constraint;
		*decisionp = decision;
	}
	return e;
}

/* A victim the kernel marked (or a user-space killer's): await its memory. */
static __always_inline void oo_note_victim(struct oom_event *e)
{
	__u32 pid = e->victim_pid, tgid = e->victim_tgid;
	struct victim_mark mark = {};

	mark.marked_ns = e->timestamp_ns;
	mark.mm = oo_take_scratch_mm();
	mark.pid = pid;
	mark.tgid = tgid;
	oo_map_update(MAP(victims), tgid ? &tgid : &pid, &mark);
	if (tgid && tgid != pid)
		oo_map_update(MAP(victims), &pid, &mark);  /* the reaper names the marked thread */
	if (mark.mm)
		oo_map_update(MAP(victim_mms), &mark.mm, &mark);
}

static __always_inline int oo_finish_event(void *ctx, struct oom_event *e)
{
	oo_note_victim(e);
	oo_stat_inc(oo_record_submit(ctx, e, sizeof(*e)) < 0 ? OOM_STAT_RINGBUF_FULL : OOM_STAT_SUBMITTED);
	return 0;
}

/* tp_btf/mark_victim: the kernel hands over the victim's task. */
static __always_inline int oo_mark_victim_task(void *ctx, struct task_struct *task)
{
	struct oom_context *decision;
	struct oom_event *e = oo_start_event(OOM_HOOK_TP_BTF, &decision);

	if (!e)
		return 0;
	oo_read_victim_task(e, task);
	return oo_finish_event(ctx, e);
}

/* The victim the task hook stored for the current task, when it is `pid`; the entry is used once. */
static __always_inline int oo_read_pending_victim(struct oom_event *e, int pid)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pending_victim *v = oo_map_lookup(MAP(pending_victims), &pid_tgid);
	int found = 0;

	if (!v)
		return 0;
	if (v->pid == pid && e->timestamp_ns - v->timestamp_ns < OO_MAX_AGE_NS) {
		oo_read_victim_task(e, (struct task_struct *)v->task);
		e->flags |= v->flag;
		found = 1;
	}
	oo_map_delete(MAP(pending_victims), &pid_tgid);
	return found;
}

/* tracepoint/oom/mark_victim: the victim's task where one is known to be it, else the
 * tracepoint's own fields. */
static __always_inline int oo_mark_victim_tracepoint(void *ctx, const struct mark_victim_fields *f)
{
	struct oom_context *decision;
	struct oom_event *e = oo_start_event(OOM_HOOK_TRACEPOINT, &decision);
	struct task_struct *trigger;
	int pid = f->pid;

	if (!e)
		return 0;
	/* the task hook ran a moment ago in this same mark_oom_victim call: it holds exactly this victim */
	if (oo_read_pending_victim(e, pid))
		return oo_finish_event(ctx, e);
	/* oc->chosen is still pinned inside oom_kill_process: read the full task when it is this victim */
	if (decision && decision->chosen) {
		struct task_struct *chosen = (void *)decision->chosen;

		if (KREAD(chosen->pid) == pid) {
			oo_read_victim_task(e, chosen);
			return oo_finish_event(ctx, e);
		}
	}
	/* no decision naming it (e.g. no context hook): the victim is often the task whose charge hit
	 * the limit, i.e. current, whose task (and so cgroups, for the memcg derivation) is readable */
	trigger = (void *)bpf_get_current_task();
	if (KREAD(trigger->pid) == pid) {
		oo_read_victim_task(e, trigger);
		return oo_finish_event(ctx, e);
	}
	e->victim_pid = pid; /* tgid unknown: the agent resolves it */
	if (f->rich) {
		__builtin_memcpy(e->victim_comm, f->comm, sizeof(e->victim_comm));
		e->total_vm = f->total_vm;
		e->anon_rss = f->anon_rss;
		e->file_rss = f->file_rss;
		e->shmem_rss = f->shmem_rss;
		e->pgtables_bytes = f->pgtables * 1024;
		e->victim_uid = f->uid;
		e->oom_score_adj = f->oom_score_adj;
		e->flags |= OOM_F_TP_FIELDS | OOM_F_MM_SIZES;
	}
	return oo_finish_event(ctx, e);
}

/* ---- the task hook for pid-only mark_victim kernels (issue 14) ------------------------------ */

static __always_inline int oo_store_pending_victim(struct task_struct *task, __u32 flag)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pending_victim v = {};
	__u32 unused = 0;

	v.task = (__u64)task;
	v.timestamp_ns = oo_now_ns(&unused);
	v.pid = KREAD(task->pid);
	v.flag = flag;
	oo_map_update(MAP(pending_victims), &pid_tgid, &v);
	return 0;
}

/* ---- the decision (context hooks on oom_kill_process) ------------------------------------- */

static __always_inline __u8 oo_constraint_kind(struct oom_control *oc)
{
	int c = oo_oc_constraint(oc);

	if (c < 0)  /* before 4.19: only a memcg OOM is told apart */
		return KREAD(oc->memcg) ? OOM_CONSTRAINT_MEMCG : OOM_CONSTRAINT_UNKNOWN;
	if (c == OO_ENUM(oom_constraint, CONSTRAINT_NONE))
		return OOM_CONSTRAINT_GLOBAL;
	if (c == OO_ENUM(oom_constraint, CONSTRAINT_CPUSET))
		return OOM_CONSTRAINT_CPUSET;
	if (c == OO_ENUM(oom_constraint, CONSTRAINT_MEMORY_POLICY))
		return OOM_CONSTRAINT_MEMPOLICY;
	if (c == OO_ENUM(oom_constraint, CONSTRAINT_MEMCG))
		return OOM_CONSTRAINT_MEMCG;
	return OOM_CONSTRAINT_UNKNOWN;
}

static __always_inline int oo_store_context(struct oom_control *oc, __u8 hook)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct oom_context c = {};
	struct task_struct *chosen;
	struct mem_cgroup *memcg;
	__u32 flags = 0;

	c.timestamp_ns = oo_now_ns(&flags);
	c.hook = hook;
	c.totalpages = KREAD(oc->totalpages);
	c.chosen_points = KREAD(oc->chosen_points);
	c.gfp_mask = KREAD(oc->gfp_mask);
	c.order = KREAD(oc->order);
	c.constraint = oo_constraint_kind(oc);
	chosen = KREAD(oc->chosen);
	c.chosen = (__u64)chosen;
	if (chosen)
		c.chosen_tgid = KREAD(chosen->tgid);
	memcg = KREAD(oc->memcg);
	if (memcg) {
		c.memcg_id = oo_kernfs_id(KREAD(KREAD(memcg->css.cgroup)->kn));
		oo_page_counter(memcg, &c.memcg_usage_pages, &c.memcg_limit_pages);
	}
	oo_map_update(MAP(contexts), &pid_tgid, &c);
	oo_stat_inc(OOM_STAT_CONTEXT_SEEN);
	return 0;
}

static __always_inline int oo_drop_context(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	oo_map_delete(MAP(contexts), &pid_tgid);
	return 0;
}

/* ---- user-space OOM killers --------------------------------------------------------------- */

/* A queued SIGKILL to report: not the kernel's own (the OOM killer's among them), and sent by a
 * task named in `killers`. */
static __always_inline int oo_killer_sigkill(int sig, int result, bool kernel_sent)
{
	struct oom_comm sender = {};

	if (sig != OO_SIGKILL || !OO_SIGNAL_QUEUED(result) || kernel_sent)
		return 0;
	bpf_get_current_comm(&sender.comm, sizeof(sender.comm));
	return oo_map_lookup(MAP(killers), &sender) ? 1 : 0;
}

/* The event of a killer's SIGKILL; the trigger fields hold the killer, who runs no OOM decision. */
static __always_inline struct oom_event *oo_start_signal_event(void)
{
	struct oom_context *decision;
	struct oom_event *e = oo_start_event(OOM_HOOK_SIGNAL, &decision);

	if (e)
		e->flags &= ~OOM_F_CONTEXT;
	return e;
}

static __always_inline int oo_finish_signal_event(void *ctx, struct oom_event *e)
{
	oo_stat_inc(OOM_STAT_SIGNAL_KILLS);
	return oo_finish_event(ctx, e);
}

/* tp_btf/signal_generate: the victim's task. SEND_SIG_PRIV (info == 1) is the kernel itself. */
static __always_inline int oo_signal_task(void *ctx, int sig, int result, bool kernel_sent, struct task_struct *task)
{
	struct oom_event *e;

	if (!oo_killer_sigkill(sig, result, kernel_sent))
		return 0;
	e = oo_start_signal_event();
	if (!e)
		return 0;
	oo_read_victim_task(e, task);
	return oo_finish_signal_event(ctx, e);
}

/* tracepoint/signal/signal_generate: the record's pid and comm; the agent reads the rest from /proc. */
static __always_inline int oo_signal_record(void *ctx, struct tp_signal_generate *args)
{
	int sig = 0, result = 0, code = 0, pid = 0;
	struct oom_event *e;

	bpf_probe_read_kernel(&sig, sizeof(sig), &args->sig);
	bpf_probe_read_kernel(&result, sizeof(result), &args->result);
	bpf_probe_read_kernel(&code, sizeof(code), &args->code);
	bpf_probe_read_kernel(&pid, sizeof(pid), &args->pid);
	/* SEND_SIG_PRIV shows as SI_KERNEL (0x80) */
	if (!oo_killer_sigkill(sig, result, code == 0x80))
		return 0;
	e = oo_start_signal_event();
	if (!e)
		return 0;
	e->victim_pid = pid;
	bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm), args->comm);
	return oo_finish_signal_event(ctx, e);
}

/* ---- the victim's memory coming back ------------------------------------------------------ */

static __always_inline int oo_write_reclaim(void *ctx, struct victim_mark *v, __u8 kind)
{
	struct oom_reclaim_event *r = oo_reclaim_reserve();
	__u32 flags = 0;

	if (!r) {
		oo_stat_inc(OOM_STAT_RINGBUF_FULL);
		return 0;
	}
	r->timestamp_ns = oo_now_ns(&flags);
	r->marked_ns = v->marked_ns;
	r->version = OOM_RECLAIM_EVENT_VERSION;
	r->flags = flags;
	r->pid = v->pid;
	r->tgid = v->tgid;
	r->kind = kind;
	__builtin_memset(r->__pad, 0, sizeof(r->__pad));
	oo_stat_inc(oo_record_submit(ctx, r, sizeof(*r)) < 0 ? OOM_STAT_RINGBUF_FULL : OOM_STAT_RECLAIM);
	return 0;
}

/* The victim's memory is back: report it and forget the victim under every key. */
static __always_inline int oo_victim_done(void *ctx, struct victim_mark *v, __u8 kind)
{
	struct victim_mark mark = *v;

	oo_write_reclaim(ctx, &mark, kind);
	oo_map_delete(MAP(victims), &mark.tgid);
	oo_map_delete(MAP(victims), &mark.pid);
	if (mark.mm)
		oo_map_delete(MAP(victim_mms), &mark.mm);
	return 0;
}

/* oom:wake_reaper, start_task_reaping, finish_task_reaping, skip_task_reaping: pid only */
static __always_inline int oo_reaper_event(void *ctx, struct tp_pid_only *args, __u8 kind)
{
	struct victim_mark *v;
	__u32 pid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), &args->pid);
	v = oo_map_lookup(MAP(victims), &pid);
	return v ? oo_write_reclaim(ctx, v, kind) : 0;
}

/* sched:sched_process_exit, in do_exit(): the victim's memory is back once its last thread is here */
static __always_inline int oo_victim_exit(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct victim_mark *v = oo_map_lookup(MAP(victims), &tgid);
	__u32 zero = 0, *setting;

	if (!v)
		return 0;
	if (KREAD(KREAD(task->signal)->live.counter) != 0)
		return 0;  /* other threads still hold the address space */
	/* on recent kernels (6.18 here) this fires before exit_mm(): where exit_mmap will report the
	 * pages freed, this is only noted */
	setting = oo_map_lookup(MAP(settings), &zero);
	if (v->mm && setting && (*setting & OOM_SETTING_EXIT_MMAP))
		return oo_write_reclaim(ctx, v, OOM_RECLAIM_EXITED);
	return oo_victim_done(ctx, v, OOM_RECLAIM_EXIT);
}

/* mmap:exit_mmap: exit_mmap() has unmapped and freed every page of the address space */
static __always_inline int oo_victim_mm_freed(void *ctx, struct tp_exit_mmap *args)
{
	struct victim_mark *v;
	__u64 mm = 0;

	bpf_probe_read_kernel(&mm, sizeof(mm), &args->mm);
	v = oo_map_lookup(MAP(victim_mms), &mm);
	return v ? oo_victim_done(ctx, v, OOM_RECLAIM_MM_FREED) : 0;
}

#endif /* OTEL_OOM_KILL_LOGIC_H */
