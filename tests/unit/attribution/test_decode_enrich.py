"""Decoding ring-buffer bytes and attributing the event, on events built byte for byte as the kernel
writes them (the ctypes mirror is held to the object's BTF by test_layout.py)."""
from __future__ import annotations

import ctypes

import pytest

from otel_oom.attribution.enrich import Enricher, derive_oom_memcg
from otel_oom.cgroupfs.hierarchy import MemoryHierarchy
from otel_oom.kernel import wire as E
from otel_oom.kernel.wire import DecodeError, RawEvent, decode
from testing.events import raw_event

PAGE = 4096
MiB = 1 << 20
UNLIMITED = (1 << 63) // PAGE  # PAGE_COUNTER_MAX for 4 KiB pages
BOOT = "0b9a6c4e-aaaa-bbbb-cccc-000000000001"
V1 = MemoryHierarchy(version=1, mount="/sys/fs/cgroup/memory", hierarchy_id=4)


POD_CHAIN = [
    (50, b"cri-containerd-" + b"ab" * 32 + b".scope", 8192, 8192),           # 32 MiB, at its limit
    (40, b"kubepods-burstable-pod1b4e2f3a_0000_4000_8000_0123456789ab.slice", 8192, UNLIMITED),
    (30, b"kubepods-burstable.slice", 9000, UNLIMITED),
    (20, b"kubepods.slice", 9000, UNLIMITED),
    (1, b"", 100000, UNLIMITED),
]
POD_PATH = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e2f3a_0000_4000_8000_0123456789ab.slice/"
            "cri-containerd-" + "ab" * 32 + ".scope")


def enrich(data: bytes, proc_root: str = "/nonexistent"):
    return Enricher(V1, BOOT, proc_root=proc_root).enrich(decode(data, PAGE))


def test_decode_converts_pages_and_keeps_names_lossless():
    ev = decode(raw_event([(7, b"bad\xffname", 10, 20), (1, b"", 5, UNLIMITED)], [7, 1],
                          victim_comm=b"\x1b[31mx\xfe"), PAGE)
    assert ev.anon_rss_bytes == 7000 * PAGE and ev.pgtables_bytes == 65536
    assert ev.victim_comm == "\x1b[31mx\udcfe"          # surrogateescape: nothing lost, nothing guessed
    assert ev.victim_memcgs[0].name == "bad\udcffname"
    assert ev.victim_memcgs[0].limit_bytes == 20 * PAGE
    assert ev.victim_memcgs[1].limit_bytes is None      # PAGE_COUNTER_MAX reads as unlimited
    assert ev.context is False and ev.constraint == "unknown" and ev.domain_bytes is None


def test_tracepoint_fields_are_in_kb():
    data = raw_event([], [], flags=E.F_TP_FIELDS | E.F_MM_SIZES | E.F_BOOT_CLOCK, hook=2, victim_tgid=0)
    ev = decode(data, PAGE)
    assert ev.anon_rss_bytes == 7000 * 1024
    assert ev.victim_tgid is None and ev.victim_ppid is None  # the tracepoint does not give them


def test_short_or_foreign_samples_are_refused():
    with pytest.raises(DecodeError, match="expected 1728"):
        decode(b"\0" * 100, PAGE)
    with pytest.raises(DecodeError, match="version 9"):
        decode(raw_event([], [], version=9), PAGE)


def test_kubepods_victim_without_context_hook():
    kill = enrich(raw_event(POD_CHAIN, [50, 40, 30, 20, 1]))
    assert kill.cgroup_path == POD_PATH
    assert kill.cgroup_line == f"4:memory:{POD_PATH}"
    assert kill.container_id == "ab" * 32 and kill.container_runtime == "containerd"
    assert kill.pod_uid == "1b4e2f3a-0000-4000-8000-0123456789ab" and kill.pod_qos_class == "burstable"
    assert (kill.constraint, kill.constraint_source) == ("memcg", "derived")
    assert (kill.memcg_path, kill.memcg_limit_bytes, kill.memcg_source) == (POD_PATH, 32 * MiB, "derived")
    assert kill.event_id == f"{BOOT}:123456789:4242"
    assert kill.rss_bytes == (7000 + 500 + 12) * PAGE
    assert kill.decision_id is None


def test_the_oom_memcg_is_the_lowest_shared_ancestor_at_its_limit():
    # the pod (level 1) is at its 64 MiB limit, the container below it is not limited; the trigger is a
    # sibling container of the same pod: the pod is the OOM domain, not the victim's own cgroup
    chain = [(50, b"c1", 10000, UNLIMITED), (40, b"pod", 16384, 16384), (1, b"", 99999, UNLIMITED)]
    ev = decode(raw_event(chain, [51, 40, 1]), PAGE)
    assert derive_oom_memcg(ev) == (1, "usage")
    kill = Enricher(V1, BOOT).enrich(ev)
    assert kill.memcg_path == "/pod" and kill.memcg_limit_bytes == 64 * MiB


def test_no_limit_hit_is_reported_as_unknown_not_guessed():
    chain = [(50, b"c1", 100, 8192), (1, b"", 99999, UNLIMITED)]  # far below its limit: not this memcg
    kill = enrich(raw_event(chain, [50, 1]))
    assert (kill.constraint, kill.constraint_source, kill.memcg_path) == ("unknown", "none", None)


def test_context_hook_fields_win_and_tie_a_group_kill_together():
    ctx = dict(flags=E.F_VICTIM_TASK | E.F_MM_SIZES | E.F_BOOT_CLOCK | E.F_CONTEXT, context_hook=1,
               ctx_timestamp_ns=123_000_000, ctx_constraint=4, ctx_memcg_id=40, ctx_memcg_usage_pages=16384,
               ctx_memcg_limit_pages=16384, ctx_totalpages=16384, ctx_chosen_points=9000, ctx_chosen_tgid=4242,
               ctx_gfp_mask=0xCC0, ctx_order=0, trigger_tgid=777, trigger_pid=778)
    chain = [(50, b"c1", 10000, UNLIMITED), (40, b"pod", 16384, 16384), (1, b"", 99999, UNLIMITED)]
    first = enrich(raw_event(chain, [40, 1], **ctx))
    second = enrich(raw_event(chain, [40, 1], victim_pid=4243, victim_tgid=4243, **ctx))
    assert (first.constraint, first.constraint_source, first.context_hook) == ("memcg", "kernel", "fentry")
    assert (first.memcg_path, first.memcg_limit_bytes, first.memcg_source) == ("/pod", 64 * MiB, "kernel")
    assert first.domain_bytes == 64 * MiB and first.badness_points == 9000 and first.gfp_mask == 0xCC0
    assert (first.trigger_pid, first.trigger_tid) == (777, 778)
    assert first.decision_id == second.decision_id == f"{BOOT}:123000000:777"
    assert first.event_id != second.event_id


def test_global_constraint_from_the_kernel():
    kill = enrich(raw_event([(1, b"", 5, UNLIMITED)], [1], flags=E.F_VICTIM_TASK | E.F_CONTEXT, ctx_constraint=1,
                            ctx_memcg_id=0, ctx_totalpages=262144))
    assert (kill.constraint, kill.memcg_path, kill.domain_bytes) == ("global", None, 1 << 30)


def test_pid_only_tracepoint_victim_is_completed_from_proc(tmp_path):
    (tmp_path / "4243").mkdir()
    (tmp_path / "4243" / "status").write_text("Name:\tw\nTgid:\t4242\nPid:\t4243\n")
    (tmp_path / "4243" / "cgroup").write_text("5:cpu:/x\n4:memory:/docker/" + "cd" * 32 + "\n0::/user.slice\n")
    data = raw_event([], [], flags=E.F_BOOT_CLOCK, hook=2, victim_pid=4243, victim_tgid=0)
    kill = enrich(data, proc_root=str(tmp_path))
    assert (kill.victim_pid, kill.victim_tid) == (4242, 4243)
    assert kill.cgroup_path == "/docker/" + "cd" * 32 and kill.container_runtime == "docker"
    assert kill.rss_bytes is None  # the pid-only layout has no sizes: none invented


def test_a_chain_deeper_than_captured_is_marked_partial():
    chain = [(60 - i, f"l{i}".encode(), 1, UNLIMITED) for i in range(8)]
    kill = enrich(raw_event(chain, [], flags=E.F_VICTIM_TASK | E.F_CGROUP_DEEPER))
    assert kill.cgroup_path == "/.../l7/l6/l5/l4/l3/l2/l1/l0"


def test_raw_event_size_is_the_contract():
    assert ctypes.sizeof(RawEvent) == 1728


def test_a_group_member_without_a_chain_names_its_oom_memcg_from_the_chosen_victims_event():
    # the chosen victim's event carries the chain with names; a later member, reported from the
    # tracepoint's fields only, names the OOMing memcg by id — in a cgroup newer than any inode scan
    group = [(60, b"kmx-group", 8192, 8192), (1, b"", 9000, UNLIMITED)]
    ctx = dict(flags=E.F_VICTIM_TASK | E.F_MM_SIZES | E.F_BOOT_CLOCK | E.F_CONTEXT, ctx_memcg_id=60,
               ctx_constraint=4, ctx_memcg_usage_pages=8192, ctx_memcg_limit_pages=8192, context_hook=2)
    enricher = Enricher(V1, BOOT, proc_root="/nonexistent")
    chosen = enricher.enrich(decode(raw_event(group, [60, 1], **ctx), PAGE))
    member = enricher.enrich(decode(raw_event([], [60, 1], victim_pid=4250, victim_tgid=0,
                                              **{**ctx, "flags": E.F_TP_FIELDS | E.F_MM_SIZES | E.F_CONTEXT}),
                                    PAGE))
    assert chosen.memcg_path == "/kmx-group"
    assert member.cgroup_path is None and member.memcg_path == "/kmx-group"


# ---- marks that are not kills, and cgroup names cut in the kernel -------------------------------

def test_a_victim_only_marked_because_it_was_exiting_is_no_kill():
    from otel_oom.schema.mapping import log_attributes, log_body

    marked = enrich(raw_event(POD_CHAIN, [50, 40, 30, 20, 1]))  # task read, no SIGKILL: only marked
    killed = enrich(raw_event(POD_CHAIN, [50, 40, 30, 20, 1],
                              flags=E.F_VICTIM_TASK | E.F_MM_SIZES | E.F_BOOT_CLOCK | E.F_SIGKILLED))
    unknown = enrich(raw_event([], [], flags=E.F_BOOT_CLOCK))  # pid-only tracepoint: no task read
    assert (marked.killed, killed.killed, unknown.killed) == (False, True, None)
    assert log_attributes(marked)["oom.victim.killed"] is False and "oom.victim.killed" not in log_attributes(unknown)
    assert log_body(marked).startswith("Memory cgroup out of memory: Marked exiting process 4242 (leaky)")
    assert log_body(killed).startswith("Memory cgroup out of memory: Killed process 4242 (leaky)")


def _cut(name: bytes) -> bytes:
    return name[: E.CGROUP_NAME_LEN - 1]  # what bpf_probe_read_kernel_str leaves of a longer name


def test_a_cut_cgroup_name_is_never_taken_for_a_path(tmp_path):
    from otel_oom.cgroupfs.tree import CgroupResolver

    # a workload names its cgroup so that, cut at 127 bytes, it reads as another container's scope
    other = b"cri-containerd-" + b"cd" * 32 + b".scope"
    chosen = other + b"x" * (E.CGROUP_NAME_LEN - len(other) + 20)
    assert _cut(chosen).startswith(other)
    mount = tmp_path / "memory"
    real = mount / "evil" / chosen.decode()
    real.mkdir(parents=True)
    chain = [(real.stat().st_ino, _cut(chosen), 8192, 8192), ((mount / "evil").stat().st_ino, b"evil", 1, UNLIMITED),
             (mount.stat().st_ino, b"", 1, UNLIMITED)]
    flags = E.F_VICTIM_TASK | E.F_MM_SIZES | E.F_BOOT_CLOCK | E.F_SIGKILLED | E.F_CGROUP_NAME_CUT
    h = MemoryHierarchy(version=1, mount=str(mount), hierarchy_id=4)
    enricher = Enricher(h, BOOT, CgroupResolver(str(mount)))
    k = enricher.enrich(decode(raw_event(chain, [c[0] for c in chain], flags=flags), PAGE))
    assert k.cgroup_path == "/evil/" + chosen.decode() and not k.cgroup_truncated  # by id: the real path
    assert k.container_id is None  # not the other container's id the cut name imitates
    real.rmdir()  # gone before the agent looks: the level above still resolves, with the leaf's intact name
    leaf = mount / "evil" / "leaf"
    leaf.mkdir()
    chain2 = [(10**9, b"leaf", 8192, 8192), ((mount / "evil").stat().st_ino, _cut(chosen), 1, UNLIMITED),
              (mount.stat().st_ino, b"", 1, UNLIMITED)]
    (mount / "evil").rename(mount / chosen.decode()[:200])
    k2 = Enricher(h, BOOT, CgroupResolver(str(mount))).enrich(decode(raw_event(chain2, [], flags=flags), PAGE))
    assert k2.cgroup_path == "/" + chosen.decode()[:200] + "/leaf"
    gone = [(10**9, b"leaf", 8192, 8192), (10**9 + 1, _cut(chosen), 1, UNLIMITED), (1, b"", 1, UNLIMITED)]
    k3 = Enricher(h, BOOT, CgroupResolver(str(mount))).enrich(decode(raw_event(gone, [], flags=flags), PAGE))
    assert k3.cgroup_path is None and k3.cgroup_truncated and k3.container_id is None
