/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The few kernel types the kill logic reads, declared for CO-RE (access_core.h; the bcc program
 * takes them from the node's kernel headers instead).
 *
 * Instead of a multi-megabyte vmlinux.h generated from one build host's BTF, only the fields we
 * read are declared here with preserve_access_index: libbpf relocates every access against the
 * running kernel's BTF at load time, so field order and offsets below do not matter, only names
 * and types. Types that changed over kernel versions have a "___flavor" variant; the program picks
 * one with bpf_core_field_exists()/bpf_core_type_exists().
 */
#ifndef OTEL_OOM_KERNEL_TYPES_H
#define OTEL_OOM_KERNEL_TYPES_H

#include <linux/types.h>
#include <linux/bpf.h> /* uapi: map types, helper ids */

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;
typedef __u32 uid_t;
typedef unsigned int gfp_t;
typedef _Bool bool;
#define true 1
#define false 0

/* The kprobe context, per architecture (bpf/Makefile builds one object for each). */
#if defined(__TARGET_ARCH_x86)
/* x86_64 register layout with kernel names; __VMLINUX_H__ tells bpf_tracing.h to use them */
#define __VMLINUX_H__
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
	unsigned long orig_ax, ip, cs, flags, sp, ss;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
/* arm64: bpf_tracing.h reads the argument registers through struct user_pt_regs, the fixed uapi
 * layout the kernel's struct pt_regs starts with (no relocation needed) */
struct user_pt_regs {
	u64 regs[31];
	u64 sp;
	u64 pc;
	u64 pstate;
};
struct pt_regs {
	struct user_pt_regs user_regs;
};
#else
#error "bpf/kernel_types.h: build with -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64"
#endif

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct { long counter; } atomic_long_t;
typedef struct { int counter; } atomic_t;
typedef struct { uid_t val; } kuid_t;

struct kernfs_node {
	const char *name;
	u64 id; /* u64 since 5.5 */
};

/* before 5.5 the id was a union of (ino, generation) and the u64 */
union kernfs_node_id___old {
	struct { u32 ino; u32 generation; };
	u64 id;
};
struct kernfs_node___old {
	union kernfs_node_id___old id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
};

struct css_set {
	struct cgroup_subsys_state *subsys[16];
	struct cgroup *dfl_cgrp;
};

enum cgroup_subsys_id { memory_cgrp_id = 4 };

struct page_counter {
	atomic_long_t usage;
	unsigned long max;
	unsigned long watermark;
	unsigned long failcnt;
};
/* before 4.18: count/limit */
struct page_counter___old {
	atomic_long_t count;
	unsigned long limit;
};

/* memory.events counters; the kernel's enum values are read through CO-RE */
enum memcg_memory_event { MEMCG_LOW, MEMCG_HIGH, MEMCG_MAX, MEMCG_OOM, MEMCG_OOM_KILL };

struct mem_cgroup {
	struct cgroup_subsys_state css; /* first member: a css pointer is the memcg pointer */
	struct page_counter memory;
	atomic_long_t memory_events_local[8]; /* 5.3+; length from BTF */
	bool oom_lock;                        /* cgroup v1 code (always before 6.11, CONFIG_MEMCG_V1 after) */
	bool oom_group;                       /* memory.oom.group (4.19+) */
};

struct percpu_counter {
	s64 count;
};

/* mm counters: MM_FILEPAGES 0, MM_ANONPAGES 1, MM_SWAPENTS 2, MM_SHMEMPAGES 3 (stable since 4.5;
 * the kernel's enum is anonymous, so CO-RE cannot look its values up) */
#define MM_FILEPAGES 0
#define MM_ANONPAGES 1
#define MM_SWAPENTS 2
#define MM_SHMEMPAGES 3

struct mm_struct {
	unsigned long total_vm;
	atomic_long_t pgtables_bytes;
	struct percpu_counter rss_stat[4]; /* 6.2+ */
};
/* before 6.2: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; } */
struct mm_rss_stat___old {
	atomic_long_t count[4];
};
struct mm_struct___old {
	struct mm_rss_stat___old rss_stat;
};

struct cred {
	kuid_t uid;
};

struct signal_struct {
	short oom_score_adj;
	int group_exit_code;
	unsigned int flags;
	atomic_t live;  /* threads alive: 0 once the last one is in do_exit */
};

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct task_struct *real_parent;
	const struct cred *real_cred;
	struct signal_struct *signal;
	struct mm_struct *mm;
	struct css_set *cgroups;
};

enum oom_constraint {
	CONSTRAINT_NONE,
	CONSTRAINT_CPUSET,
	CONSTRAINT_MEMORY_POLICY,
	CONSTRAINT_MEMCG,
};

struct oom_control {
	struct mem_cgroup *memcg;
	gfp_t gfp_mask;
	int order;
	unsigned long totalpages;
	struct task_struct *chosen;
	long chosen_points;
	enum oom_constraint constraint;
};

struct trace_entry {
	unsigned short type;
};

/* tracepoint/oom/mark_victim; 4.13-6.8 carry only pid, 6.9+ (and 2025 stable backports) the rest */
struct trace_event_raw_mark_victim {
	struct trace_entry ent;
	int pid;
	u32 __data_loc_comm;
	unsigned long total_vm;
	unsigned long anon_rss;
	unsigned long file_rss;
	unsigned long shmem_rss;
	uid_t uid;
	unsigned long pgtables;
	short oom_score_adj;
};

#pragma clang attribute pop

struct kernel_siginfo;

#endif /* OTEL_OOM_KERNEL_TYPES_H */
