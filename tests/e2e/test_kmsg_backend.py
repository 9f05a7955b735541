"""The kmsg backend for real: the agent process with bpf() refused, real kills, the real /dev/kmsg.

The agent runs as `python -m otel_oom run` (testing/agent_process.py) under two real restrictions
at once: a seccomp filter that makes bpf() fail with EPERM (testing/no_bpf.py, as the profile of a
hardened cluster does), and a capability bounding set of CAP_SYSLOG alone (`setpriv`), which is what
the chart's kmsg mode grants. Seccomp is what makes BPF impossible whatever the privileges; the
bounding set proves the mode needs nothing more. A second agent with the libbpf backend watches the
same kills, so the two backends' records are compared field for field where both know the field.

Kills are caused in a throwaway v1/v2 memory cgroup named `otel-oom-kmsgbe-*`: a few that get the
kernel's full report, then a storm fast enough that the kernel rate-limits its reports (summary
line included) while every kill keeps its "Killed process" line. The memcg's own oom_kill counter
is the truth every count is held to. Other tests on this host kill too: only records of this
cgroup's victims count here. Lines a root process writes into /dev/kmsg (user facility), shaped
like the kernel's and naming this cgroup and a real pid in it, must never become kills.
"""
from __future__ import annotations

import os
import secrets
import signal
import sys
import time

import pytest
from conftest import after_the_oom_report_rate_limit, require, require_root_bpf, require_tool

from otel_oom.reconcile.kmsg import read_kmsg
from otel_oom.reconcile.oom_report import recovered_kills
from otel_oom.trigger import ThrowawayCgroup, TriggerError, memory_hierarchy, oom_kill_counter
from testing.agent_process import AgentProcess, agent_env
from testing.otlp_receiver import OtlpGrpcReceiver
from testing.storm import kill_repeatedly

pytestmark = pytest.mark.root
MiB = 1 << 20
PREFIX = "otel-oom-kmsgbe"
FULL_REPORTS, STORM = 4, 60
# what the two backends know differently by design (docs/coverage.md): the hook, and the id made
# from its clock; where each value came from (the *.source fields); and the OOMing memcg's usage,
# which the log gives as the kernel printed it at the OOM while BPF without a context hook (this
# kernel refuses fentry) has it derived from the cgroup files when the agent attributes the kill,
# later (by when the next victim's allocations may be in the cgroup)
KNOWN_DIFFERENT = {"oom.hook", "oom.context_hook", "oom.task_hook", "oom.event.id", "oom.decision.id",
                   "oom.victim.source", "oom.memcg.source", "oom.constraint.source", "oom.memcg.evidence",
                   "oom.memcg.usage"}


def no_bpf_prefix() -> tuple[str, ...]:
    """bpf() refused by seccomp, and CAP_SYSLOG the only capability left."""
    setpriv = require_tool("setpriv")
    return (setpriv, "--inh-caps=-all", "--bounding-set=-all,+syslog", sys.executable, "-m", "testing.no_bpf")


def start(prefix: tuple[str, ...], args: list[str], endpoint: str, spool) -> AgentProcess:
    return AgentProcess([*args, "--oom-score-adj=keep", "--reconcile-interval=1", f"--spool-dir={spool}"],
                        agent_env(endpoint), ready_timeout=60, prefix=prefix)


@pytest.fixture
def cgroup():
    require(os.geteuid() == 0, "needs root for OOM kills and /dev/kmsg")
    require(os.path.exists("/dev/kmsg"), "needs /dev/kmsg")
    try:
        mount, version = memory_hierarchy()
    except TriggerError as e:
        require(False, str(e))
        raise
    cg = ThrowawayCgroup(mount, version, [f"{PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"])
    cg.create(16 * MiB)
    yield cg
    cg.remove()


def forge(path: str, pid: int) -> None:
    """Lines shaped like the kernel's report of a kill of `pid` in `path`, written as any root process
    can: the kernel stores them with the user facility, whatever priority they claim."""
    with open("/dev/kmsg", "w") as f:
        for line in (f"<0>oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
                     f"oom_memcg={path},task_memcg={path},task=python3,pid={pid},uid=0",
                     f"<3>Memory cgroup out of memory: Killed process {pid} (python3) total-vm:9000kB, "
                     "anon-rss:8000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:64kB oom_score_adj:0"):
            f.write(line + "\n")
            f.flush()


def mine(records: list[dict], cg: ThrowawayCgroup, victims: set[int]) -> list[dict]:
    return [r["attributes"] for r in records if r["event_name"] == "oom.kill"
            and (r["attributes"].get("oom.victim.cgroup.path") == cg.rel or r["attributes"]["process.pid"] in victims)]


def test_without_bpf_every_kill_arrives_once_as_the_kernel_printed_it_and_as_libbpf_saw_it(cgroup, tmp_path):
    require_root_bpf()  # for the libbpf agent beside it
    after_the_oom_report_rate_limit()
    with OtlpGrpcReceiver() as rx_kmsg, OtlpGrpcReceiver() as rx_bpf:
        kmsg = start(no_bpf_prefix(), ["--backend=auto"], rx_kmsg.endpoint, tmp_path / "spool-kmsg")
        bpf = start((), ["--backend=libbpf"], rx_bpf.endpoint, tmp_path / "spool-bpf")
        try:
            # auto fell back, with one warning saying why, and runs the kmsg backend
            warnings = [line for line in kmsg.stderr_lines if "eBPF cannot be used on this node" in line]
            assert len(warnings) == 1, kmsg.stderr
            assert "kills from the kernel log /dev/kmsg, backend kmsg (no BPF)" in kmsg.stderr, kmsg.stderr
            victims = kill_repeatedly(cgroup, FULL_REPORTS)
            forge(cgroup.rel, victims[0])  # a pid the kernel really killed: a forged second kill of it
            victims += kill_repeatedly(cgroup, STORM)
            counted = oom_kill_counter(cgroup.leaf, cgroup.version)
            assert counted == len(victims) == FULL_REPORTS + STORM
            pids = set(victims)
            for rx in (rx_kmsg, rx_bpf):
                rx.wait_for_logs(lambda recs: len(mine(recs, cgroup, pids)) >= counted, 120)
            time.sleep(2)  # a duplicate or a forged kill would come within the same poll
            got = {name: mine(rx.log_records(), cgroup, pids) for name, rx in (("kmsg", rx_kmsg), ("bpf", rx_bpf))}
        finally:
            codes = (kmsg.stop(), bpf.stop())
        assert codes == (0, 0), kmsg.stderr[-3000:] + bpf.stderr[-3000:]

    # exactly once each, and nothing else: the forged lines are no kill
    for name in ("kmsg", "bpf"):
        assert sorted(a["process.pid"] for a in got[name]) == sorted(victims), name
    by_pid = {name: {a["process.pid"]: a for a in got[name]} for name in got}
    # as the kernel printed them: the kernel's own records of the same kills
    printed = {k.pid: k for k in recovered_kills(read_kmsg()) if k.pid in pids}
    assert len(printed) >= FULL_REPORTS, "the kernel log lost this test's kills (flooded by another test?)"
    for pid, k in printed.items():
        a = by_pid["kmsg"][pid]
        assert a["oom.hook"] == "kmsg" and a["oom.recovered"] is False
        assert (a["process.executable.name"], a["process.real_user.id"]) == (k.comm, k.uid)
        assert (a["oom.victim.memory.anon_rss"], a["oom.victim.memory.file_rss"], a["oom.victim.memory.shmem_rss"],
                a["oom.victim.memory.total_vm"]) == (k.anon_rss_kb * 1024, k.file_rss_kb * 1024,
                                                      k.shmem_rss_kb * 1024, k.total_vm_kb * 1024)
    # the cgroup: from the report's summary line, or from the kill counters that rose; never another one
    paths = [a.get("oom.victim.cgroup.path") for a in got["kmsg"]]
    assert set(paths) <= {cgroup.rel, None}
    # the storm made the kernel suppress summary lines; those kills still got their cgroup from the
    # counters (all of them on a quiet host; a kill elsewhere between two counter reads leaves it out)
    suppressed = [pid for pid, k in printed.items() if k.task_memcg is None]
    assert suppressed, "the storm did not make the kernel rate-limit its reports"
    told = [pid for pid in suppressed if by_pid["kmsg"][pid].get("oom.victim.cgroup.path") == cgroup.rel]
    assert len(told) >= len(suppressed) / 2, (len(told), len(suppressed))
    # the same kills under libbpf: the same values wherever both backends know the field
    for pid in victims:
        a, b = by_pid["kmsg"][pid], by_pid["bpf"][pid]
        both = (set(a) & set(b)) - KNOWN_DIFFERENT
        assert {k: a[k] for k in both} == {k: b[k] for k in both}, (pid, {k: (a[k], b[k]) for k in both
                                                                           if a[k] != b[k]})
    assert "oom.victim.cgroup.path" in by_pid["kmsg"][victims[0]]  # a full report names it


def write_user_lines(total_bytes: int) -> None:
    """Fill the kernel's log with user-facility lines: one open per 10 lines, since /dev/kmsg
    rate-limits each open file's writes to 10 lines per 5 s."""
    line = ("otel-oom-kmsgbe overrun filler " + "x" * 900 + "\n").encode()
    written = 0
    while written < total_bytes:
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        try:
            for _ in range(10):
                os.write(fd, line)
                written += len(line)
        finally:
            os.close(fd)


def dropped(rx: OtlpGrpcReceiver, reason: str) -> int:
    points = [p for p in rx.metric_points("otel_oom.events.dropped", latest=True)
              if p["attributes"].get("reason") == reason]
    return int(points[0]["value"]) if points else 0


def test_a_reader_overrun_is_counted_and_the_kill_it_lost_is_unobserved(cgroup, tmp_path):
    import ctypes

    buffer_bytes = ctypes.CDLL(None).klogctl(10, None, 0)  # SYSLOG_ACTION_SIZE_BUFFER
    require(buffer_bytes > 0, "cannot read the kernel log buffer's size")
    after_the_oom_report_rate_limit()
    with OtlpGrpcReceiver() as rx:
        agent = start(no_bpf_prefix(), ["--backend=kmsg"], rx.endpoint, tmp_path / "spool")
        try:
            os.kill(agent.proc.pid, signal.SIGSTOP)  # a reader that falls behind
            try:
                (victim,) = kill_repeatedly(cgroup, 1)
                write_user_lines(2 * buffer_bytes)  # the kill's lines are overwritten before it reads them
            finally:
                os.kill(agent.proc.pid, signal.SIGCONT)
            rx.wait_for_logs(lambda _: dropped(rx, "kmsg_overrun") > 0, 60)
            lost = dropped(rx, "kmsg_overrun")
            assert lost >= buffer_bytes // 1024  # at least the filler lines that did not fit
            # the kernel counted the kill no line told: the reconciler's count says so
            rx.wait_for_logs(lambda _: any(p["value"] >= 1 for p in rx.metric_points("oom.kills.unobserved")), 60)
            assert victim not in {r["attributes"]["process.pid"] for r in rx.log_records()}
        finally:
            code = agent.stop()
        assert code == 0, agent.stderr[-3000:]


def check(prefix: tuple[str, ...], *args: str) -> tuple[int, dict[str, str]]:
    """`otel-oom check` as a real process: (exit code, its report's lines by label)."""
    import subprocess

    from testing.agent_process import REPO

    r = subprocess.run([*prefix, sys.executable, "-m", "otel_oom", "check", *args], cwd=REPO, env=agent_env(),
                       capture_output=True, text=True, timeout=300)
    lines = {}
    for line in r.stdout.splitlines():
        label, _, value = line.strip().partition(": " if line.startswith("result:") else "  ")
        lines.setdefault(label.strip(), value.strip())
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, lines


def test_check_says_which_backend_runs_and_what_each_gives():
    require(os.geteuid() == 0, "needs root for /dev/kmsg and BPF")
    require_root_bpf()
    refused = no_bpf_prefix()
    code, lines = check(refused)  # auto, where bpf() is refused
    assert code == 0, lines
    assert lines["will run"].startswith("kmsg: eBPF cannot be used here"), lines
    assert lines["/dev/kmsg"].startswith("readable:") and "user-space OOM killers" in lines["cannot see"]
    code, lines = check(refused, "--backend=kmsg")
    assert (code, lines["will run"]) == (0, "kmsg (asked for)"), lines
    code, lines = check(refused, "--backend=libbpf")  # asked for BPF where it is refused: not ready
    assert code == 1 and "will run" not in lines and lines["result"].startswith("NOT READY"), lines
    code, lines = check(())  # a node where BPF loads: libbpf, and what kmsg would give there
    assert code == 0 and lines["will run"].startswith("libbpf: "), lines
    assert "gives" in lines and "cannot see" in lines


def test_through_syslog2_a_real_kill_is_read_and_user_lines_are_no_kill(cgroup):
    """Where /dev/kmsg may not be opened (a container's device cgroup), the source reads the same log
    through syslog(2): a real kill arrives with what the kernel printed, a forged line does not."""
    from otel_oom.kernel.kmsg_source import KmsgSource
    from otel_oom.kernel.syslog_reader import SyslogReader

    after_the_oom_report_rate_limit()
    got: list = []
    source = KmsgSource(got.append, reader=SyslogReader())
    try:
        forge(cgroup.rel, os.getpid())
        (victim,) = kill_repeatedly(cgroup, 1)
        deadline = time.monotonic() + 90
        while not any(k.pid == victim for k in got) and time.monotonic() < deadline:
            source.poll(100)
        source.poll(0)
    finally:
        source.close()
    assert os.getpid() not in {k.pid for k in got}
    (k,) = [k for k in got if k.pid == victim]
    (printed,) = [p for p in recovered_kills(read_kmsg()) if p.pid == victim]
    assert (k.comm, k.task_memcg, k.anon_rss_kb, k.total_vm_kb) == (printed.comm, cgroup.rel, printed.anon_rss_kb,
                                                                    printed.total_vm_kb)
