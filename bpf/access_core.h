/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The CO-RE access layer: how bpf/kill_logic.h reads the kernel, declares and uses its maps and
 * writes its records when built by clang into the libbpf object (oomkill.bpf.c). access_bcc.h
 * offers the same names to the bcc program. Nothing here decides what is read or reported.
 *
 * Every kernel read is relocated by libbpf against the running kernel's BTF (kernel_types.h
 * declares only the fields read); what changed across kernel versions is settled at load time
 * with bpf_core_field_exists / bpf_core_type_exists / bpf_core_enum_value.
 */
#ifndef OTEL_OOM_ACCESS_CORE_H
#define OTEL_OOM_ACCESS_CORE_H

#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "oomkill.h"

/* ---- reading the kernel ------------------------------------------------------------------- */

/* The value of one kernel field (an lvalue such as `task->pid`; chain them for a path:
 * KREAD(KREAD(task->real_parent)->tgid)); 0 when the read faults. The kernel types carry
 * preserve_access_index (kernel_types.h), so the field's address is relocated by libbpf. */
#define KREAD(src) ({                                                   \
	__typeof__(src) __kread;                                            \
	bpf_probe_read_kernel((void *)&__kread, sizeof(__kread), &(src));   \
	__kread;                                                            \
})
/* A kernel char array (an lvalue such as `task->comm`) into the char array `dst`. */
#define KREAD_STR(dst, src) bpf_probe_read_kernel_str(dst, sizeof(dst), &(src))
/* Loops stay loops: libbpf's floor is 5.8, whose verifier takes bounded loops (5.3+). */
#define OO_UNROLL
/* An enumerator's value in the running kernel. */
#define OO_ENUM(type, name) bpf_core_enum_value(enum type, name)

static __always_inline __u64 oo_now_ns(__u32 *flags)
{
	/* CLOCK_BOOTTIME keeps counting across suspend, so wall-clock conversion stays right */
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ktime_get_boot_ns)) {
		*flags |= OOM_F_BOOT_CLOCK;
		return bpf_ktime_get_boot_ns();
	}
	return bpf_ktime_get_ns();
}

static __always_inline __u64 oo_kernfs_id(struct kernfs_node *kn)
{
	if (bpf_core_type_exists(union kernfs_node_id___old)) {
		struct kernfs_node___old *old = (void *)kn;

		return BPF_CORE_READ(old, id.ino);
	}
	return BPF_CORE_READ(kn, id);
}

/* The task's css in the memory controller's hierarchy (v1 or v2); a css is its mem_cgroup. */
static __always_inline struct cgroup_subsys_state *oo_task_memory_css(struct task_struct *task)
{
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

	if (id < 0 || id >= 16)
		return NULL;
	return BPF_CORE_READ(task, cgroups, subsys[id]);
}

static __always_inline void oo_page_counter(struct mem_cgroup *memcg, __u64 *usage, __u64 *limit)
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

/* memcg->oom_lock: 1 or 0; -1 where the kernel has none (built without the cgroup v1 code) */
static __always_inline int oo_memcg_oom_lock(struct mem_cgroup *memcg)
{
	if (!bpf_core_field_exists(memcg->oom_lock))
		return -1;
	return BPF_CORE_READ(memcg, oom_lock) ? 1 : 0;
}

/* memcg->oom_group (memory.oom.group): 1 or 0; -1 before 4.19 */
static __always_inline int oo_memcg_oom_group(struct mem_cgroup *memcg)
{
	if (!bpf_core_field_exists(memcg->oom_group))
		return -1;
	return BPF_CORE_READ(memcg, oom_group) ? 1 : 0;
}

/* memory_events_local[MEMCG_OOM], the OOMs declared in this cgroup (5.3+): 1 when read */
static __always_inline int oo_memcg_oom_events(struct mem_cgroup *memcg, __u64 *count)
{
	int oom = bpf_core_enum_value(enum memcg_memory_event, MEMCG_OOM);
	atomic_long_t *counts;

	if (!bpf_core_field_exists(memcg->memory_events_local) || oom < 0 ||
	    oom >= bpf_core_field_size(memcg->memory_events_local) / sizeof(atomic_long_t))
		return 0;
	counts = __builtin_preserve_access_index(&memcg->memory_events_local[0]);
	bpf_probe_read_kernel(count, sizeof(*count), &counts[oom & 0xff]);
	return 1;
}

/* An mm counter (MM_FILEPAGES ...) as get_mm_counter() reads it: atomics before 6.2, the global
 * part of a percpu counter since. The index must be a literal: CO-RE relocates constant array
 * indexes with the kernel's element size, while a computed index would be scaled by our 8-byte
 * stand-in for struct percpu_counter. */
#define OO_MM_COUNTER(mm, idx)                                                       \
	(bpf_core_type_exists(struct mm_rss_stat___old)                                  \
		? (long)BPF_CORE_READ((struct mm_struct___old *)(mm), rss_stat.count[idx].counter) \
		: (long)BPF_CORE_READ((mm), rss_stat[idx].count))

static __always_inline __u64 oo_mm_pgtables_bytes(struct mm_struct *mm)
{
	return BPF_CORE_READ(mm, pgtables_bytes.counter);
}

/* oc->constraint (the kernel's enum oom_constraint), or -1 before 4.19 (no such field) */
static __always_inline int oo_oc_constraint(struct oom_control *oc)
{
	if (!bpf_core_field_exists(oc->constraint))
		return -1;
	return BPF_CORE_READ(oc, constraint);
}

/* ---- maps ------------------------------------------------------------------------------------ */

#define OO_MAP_DEF(kind, name, K, V, n)                                     \
	struct {                                                            \
		__uint(type, kind);                                         \
		__uint(max_entries, n);                                     \
		__type(key, K);                                             \
		__type(value, V);                                           \
	} name SEC(".maps")
#define MAP_HASH(name, K, V, n) OO_MAP_DEF(BPF_MAP_TYPE_HASH, name, K, V, n)
#define MAP_LRU_HASH(name, K, V, n) OO_MAP_DEF(BPF_MAP_TYPE_LRU_HASH, name, K, V, n)
#define MAP_ARRAY(name, V, n) OO_MAP_DEF(BPF_MAP_TYPE_ARRAY, name, __u32, V, n)
#define MAP_PERCPU_ARRAY(name, V, n) OO_MAP_DEF(BPF_MAP_TYPE_PERCPU_ARRAY, name, __u32, V, n)

/* MAP(name) names a map of kill_types.h for the operations below */
#define MAP(name) (&name)
#define oo_map_lookup(map, key) bpf_map_lookup_elem(map, key)
#define oo_map_update(map, key, value) bpf_map_update_elem(map, key, value, BPF_ANY)
#define oo_map_delete(map, key) bpf_map_delete_elem(map, key)

#include "kill_types.h"

/* ---- the records: one BPF ring buffer ---------------------------------------------------------- */

/* No __type(value, ...) on a ring buffer: libbpf 1.1 refuses it (EINVAL). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* the agent may resize it before load */
} events SEC(".maps");

/* Ring-buffer memory is not zeroed and the event is too large for an inlined memset:
 * kill_logic.h clears it by copying from this all-zero read-only block. */
const volatile char zero_event[sizeof(struct oom_event)] = {};

#define oo_zero_event() ((const void *)zero_event)
#define oo_event_reserve() ((struct oom_event *)bpf_ringbuf_reserve(&events, sizeof(struct oom_event), 0))
#define oo_reclaim_reserve() \
	((struct oom_reclaim_event *)bpf_ringbuf_reserve(&events, sizeof(struct oom_reclaim_event), 0))
/* hands the reserved record to user space; < 0: lost (a ring buffer submit cannot fail) */
#define oo_record_submit(ctx, rec, size) (bpf_ringbuf_submit(rec, 0), 0)

/* The classic tracepoint's record: pid, and on 6.9+ kernels the rest. */
static __always_inline void read_mark_victim_fields(struct trace_event_raw_mark_victim *args,
						    struct mark_victim_fields *f)
{
	__u32 loc;

	f->pid = BPF_CORE_READ(args, pid);
	if (!bpf_core_field_exists(args->total_vm))
		return;
	loc = BPF_CORE_READ(args, __data_loc_comm);
	bpf_probe_read_kernel_str(f->comm, sizeof(f->comm), (void *)args + (loc & 0xffff));
	f->total_vm = BPF_CORE_READ(args, total_vm);
	f->anon_rss = BPF_CORE_READ(args, anon_rss);
	f->file_rss = BPF_CORE_READ(args, file_rss);
	f->shmem_rss = BPF_CORE_READ(args, shmem_rss);
	f->pgtables = BPF_CORE_READ(args, pgtables);
	f->uid = BPF_CORE_READ(args, uid);
	f->oom_score_adj = BPF_CORE_READ(args, oom_score_adj);
	f->rich = 1;
}

#endif /* OTEL_OOM_ACCESS_CORE_H */
