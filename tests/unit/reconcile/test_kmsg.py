"""Recovering OOM kills from the kernel log: saved dumps of 4.19-6.18 kernels and this machine's /dev/kmsg.

v1_memcg, v1_hostile and v1_storm_ratelimited are captures of this machine's /dev/kmsg around
trigger_oom()/trigger_storm() kills; the others are composed from the kernels' format strings.
"""
from __future__ import annotations

import os

import pytest

from otel_oom.reconcile.kmsg import KmsgError, parse_kmsg, parse_record, read_kmsg
from otel_oom.reconcile.oom_report import parse_oom_kill_line, recovered_kills, to_oom_kill
from otel_oom.schema.records import OomKill
from testing.agent_process import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "kmsg")


def kills(name: str):
    return recovered_kills(read_kmsg(os.path.join(FIXTURES, name)))


# ---- records ------------------------------------------------------------------------------------

def test_record_header_message_and_dictionary():
    rec = parse_record(b"5,340,1304613,-;virtio_blk virtio1: [vda] new size\n SUBSYSTEM=virtio\n"
                       b" DEVICE=+virtio:virtio1\n")
    assert (rec.seq, rec.usec, rec.level, rec.facility) == (340, 1304613, 5, 0)
    assert rec.message == "virtio_blk virtio1: [vda] new size"
    assert rec.dictionary == (("SUBSYSTEM", "virtio"), ("DEVICE", "+virtio:virtio1"))


def test_facility_is_split_from_level_and_extra_header_fields_are_ignored():
    rec = parse_record(b"30,7,100,c,caller=T1;systemd[1]: hi\n")
    assert (rec.facility, rec.level, rec.seq, rec.usec) == (3, 6, 7, 100)


def test_escapes_are_undone_to_the_kernels_bytes():
    rec = parse_record(b"3,1,2,-;a\\x1b[31m\\x0a\\x5cx\\xff\\xc3\\xa9\n")
    assert rec.message == "a\x1b[31m\n\\x\udcff\u00e9"


def test_garbage_lines_are_skipped():
    assert parse_kmsg(b"not a record\n6,1,2,-;ok\n\n;x\n") == [parse_record(b"6,1,2,-;ok")]


def test_unreadable_log_is_a_clear_oserror():
    with pytest.raises(KmsgError) as e:
        read_kmsg("/no/such/kmsg")
    assert str(e.value) == "cannot read /no/such/kmsg: No such file or directory"
    assert isinstance(e.value, OSError)


# ---- the oom-kill summary line ------------------------------------------------------------------

def test_summary_line_fields():
    s = parse_oom_kill_line("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
                            "oom_memcg=/x,task_memcg=/x/y,task=name,pid=123,uid=0")
    assert (s.constraint, s.nodemask, s.cpuset, s.mems_allowed) == ("memcg", "(null)", "/", "0")
    assert (s.oom_memcg, s.task_memcg, s.task, s.pid, s.uid) == ("/x", "/x/y", "name", 123, 0)


def test_summary_without_cpusets_or_memcg():
    s = parse_oom_kill_line("oom-kill:constraint=CONSTRAINT_MEMORY_POLICY,nodemask=0-1,task=a,pid=1,uid=2")
    assert (s.constraint, s.nodemask, s.cpuset, s.oom_memcg, s.task_memcg) == ("mempolicy", "0-1", None,
                                                                                None, None)
    assert parse_oom_kill_line("oom-kill:nonsense") is None


def test_summary_with_names_imitating_fields():
    line = ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
            "oom_memcg=/a,task_memcg=/b,task_memcg=/a,task_memcg=/b/c,task=x,pid=1,uid=0,pid=42,uid=7")
    s = parse_oom_kill_line(line, comm="x,pid=1,uid=0", pid=42)
    # the task's memcg lies inside the OOMing one: that split wins
    assert (s.oom_memcg, s.task_memcg) == ("/a,task_memcg=/b", "/a,task_memcg=/b/c")
    assert (s.task, s.pid, s.uid) == ("x,pid=1,uid=0", 42, 7)


# ---- fixtures -----------------------------------------------------------------------------------

def test_v1_memcg_real_capture():
    [k] = kills("v1_memcg.kmsg")
    assert (k.pid, k.comm, k.uid, k.oom_score_adj) == (24834, "python3", 0, 0)
    assert (k.total_vm_kb, k.anon_rss_kb, k.file_rss_kb, k.shmem_rss_kb, k.pgtables_kb) == (
        45808, 35840, 6036, 0, 128)
    assert (k.constraint, k.constraint_known) == ("memcg", True)
    assert k.oom_memcg == k.task_memcg == "/otel-oom-fixture"
    assert (k.memcg_usage_kb, k.memcg_limit_kb) == (32768, 32768)
    assert (k.trigger_comm, k.trigger_tid, k.gfp_mask, k.order) == ("python3", 24834, 0xCC0, 0)
    assert (k.seq, k.usec, k.decision_seq, k.group_kill) == (21047, 1226716729, 20969, False)


def test_v1_hostile_names_real_capture():
    got = [(k.pid, k.comm, k.oom_memcg, k.task_memcg, k.trigger_comm) for k in kills("v1_hostile.kmsg")]
    a = "/x,task=y (z)\udcff/b c,task_memcg=/q"
    b = "/a,task_memcg=/b/c ,pid=7,uid=0"
    assert got == [
        (25891, "\x1b[31m(a) b\n\\\udcff", a, a, "\x1b[31m(a) b\n\\\udcff"),
        (25900, "x,pid=1,uid=0", b, b, "x,pid=1,uid=0"),
        (25901, "m) total-vm:1kB", "/ (p) \t", "/ (p) \t", "m) total-vm:1kB"),
    ]
    k = kills("v1_hostile.kmsg")[2]
    assert (k.total_vm_kb, k.uid) == (45808, 0)


def test_rate_limited_headers_give_no_stale_context():
    ks = kills("v1_storm_ratelimited.kmsg")
    assert len(ks) == 14
    with_header, bare = ks[:10], ks[10:]
    assert all(k.task_memcg == "/otel-oom-storm-24793-4c5a-0" and k.trigger_tid == k.pid for k in with_header)
    assert len({k.decision_seq for k in ks}) == 14
    for k in bare:
        # the "Memory cgroup out of memory" prefix still says memcg; the path is not in the log
        assert (k.constraint, k.oom_memcg, k.task_memcg, k.trigger_comm, k.memcg_limit_kb) == (
            "memcg", None, None, None, None)
        assert k.oom_score_adj == 1000


def test_v2_memcg_kubernetes():
    ks = kills("v2_memcg.kmsg")
    assert [k.pid for k in ks] == [81234, 90309, 90400]
    java, node, bare = ks
    assert java.task_memcg.endswith("cri-containerd-3f9a0123456789abcdef0123456789abcdef0123456789abcdef"
                                    "c0ffee0123ba.scope")
    assert java.oom_memcg == java.task_memcg
    assert (java.uid, java.oom_score_adj, java.memcg_limit_kb, java.trigger_tid) == (1000, 985, 524288, 81240)
    # the pod's limit was hit; the victim sits in a container below it
    assert node.oom_memcg == "/kubepods/burstable/pod5f0c9c1e-3b7a-4c2e-9d41-0a8f2b6e7c13"
    assert node.task_memcg == node.oom_memcg + "/3f9a0123456789abcdef0123456789abcdef0123456789abcdefc0ffee0123ba"
    assert (node.gfp_mask, node.memcg_usage_kb) == (0x1100CCA, 262144)
    # "no killable processes" ended that decision: the next, rate-limited, kill gets none of it
    assert (bare.oom_memcg, bare.trigger_comm, bare.memcg_limit_kb) == (None, None, None)


def test_group_kill():
    ks = kills("group_kill.kmsg")
    assert [(k.pid, k.comm) for k in ks] == [(9002, "worker"), (9001, "supervisor"), (9003, "worker")]
    assert all(k.group_kill and k.decision_seq == 7001 and k.oom_memcg == "/batch/job-17" for k in ks)
    # only the chosen victim is named by the summary line
    assert [k.task_memcg for k in ks] == ["/batch/job-17/worker-2", None, None]
    assert [k.uid for k in ks] == [1000, 1000, 1000]
    # the group scan kills the chosen victim again: the kernel prints and counts it twice (seen on
    # 6.1 and 6.12 in the QEMU matrix); one kill, two counts
    assert [k.kernel_counts for k in ks] == [2, 1, 1]


def test_global_sysrq_and_cpuset():
    glob, sysrq, cpuset = kills("global.kmsg")
    assert (glob.constraint, glob.oom_memcg, glob.task_memcg) == ("global", None,
                                                                  "/user.slice/user-0.slice/session-3.scope")
    assert (glob.prefix, glob.memcg_limit_kb, glob.gfp_mask) == ("Out of memory", None, 0x100CCA)
    assert (sysrq.trigger_comm, sysrq.trigger_tid, sysrq.order, sysrq.pid, sysrq.uid) == (
        "kworker/1:2", 77, -1, 5150, 998)
    assert (cpuset.constraint, cpuset.cpuset, cpuset.task_memcg) == ("cpuset", "numa,1", "/numa.slice/app.service")


def test_linux_4_19_formats():
    java, child = kills("v4_19.kmsg")
    assert (java.prefix, java.uid, java.pgtables_kb, java.oom_score_adj) == (
        "Memory cgroup out of memory", 0, None, None)
    assert java.oom_memcg.startswith("/docker/d1c7") and java.task_memcg == java.oom_memcg
    assert (java.memcg_limit_kb, java.trigger_tid, java.gfp_mask) == (262144, 3141, 0x6000C0)
    # the summary names the parent (sh, 500), the kernel sacrificed its child
    assert (child.pid, child.comm, child.constraint, child.task_memcg, child.uid) == (
        501, "memeater", "global", None, None)
    assert child.trigger_comm == "memeater"


def test_to_oom_kill():
    [k] = kills("v1_memcg.kmsg")
    o = to_oom_kill(k, "b00t", 1_700_000_000_000_000_000)
    assert o.event_id == "b00t:1226716729000:24834"
    assert o.time_unix_nano == 1_700_000_000_000_000_000 + 1226716729000
    assert (o.hook, o.context_hook, o.recovered) == ("kmsg", "none", True)
    assert (o.victim_pid, o.victim_tid, o.victim_comm, o.victim_uid) == (24834, 24834, "python3", 0)
    assert (o.total_vm_bytes, o.anon_rss_bytes, o.rss_bytes) == (45808 * 1024, 35840 * 1024,
                                                                 (35840 + 6036) * 1024)
    assert (o.constraint, o.constraint_source, o.memcg_path, o.memcg_source) == (
        "memcg", "kmsg", "/otel-oom-fixture", "kmsg")
    assert (o.memcg_limit_bytes, o.cgroup_path, o.trigger_tid, o.trigger_comm) == (
        32 * 2**20, "/otel-oom-fixture", 24834, "python3")
    assert o.decision_id == "b00t:kmsg:20969"
    assert OomKill.from_json(o.to_json()) == o


def test_to_oom_kill_when_the_log_says_little():
    bare = kills("v1_storm_ratelimited.kmsg")[-1]
    o = to_oom_kill(bare, "b", 0)
    assert (o.constraint, o.constraint_source, o.memcg_path, o.memcg_source) == ("memcg", "kmsg", None, "none")
    child = kills("v4_19.kmsg")[1]
    o = to_oom_kill(child, "b", 0)
    assert (o.victim_uid, o.pgtables_bytes, o.oom_score_adj, o.cgroup_path) == (None, None, None, None)
    hostile = to_oom_kill(kills("v1_hostile.kmsg")[0], "b", 0)
    assert OomKill.from_json(hostile.to_json()) == hostile


# ---- this machine's kernel log ------------------------------------------------------------------



# ---- only the kernel's own records count (issue 21) ------------------------------------------------
# Any root process can write to /dev/kmsg. The kernel stores such a write with facility 1 ("user")
# when it names none or names 0 ("<0>..." is stored as PRI 8): measured on this machine's 6.18, and
# what tests/e2e/test_kmsg_backend.py writes to the real device.

def _as_user_space(data: bytes, facility: int = 1) -> bytes:
    """The same records as user space would leave them: every PRI moved to `facility`."""
    out = []
    for line in data.split(b"\n"):
        head, sep, rest = line.partition(b",")
        if sep and head.isdigit():
            line = b"%d,%s" % (facility * 8 + int(head) % 8, rest)
        out.append(line)
    return b"\n".join(out)


def _fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", ["v1_memcg.kmsg", "v1_hostile.kmsg", "group_kill.kmsg", "global.kmsg",
                                  "v2_memcg.kmsg", "v4_19.kmsg"])
@pytest.mark.parametrize("facility", [1, 3, 23])
def test_a_whole_report_written_by_user_space_is_no_kill(name, facility):
    assert kills(name)  # the kernel's own report tells kills
    assert recovered_kills(parse_kmsg(_as_user_space(_fixture(name), facility))) == []


def test_a_forged_line_after_a_real_kill_does_not_replace_it():
    real = _fixture("v1_memcg.kmsg")
    forged = (b"12,30000,1226716800,-;Memory cgroup out of memory: Killed process 4190001 (evil) total-vm:1kB, "
              b"anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0\n"
              b"8,30001,1226716801,-;Killed process 4190002 (evil) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
              b"shmem-rss:0kB\n")
    assert [k.pid for k in recovered_kills(parse_kmsg(real + forged))] == [24834]


def test_a_forged_header_gives_a_real_bare_kill_no_context():
    # the kernel rate-limited its header; user space writes one naming a cgroup of its choice right
    # before the kill line: the kill keeps no cgroup rather than a forged one
    bare = _fixture("v1_storm_ratelimited.kmsg").rstrip(b"\n").split(b"\n")[-1]
    pid = int(bare.split(b"Killed process ")[1].split(b" ")[0])
    forged = (b"12,1,1,-;evil invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n"
              b"14,2,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
              b"oom_memcg=/forged,task_memcg=/forged/x,task=python3,pid=%d,uid=0\n" % pid)
    [k] = recovered_kills(parse_kmsg(forged + bare + b"\n"))
    assert (k.pid, k.task_memcg, k.oom_memcg, k.trigger_comm) == (pid, None, None, None)


def test_a_forged_end_of_decision_does_not_cut_a_real_report():
    data = _fixture("v1_memcg.kmsg").split(b"\n")
    at = next(i for i, line in enumerate(data) if b"oom-kill:constraint" in line)
    data.insert(at, b"12,20000,1226716700,-;Out of memory and no killable processes...")
    [k] = recovered_kills(parse_kmsg(b"\n".join(data)))
    assert (k.pid, k.task_memcg) == (24834, "/otel-oom-fixture")


# ---- every field is untrusted: strict header, numbers in range ----------------------------------------

@pytest.mark.parametrize("head", [b"+3,1,2,-", b" 3,1,2,-", b"3, 1,2,-", b"1_0,1,2,-", b"3,1_0,2,-",
                                  "\u0663,1,2,-".encode(), b"3,1,-2,-", b"2048,1,2,-", b"3,18446744073709551616,2,-",
                                  b"3,1", b"3,1,2" + b"0" * 30 + b",-"])
def test_a_record_header_is_ascii_digits_within_range(head):
    assert parse_record(head + b";Killed process 5 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB\n") \
        is None


def _killed(fields: str) -> bytes:
    return b"3,1,1000,-;Memory cgroup out of memory: Killed process " + fields.encode() + b"\n"


@pytest.mark.parametrize("fields", [
    "0 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",                      # pid 0
    "4194305 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",                # above PID_MAX_LIMIT
    "5 (x) total-vm:9007199254740993kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",       # bytes beyond int64
    "5 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:4294967296",      # above u32
    "5 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:1001",
])
def test_numbers_out_of_the_kernels_ranges_are_no_kill_and_counted(fields):
    from otel_oom.reconcile.oom_report import OomReport

    report = OomReport()
    assert [report.feed(r) for r in parse_kmsg(_killed(fields))] == [None]
    assert report.malformed == 1


@pytest.mark.parametrize("fields", [
    "\u0665 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",                 # a non-ASCII digit
    "5 (x) total-vm:" + "9" * 5000 + "kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",     # beyond int()'s limit
    "5 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:-1",
])
def test_lines_that_are_not_the_kernels_shape_are_nothing(fields):
    assert recovered_kills(parse_kmsg(_killed(fields))) == []


def test_a_name_cannot_shift_the_fields():
    # the longest a comm can be (and more) imitating the tail: the real fields at the end still win
    name = "a) total-vm:9kB, anon-rss:9kB, file-rss:9kB, shmem-rss:9kB, UID:9 pgtables:9kB oom_score_adj:9"
    [k] = recovered_kills(parse_kmsg(_killed(f"77 ({name[:60]}) total-vm:100kB, anon-rss:50kB, file-rss:0kB, "
                                             "shmem-rss:0kB, UID:1000 pgtables:8kB oom_score_adj:-5")))
    assert (k.pid, k.comm, k.total_vm_kb, k.uid, k.pgtables_kb, k.oom_score_adj) == (77, name[:60], 100, 1000, 8, -5)


# ---- read as the log comes: each kill told at its own line ----------------------------------------------

@pytest.mark.parametrize("name", ["v1_memcg.kmsg", "v1_hostile.kmsg", "v1_storm_ratelimited.kmsg", "v2_memcg.kmsg",
                                  "group_kill.kmsg", "global.kmsg", "v4_19.kmsg"])
def test_followed_line_by_line_each_kill_is_told_at_its_line(name):
    from dataclasses import replace

    from otel_oom.reconcile.oom_report import LoggedKill, OomReport

    records = read_kmsg(os.path.join(FIXTURES, name))
    report, live = OomReport(), []
    for rec in records:
        ev = report.feed(rec)
        if isinstance(ev, LoggedKill):
            assert ev.seq == rec.seq and "Killed process" in rec.message
            live.append(ev)
    batch = kills(name)
    # the same kills with the same context; what only later lines tell (a group kill's chosen
    # victim, killed and counted again by the group scan) is the batch reading's alone
    assert [replace(k, group_kill=False, group_path=None, kernel_counts=1) for k in batch] == \
        [replace(k, group_kill=False, group_path=None) for k in live]
    if name == "group_kill.kmsg":
        assert [(k.group_kill, k.group_path) for k in live] == [(False, None), (True, "/batch/job-17"),
                                                                (True, "/batch/job-17")]
