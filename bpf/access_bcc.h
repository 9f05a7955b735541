/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The BCC access layer: how bpf/kill_logic.h reads the kernel, declares and uses its maps and
 * writes its records in the bcc program (oomkill.bcc.c), for kernels without BTF. access_core.h
 * offers the same names to the CO-RE object. Nothing here decides what is read or reported.
 *
 * BCC compiles the program at the agent's start against the node's own kernel headers, so struct
 * layouts come from those headers and what changed across kernel versions is settled by the
 * preprocessor (LINUX_VERSION_CODE, CONFIG_*). Every kernel pointer is read with
 * bpf_probe_read_kernel() explicitly, so nothing depends on BCC rewriting dereferences.
 *
 * BCC rewrites map operations (map.lookup(...)) only in its main file and never inside a macro:
 * otel_oom/kernel/bcc.py inlines the local headers into one text before compiling, and the map
 * operations below are functions with a switch over the maps, where the CO-RE layer has macros.
 *
 * The agent defines: OTEL_OOM_PERF_BUFFER (kernels before 5.8: no ring buffer), OTEL_OOM_RING_PAGES,
 * OTEL_OOM_TP_RICH (the mark_victim tracepoint has the 6.9 field set).
 */
#ifndef OTEL_OOM_ACCESS_BCC_H
#define OTEL_OOM_ACCESS_BCC_H

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

/* ---- reading the kernel ------------------------------------------------------------------- */

/* The value of one kernel field (an lvalue such as `task->pid`; chain them for a path:
 * KREAD(KREAD(task->real_parent)->tgid)); 0 when the read faults. */
#define KREAD(src) ({                                                   \
	__typeof__(src) __kread;                                            \
	bpf_probe_read_kernel((void *)&__kread, sizeof(__kread), &(src));   \
	__kread;                                                            \
})
/* A kernel char array (an lvalue such as `task->comm`) into the char array `dst`. */
#define KREAD_STR(dst, src) bpf_probe_read_kernel_str(dst, sizeof(dst), &(src))
/* An enumerator's value: the headers' own. */
#define OO_ENUM(type, name) (name)
/* Verifiers before 5.3 take no loops. */
#define OO_UNROLL _Pragma("unroll")

static __always_inline __u64 oo_now_ns(__u32 *flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 8, 0)
	/* CLOCK_BOOTTIME keeps counting across suspend, so wall-clock conversion stays right */
	*flags |= OOM_F_BOOT_CLOCK;
	return bpf_ktime_get_boot_ns();
#else
	return bpf_ktime_get_ns();
#endif
}

static __always_inline __u64 oo_kernfs_id(struct kernfs_node *kn)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 5, 0)
	return KREAD(kn->id);
#else
	return KREAD(kn->id.ino);  /* before 5.5 a union of (ino, generation) and the u64 */
#endif
}

/* The task's css in the memory controller's hierarchy (v1 or v2); a css is its mem_cgroup. */
static __always_inline struct cgroup_subsys_state *oo_task_memory_css(struct task_struct *task)
{
	return KREAD(KREAD(task->cgroups)->subsys[memory_cgrp_id]);
}

static __always_inline void oo_page_counter(struct mem_cgroup *memcg, __u64 *usage, __u64 *limit)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 18, 0)
	*usage = KREAD(memcg->memory.usage.counter);
	*limit = KREAD(memcg->memory.max);
#else
	*usage = KREAD(memcg->memory.count.counter);
	*limit = KREAD(memcg->memory.limit);
#endif
}

/* memcg->oom_lock: 1 or 0; -1 where the kernel has none (built without the cgroup v1 code) */
static __always_inline int oo_memcg_oom_lock(struct mem_cgroup *memcg)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 11, 0) || defined(CONFIG_MEMCG_V1)
	return KREAD(memcg->oom_lock) ? 1 : 0;
#else
	return -1;
#endif
}

/* memcg->oom_group (memory.oom.group): 1 or 0; -1 before 4.19 */
static __always_inline int oo_memcg_oom_group(struct mem_cgroup *memcg)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 19, 0)
	return KREAD(memcg->oom_group) ? 1 : 0;
#else
	return -1;
#endif
}

/* memory_events_local[MEMCG_OOM], the OOMs declared in this cgroup (5.3+): 1 when read */
static __always_inline int oo_memcg_oom_events(struct mem_cgroup *memcg, __u64 *count)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 3, 0)
	*count = KREAD(memcg->memory_events_local[MEMCG_OOM].counter);
	return 1;
#else
	return 0;
#endif
}

/* An mm counter (MM_FILEPAGES ...) as get_mm_counter() reads it: atomics before 6.2, the global
 * part of a percpu counter since. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#define OO_MM_COUNTER(mm, idx) ((long)KREAD((mm)->rss_stat[idx].count))
#else
#define OO_MM_COUNTER(mm, idx) ((long)KREAD((mm)->rss_stat.count[idx].counter))
#endif

static __always_inline __u64 oo_mm_pgtables_bytes(struct mm_struct *mm)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 15, 0)
	return KREAD(mm->pgtables_bytes.counter);
#else
	return 0;
#endif
}

/* oc->constraint (the kernel's enum oom_constraint), or -1 before 4.19 (no such field) */
static __always_inline int oo_oc_constraint(struct oom_control *oc)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 19, 0)
	return KREAD(oc->constraint);
#else
	return -1;
#endif
}

/* ---- maps ------------------------------------------------------------------------------------ */

#define MAP_HASH(name, K, V, n) BPF_TABLE("hash", K, V, name, n)
#define MAP_LRU_HASH(name, K, V, n) BPF_TABLE("lru_hash", K, V, name, n)
#define MAP_ARRAY(name, V, n) BPF_TABLE("array", __u32, V, name, n)
#define MAP_PERCPU_ARRAY(name, V, n) BPF_TABLE("percpu_array", __u32, V, name, n)

#include "kill_types.h"

/* MAP(name) names a map of kill_types.h for the operations below */
enum oo_map {
	OO_MAP_stats,
	OO_MAP_contexts,
	OO_MAP_pending_victims,
	OO_MAP_killers,
	OO_MAP_victims,
	OO_MAP_victim_mms,
	OO_MAP_victim_mm_scratch,
	OO_MAP_settings,
};
#define MAP(name) OO_MAP_##name

static __always_inline void *oo_map_lookup(enum oo_map map, void *key)
{
	switch (map) {
	case OO_MAP_stats:
		return stats.lookup(key);
	case OO_MAP_contexts:
		return contexts.lookup(key);
	case OO_MAP_pending_victims:
		return pending_victims.lookup(key);
	case OO_MAP_killers:
		return killers.lookup(key);
	case OO_MAP_victims:
		return victims.lookup(key);
	case OO_MAP_victim_mms:
		return victim_mms.lookup(key);
	case OO_MAP_victim_mm_scratch:
		return victim_mm_scratch.lookup(key);
	case OO_MAP_settings:
		return settings.lookup(key);
	}
	return NULL;
}

static __always_inline void oo_map_update(enum oo_map map, void *key, void *value)
{
	switch (map) {
	case OO_MAP_contexts:
		contexts.update(key, value);
		break;
	case OO_MAP_pending_victims:
		pending_victims.update(key, value);
		break;
	case OO_MAP_victims:
		victims.update(key, value);
		break;
	case OO_MAP_victim_mms:
		victim_mms.update(key, value);
		break;
	default:  /* the agent writes the others */
		break;
	}
}

static __always_inline void oo_map_delete(enum oo_map map, void *key)
{
	switch (map) {
	case OO_MAP_contexts:
		contexts.delete(key);
		break;
	case OO_MAP_pending_victims:
		pending_victims.delete(key);
		break;
	case OO_MAP_victims:
		victims.delete(key);
		break;
	case OO_MAP_victim_mms:
		victim_mms.delete(key);
		break;
	default:
		break;
	}
}

/* ---- the records: a BPF ring buffer (5.8+), else a perf buffer ---------------------------------- */

#ifdef OTEL_OOM_PERF_BUFFER
BPF_PERF_OUTPUT(events);
/* a record is built here, then copied out by perf_submit */
BPF_TABLE("percpu_array", __u32, struct oom_event, event_scratch, 1);
BPF_TABLE("percpu_array", __u32, struct oom_reclaim_event, reclaim_scratch, 1);
#else
BPF_RINGBUF_OUTPUT(events, OTEL_OOM_RING_PAGES);
#endif
/* never written: the all-zero source kill_logic.h clears an event from (too large to memset) */
BPF_TABLE("array", __u32, struct oom_event, zero_event, 1);

static __always_inline const void *oo_zero_event(void)
{
	__u32 zero = 0;

	return zero_event.lookup(&zero);
}

static __always_inline struct oom_event *oo_event_reserve(void)
{
#ifdef OTEL_OOM_PERF_BUFFER
	__u32 zero = 0;

	return event_scratch.lookup(&zero);
#else
	return events.ringbuf_reserve(sizeof(struct oom_event));
#endif
}

static __always_inline struct oom_reclaim_event *oo_reclaim_reserve(void)
{
#ifdef OTEL_OOM_PERF_BUFFER
	__u32 zero = 0;

	return reclaim_scratch.lookup(&zero);
#else
	return events.ringbuf_reserve(sizeof(struct oom_reclaim_event));
#endif
}

/* hands the record to user space; < 0: lost (the perf buffer was full) */
static __always_inline int oo_record_submit(void *ctx, void *rec, __u32 size)
{
#ifdef OTEL_OOM_PERF_BUFFER
	return events.perf_submit(ctx, rec, size);
#else
	events.ringbuf_submit(rec, 0);
	return 0;
#endif
}

/* The classic tracepoint's record (struct tracepoint__oom__mark_victim, which BCC writes from the
 * tracefs format right before the function using it: hence a macro): pid, and on 6.9+ the rest. */
#ifdef OTEL_OOM_TP_RICH
#define read_mark_victim_fields(args, f) do {                               \
	(f)->pid = (args)->pid;                                             \
	TP_DATA_LOC_READ_STR((f)->comm, comm, sizeof((f)->comm));           \
	(f)->total_vm = (args)->total_vm;                                   \
	(f)->anon_rss = (args)->anon_rss;                                   \
	(f)->file_rss = (args)->file_rss;                                   \
	(f)->shmem_rss = (args)->shmem_rss;                                 \
	(f)->pgtables = (args)->pgtables;                                   \
	(f)->uid = (args)->uid;                                             \
	(f)->oom_score_adj = (args)->oom_score_adj;                         \
	(f)->rich = 1;                                                      \
} while (0)
#else
#define read_mark_victim_fields(args, f) do { (f)->pid = (args)->pid; } while (0)
#endif

#endif /* OTEL_OOM_ACCESS_BCC_H */
