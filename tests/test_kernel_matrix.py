"""Every hook plan of otel-oom, proved on real Debian kernels: real agent, real OOM kills, real receiver.

Three QEMU guests (tests/qemu/harness.py) run side by side, two at a time: Debian 6.1 with cgroup
v2, Debian 6.1 with cgroup v1, Debian 6.12 with cgroup v2. In each, tests/qemu/guest_cases.py
starts `python -m otel_oom run --victim-hook X --context-hook Y` for every plan the kernel offers
(tp_btf / tracepoint x fentry / kprobe / none), causes a memcg kill, a victim != trigger kill, a
memory.oom.group kill (v2) and a global OOM kill, and records what a real OTLP gRPC receiver got
and what the kernel printed. The tests here judge that record against the kernel's own log: the
"oom-kill:constraint=..." summary, "memory: usage/limit", the task dump (badness), show_mem
(RAM size) and the "Killed process" line.

A host test covers the classic tracepoint's own fields (the victim is not the task that hit the
limit, no context hook) on the build host's 6.18 kernel; host tests also read the guests' BTF.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest
from conftest import after_the_oom_report_rate_limit, require, require_root_bpf

from otel_oom.attribution.enrich import Enricher
from otel_oom.reconcile.oom_report import OomKillLine, parse_oom_kill_line

MiB = 1 << 20
MATRIX = [("6.1", "v2"), ("6.1", "v1"), ("6.12", "v2")]
PLANS = [(v, c) for v in ("tp_btf", "tracepoint") for c in ("fentry", "kprobe", "none")]
CASES = {"v2": ("memcg", "bystander", "group", "global"), "v1": ("memcg", "bystander", "global")}
# Small enough that the global OOM comes quickly, big enough for the agent, the receiver and a victim.
GUEST_MEMORY_MB = 384
# The whole matrix must stay well inside a CI job on a 2-core machine (measured: ~195 s warm).
MATRIX_BUDGET_S = 480
ARTIFACTS_ENV = "OTEL_OOM_MATRIX_ARTIFACTS"  # a directory: guest JSON, `otel-oom check` outputs, BTF

qemu = pytest.mark.qemu  # the tests that boot guests; the host and unit tests below run without QEMU
pytestmark = pytest.mark.timeout(1200)


# ---- running the guests ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harness():
    if os.environ.get("OTEL_OOM_QEMU_GUEST"):
        pytest.skip("already inside a QEMU test guest: guests are not nested")
    from tests.qemu import harness as h

    usable, reason = h.qemu_usable()
    require(usable, f"QEMU cannot run here: {reason}")
    for k in sorted({k for k, _ in MATRIX}):
        try:
            h.prepare(k)
        except h.PrepareError as e:
            require(False, f"cannot fetch Debian kernel {k}: {e}")
    return h


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernel-matrix"))


@pytest.fixture(scope="module")
def matrix(harness, share) -> dict[tuple[str, str], dict]:
    """Boot the three guests (two at a time) once; every test below reads their results."""
    jobs = [dict(kernel=k, cgroup=cg, memory_mb=GUEST_MEMORY_MB, share_dir=share, timeout=900,
                 command=["python3", "-m", "tests.qemu.guest_cases", "--out", f"{share}/{k}-{cg}.json",
                          "--cases", ",".join(CASES[cg]), "--copy-btf"])
            for k, cg in MATRIX]
    t0 = time.monotonic()
    results = harness.boot_many(jobs, workers=2)
    wall = time.monotonic() - t0
    out: dict = {"wall_s": wall}
    for (k, cg), r in zip(MATRIX, results, strict=False):
        entry: dict = {"result": r}
        if isinstance(r, harness.QemuError):
            entry["error"] = f"{type(r).__name__}: {r}\noutput tail:\n{r.output[-3000:]}"
        else:
            try:
                with open(f"{share}/{k}-{cg}.json") as f:
                    entry["doc"] = json.load(f)
            except (OSError, ValueError) as e:
                entry["error"] = (f"guest exited {r.exit_code} without a result ({e}); output tail:\n"
                                  f"{r.output[-3000:]}\nconsole tail:\n{r.console[-2000:]}")
        out[(k, cg)] = entry
    _report(out, share)
    return out


def _report(out: dict, share: str) -> None:
    lines = [f"\nkernel matrix: {out['wall_s']:.1f} s wall for {len(MATRIX)} guests, 2 at a time"]
    for k, cg in MATRIX:
        e = out[(k, cg)]
        if "doc" not in e:
            lines.append(f"  {k} {cg}: FAILED")
            continue
        r, doc = e["result"], e["doc"]
        plans = ", ".join(f"{p['victim']}/{p['context']} {p.get('seconds', 0):.1f}s" for p in doc["plans"])
        lines.append(f"  {k} {cg} ({r.kernel_release}): wall {r.duration_s:.1f}s, boot {r.boot_s:.1f}s, "
                     f"check {doc['check']['seconds']:.1f}s, receiver {doc['receiver_start_s']:.1f}s; {plans}")
    print("\n".join(lines))
    dest = os.environ.get(ARTIFACTS_ENV)
    if dest:
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(share):
            shutil.copy(os.path.join(share, name), dest)
        for k, cg in MATRIX:
            doc = out[(k, cg)].get("doc")
            if doc:
                with open(os.path.join(dest, f"check-{k}-{cg}.txt"), "w") as f:
                    f.write(doc["check"]["stdout"])
        with open(os.path.join(dest, "timings.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def guest(matrix, kernel: str, cgroup: str) -> dict:
    e = matrix[(kernel, cgroup)]
    assert "error" not in e, e["error"]
    assert e["result"].exit_code == 0, e["result"].output[-3000:]
    return e["doc"]


def plan_of(doc: dict, victim: str, context: str) -> dict:
    for p in doc["plans"]:
        if (p["victim"], p["context"]) == (victim, context):
            return p
    raise AssertionError(f"plan {victim}/{context} did not run; ran: "
                         f"{[(p['victim'], p['context']) for p in doc['plans']]}")


def case_of(doc: dict, victim: str, context: str, case: str) -> dict:
    p = plan_of(doc, victim, context)
    assert p["ready_line"], f"agent never became ready:\n{p['stderr']}"
    assert case in p["cases"], f"case {case} did not run under {victim}/{context}"
    c = p["cases"][case]
    assert "error" not in c, c["error"] + "\n" + "\n".join(m for *_, m in c.get("kmsg", [])[-40:])
    return c


# ---- what the kernel printed ----------------------------------------------------------------------

_KILLED = re.compile(r"^(?P<prefix>[A-Za-z ]+): Killed process (?P<pid>\d+) \((?P<comm>.*)\) total-vm:(?P<vm>\d+)kB, "
                     r"anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB, shmem-rss:(?P<shmem>\d+)kB, "
                     r"UID:(?P<uid>\d+) pgtables:(?P<pgt>\d+)kB oom_score_adj:(?P<adj>-?\d+)$", re.S)
_INVOKED = re.compile(r"^(?P<comm>.*) invoked oom-killer: gfp_mask=(?P<gfp>0x[0-9a-f]+)\(.*\), order=(?P<order>-?\d+), "
                      r"oom_score_adj=(?P<adj>-?\d+)$", re.S)
_CPU = re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: (?P<tid>\d+) Comm: ")
_USAGE = re.compile(r"^memory: usage (?P<usage>\d+)kB, limit (?P<limit>\d+)kB, failcnt \d+$")


@dataclass
class Decision:
    """One OOM decision as the kernel log tells it (one "invoked oom-killer" ... "Killed process")."""
    trigger_comm: str
    gfp_mask: int
    order: int
    trigger_tid: Optional[int] = None
    usage_kb: Optional[int] = None
    limit_kb: Optional[int] = None
    ram_pages: Optional[int] = None
    reserved_pages: Optional[int] = None
    swap_kb: Optional[int] = None
    tasks: dict[int, dict[str, int]] = field(default_factory=dict)
    summary: Optional[OomKillLine] = None
    group: bool = False
    killed: list[dict] = field(default_factory=list)

    def domain_pages(self) -> int:
        if self.summary.constraint == "memcg":
            return self.limit_kb // 4  # no swap in the guests: mem_cgroup_get_max() is the limit
        return self.ram_pages - self.reserved_pages + self.swap_kb // 4  # totalram_pages + swap

    def badness(self, pid: int, page_size: int = 4096) -> int:
        """oom_badness() of `pid` as the kernel computed it, from the task dump of this decision."""
        t = self.tasks[pid]
        return (t["rss"] + t["swapents"] + t["pgtables_bytes"] // page_size
                + t["oom_score_adj"] * (self.domain_pages() // 1000))


def decisions(kmsg: list[list]) -> list[Decision]:
    out: list[Decision] = []
    pending: Optional[Decision] = None
    columns: list[str] = []
    for _seq, _usec, _level, msg in kmsg:
        if m := _INVOKED.match(msg):
            pending = Decision(m["comm"], int(m["gfp"], 16), int(m["order"]))
        elif pending is None:
            if (m := _KILLED.match(msg)) and out:
                out[-1].killed.append(m.groupdict())
            elif msg.endswith("are going to be killed due to memory.oom.group set") and out:
                out[-1].group = True
        elif (m := _CPU.match(msg)) and pending.trigger_tid is None:
            pending.trigger_tid = int(m["tid"])
        elif (m := _USAGE.match(msg)) and pending.usage_kb is None:
            pending.usage_kb, pending.limit_kb = int(m["usage"]), int(m["limit"])
        elif m := re.match(r"^(\d+) pages RAM$", msg):
            pending.ram_pages = int(m[1])
        elif m := re.match(r"^(\d+) pages reserved$", msg):
            pending.reserved_pages = int(m[1])
        elif m := re.match(r"^Total swap = (\d+)kB$", msg):
            pending.swap_kb = int(m[1])
        elif msg.startswith("[  pid  ]"):
            columns = msg.split("]", 1)[1].split()
        elif columns and (m := re.match(r"^\[\s*(\d+)\]\s", msg)):
            values = msg.split("]", 1)[1].split(None, len(columns) - 1)
            pending.tasks[int(m[1])] = {c: int(v) for c, v in zip(columns, values, strict=False) if c != "name"}
        elif msg.startswith("oom-kill:"):
            pending.summary = parse_oom_kill_line(msg)
            out.append(pending)
            pending, columns = None, []
    return out


def killed_line(decs: list[Decision], pid: int) -> tuple[Decision, dict]:
    for d in decs:
        for k in d.killed:
            if int(k["pid"]) == pid:
                return d, k
    raise AssertionError(f"the kernel log has no 'Killed process {pid}' line")


def record_of(case: dict, pid: int) -> dict:
    recs = [r for r in case["records"] if r["attributes"]["process.pid"] == pid]
    assert len(recs) == 1, f"expected exactly one record for victim {pid}, got {len(recs)}"
    return recs[0]["attributes"]


# ---- the checks every record gets -------------------------------------------------------------

def check_victim(a: dict, line: dict, doc: dict, plan: tuple[str, str], comm: str = "python3") -> None:
    """The victim as the kernel's "Killed process" line describes it; `comm` is the name of the
    interpreter the victims were started with (guests run `python3`)."""
    assert a["oom.hook"] == plan[0]
    assert a["oom.recovered"] is False
    assert a["process.executable.name"] == line["comm"] == comm
    assert a["process.real_user.id"] == int(line["uid"]) == 0
    assert a["oom.victim.oom_score_adj"] == int(line["adj"])
    assert a["oom.victim.memory.total_vm"] == int(line["vm"]) * 1024
    assert a["oom.victim.memory.anon_rss"] == int(line["anon"]) * 1024
    assert a["oom.victim.memory.file_rss"] == int(line["file"]) * 1024
    assert a["oom.victim.memory.shmem_rss"] == int(line["shmem"]) * 1024
    assert a["oom.victim.memory.page_tables"] == int(line["pgt"]) * 1024


def full_task_expected(plan: tuple[str, str], a: dict, d: Decision) -> bool:
    """Whether the BPF program could read the victim's task_struct (rather than the tracepoint's fields)."""
    victim, context = plan
    if victim == "tp_btf":
        return True
    pid = a["process.pid"]
    return pid == d.trigger_tid or (context != "none" and pid == d.summary.pid)


def check_attribution(a: dict, d: Decision, doc: dict, plan: tuple[str, str], cgroup: Optional[str]) -> None:
    """Who and where: parent, cgroup, trigger; read from the task, or honestly absent without it."""
    v1 = doc["facts"]["hierarchy"]["version"] == 1
    if full_task_expected(plan, a, d):
        assert a["process.parent_pid"] == doc["runner_pid"]
        assert a["oom.victim.cgroup.path"] == cgroup
        assert a["process.linux.cgroup"] == (f"{_v1_id(a)}:memory:{cgroup}" if v1 else f"0::{cgroup}")
    else:
        # the tracepoint gives only pid, comm and sizes: the cgroup comes from /proc while the victim
        # exits, so it may be gone, but it is never wrong (v1 shows exiting tasks in "/")
        assert a.get("process.parent_pid") is None
        assert a.get("oom.victim.cgroup.path") in (cgroup, None)
    assert a["oom.trigger.tid"] == d.trigger_tid
    assert a["oom.trigger.executable.name"] == d.trigger_comm


def _v1_id(a: dict) -> str:
    return a["process.linux.cgroup"].split(":", 1)[0]


def check_decision(a: dict, d: Decision, plan: tuple[str, str], chosen_pid: int) -> None:
    """Why: the OOM decision the context hook read, against the kernel's own account of it."""
    context = plan[1]
    if context == "none":
        assert a["oom.context_hook"] == "none"
        assert a.get("oom.decision.id") is None and a.get("oom.badness") is None and a.get("oom.domain.size") is None
        return
    assert a["oom.context_hook"] == context
    assert a["oom.constraint"] == d.summary.constraint
    assert a["oom.constraint.source"] == "kernel"
    assert a["oom.domain.size"] == d.domain_pages() * 4096
    assert a["oom.badness"] == d.badness(chosen_pid)
    assert a["oom.gfp_mask"] == d.gfp_mask and a["oom.order"] == d.order
    assert re.fullmatch(rf"[0-9a-f-]{{36}}:\d+:{a['oom.trigger.pid']}", a["oom.decision.id"])
    if d.summary.constraint == "memcg":
        assert a["oom.memcg.path"] == d.summary.oom_memcg
        assert a["oom.memcg.limit"] == d.limit_kb * 1024
        assert a["oom.memcg.usage"] == d.usage_kb * 1024
        assert a["oom.memcg.source"] == "kernel"
    else:
        assert a.get("oom.memcg.path") is None and a.get("oom.memcg.limit") is None


def check_derived_memcg(a: dict, d: Decision, plan: tuple[str, str], group_member: bool = False,
                        after_a_reaped_victim: bool = False) -> None:
    """Without a context hook a memcg kill is still attributed, from the victim's cgroups, when the
    BPF program could read the victim's task; with the tracepoint's fields alone it stays unknown.

    after_a_reaped_victim: the kill right after another victim of the same memcg. The OOM reaper
    gives that victim's memory back while the kernel prints this decision's report, so at
    mark_victim the usage may already sit below the limit by more than the derivation's slack (seen
    once, on the host under the load of a full CI run). The derivation then goes by what an uncharge
    does not lower (`oom.memcg.evidence` oom_lock, oom_events or watermark; issue 13), or declines
    ("unknown"); when it does derive, it must be right."""
    if plan[1] != "none":
        return
    if after_a_reaped_victim and a["oom.constraint"] == "unknown":
        assert a["oom.constraint.source"] == "none" and "oom.memcg.path" not in a
        return
    if full_task_expected(plan, a, d):
        assert (a["oom.constraint"], a["oom.constraint.source"]) == ("memcg", "derived")
        assert a["oom.memcg.path"] == d.summary.oom_memcg
        assert a["oom.memcg.limit"] == d.limit_kb * 1024
        # read at mark_victim, not at the decision: within the derivation's at-limit slack, except
        # for group members after the first, which see the others' memory already given back, and a
        # kill after a reaped victim named by evidence other than its usage (the usage is then racy)
        racy = after_a_reaped_victim and a.get("oom.memcg.evidence") != "usage"
        low = 0 if group_member or racy else d.limit_kb * 1024 - 4 * MiB
        assert low < a["oom.memcg.usage"] <= d.limit_kb * 1024
    else:
        assert (a["oom.constraint"], a["oom.constraint.source"]) == ("unknown", "none")


# ---- the guests ran, and what they offer ------------------------------------------------------------

@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_guest_ran_every_hook_plan_the_kernel_offers(matrix, kernel, cgroup):
    doc = guest(matrix, kernel, cgroup)
    assert doc["facts"]["release"] == matrix[(kernel, cgroup)]["result"].kernel_release
    assert doc["facts"]["release"].startswith(kernel + ".")
    assert doc["facts"]["hierarchy"]["version"] == int(cgroup[1])
    offered = [(v, c) for v, c in PLANS if doc["facts"]["features"][v] and doc["facts"]["features"][c]]
    # Debian's generic kernels have BTF, fentry, kprobes and (backported) the task-passing mark_victim
    assert offered == PLANS, doc["facts"]["feature_reasons"]
    assert [(p["victim"], p["context"]) for p in doc["plans"]] == PLANS


@qemu
def test_the_matrix_stays_within_its_time_budget(matrix):
    assert matrix["wall_s"] < MATRIX_BUDGET_S, f"matrix took {matrix['wall_s']:.0f}s"


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_check_reports_ready_and_the_plan_run_picks(matrix, kernel, cgroup):
    doc = guest(matrix, kernel, cgroup)
    check = doc["check"]
    print(f"\n--- otel-oom check on {doc['facts']['release']} (cgroup {cgroup}) ---\n{check['stdout']}")
    assert check["rc"] == 0, check["stdout"] + check["stderr"]
    out = check["stdout"]
    assert f"kernel                       {doc['facts']['release']} x86_64" in out
    assert f"memory cgroup                v{cgroup[1]} at {doc['facts']['hierarchy']['mount']}" in out
    for hook in ("tp_btf/mark_victim", "tracepoint/oom/mark_victim", "kprobe/oom_kill_process"):
        assert re.search(rf"^    {re.escape(hook)}\s+offered", out, re.M)
    assert re.search(r"^    fentry/oom_kill_process\s+in the kernel's BTF", out, re.M)
    assert "layout rich (pid, comm, rss, uid, ...)" in out
    assert "will use                     victim=tp_btf context=fentry" in out
    assert out.rstrip().endswith("result: ready: `otel-oom run` can work on this host")


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_mark_victim_layout_is_read_from_the_kernel_btf(matrix, kernel, cgroup):
    """The hook choice follows the kernel's BTF, and the BTF agrees with what tracefs says the
    tracepoint writes: the CO-RE relocations of the classic tracepoint program use these offsets."""
    f = guest(matrix, kernel, cgroup)["facts"]
    args = f["btf_mark_victim_args"]
    assert f["features"]["tp_btf"] == (bool(args) and args[0] == "struct task_struct *")
    # What the Debian kernels under test really have: the task-passing prototype (6.9 upstream,
    # backported to these stable series), so the tracepoint carries the rich field set.
    assert args == ["struct task_struct *", "uid_t"]
    btf_struct = {k: v for k, v in f["btf_tp_struct"].items() if k not in ("<size>", "ent", "__data")}
    assert btf_struct == f["tracefs_fields"]
    assert {"pid", "__data_loc_comm", "total_vm", "anon_rss", "file_rss", "shmem_rss", "uid", "pgtables",
            "oom_score_adj"} == set(btf_struct)
    assert f["btf_has_oom_kill_process"] is True
    assert f["kprobe_symbol"] == "oom_kill_process" and "oom_kill_process" in f["kallsyms_oom_kill_process"]


@qemu
@pytest.mark.parametrize("kernel", sorted({k for k, _ in MATRIX}))
def test_a_saved_guest_btf_gives_the_same_answers_on_the_host(matrix, share, kernel):
    """KernelBtf(path) asks a saved BTF (here: the guest kernel's) what the running one would answer."""
    from otel_oom.kernel.btf import KernelBtf, struct_fields

    doc = guest(matrix, kernel, "v2")
    path = os.path.join(share, f"btf-{doc['facts']['release']}")
    with KernelBtf(path) as kbtf:
        assert kbtf.mark_victim_args() == doc["facts"]["btf_mark_victim_args"]
        assert kbtf.has_func("oom_kill_process") is True
        fields = struct_fields(kbtf.ptr, "trace_event_raw_mark_victim")
        assert {k: list(v) for k, v in fields.items()} == doc["facts"]["btf_tp_struct"]
    with pytest.raises(OSError, match="cannot load the kernel's BTF"):
        KernelBtf(os.path.join(share, "no-such-btf"))


# ---- every plan: the agent and its records --------------------------------------------------------

PLAN_IDS = [f"{v}-{c}" for v, c in PLANS]


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_agent_runs_the_forced_plan_and_exits_cleanly(matrix, kernel, cgroup, plan):
    p = plan_of(guest(matrix, kernel, cgroup), *plan)
    assert p["ready_line"], p["stderr"]
    symbol = " (oom_kill_process)" if plan[1] == "kprobe" else ""
    assert f"hooks victim={plan[0]} context={plan[1]}{symbol}; delivery OTLP grpc to http://127.0.0.1:" in p["ready_line"]
    assert p["agent_alive_after_cases"] is True  # the global OOM did not take the agent
    assert p["exit_code"] == 0, p["stderr"]
    assert "Traceback" not in p["stderr"]
    assert "ERROR" not in p["stderr"], p["stderr"]


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_memcg_kill(matrix, kernel, cgroup, plan):
    doc = guest(matrix, kernel, cgroup)
    c = case_of(doc, *plan, "memcg")
    (pid,) = c["victims"]
    decs = decisions(c["kmsg"])
    d, line = killed_line(decs, pid)
    assert line["prefix"] == "Memory cgroup out of memory"
    assert d.summary.constraint == "memcg" and d.summary.oom_memcg == c["cgroup"] and d.summary.pid == pid
    assert d.limit_kb * 1024 == c["limit"] == 32 * MiB
    a = record_of(c, pid)
    check_victim(a, line, doc, plan)
    check_attribution(a, d, doc, plan, c["cgroup"])
    check_decision(a, d, plan, chosen_pid=pid)
    check_derived_memcg(a, d, plan)
    assert a["oom.trigger.pid"] == pid  # it allocated its own way into the limit


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_bystander_kill_victim_is_not_the_trigger(matrix, kernel, cgroup, plan):
    doc = guest(matrix, kernel, cgroup)
    c = case_of(doc, *plan, "bystander")
    bystander, allocator = c["victims"]
    assert c["returncodes"] == {str(bystander): -9, str(allocator): -9}
    decs = decisions(c["kmsg"])
    d1, line1 = killed_line(decs, bystander)
    d2, line2 = killed_line(decs, allocator)
    assert d1 is not d2
    assert (d1.summary.pid, d1.trigger_tid) == (bystander, allocator)
    assert (d2.summary.pid, d2.trigger_tid) == (allocator, allocator)
    a1, a2 = record_of(c, bystander), record_of(c, allocator)
    for a, d, line, pid in ((a1, d1, line1, bystander), (a2, d2, line2, allocator)):
        assert d.summary.constraint == "memcg" and d.summary.oom_memcg == c["cgroup"]
        check_victim(a, line, doc, plan)
        check_attribution(a, d, doc, plan, c["cgroup"])
        check_decision(a, d, plan, chosen_pid=pid)
        check_derived_memcg(a, d, plan, after_a_reaped_victim=pid == allocator)
        assert a["oom.trigger.pid"] == allocator
    assert a1["oom.victim.oom_score_adj"] == 1000
    if plan[1] != "none":
        assert a1["oom.decision.id"] != a2["oom.decision.id"]  # two decisions, two ids


@qemu
@pytest.mark.parametrize("kernel,cgroup", [m for m in MATRIX if m[1] == "v2"])
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_oom_group_kill_reports_every_member(matrix, kernel, cgroup, plan):
    doc = guest(matrix, kernel, cgroup)
    c = case_of(doc, *plan, "group")
    members = c["victims"]
    allocator = members[-1]
    assert set(c["returncodes"].values()) == {-9}
    assert c["memory_events"]["oom_group_kill"] == 1
    decs = decisions(c["kmsg"])
    d = killed_line(decs, allocator)[0]
    assert d.group and d.summary.constraint == "memcg" and d.summary.oom_memcg == c["cgroup"]
    assert d.summary.pid == allocator  # the largest member is chosen, then the group goes with it
    assert {int(k["pid"]) for k in d.killed} == set(members)
    # one record per member, none twice (the kernel prints and counts the chosen one twice)
    assert sorted(r["attributes"]["process.pid"] for r in c["records"]) == sorted(members)
    ids = set()
    for pid in members:
        a = record_of(c, pid)
        check_victim(a, killed_line([d], pid)[1], doc, plan)
        check_attribution(a, d, doc, plan, c["cgroup"])
        check_decision(a, d, plan, chosen_pid=allocator)
        check_derived_memcg(a, d, plan, group_member=pid != allocator)
        assert a["oom.trigger.pid"] == allocator
        ids.add(a.get("oom.decision.id"))
    if plan[1] != "none":
        assert len(ids) == 1 and None not in ids  # the same decision for every member


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
@pytest.mark.parametrize("plan", PLANS, ids=PLAN_IDS)
def test_global_oom_kill(matrix, kernel, cgroup, plan):
    doc = guest(matrix, kernel, cgroup)
    c = case_of(doc, *plan, "global")
    (pid,) = c["victims"]
    assert c["returncodes"] == {str(pid): -9}
    decs = decisions(c["kmsg"])
    d, line = killed_line(decs, pid)
    assert line["prefix"] == "Out of memory"
    assert d.summary.constraint == "global" and d.summary.oom_memcg is None and d.summary.pid == pid
    assert d.tasks[pid]["oom_score_adj"] == 1000
    # totalram_pages + swap, as show_mem printed it, is what /proc/meminfo calls MemTotal + SwapTotal
    mem = c["meminfo_kb"]
    assert d.domain_pages() * 4 == mem["MemTotal"] + mem["SwapTotal"]
    a = record_of(c, pid)
    check_victim(a, line, doc, plan)
    check_attribution(a, d, doc, plan, "/")
    check_decision(a, d, plan, chosen_pid=pid)
    if plan[1] == "none":
        assert (a["oom.constraint"], a["oom.constraint.source"]) == ("unknown", "none")
    assert a.get("oom.memcg.path") is None


@qemu
@pytest.mark.parametrize("kernel,cgroup", MATRIX)
def test_event_ids_are_unique_across_the_guest(matrix, kernel, cgroup):
    doc = guest(matrix, kernel, cgroup)
    ids = [r["attributes"]["oom.event.id"] for p in doc["plans"] for c in p["cases"].values()
           for r in c.get("records", [])]
    assert len(ids) == len(set(ids)) > 0


# ---- on the host: the classic tracepoint's own fields -----------------------------------------------

@pytest.mark.root
def test_host_tracepoint_fields_when_the_victim_is_not_the_trigger(start_agent):
    """The rich mark_victim layout on the host's own kernel (6.18), without a context hook: the
    bystander's record is built from the tracepoint's fields alone, the allocator's from its task."""
    from otel_oom.attribution.cgroups import detect_memory_hierarchy
    from otel_oom.reconcile.kmsg import read_kmsg
    from testing.otlp_receiver import OtlpGrpcReceiver
    from tests.qemu.guest_cases import bystander_case

    require_root_bpf()
    h = detect_memory_hierarchy()
    require(h is not None, "needs a memory cgroup hierarchy")
    with OtlpGrpcReceiver() as receiver:
        agent = start_agent(["--victim-hook", "tracepoint", "--context-hook", "none"], receiver.endpoint)
        assert "hooks victim=tracepoint context=none" in agent.stderr
        after_the_oom_report_rate_limit()  # the checks compare with the kernel's full report
        before = read_kmsg()
        seq = before[-1].seq if before else -1
        c = bystander_case(f"host-{os.getpid()}", h.mount, h.version)
        bystander, allocator = c["victims"]
        receiver.wait_for_logs(lambda recs: {r["attributes"].get("process.pid") for r in recs
                                             if r["event_name"] == "oom.kill"} >= {bystander, allocator}, 20)
        c["records"] = [r for r in receiver.log_records() if r["event_name"] == "oom.kill"]
        c["kmsg"] = [[r.seq, r.usec, r.level, r.message] for r in read_kmsg() if r.seq > seq]
        assert agent.stop() == 0
    decs = decisions(c["kmsg"])
    d1, line1 = killed_line(decs, bystander)
    d2, line2 = killed_line(decs, allocator)
    assert (d1.trigger_tid, d2.trigger_tid) == (allocator, allocator)
    doc = {"facts": {"hierarchy": {"version": h.version}}, "runner_pid": os.getpid()}
    plan = ("tracepoint", "none")
    a1, a2 = record_of(c, bystander), record_of(c, allocator)
    # on the host the victims run this interpreter, whatever its file is called (a venv's `python`)
    host_comm = os.path.basename(sys.executable)[:15]
    check_victim(a1, line1, doc, plan, host_comm)  # comm, uid, sizes, oom_score_adj: the tracepoint's fields
    check_victim(a2, line2, doc, plan, host_comm)
    assert a1["oom.victim.oom_score_adj"] == 1000
    check_attribution(a1, d1, doc, plan, c["cgroup"])
    assert a1.get("process.parent_pid") is None  # proof that no task was read for the bystander
    check_derived_memcg(a1, d1, plan)
    check_attribution(a2, d2, doc, plan, c["cgroup"])
    # the allocator is current: read from its task; derived unless the bystander's reaping raced it
    check_derived_memcg(a2, d2, plan, after_a_reaped_victim=True)


# ---- the /proc fallback the tracepoint path relies on ---------------------------------------------

def _proc(tmp_path, pid: int, cgroup: str, flags: Optional[int]) -> str:
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "cgroup").write_text(cgroup)
    if flags is not None:
        (d / "stat").write_text(f"{pid} (a) b) R 1 {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0\n")
    return str(tmp_path)


@pytest.mark.parametrize("flags, expected", [(0x400100, "/"), (0x400104, None), (None, None)])
def test_v1_root_cgroup_of_an_exiting_task_is_not_believed(tmp_path, flags, expected):
    from otel_oom.attribution.cgroups import MemoryHierarchy

    # cgroup v1 shows every exiting task in the root cgroup; PF_EXITING (0x4) or a vanished task
    # means "/" says nothing about where the victim lived
    root = _proc(tmp_path, 77, "5:memory:/\n0::/user.slice\n", flags)
    hierarchy = MemoryHierarchy(version=1, mount="/sys/fs/cgroup/memory", hierarchy_id=5, controllers="memory")
    assert Enricher(hierarchy, "b", proc_root=root)._path_from_proc(77) == expected


def test_v2_deleted_cgroup_suffix_is_dropped(tmp_path):
    from otel_oom.attribution.cgroups import MemoryHierarchy

    root = _proc(tmp_path, 78, "0::/kmx-gone (deleted)\n", 0x404)
    hierarchy = MemoryHierarchy(version=2, mount="/sys/fs/cgroup", hierarchy_id=0, controllers="")
    assert Enricher(hierarchy, "b", proc_root=root)._path_from_proc(78) == "/kmx-gone"


def test_group_members_after_the_first_inherit_the_derived_memcg():
    """Without a context hook, a memory.oom.group member killed after the chosen one may see usage
    already below the limit (the others are exiting): the same trigger, within the group's burst,
    in the memcg derived for the first member, is the same decision."""
    from otel_oom.kernel.wire import MemcgLevel, OomEvent

    limit = 64 * MiB

    def event(ts: int, trigger: int, usage: int, victim: int) -> OomEvent:
        levels = (MemcgLevel(50, "grp", usage, limit), MemcgLevel(1, "", usage, None))
        return OomEvent(timestamp_ns=ts, boot_clock=True, hook="tp_btf", context_hook="none", victim_tgid=victim,
                        victim_pid=victim, victim_comm="w", victim_ppid=1, victim_uid=0, oom_score_adj=0,
                        total_vm_bytes=None, anon_rss_bytes=None, file_rss_bytes=None, shmem_rss_bytes=None,
                        pgtables_bytes=None, victim_memcgs=levels, victim_memcgs_complete=True, trigger_tgid=trigger,
                        trigger_pid=trigger, trigger_comm="t", trigger_memcg_ids=(50, 1), context=False,
                        decision_ns=None, domain_bytes=None, badness_points=None, chosen_tgid=None, memcg_id=None,
                        memcg_usage_bytes=None, memcg_limit_bytes=None, gfp_mask=None, order=None, constraint="unknown")

    e = Enricher(None, "b")
    first = e.enrich(event(10**9, 7, limit, 100))
    assert (first.constraint, first.memcg_path, first.memcg_source) == ("memcg", "/grp", "derived")
    member = e.enrich(event(10**9 + 5 * 10**6, 7, limit - 9 * MiB, 101))  # 5 ms later, usage dropped
    assert (member.constraint, member.memcg_path, member.memcg_limit_bytes) == ("memcg", "/grp", limit)
    assert e.enrich(event(10**9 + 10 * 10**6, 8, limit - 9 * MiB, 102)).constraint == "unknown"  # other trigger
    assert e.enrich(event(4 * 10**9, 7, limit - 9 * MiB, 103)).constraint == "unknown"  # a later decision
