// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Benchmarks only: the agent's own programs (bpf/oomkill.bpf.c, included whole so the events are
 * built by exactly the same code, bpf/kill_logic.h) plus `synthetic_events`, which is never attached. bench/ loads
 * this object with only that program enabled and its `events` and `stats` maps replaced by a
 * running agent's (found by map id), then drives it with BPF_PROG_TEST_RUN: each run writes
 * `synthetic_batch` events into the agent's ring buffer, with the running task standing in as the
 * victim, so the agent's whole user-space path is measured without thousands of OOM kills.
 * The shipped object does not contain it.
 */
#include "oomkill.bpf.c"

const volatile __u32 synthetic_batch = 64;

static long write_synthetic(__u32 index, void *unused)
{
	struct oom_context *decision;
	struct oom_event *e = oo_start_event(OOM_HOOK_SYNTHETIC, &decision);

	if (!e)
		return 1; /* ring buffer full: stop this batch */
	oo_read_victim_task(e, (struct task_struct *)bpf_get_current_task());
	e->victim_pid += index; /* distinct event ids within a batch */
	oo_finish_event(NULL, e);  /* the ring buffer needs no program context */
	return 0;
}

SEC("raw_tp")
int synthetic_events(void *ctx)
{
	bpf_loop(synthetic_batch, write_synthetic, NULL, 0);
	return 0;
}
