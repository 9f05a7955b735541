"""Every hook plan and both backends of otel-oom, proved on real Debian kernels: real agents, real
OOM kills, a real receiver, every record held to the kernel's own report.

Eight QEMU guests (tests/qemu/harness.py) run two at a time, longest first: Debian 11's 5.10 (the
pid-only mark_victim) with cgroup v2 and v1, Debian 12's 6.1 with v2 and v1 (and v2 on arm64), 6.12
with v2, 6.12 PREEMPT_RT with v2, and sid's newest kernel with v2 (OTEL_OOM_MATRIX_GUESTS=5.10-v2,...
boots only those). In each, tests/qemu/guest_cases.py starts one `python -m otel_oom run` per hook
plan the kernel offers (victim x context x task hook), all side by side; on 5.10 also a bcc agent
with the kernel's BTF hidden (ring buffer on v2, perf buffer on v1) and, on v2, BCC's own oomkill
tool. Then, watched by all of them, it causes a memcg kill, a victim != trigger kill, a
memory.oom.group kill (v2; the agents stopped until the cgroup is gone), the task_will_free_mem()
shortcut (a victim that is already exiting), a user-space OOM killer's SIGKILL and a global OOM
kill, and records what the receiver got from each agent (oom.kill and oom.reclaim), each agent's
oom.kills.unobserved after each case, and what the kernel printed. The tests here judge that
against the kernel log (tests/qemu/kernel_log.py): the "oom-kill:constraint=..." summary,
"memory: usage/limit", the task dump (badness), show_mem (RAM size), the "Killed process" line, and
for the shortcut, the victim's /proc status read while it was held at its exit.

A host test covers the classic tracepoint's own fields on the build host's 6.18 kernel; host tests
also read the guests' BTF.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import Optional

import pytest
from conftest import after_the_oom_report_rate_limit, require, require_root_bpf

from otel_oom.attribution.enrich import Enricher
from otel_oom.kernel.features import KernelFeatures, candidate_plans
from tests.qemu.kernel_log import Decision, decisions, killed_line, killed_lines, reaped

MiB = 1 << 20


@dataclass(frozen=True)
class Guest:
    kernel: str
    cgroup: str
    memory_mb: int = 768
    bcc: tuple[str, ...] = ()  # bcc agents (event buffer each), with the kernel's BTF hidden
    oomkill: bool = False      # BCC's own oomkill tool as a reference
    bcc_check: bool = False    # `otel-oom check` with the kernel's BTF hidden
    plans: Optional[tuple[tuple[str, str, str, str], ...]] = None  # only these (default: every plan offered)
    json_agents: bool = False  # the userland has only the pure-Python packages: records as JSON lines

    @property
    def id(self) -> str:
        return f"{self.kernel}-{self.cgroup}"


ALL_GUESTS = [  # longest first: boot_many runs them in this order, two at a time
    Guest("5.10", "v2", 1280, bcc=("ring",), oomkill=True),  # BCC compiles ~60 s each under TCG: one guest
    Guest("5.10", "v1", 1024, bcc=("perf",), bcc_check=True),  # pays for two, the other for two
    # arm64 under TCG with Debian's arm64 userland (tests/qemu/userland.py): fentry is offered by its BTF
    # but refused on attach before 6.4 (no BPF trampoline there), so the plans that can attach
    Guest("6.1-arm64", "v2", 768, json_agents=True,
          plans=tuple(("libbpf", v, c, "none") for v in ("tp_btf", "tracepoint") for c in ("kprobe", "none"))),
    Guest("6.12-rt", "v2"),
    Guest("6.12", "v2"),
    Guest("6.1", "v2"),
    Guest("6.1", "v1"),
    Guest("sid", "v2"),
]
# OTEL_OOM_MATRIX_GUESTS=5.10-v2[,...]: boot only these guests (their tests only), e.g. to run one again and again
ONLY_ENV = "OTEL_OOM_MATRIX_GUESTS"
_ONLY = [x for x in os.environ.get(ONLY_ENV, "").split(",") if x]
if set(_ONLY) - {g.id for g in ALL_GUESTS}:
    raise pytest.UsageError(f"{ONLY_ENV}={','.join(_ONLY)}: choose from {', '.join(g.id for g in ALL_GUESTS)}")
GUESTS = [g for g in ALL_GUESTS if not _ONLY or g.id in _ONLY]
GUEST_IDS = [g.id for g in GUESTS]
PID_ONLY = {"5.10"}  # kernels whose mark_victim tracepoint passes only the pid
CONTEXTS = ("fentry", "kprobe", "none")


def plans_for(kernel: str) -> list[tuple[str, str, str, str]]:
    """(backend, victim, context, task) of every plan the kernel offers, in preference order."""
    if kernel in PID_ONLY:
        return [("libbpf", "tracepoint", c, t) for c in CONTEXTS for t in CONTEXTS]
    return [("libbpf", v, c, "none") for v in ("tp_btf", "tracepoint") for c in CONTEXTS]


def agents_for(g: Guest) -> list[tuple[str, str, str, str, str]]:
    """(backend, victim, context, task, bcc buffer) of every agent the guest runs."""
    return ([(*p, "auto") for p in (g.plans or plans_for(g.kernel))]
            + [("bcc", "tracepoint", "kprobe", "kprobe", b) for b in g.bcc])


def tag(agent: tuple) -> str:
    backend, victim, context, task, buffer = agent
    return f"{backend}-{victim}-{context}-{task}" + (f"-{buffer}" if backend == "bcc" else "")


AGENTS = [(g.id, a) for g in GUESTS for a in agents_for(g)]
AGENT_IDS = [f"{gid}-{tag(a)}" for gid, a in AGENTS]
V2_AGENTS = [(gid, a) for gid, a in AGENTS if gid.endswith("-v2")]
V2_AGENT_IDS = [f"{gid}-{tag(a)}" for gid, a in V2_AGENTS]
ARTIFACTS_ENV = "OTEL_OOM_MATRIX_ARTIFACTS"  # a directory: guest JSON, `otel-oom check` outputs, BTF

qemu = pytest.mark.qemu  # the tests that boot guests; the host and unit tests below run without QEMU
GUEST_TIMEOUT_S = 2400  # each guest's own hang guard (harness.boot): 5.10 v1 took 18 min at load 15
# the fixture boots every guest, two at a time: a hang guard above the guests' own, never a budget
pytestmark = pytest.mark.timeout(GUEST_TIMEOUT_S * -(-len(GUESTS) // 2) + 600)


# ---- running the guests ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harness():
    if os.environ.get("OTEL_OOM_QEMU_GUEST"):
        pytest.skip("already inside a QEMU test guest: guests are not nested")
    from tests.qemu import harness as h

    for arch in sorted({h.KERNELS[g.kernel].arch for g in GUESTS}):
        usable, reason = h.qemu_usable(arch)
        require(usable, f"QEMU cannot run {arch} guests here: {reason}")
    for k in sorted({g.kernel for g in GUESTS}):
        try:
            h.prepare(k)
        except h.PrepareError as e:
            require(False, f"cannot fetch Debian kernel {k}: {e}")
    return h


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernel-matrix"))


def _job(h, g: Guest, share: str) -> dict:
    cases = ",".join(c for c in ("memcg", "bystander", "group", "exiting", "userspace", "global")
                     if c != "group" or g.cgroup == "v2")
    command = ["python3", "-m", "tests.qemu.guest_cases", "--out", f"{share}/{g.id}.json", "--cases", cases,
               "--copy-btf"]
    for b in g.bcc:
        command += ["--bcc", b]
    if g.oomkill:
        command.append("--oomkill")
    if g.bcc_check:
        command.append("--bcc-check")
    if g.bcc or g.oomkill or g.bcc_check:
        command += ["--headers", h.headers(g.kernel)]
    for _backend, victim, context, task in g.plans or ():
        command += ["--plan", f"{victim}:{context}:{task}"]
    if g.json_agents:
        command += ["--json-agents", "--pure-site", sysconfig.get_paths()["purelib"]]
    return dict(kernel=g.kernel, cgroup=g.cgroup, memory_mb=g.memory_mb, share_dir=share, timeout=GUEST_TIMEOUT_S,
                command=command)


@pytest.fixture(scope="module")
def matrix(harness, share) -> dict:
    """Boot the guests (two at a time, the longest first) once; every test below reads their results."""
    jobs = [_job(harness, g, share) for g in GUESTS]
    t0 = time.monotonic()
    results = harness.boot_many(jobs, workers=2)
    wall = time.monotonic() - t0
    out: dict = {"wall_s": wall}
    for g, r in zip(GUESTS, results, strict=True):
        entry: dict = {"result": r}
        if isinstance(r, harness.QemuError):
            entry["error"] = f"{type(r).__name__}: {r}\noutput tail:\n{r.output[-3000:]}"
        else:
            try:
                with open(f"{share}/{g.id}.json") as f:
                    entry["doc"] = json.load(f)
            except (OSError, ValueError) as e:
                entry["error"] = (f"guest exited {r.exit_code} without a result ({e}); output tail:\n"
                                  f"{r.output[-3000:]}\nconsole tail:\n{r.console[-2000:]}")
        out[g.id] = entry
    _report(out, share)
    return out


def _report(out: dict, share: str) -> None:
    lines = [f"\nkernel matrix: {out['wall_s']:.1f} s wall for {len(GUESTS)} guests, 2 at a time"]
    for g in GUESTS:
        e = out[g.id]
        if "doc" not in e:
            lines.append(f"  {g.id}: FAILED")
            continue
        r, doc = e["result"], e["doc"]
        cases = ", ".join(f"{c} {v.get('seconds', 0):.1f}s" for c, v in doc["cases"].items())
        checks = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in doc["checks"].items())
        lines.append(f"  {g.id} ({r.kernel_release}): wall {r.duration_s:.1f}s, boot {r.boot_s:.1f}s, checks {checks}; "
                     f"{len(doc['agents'])} agents started in {doc.get('agents_start_s', 0):.1f}s; {cases}; "
                     f"stop {doc.get('stop_s', 0):.1f}s")
    print("\n".join(lines))
    dest = os.environ.get(ARTIFACTS_ENV)
    if dest:
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(share):
            shutil.copy(os.path.join(share, name), dest)
        for g in GUESTS:
            doc = out[g.id].get("doc")
            for name, check in (doc or {}).get("checks", {}).items():
                with open(os.path.join(dest, f"check-{g.id}-{name}.txt"), "w") as f:
                    f.write(check["stdout"])
        with open(os.path.join(dest, "timings.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def guest(matrix, gid: str) -> dict:
    e = matrix[gid]
    assert "error" not in e, e["error"]
    assert e["result"].exit_code == 0, e["result"].output[-3000:]
    return e["doc"]


def agent_of(doc: dict, agent: tuple) -> dict:
    for a in doc["agents"]:
        if a["tag"] == tag(agent):
            return a
    raise AssertionError(f"agent {tag(agent)} did not run; ran: {[a['tag'] for a in doc['agents']]}")


def case_of(doc: dict, agent: tuple, case: str) -> dict:
    """The case as `agent` saw it: the case's kernel-side facts with that agent's records."""
    a = agent_of(doc, agent)
    assert a["ready_line"], f"agent never became ready:\n{a['stderr']}"
    assert case in doc["cases"], f"case {case} did not run"
    c = doc["cases"][case]
    assert "error" not in c, c["error"] + "\n" + "\n".join(m for *_, m in c.get("kmsg", [])[-40:])
    return {**c, "records": c["records"].get(tag(agent), []), "unobserved": c["unobserved"].get(tag(agent))}


def record_of(case: dict, pid: int) -> dict:
    recs = [r for r in case["records"] if r["attributes"]["process.pid"] == pid]
    assert len(recs) == 1, f"expected exactly one record for victim {pid}, got {len(recs)}"
    return recs[0]["attributes"]


@dataclass(frozen=True)
class Plan:
    """What one agent ran, and what the kernel it ran on offers its tracepoint."""
    backend: str
    victim: str
    context: str
    task: str
    rich_tracepoint: bool  # the tracepoint carries comm, uid and sizes (6.9+, 2025 backports)
    rss_slack_kb: int = 0  # how far the RSS read may sit from an exact sum (see rss_slack_kb())

    @classmethod
    def of(cls, agent: tuple, doc: dict) -> "Plan":
        backend, victim, context, task, _ = agent
        return cls(backend, victim, context, task, "total_vm" in doc["facts"]["tracefs_fields"], rss_slack_kb(doc))


def rss_slack_kb(doc: dict) -> int:
    """Since 6.2 an mm's RSS counters are percpu_counters. otel-oom reads them the way
    get_mm_counter() does, the kernel's own mark_victim tracepoint too: the counter's global part,
    short of each CPU's not yet folded delta (under percpu_counter_batch = max(32, 2 x CPUs) pages).
    Newer kernels print "Killed process" (7.x) and /proc/PID/status (6.12) from the exact sum, so
    against those the figures may differ by less than batch x CPUs pages. Before 6.2: exact."""
    release = doc["facts"]["release"]
    if tuple(int(x) for x in release.split("-")[0].split(".")[:2]) < (6, 2):
        return 0
    cpus = doc["facts"].get("cpus", 1)
    return max(32, 2 * cpus) * cpus * doc["facts"]["page_size"] // 1024


# ---- the checks every record gets -------------------------------------------------------------

def full_task_expected(plan: Plan, a: dict, trigger_tid: int, chosen_pid: Optional[int]) -> bool:
    """Whether the BPF program could read the victim's task_struct (rather than the tracepoint's fields)."""
    if plan.victim == "tp_btf" or plan.task != "none":
        return True  # the tracepoint hands over the task, or the task hook stored it for the tracepoint
    pid = a["process.pid"]
    return pid == trigger_tid or (plan.context != "none" and pid == chosen_pid)


def check_victim(a: dict, want: dict, plan: Plan, full: bool, comm: str = "python3") -> None:
    """The victim as the kernel describes it (`want`: a "Killed process" line's fields, in kB);
    `comm` is the name of the interpreter the victims were started with (guests run `python3`)."""
    assert a["oom.hook"] == plan.victim
    assert a["oom.recovered"] is False
    assert a.get("oom.task_hook") == (plan.task if plan.task != "none" else None)
    if not full and not plan.rich_tracepoint:
        # the pid-only tracepoint and no task hook: the kernel said nothing else; said so in the record
        assert a["oom.victim.source"] == "pid"
        assert a["process.executable.name"] == ""
        for key in ("process.real_user.id", "oom.victim.oom_score_adj", "oom.victim.memory.anon_rss",
                    "oom.victim.memory.total_vm", "oom.victim.memory.page_tables"):
            assert key not in a, key
        return
    assert a["oom.victim.source"] == ("task" if full else "tracepoint")
    assert a["process.executable.name"] == want["comm"] == comm
    assert a["process.real_user.id"] == int(want["uid"]) == 0
    assert a["oom.victim.oom_score_adj"] == int(want["adj"])
    assert a["oom.victim.memory.total_vm"] == int(want["vm"]) * 1024
    for key, field in (("anon_rss", "anon"), ("file_rss", "file"), ("shmem_rss", "shmem")):
        assert abs(a[f"oom.victim.memory.{key}"] - int(want[field]) * 1024) <= plan.rss_slack_kb * 1024, key
    assert a["oom.victim.memory.page_tables"] == int(want["pgt"]) * 1024


def check_attribution(a: dict, doc: dict, full: bool, trigger_tid: int, trigger_comm: str,
                      cgroup: Optional[str]) -> None:
    """Who and where: parent, cgroup, trigger; read from the task, or honestly absent without it."""
    v1 = doc["facts"]["hierarchy"]["version"] == 1
    if full:
        assert a["process.parent_pid"] == doc["runner_pid"]
        assert a["oom.victim.cgroup.path"] == cgroup
        assert a["process.linux.cgroup"] == (f"{_v1_id(a)}:memory:{cgroup}" if v1 else f"0::{cgroup}")
    else:
        # the tracepoint gives only pid (and on 6.9+ comm and sizes): the cgroup comes from /proc while
        # the victim exits, so it may be gone, but it is never wrong (v1 shows exiting tasks in "/")
        assert a.get("process.parent_pid") is None
        assert a.get("oom.victim.cgroup.path") in (cgroup, None)
    assert a["oom.trigger.tid"] == trigger_tid
    assert a["oom.trigger.executable.name"] == trigger_comm


def _v1_id(a: dict) -> str:
    return a["process.linux.cgroup"].split(":", 1)[0]


def check_decision(a: dict, d: Decision, plan: Plan, chosen_pid: int, badness_slack: int = 0,
                   after_a_reaped_victim: bool = False) -> None:
    """Why: the OOM decision the context hook read, against the kernel's own account of it.
    badness_slack: pages by which oc->chosen_points may differ from the task dump's recomputation.
    after_a_reaped_victim: see check_derived_memcg; the usage may fall between the hook and the report."""
    if plan.context == "none":
        assert a["oom.context_hook"] == "none"
        assert a.get("oom.decision.id") is None and a.get("oom.badness") is None and a.get("oom.domain.size") is None
        return
    assert a["oom.context_hook"] == plan.context
    assert a["oom.constraint"] == d.summary.constraint
    assert a["oom.constraint.source"] == "kernel"
    assert a["oom.domain.size"] == d.domain_pages() * 4096
    assert abs(a["oom.badness"] - d.badness(chosen_pid)) <= badness_slack
    assert a["oom.gfp_mask"] == d.gfp_mask and a["oom.order"] == d.order
    assert re.fullmatch(rf"[0-9a-f-]{{36}}:\d+:{a['oom.trigger.pid']}", a["oom.decision.id"])
    if d.summary.constraint == "memcg":
        assert a["oom.memcg.path"] == d.summary.oom_memcg
        assert a["oom.memcg.limit"] == d.limit_kb * 1024
        if after_a_reaped_victim:
            # the previous victim's memory is still being uncharged while this decision runs (its exit
            # can be preempted: seen on sid's 7.2 guest), so the usage read at oom_kill_process entry
            # is at least what the kernel printed a moment later, and at most the limit
            assert d.usage_kb * 1024 <= a["oom.memcg.usage"] <= d.limit_kb * 1024
        else:
            assert a["oom.memcg.usage"] == d.usage_kb * 1024
        assert a["oom.memcg.source"] == "kernel"
    else:
        assert a.get("oom.memcg.path") is None and a.get("oom.memcg.limit") is None


def check_derived_memcg(a: dict, plan: Plan, full: bool, memcg: Optional[str], limit: int,
                        group_member: bool = False, after_a_reaped_victim: bool = False) -> None:
    """Without a context hook a memcg kill is still attributed, from the victim's cgroups, when the
    BPF program could read the victim's task; with the tracepoint's fields alone it stays unknown.

    after_a_reaped_victim: the kill right after another victim of the same memcg. The OOM reaper
    gives that victim's memory back while the kernel prints this decision's report, so at
    mark_victim the usage may already sit below the limit by more than the derivation's slack (seen
    once, on the host under the load of a full CI run). The derivation then goes by what an uncharge
    does not lower (`oom.memcg.evidence` oom_lock, oom_events or watermark; issue 13), or declines
    ("unknown"); when it does derive, it must be right."""
    if plan.context != "none":
        return
    if memcg is None or not full:
        assert (a["oom.constraint"], a["oom.constraint.source"]) == ("unknown", "none")
        return
    if after_a_reaped_victim and a["oom.constraint"] == "unknown":
        assert a["oom.constraint.source"] == "none" and "oom.memcg.path" not in a
        return
    assert (a["oom.constraint"], a["oom.constraint.source"]) == ("memcg", "derived")
    assert a["oom.memcg.path"] == memcg
    assert a["oom.memcg.limit"] == limit
    # read at mark_victim, not at the decision: within the derivation's at-limit slack, except for
    # group members after the first, which see the others' memory already given back, and a kill
    # after a reaped victim named by evidence other than its usage (the usage is then racy)
    racy = after_a_reaped_victim and a.get("oom.memcg.evidence") != "usage"
    low = 0 if group_member or racy else limit - 4 * MiB
    assert low < a["oom.memcg.usage"] <= limit


def check_killed(a: dict, d: Decision, line: dict, doc: dict, plan: Plan, chosen_pid: int, cgroup: Optional[str],
                 **derived) -> None:
    """Every check of a victim the kernel killed (and printed a "Killed process" line for)."""
    full = full_task_expected(plan, a, d.trigger_tid, chosen_pid)
    check_victim(a, line, plan, full)
    check_attribution(a, doc, full, d.trigger_tid, d.trigger_comm, cgroup)
    # PREEMPT_RT: the OOM killer may be preempted between select_bad_process() and dump_tasks(), so
    # a victim that is not the trigger can still fault pages in (and percpu RSS deltas fold) before
    # the dump is printed: seen once, 64 pages on 6.12-rt's global case. Bound: the four percpu
    # counters' unfolded deltas (rss_slack_kb per counter, in 4 KiB pages x 4).
    rt = "PREEMPT_RT" in doc["facts"].get("proc_version", "")
    check_decision(a, d, plan, chosen_pid, plan.rss_slack_kb if rt and chosen_pid != d.trigger_tid else 0,
                   after_a_reaped_victim=derived.get("after_a_reaped_victim", False))
    memcg = d.summary.oom_memcg if d.summary.constraint == "memcg" else None
    check_derived_memcg(a, plan, full, memcg, (d.limit_kb or 0) * 1024, **derived)


# ---- the guests ran, and what they offer ------------------------------------------------------------

@qemu
@pytest.mark.parametrize("g", GUESTS, ids=GUEST_IDS)
def test_guest_ran_every_hook_plan_the_kernel_offers(matrix, g):
    doc = guest(matrix, g.id)
    release = doc["facts"]["release"]
    assert release == matrix[g.id]["result"].kernel_release
    flavour = "-arm64" if g.kernel.endswith("-arm64") else "-rt-amd64" if g.kernel.endswith("-rt") else "-amd64"
    assert release.endswith(flavour) and (flavour == "-rt-amd64") == ("-rt-" in release)
    if g.kernel != "sid":
        assert release.startswith(g.kernel.split("-")[0] + ".")
    assert doc["facts"]["hierarchy"]["version"] == int(g.cgroup[1])
    f = doc["facts"]
    offered = [("libbpf", p.victim, p.context, p.task) for p in candidate_plans(KernelFeatures(
        btf=True, tp_btf=f["features"]["tp_btf"], tracepoint=f["features"]["tracepoint"],
        fentry=f["features"]["fentry"], kprobe_symbol=f["kprobe_symbol"], kprobe_pmu=f["features"]["kprobe"],
        mark_victim_args=f["btf_mark_victim_args"], task_fentry=f["features"]["task_fentry"],
        task_kprobe_symbol=f["task_kprobe_symbol"]))]
    # Debian's generic kernels have BTF, fentry, kprobes; on 5.10 mark_victim passes only the pid
    assert offered == plans_for(g.kernel), f["feature_reasons"]
    assert [a["tag"] for a in doc["agents"]] == [tag(a) for a in agents_for(g)]


@qemu
@pytest.mark.parametrize("g", GUESTS, ids=GUEST_IDS)
def test_check_reports_ready_and_the_plan_run_picks(matrix, g):
    doc = guest(matrix, g.id)
    check = doc["checks"]["libbpf"]
    print(f"\n--- otel-oom check on {doc['facts']['release']} (cgroup {g.cgroup}) ---\n{check['stdout']}")
    assert check["rc"] == 0, check["stdout"] + check["stderr"]
    out = check["stdout"]
    machine = "aarch64" if g.kernel.endswith("-arm64") else "x86_64"
    assert f"kernel                       {doc['facts']['release']} {machine}" in out
    assert "backend                      libbpf (/sys/kernel/btf/vmlinux present: CO-RE object)" in out
    assert f"memory cgroup                v{g.cgroup[1]} at {doc['facts']['hierarchy']['mount']}" in out
    for hook in ("tracepoint/oom/mark_victim", "kprobe/oom_kill_process"):
        assert re.search(rf"^    {re.escape(hook)}\s+offered", out, re.M)
    assert re.search(r"^    fentry/oom_kill_process\s+in the kernel's BTF", out, re.M)
    if g.kernel in PID_ONLY:
        assert "layout pid only (kernel before 6.9)" in out
        assert re.search(r"^    tp_btf/mark_victim\s+not offered: mark_victim passes \(int\), not the task", out, re.M)
        assert re.search(r"^    fentry/mark_oom_victim\s+offered \(task hook\), in the kernel's BTF", out, re.M)
        assert re.search(r"^    kprobe/mark_oom_victim\s+offered \(task hook\), symbol mark_oom_victim", out, re.M)
        assert "will use                     victim=tracepoint context=fentry task=fentry" in out
        assert "victims                      every victim read from its task_struct through the task hook (fentry)" in out
    else:
        assert "layout rich (pid, comm, rss, uid, ...)" in out
        assert re.search(r"^    tp_btf/mark_victim\s+offered", out, re.M)
        assert re.search(r"^    fentry/mark_oom_victim\s+not offered \(task hook\): mark_victim passes the task", out,
                         re.M)
        if machine == "aarch64":
            # fentry needs a BPF trampoline, which arm64 has only since 6.4: refused, and the next plan taken
            assert ("refused                      victim=tp_btf context=fentry: attaching oom_kill_fentry (victim=tp_btf "
                    "context=fentry) failed: ENOTSUPP (not supported by this kernel); the kernel refused this hook") in out
            assert "will use                     victim=tp_btf context=kprobe:oom_kill_process" in out
        else:
            assert "will use                     victim=tp_btf context=fentry" in out
        assert "victims                      every victim read from its task_struct (oom.victim.source=task)" in out
    assert out.rstrip().endswith("result: ready: `otel-oom run` can work on this host")


@qemu
@pytest.mark.parametrize("g", [g for g in GUESTS if g.bcc_check], ids=[g.id for g in GUESTS if g.bcc_check])
def test_check_reports_the_bcc_backend_without_btf(matrix, g):
    doc = guest(matrix, g.id)
    check = doc["checks"]["bcc"]
    print(f"\n--- otel-oom check, BTF hidden, on {doc['facts']['release']} ---\n{check['stdout']}")
    assert check["rc"] == 0, check["stdout"] + check["stderr"]
    out = check["stdout"]
    assert ("backend                      bcc (no /sys/kernel/btf/vmlinux: CO-RE cannot relocate, compiling against "
            "the kernel headers)") in out
    assert re.search(r"^  BCC                          0\.\d+\.\d+ \(/usr/lib/python3/dist-packages/bcc\)$", out, re.M)
    assert f"kernel headers               {doc['headers']}" in out
    assert doc["headers"].endswith(f"/usr/src/linux-headers-{doc['facts']['release']}")
    assert "event buffer                 ring buffer" in out
    assert re.search(r"^    kprobe/mark_oom_victim\s+offered \(task hook\), symbol mark_oom_victim", out, re.M)
    assert ("will use                     victim=tracepoint context=kprobe:oom_kill_process "
            "task=kprobe:mark_oom_victim backend=bcc (ring buffer)") in out
    assert out.rstrip().endswith("result: ready: `otel-oom run` can work on this host")


@qemu
@pytest.mark.parametrize("g", GUESTS, ids=GUEST_IDS)
def test_mark_victim_layout_is_read_from_the_kernel_btf(matrix, g):
    """The hook choice follows the kernel's BTF, and the BTF agrees with what tracefs says the
    tracepoint writes: the CO-RE relocations of the classic tracepoint program use these offsets."""
    f = guest(matrix, g.id)["facts"]
    args = f["btf_mark_victim_args"]
    assert f["features"]["tp_btf"] == (bool(args) and args[0] == "struct task_struct *")
    btf_struct = {k: v for k, v in f["btf_tp_struct"].items() if k not in ("<size>", "ent", "__data")}
    assert btf_struct == f["tracefs_fields"]
    if g.kernel in PID_ONLY:
        assert args == ["int"] and set(btf_struct) == {"pid"}
        assert f["btf_has_mark_oom_victim"] is True and f["task_kprobe_symbol"] == "mark_oom_victim"
    else:
        # the task-passing prototype (6.9 upstream, backported to these stable series): the rich field set
        assert args == ["struct task_struct *", "uid_t"]
        assert {"pid", "__data_loc_comm", "total_vm", "anon_rss", "file_rss", "shmem_rss", "uid", "pgtables",
                "oom_score_adj"} == set(btf_struct)
    assert f["btf_has_oom_kill_process"] is True
    assert f["kprobe_symbol"] == "oom_kill_process" and "oom_kill_process" in f["kallsyms_oom_kill_process"]


@qemu
@pytest.mark.parametrize("g", [g for g in GUESTS if g.cgroup == "v2"], ids=[g.id for g in GUESTS if g.cgroup == "v2"])
def test_a_saved_guest_btf_gives_the_same_answers_on_the_host(matrix, share, g):
    """KernelBtf(path) asks a saved BTF (here: the guest kernel's) what the running one would answer."""
    from otel_oom.kernel.btf import KernelBtf, struct_fields

    doc = guest(matrix, g.id)
    path = os.path.join(share, f"btf-{doc['facts']['release']}")
    with KernelBtf(path) as kbtf:
        assert kbtf.mark_victim_args() == doc["facts"]["btf_mark_victim_args"]
        assert kbtf.has_func("oom_kill_process") is True
        assert kbtf.has_func("mark_oom_victim") is doc["facts"]["btf_has_mark_oom_victim"]
        fields = struct_fields(kbtf.ptr, "trace_event_raw_mark_victim")
        assert {k: list(v) for k, v in fields.items()} == doc["facts"]["btf_tp_struct"]
    with pytest.raises(OSError, match="cannot load the kernel's BTF"):
        KernelBtf(os.path.join(share, "no-such-btf"))


# ---- every agent: its plan, its records ------------------------------------------------------------

@qemu
@pytest.mark.parametrize("gid,agent", AGENTS, ids=AGENT_IDS)
def test_agent_runs_the_forced_plan_and_exits_cleanly(matrix, gid, agent):
    a = agent_of(guest(matrix, gid), agent)
    assert a["ready_line"], a["stderr"]
    backend, victim, context, task, _ = agent
    line = f"hooks victim={victim} context={context}" + (" (oom_kill_process)" if context == "kprobe" else "")
    if victim == "tracepoint":
        line += f" task={task}" + (" (mark_oom_victim)" if task == "kprobe" else "")
    delivery = "delivery OTLP grpc to http://127.0.0.1:" if a["otlp"] else "delivery JSON on stdout"
    assert f"{line}, backend {backend}; {delivery}" in a["ready_line"]
    assert a["alive_after_cases"] is True  # the global OOM did not take the agent
    assert a["exit_code"] == 0, a["stderr"]
    assert "Traceback" not in a["stderr"]
    assert "ERROR" not in a["stderr"], a["stderr"]


@qemu
@pytest.mark.parametrize("gid,agent", AGENTS, ids=AGENT_IDS)
def test_memcg_kill(matrix, gid, agent):
    doc = guest(matrix, gid)
    c = case_of(doc, agent, "memcg")
    (pid,) = c["victims"]
    d, line = killed_line(decisions(c["kmsg"]), pid)
    assert line["prefix"] == "Memory cgroup out of memory"
    assert d.summary.constraint == "memcg" and d.summary.oom_memcg == c["cgroup"] and d.summary.pid == pid
    assert d.limit_kb * 1024 == c["limit"] == 32 * MiB
    a = record_of(c, pid)
    check_killed(a, d, line, doc, Plan.of(agent, doc), pid, c["cgroup"])
    assert a["oom.trigger.pid"] == pid  # it allocated its own way into the limit
    assert c["unobserved"] == 0


@qemu
@pytest.mark.parametrize("gid,agent", AGENTS, ids=AGENT_IDS)
def test_bystander_kill_victim_is_not_the_trigger(matrix, gid, agent):
    doc = guest(matrix, gid)
    c = case_of(doc, agent, "bystander")
    plan = Plan.of(agent, doc)
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
        check_killed(a, d, line, doc, plan, pid, c["cgroup"], after_a_reaped_victim=pid == allocator)
        assert a["oom.trigger.pid"] == allocator
    if full_task_expected(plan, a1, allocator, bystander) or plan.rich_tracepoint:
        assert a1["oom.victim.oom_score_adj"] == 1000
    if plan.context != "none":
        assert a1["oom.decision.id"] != a2["oom.decision.id"]  # two decisions, two ids
    assert c["unobserved"] == 0


@qemu
@pytest.mark.parametrize("gid,agent", V2_AGENTS, ids=V2_AGENT_IDS)
def test_oom_group_kill_reports_every_member(matrix, gid, agent):
    doc = guest(matrix, gid)
    c = case_of(doc, agent, "group")
    plan = Plan.of(agent, doc)
    members = c["victims"]
    allocator = members[-1]
    assert set(c["returncodes"].values()) == {-9}
    assert c["memory_events"].get("oom_group_kill", 1) == 1  # counted since 5.12
    d = killed_line(decisions(c["kmsg"]), allocator)[0]
    assert d.group and d.summary.constraint == "memcg" and d.summary.oom_memcg == c["cgroup"]
    assert d.summary.pid == allocator  # the largest member is chosen, then the group goes with it
    assert {int(k["pid"]) for k in d.killed} == set(members)
    # one record per member, none twice (the kernel prints and counts the chosen one twice)
    assert sorted(r["attributes"]["process.pid"] for r in c["records"]) == sorted(members)
    ids = set()
    for pid in members:
        a = record_of(c, pid)
        check_killed(a, d, killed_line([d], pid)[1], doc, plan, allocator, c["cgroup"], group_member=pid != allocator)
        assert a["oom.trigger.pid"] == allocator
        ids.add(a.get("oom.decision.id"))
        # the agent read the kill only after the cgroup was removed (group_case): the group is what the
        # kernel read at the kill, for every victim whose cgroup chain was read; never a wrong one
        if a["oom.victim.source"] == "task":
            assert a.get("oom.group.path") == c["cgroup"], pid
        else:
            assert a.get("oom.group.path") in (c["cgroup"], None), pid
    if plan.context != "none":
        assert len(ids) == 1 and None not in ids  # the same decision for every member
    # the kernel counted 4 kills for 3 victims (the chosen one twice): reconciliation expects it
    assert c["unobserved"] == 0


@qemu
@pytest.mark.parametrize("gid,agent", AGENTS, ids=AGENT_IDS)
def test_a_victim_already_exiting_is_reported_though_not_killed(matrix, gid, agent):
    """task_will_free_mem(): the chosen task is already exiting (held at its exit by ptrace), so the
    kernel marks it as a victim without killing it: no "Killed process" line, no oom_kill count, no
    OOM report, only the OOM reaper's line. mark_victim fires (mark_oom_victim marks it), so every
    plan reports it; its details are checked against its /proc status read while it was held. Then
    the allocator hits the limit again and is killed the ordinary way."""
    doc = guest(matrix, gid)
    c = case_of(doc, agent, "exiting")
    plan = Plan.of(agent, doc)
    exiting, allocator = c["victims"]
    assert c["returncodes"] == {str(exiting): -9, str(allocator): -9}
    assert killed_lines(c["kmsg"], exiting) == [] and reaped(c["kmsg"], exiting)
    events = c["memory_events"]
    assert events["oom_kill"] == 1  # the allocator only
    st = c["exiting_status"]
    a = record_of(c, exiting)
    full = full_task_expected(plan, a, allocator, exiting)
    want = {"comm": st["Name"], "uid": st["Uid"], "adj": st["oom_score_adj"], "vm": st["VmSize"],
            "anon": st["RssAnon"], "file": st["RssFile"], "shmem": st["RssShmem"], "pgt": st["VmPTE"]}
    check_victim(a, want, plan, full)
    assert st["oom_score_adj"] == 1000
    d2, line2 = killed_line(decisions(c["kmsg"]), allocator)
    check_attribution(a, doc, full, allocator, d2.trigger_comm, c["cgroup"])
    if plan.context != "none":
        # no report to compare with: the decision as the kernel must have computed it
        limit = c["limit"]
        assert (a["oom.constraint"], a["oom.constraint.source"]) == ("memcg", "kernel")
        assert (a["oom.memcg.path"], a["oom.memcg.limit"], a["oom.domain.size"]) == (c["cgroup"], limit, limit)
        pages = (st["RssAnon"] + st["RssFile"] + st["RssShmem"] + st["VmSwap"] + st["VmPTE"]) // 4
        # oom_badness() reads the three rss counters as otel-oom does; /proc/PID/status sums them exactly
        assert abs(a["oom.badness"] - (pages + 1000 * (limit // 4096 // 1000))) <= 3 * plan.rss_slack_kb // 4
    else:
        check_derived_memcg(a, plan, full, c["cgroup"], c["limit"])
    b = record_of(c, allocator)
    check_killed(b, d2, line2, doc, plan, allocator, c["cgroup"], after_a_reaped_victim=True)
    if plan.context != "none":
        assert a["oom.decision.id"] != b["oom.decision.id"]
    assert c["unobserved"] == 0


@qemu
@pytest.mark.parametrize("gid,agent", AGENTS, ids=AGENT_IDS)
def test_global_oom_kill(matrix, gid, agent):
    doc = guest(matrix, gid)
    c = case_of(doc, agent, "global")
    plan = Plan.of(agent, doc)
    (pid,) = c["victims"]
    assert c["returncodes"] == {str(pid): -9}
    d, line = killed_line(decisions(c["kmsg"]), pid)
    assert line["prefix"] == "Out of memory"
    assert d.summary.constraint == "global" and d.summary.oom_memcg is None and d.summary.pid == pid
    assert d.tasks[pid]["oom_score_adj"] == 1000
    # totalram_pages + swap, as show_mem printed it, is what /proc/meminfo calls MemTotal + SwapTotal
    mem = c["meminfo_kb"]
    assert d.domain_pages() * 4 == mem["MemTotal"] + mem["SwapTotal"]
    a = record_of(c, pid)
    check_killed(a, d, line, doc, plan, pid, "/")
    if plan.context == "none":
        assert (a["oom.constraint"], a["oom.constraint.source"]) == ("unknown", "none")
    assert a.get("oom.memcg.path") is None
    assert c["unobserved"] == 0


@qemu
@pytest.mark.parametrize("gid,agent", AGENTS, ids=AGENT_IDS)
def test_a_user_space_killers_kill_is_reported(matrix, gid, agent):
    """signal:signal_generate, with either backend (libbpf: tp_btf, the victim's task; bcc: the classic
    tracepoint, its pid and comm): a SIGKILL from a process named like a user-space OOM killer is an
    oom.kill by it, with no OOM decision; and oom.reclaim says when the victim's memory was back."""
    doc = guest(matrix, gid)
    c = case_of(doc, agent, "userspace")
    (pid,) = c["victims"]
    assert c["returncodes"] == {str(pid): -9}
    a = record_of(c, pid)
    assert (a["oom.killer"], a["oom.killer.pid"], a["oom.hook"]) == (c["killer"], c["killer_pid"], "signal_generate")
    assert a["process.executable.name"] == "python3"
    assert "oom.trigger.pid" not in a and a["oom.constraint"] == "unknown" and a.get("oom.decision.id") is None
    # libbpf read the victim's cgroup chain from its task; bcc's classic tracepoint gives its pid: /proc, if in time
    assert a.get("oom.victim.cgroup.path") in ((c["cgroup"],) if agent[0] == "libbpf" else (c["cgroup"], None))
    (r,) = [x["attributes"] for x in c["reclaims"][tag(agent)] if x["attributes"]["process.pid"] == pid]
    assert (r["oom.kill.event.id"], r["oom.killer"]) == (a["oom.event.id"], c["killer"])
    assert r["oom.reclaim.method"] in ("exit", "exit_mmap", "reaper") and r["oom.reclaim.duration"] >= 0
    assert c["unobserved"] == 0  # the kernel counted no kill, the agent none of its own


@qemu
@pytest.mark.parametrize("g", GUESTS, ids=GUEST_IDS)
def test_event_ids_are_unique_across_the_guest(matrix, g):
    doc = guest(matrix, g.id)
    for agent in agents_for(g):
        ids = [r["attributes"]["oom.event.id"] for c in doc["cases"].values()
               for r in c.get("records", {}).get(tag(agent), [])]
        assert len(ids) == len(set(ids)) > 0, tag(agent)


# ---- the bcc backend: the same kills as libbpf, field for field; and BCC's own oomkill ---------------

BCC_GUESTS = [g for g in GUESTS if g.bcc]
# what may differ between two agents watching one kill: the kernel timestamps each program took
PER_PROGRAM = ("oom.event.id", "oom.decision.id")
PER_PROGRAM_RECLAIM = ("oom.record.id", "oom.kill.event.id", "oom.reclaim.duration")
# the kernel's kills; a user-space killer's is seen through tp_btf by libbpf, the classic tracepoint by bcc
KERNEL_CASES = ("memcg", "bystander", "group", "exiting", "global")


def _differences(x: dict, y: dict) -> dict:
    return {k: (x.get(k), y.get(k)) for k in set(x) | set(y) if x.get(k) != y.get(k)}


@qemu
@pytest.mark.parametrize("g", BCC_GUESTS, ids=[g.id for g in BCC_GUESTS])
def test_bcc_records_equal_libbpf_records_field_for_field(matrix, g):
    """The bcc agent (BTF hidden, the kill logic compiled against the headers) and the libbpf agent
    with the same hooks (tracepoint, kprobe context, kprobe task hook) saw the same kills: every
    attribute equal but the two that carry a program's own timestamp; the same decision groups the
    same victims; and the same account of each victim's memory coming back (oom.reclaim)."""
    doc = guest(matrix, g.id)
    libbpf = tag(("libbpf", "tracepoint", "kprobe", "kprobe", "auto"))
    compared = reclaims = 0
    for b in g.bcc:
        bcc = tag(("bcc", "tracepoint", "kprobe", "kprobe", b))
        for case, c in doc["cases"].items():
            if case not in KERNEL_CASES:
                continue
            mine = {r["attributes"]["process.pid"]: r["attributes"] for r in c["records"][bcc]}
            theirs = {r["attributes"]["process.pid"]: r["attributes"] for r in c["records"][libbpf]}
            assert sorted(mine) == sorted(theirs) == sorted(c["victims"]), case
            for pid in c["victims"]:
                x = {k: v for k, v in mine[pid].items() if k not in PER_PROGRAM}
                y = {k: v for k, v in theirs[pid].items() if k not in PER_PROGRAM}
                assert x == y, (case, pid, _differences(x, y))
                compared += 1
            assert _by_decision(mine) == _by_decision(theirs), case
            mine = {r["attributes"]["process.pid"]: r["attributes"] for r in c["reclaims"][bcc]}
            theirs = {r["attributes"]["process.pid"]: r["attributes"] for r in c["reclaims"][libbpf]}
            assert sorted(mine) == sorted(theirs), case
            for pid in mine:
                x = {k: v for k, v in mine[pid].items() if k not in PER_PROGRAM_RECLAIM}
                y = {k: v for k, v in theirs[pid].items() if k not in PER_PROGRAM_RECLAIM}
                assert x == y, (case, pid, _differences(x, y))
                reclaims += 1
    assert compared == len(g.bcc) * sum(len(c["victims"]) for n, c in doc["cases"].items() if n in KERNEL_CASES)
    assert reclaims > 0


def _by_decision(records: dict[int, dict]) -> list[list[int]]:
    """The victims grouped by the decision that killed them (one group per oom.decision.id)."""
    groups: dict[str, list[int]] = {}
    for pid, a in records.items():
        groups.setdefault(a["oom.decision.id"], []).append(pid)
    return sorted(sorted(g) for g in groups.values())


@qemu
@pytest.mark.parametrize("g", [g for g in GUESTS if g.oomkill], ids=[g.id for g in GUESTS if g.oomkill])
def test_bcc_oomkill_tool_agrees_on_trigger_victim_and_pages(matrix, g):
    """BCC's own oomkill (kprobe oom_kill_process: trigger, oc->chosen, oc->totalpages) on the same
    kills, as a reference: one line per decision; otel-oom's record of the chosen victim names the
    same trigger, and its oom.domain.size is those pages. oomkill has no line for the other members
    of a group kill (otel-oom reports each), and calls the totalpages of the OOM domain "pages"."""
    doc = guest(matrix, g.id)
    ref = doc["oomkill"]
    assert ref["ready_s"], ref["output"]
    bcc = tag(("bcc", "tracepoint", "kprobe", "kprobe", g.bcc[0]))
    by_pid = {r["attributes"]["process.pid"]: r["attributes"] for c in doc["cases"].values() for r in c["records"][bcc]}
    # one oomkill line per oom_kill_process call, naming oc->chosen: every victim of the kernel's kills
    # but the group's other members (the already-exiting victim too: the shortcut is inside oom_kill_process)
    group = doc["cases"]["group"]["victims"]
    chosen = [pid for n, c in doc["cases"].items() if n in KERNEL_CASES for pid in c["victims"] if pid not in group[:-1]]
    assert [k["pid"] for k in ref["kills"]] == chosen, ref["output"][-20:]
    for k in ref["kills"]:
        a = by_pid[k["pid"]]
        assert (k["tpid"], k["comm"], k["tcomm"]) == (a["oom.trigger.pid"], a["process.executable.name"],
                                                    a["oom.trigger.executable.name"])
        assert k["pages"] * 4096 == a["oom.domain.size"]


# ---- on the host: the classic tracepoint's own fields -----------------------------------------------

@pytest.mark.root
def test_host_tracepoint_fields_when_the_victim_is_not_the_trigger(start_agent):
    """The rich mark_victim layout on the host's own kernel (6.18), without a context hook: the
    bystander's record is built from the tracepoint's fields alone, the allocator's from its task."""
    from otel_oom.cgroupfs.hierarchy import detect_memory_hierarchy
    from otel_oom.reconcile.kmsg import read_kmsg
    from testing.otlp_receiver import OtlpGrpcReceiver
    from tests.qemu.guest_cases import bystander_case

    require_root_bpf()
    h = detect_memory_hierarchy()
    require(h is not None, "needs a memory cgroup hierarchy")
    with OtlpGrpcReceiver() as receiver:
        agent = start_agent(["--victim-hook", "tracepoint", "--context-hook", "none"], receiver.endpoint)
        assert "hooks victim=tracepoint context=none task=none" in agent.stderr
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
    doc = {"facts": {"hierarchy": {"version": h.version}, "release": os.uname().release, "cpus": os.cpu_count(),
                     "page_size": os.sysconf("SC_PAGE_SIZE")}, "runner_pid": os.getpid()}
    plan = Plan("libbpf", "tracepoint", "none", "none", rich_tracepoint=True, rss_slack_kb=rss_slack_kb(doc))
    a1, a2 = record_of(c, bystander), record_of(c, allocator)
    # on the host the victims run this interpreter, whatever its file is called (a venv's `python`)
    host_comm = os.path.basename(sys.executable)[:15]
    # comm, uid, sizes, oom_score_adj of the bystander: the tracepoint's own fields
    check_victim(a1, line1, plan, full=False, comm=host_comm)
    check_victim(a2, line2, plan, full=True, comm=host_comm)  # the allocator is current: read from its task
    assert a1["oom.victim.oom_score_adj"] == 1000
    check_attribution(a1, doc, False, allocator, d1.trigger_comm, c["cgroup"])
    assert a1.get("process.parent_pid") is None  # proof that no task was read for the bystander
    check_derived_memcg(a1, plan, False, c["cgroup"], d1.limit_kb * 1024)
    check_attribution(a2, doc, True, allocator, d2.trigger_comm, c["cgroup"])
    # derived unless the bystander's reaping raced it
    check_derived_memcg(a2, plan, True, c["cgroup"], d2.limit_kb * 1024, after_a_reaped_victim=True)


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
    from otel_oom.cgroupfs.hierarchy import MemoryHierarchy

    # cgroup v1 shows every exiting task in the root cgroup; PF_EXITING (0x4) or a vanished task
    # means "/" says nothing about where the victim lived
    root = _proc(tmp_path, 77, "5:memory:/\n0::/user.slice\n", flags)
    hierarchy = MemoryHierarchy(version=1, mount="/sys/fs/cgroup/memory", hierarchy_id=5, controllers="memory")
    assert Enricher(hierarchy, "b", proc_root=root)._path_from_proc(77) == expected


def test_v2_deleted_cgroup_suffix_is_dropped(tmp_path):
    from otel_oom.cgroupfs.hierarchy import MemoryHierarchy

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


# ---- the harness's private APT configuration ------------------------------------------------------

def test_other_suites_come_through_a_private_apt_config(tmp_path):
    """Suites and architectures beyond the system's are read through an APT configuration of their
    own under the cache: its sources, lists and archives live there, the system's are never read
    (SourceParts /dev/null) nor written."""
    from tests.qemu import apt

    conf = apt.private_config(str(tmp_path), "bullseye", "arm64")
    with open(conf) as f:
        text = f.read()
    root = tmp_path / "apt" / "bullseye-arm64"
    assert f'Dir::Etc::SourceList "{root}/sources.list";' in text
    assert 'Dir::Etc::SourceParts "/dev/null";' in text
    assert f'Dir::State::Lists "{root}/lists";' in text and f'Dir::Cache "{root}/cache";' in text
    assert 'APT::Architecture "arm64";' in text
    assert (root / "sources.list").read_text() == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security "
        "bullseye-security main\n")
    assert "security" not in apt.sources("sid")
    assert apt.Apt(str(tmp_path)).env == {}  # bookworm on amd64: the system's own sources
    assert apt.Apt(str(tmp_path), "sid").env == {"APT_CONFIG": str(tmp_path / "apt" / "sid-amd64" / "apt.conf")}


def test_group_members_without_a_cgroup_chain_get_the_decisions_memcg_path():
    """A pid-only tracepoint without the task hook reports the group's other members with no cgroup
    chain; the decision's memcg path comes from what its first victim's chain taught (the chosen
    one, read from its task), not from an inode lookup that loses the race with the cgroup's
    removal (seen on 5.10 in the matrix)."""
    from otel_oom.kernel.wire import MemcgLevel, OomEvent

    limit = 64 * MiB

    def event(victim: int, levels: tuple, decision_ns: int = 10**9) -> OomEvent:
        return OomEvent(timestamp_ns=decision_ns + victim, boot_clock=True, hook="tracepoint", context_hook="fentry",
                        victim_tgid=victim if levels else None, victim_pid=victim, victim_comm="w" if levels else "",
                        victim_ppid=None, victim_uid=None, oom_score_adj=None, total_vm_bytes=None,
                        anon_rss_bytes=None, file_rss_bytes=None, shmem_rss_bytes=None, pgtables_bytes=None,
                        victim_memcgs=levels, victim_memcgs_complete=True, trigger_tgid=7, trigger_pid=7,
                        trigger_comm="t", trigger_memcg_ids=(50, 1), context=True, decision_ns=decision_ns,
                        domain_bytes=limit, badness_points=1, chosen_tgid=7, memcg_id=50, memcg_usage_bytes=limit,
                        memcg_limit_bytes=limit, gfp_mask=0, order=0, constraint="memcg",
                        victim_source="task" if levels else "pid")

    e = Enricher(None, "b")  # no resolver: the path can only come from the decision's first victim
    chain = (MemcgLevel(50, "grp", limit, limit), MemcgLevel(1, "", limit, None))
    assert e.enrich(event(7, chain)).memcg_path == "/grp"
    assert e.enrich(event(8, ())).memcg_path == "/grp"  # same decision, no chain of its own
