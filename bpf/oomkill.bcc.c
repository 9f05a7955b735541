// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * otel-oom kernel side, bcc program (kernels without BTF): the entry point of every program. What
 * each one reads and reports is bpf/kill_logic.h, shared with the CO-RE object (oomkill.bpf.c);
 * how the kernel is read here (the node's kernel headers, explicit probe reads) is access_bcc.h.
 * otel_oom/kernel/bcc.py compiles it at start with BCC and attaches the programs of its hook plan
 * by name (none is attached by BCC on its own: no tracepoint__ or kprobe__ prefixes).
 *
 * BTF-only hooks have no counterpart here: tp_btf (mark_victim, signal_generate) and fentry/fexit;
 * the classic tracepoints and kprobes carry the same logic.
 */
#include "access_bcc.h"
#include "kill_logic.h"

/* ---- victim hook: the classic tracepoint ---- */

int mark_victim_tp(struct tracepoint__oom__mark_victim *args)
{
	struct mark_victim_fields f = {};

	read_mark_victim_fields(args, &f);
	return oo_mark_victim_tracepoint(args, &f);
}

/* ---- task hook: kprobe mark_oom_victim (pid-only mark_victim kernels) ---- */

int mark_oom_victim_kprobe(struct pt_regs *ctx, struct task_struct *task)
{
	return oo_store_pending_victim(task, OOM_F_TASK_KPROBE);
}

/* ---- context hook: kprobe/kretprobe oom_kill_process ---- */

int oom_kill_kprobe(struct pt_regs *ctx, struct oom_control *oc)
{
	return oo_store_context(oc, OOM_CONTEXT_KPROBE);
}

int oom_kill_kretprobe(struct pt_regs *ctx)
{
	return oo_drop_context();
}

/* ---- around the kill: user-space OOM killers ---- */

int signal_generate_tp(struct tp_signal_generate *args)
{
	return oo_signal_record(args, args);
}

/* ---- around the kill: the victim's memory coming back ---- */

int reaper_wake(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_WAKE);
}

int reaper_start(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_START);
}

int reaper_finish(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_FINISH);
}

int reaper_skip(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_SKIP);
}

int victim_exit(void *args)
{
	return oo_victim_exit(args);
}

int victim_mm_freed(struct tp_exit_mmap *args)
{
	return oo_victim_mm_freed(args, args);
}
