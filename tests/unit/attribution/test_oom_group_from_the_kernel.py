"""memory.oom.group as the kernel read it at the kill (issue 19): the per-level flags of `struct
oom_event` name the group a decision killed, so an agent that reads the kill after the cgroup was
removed (a container runtime removes it right after a group kill) names the same group as one that
read it at once. Before, the group came from the cgroup's file, read whenever the agent got to the
event: two agents on the same kill could disagree (seen as a flaky bcc-vs-libbpf comparison in the
QEMU matrix). Pure: events built byte for byte as the kernel writes them.
"""
from __future__ import annotations

from otel_oom.attribution.enrich import Enricher
from otel_oom.cgroupfs.hierarchy import MemoryHierarchy
from otel_oom.kernel import wire as E
from otel_oom.kernel.wire import decode
from testing.events import raw_event

PAGE = 4096
UNLIMITED = (1 << 63) // PAGE
BOOT = "0b9a6c4e-aaaa-bbbb-cccc-000000000019"
HAS = E.L_HAS_OOM_GROUP
GROUP = E.L_HAS_OOM_GROUP | E.L_OOM_GROUP
CHAIN = [(30, b"ctr", 8192, 8192), (20, b"pod", 8192, UNLIMITED), (10, b"kubepods", 9000, UNLIMITED),
         (1, b"", 100000, UNLIMITED)]


def event(level_flags: tuple[int, ...], memcg_id: int = 0) -> bytes:
    """A victim in /kubepods/pod/ctr with these level_flags, leaf first; with a context hook's decision
    naming memcg_id as the OOMing memcg when given."""
    fields: dict = {}
    if memcg_id:
        fields = dict(flags=E.F_VICTIM_TASK | E.F_MM_SIZES | E.F_BOOT_CLOCK | E.F_CONTEXT, context_hook=1,
                      ctx_memcg_id=memcg_id, ctx_constraint=4, ctx_memcg_limit_pages=8192)
    data = bytearray(raw_event(CHAIN, [30, 20, 10, 1], **fields))
    raw = E.RawEvent.from_buffer(data)
    for i, flags in enumerate(level_flags):
        raw.victim_memcg[i].level_flags = flags
    return bytes(data)


def v2_without_cgroups(tmp_path) -> Enricher:
    """An agent on cgroup v2 whose victims' cgroups are all gone: no memory.oom.group file to read."""
    return Enricher(MemoryHierarchy(version=2, mount=str(tmp_path / "gone"), hierarchy_id=0), BOOT)


def test_the_flags_decode_to_each_levels_oom_group():
    ev = decode(event((GROUP, HAS, 0, HAS)), PAGE)
    assert [lvl.oom_group for lvl in ev.victim_memcgs] == [True, False, None, False]


def test_the_group_comes_from_the_kernel_when_the_cgroup_is_already_gone(tmp_path):
    e = v2_without_cgroups(tmp_path)
    assert e.enrich(decode(event((GROUP, HAS, HAS, HAS)), PAGE)).oom_group_path == "/kubepods/pod/ctr"
    assert e.enrich(decode(event((HAS, HAS, HAS, HAS)), PAGE)).oom_group_path is None
    # the highest grouped level between the victim and the OOM domain (here /kubepods, as a context
    # hook read it), as mem_cgroup_get_oom_group() keeps it
    assert e.enrich(decode(event((GROUP, GROUP, HAS, HAS), memcg_id=10), PAGE)).oom_group_path == "/kubepods/pod"
    # ... and never above the OOM domain: /kubepods/pod/ctr (derived without a context hook: at its limit)
    assert e.enrich(decode(event((HAS, HAS, GROUP, HAS)), PAGE)).oom_group_path is None
    assert e.enrich(decode(event((GROUP, GROUP, GROUP, HAS), memcg_id=30), PAGE)).oom_group_path == "/kubepods/pod/ctr"


def test_the_kernels_reading_wins_over_a_file_read_later(tmp_path):
    mount = tmp_path / "cg"
    (mount / "kubepods" / "pod" / "ctr").mkdir(parents=True)
    (mount / "kubepods" / "pod" / "ctr" / "memory.oom.group").write_text("1\n")  # set after the kill
    e = Enricher(MemoryHierarchy(version=2, mount=str(mount), hierarchy_id=0), BOOT)
    assert e.enrich(decode(event((HAS, HAS, HAS, HAS)), PAGE)).oom_group_path is None
    # an object without the flags (older, or a kernel before 4.19): the files, as before
    assert e.enrich(decode(event((0, 0, 0, 0)), PAGE)).oom_group_path == "/kubepods/pod/ctr"


def test_cgroup_v1_has_no_group_kills(tmp_path):
    e = Enricher(MemoryHierarchy(version=1, mount=str(tmp_path), hierarchy_id=4), BOOT)
    assert e.enrich(decode(event((GROUP, GROUP, GROUP, HAS)), PAGE)).oom_group_path is None
