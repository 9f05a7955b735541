// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * otel-oom kernel side, CO-RE object for libbpf: the entry point of every program. What each one
 * reads and reports is bpf/kill_logic.h, shared with the bcc program (oomkill.bcc.c); how the
 * kernel is read here (CO-RE relocations against the running kernel's BTF) is access_core.h.
 * The agent enables the programs of its hook plan at load time (otel_oom/kernel/probe.py).
 */
#include "access_core.h"
#include "kill_logic.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keep the record structs in the object's BTF: the agent checks its Python mirrors against them. */
struct oom_event *unused_event_for_btf __attribute__((unused));
struct oom_reclaim_event *unused_reclaim_for_btf __attribute__((unused));

/* ---- victim hooks ---- */

SEC("tp_btf/mark_victim")
int BPF_PROG(mark_victim_btf, struct task_struct *task)
{
	return oo_mark_victim_task(ctx, task);
}

SEC("tracepoint/oom/mark_victim")
int mark_victim_tp(struct trace_event_raw_mark_victim *args)
{
	struct mark_victim_fields f = {};

	read_mark_victim_fields(args, &f);
	return oo_mark_victim_tracepoint(args, &f);
}

/* ---- task hook: mark_oom_victim (pid-only mark_victim kernels) ---- */

SEC("fentry/mark_oom_victim")
int BPF_PROG(mark_oom_victim_fentry, struct task_struct *task)
{
	return oo_store_pending_victim(task, OOM_F_TASK_FENTRY);
}

/* attached by the name kallsyms has, like the context kprobe */
SEC("kprobe/mark_oom_victim")
int BPF_KPROBE(mark_oom_victim_kprobe, struct task_struct *task)
{
	return oo_store_pending_victim(task, OOM_F_TASK_KPROBE);
}

/* ---- context hooks: oom_kill_process ---- */

SEC("fentry/oom_kill_process")
int BPF_PROG(oom_kill_fentry, struct oom_control *oc, const char *message)
{
	return oo_store_context(oc, OOM_CONTEXT_FENTRY);
}

SEC("fexit/oom_kill_process")
int BPF_PROG(oom_kill_fexit, struct oom_control *oc, const char *message)
{
	return oo_drop_context();
}

/* The agent attaches these by the name kallsyms really has (oom_kill_process.constprop.0, ...). */
SEC("kprobe/oom_kill_process")
int BPF_KPROBE(oom_kill_kprobe, struct oom_control *oc)
{
	return oo_store_context(oc, OOM_CONTEXT_KPROBE);
}

SEC("kretprobe/oom_kill_process")
int BPF_KRETPROBE(oom_kill_kretprobe)
{
	return oo_drop_context();
}

/* ---- around the kill: user-space OOM killers ---- */

SEC("tp_btf/signal_generate")
int BPF_PROG(signal_generate_btf, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	/* SEND_SIG_PRIV is the pointer value 1: the kernel itself (the OOM killer among others) */
	return oo_signal_task(ctx, sig, result, (unsigned long)info == 1, task);
}

SEC("tracepoint/signal/signal_generate")
int signal_generate_tp(struct tp_signal_generate *args)
{
	return oo_signal_record(args, args);
}

/* ---- around the kill: the victim's memory coming back ---- */

SEC("tracepoint/oom/wake_reaper")
int reaper_wake(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_WAKE);
}

SEC("tracepoint/oom/start_task_reaping")
int reaper_start(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_START);
}

SEC("tracepoint/oom/finish_task_reaping")
int reaper_finish(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_FINISH);
}

SEC("tracepoint/oom/skip_task_reaping")
int reaper_skip(struct tp_pid_only *args)
{
	return oo_reaper_event(args, args, OOM_RECLAIM_REAPER_SKIP);
}

SEC("tracepoint/sched/sched_process_exit")
int victim_exit(void *args)
{
	return oo_victim_exit(args);
}

SEC("tracepoint/mmap/exit_mmap")
int victim_mm_freed(struct tp_exit_mmap *args)
{
	return oo_victim_mm_freed(args, args);
}
