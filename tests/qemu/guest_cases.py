"""Inside a throwaway QEMU guest: every hook plan's agent at once, real OOM kills, everything recorded.

`python3 -m tests.qemu.guest_cases --out FILE` runs as root in a guest booted by `harness.boot()`.
It starts, one after another, a real `python -m otel_oom run` for every hook plan the guest kernel
offers (victim x context x task hook; see guest_agents.py), optionally bcc agents with the kernel's
BTF hidden and BCC's own `oomkill` tool, all against one real OTLP gRPC receiver on 127.0.0.1; then,
with all of them watching the same kills, causes one after another:

  memcg      one memcg OOM kill (`trigger_oom`, 32 MiB limit; cgroup v2 or v1, whatever is mounted);
  bystander  victim != trigger: an allocator fills a 48 MiB cgroup, the kernel kills a sleeper
             with oom_score_adj 1000 there, then the allocator itself (two decisions);
  group      a memory.oom.group kill (cgroup v2 only): 2 sleepers + 1 allocator in a 64 MiB cgroup,
             the agents stopped until the cgroup is removed (see group_case);
  exiting    the task_will_free_mem() shortcut: the chosen task is already exiting, so it is marked
             as a victim without a kill; then the allocator is killed (see exiting_case);
  userspace  a user-space OOM killer: a process named systemd-oomd SIGKILLs a sleeper;
  global     a global (non-memcg) OOM kill: an allocator with oom_score_adj 1000 outside any limit.

After each case it waits for every agent's records of every victim (`oom.kill`, then `oom.reclaim`:
when its memory was back), then reads each agent's `oom.kills.unobserved` from its /metrics once
two reconciliations have passed. It only collects:
what the kernel offers (BTF, tracefs, `otel-oom check`), the records, the unobserved counts, and
the kernel log of each kill. tests/test_kernel_matrix.py judges it on the host. The global OOM puts
the whole machine out of memory, so this refuses to run anywhere but in a QEMU test guest
(OTEL_OOM_QEMU_GUEST=1 and a kernel booted with panic=-1 by the harness).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import Optional

CASES = ("memcg", "bystander", "group", "exiting", "userspace", "global")
USERSPACE_KILLER = "systemd-oomd"  # one of the agents' default --userspace-killers
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20

# A member of a test cgroup joins it, touches `mb` MiB, says so, then by role:
#   sleeper    waits (reading stdin) until it is killed;
#   bystander  the same, but with oom_score_adj 1000 so the kernel picks it over any allocator;
#   allocator  on the parent's go byte allocates until the kernel kills it.
_MEMBER = r"""
import os, sys
procs, mb, role = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
if role == "bystander":
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
held = []
for _ in range(mb):
    chunk = bytearray(1 << 20)
    chunk[::4096] = b"\1" * 256
    held.append(chunk)
sys.stdout.write("ready\n")
sys.stdout.flush()
if role != "allocator":
    sys.stdin.buffer.read()
    sys.exit(3)
if sys.stdin.buffer.read(1) != b"g":
    sys.exit(3)
while True:
    chunk = bytearray(1 << 20)
    chunk[::4096] = b"\1" * 256
    held.append(chunk)
"""

# The global OOM victim: the most attractive task in the guest (oom_score_adj 1000), in no limited
# memcg, allocating until the kernel runs out of memory for everyone and kills it.
_GLOBAL = r"""
import sys
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
sys.stdout.write("ready\n")
sys.stdout.flush()
if sys.stdin.buffer.read(1) != b"g":
    sys.exit(3)
held = []
while True:
    chunk = bytearray(16 << 20)
    chunk[::4096] = b"\1" * 4096
    held.append(chunk)
"""


_T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr (the guest's serial output), stamped with seconds since start."""
    sys.stderr.write(f"[{time.monotonic() - _T0:7.2f}] {msg}\n")
    sys.stderr.flush()


class CaseError(Exception):
    """A case could not cause the kill it was meant to cause; recorded, the next case still runs."""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _vmstat_oom_kill() -> int:
    return _keyed(_read("/proc/vmstat")).get("oom_kill", -1)


def _meminfo_kb() -> dict[str, int]:
    return {k.rstrip(":"): int(v.split()[0]) for k, v in
            (line.split(None, 1) for line in _read("/proc/meminfo").splitlines())}


def _wait_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise CaseError(f"pid {proc.pid} wrote no line within {timeout:g}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise CaseError(f"pid {proc.pid} exited early: {proc.wait()} "
                            f"{proc.stderr.read().decode(errors='replace')[-300:]}")
        buf += chunk
    return buf.decode().strip()


def _reap(procs: list[subprocess.Popen], timeout: float) -> dict[int, Optional[int]]:
    """Wait for every process; SIGKILL the ones still running at the deadline. pid -> returncode."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    out = {p.pid: p.returncode for p in procs}
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        for s in (p.stdin, p.stdout, p.stderr):
            if s:
                s.close()
    return out


def _rmdir(path: str, wait: float = 10.0) -> None:
    deadline = time.monotonic() + wait
    while os.path.isdir(path):
        try:
            os.rmdir(path)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---- what the kernel offers -----------------------------------------------------------------

def tracefs_fields(fmt: str) -> dict[str, list[int]]:
    """Non-common fields of a tracefs event format, named as BTF names them, -> [offset, size]."""
    out = {}
    for m in re.finditer(r"field:(.*?);\s*offset:(\d+);\s*size:(\d+);", fmt):
        decl = m.group(1).strip()
        name = re.sub(r"\[.*\]$", "", decl.split()[-1])
        if name.startswith("common_"):
            continue
        if decl.startswith("__data_loc"):
            name = "__data_loc_" + name  # how struct trace_event_raw_* names the field in BTF
        out[name] = [int(m.group(2)), int(m.group(3))]
    return out


def kernel_facts(copy_btf_to: Optional[str]) -> dict:
    from otel_oom.cgroupfs.hierarchy import detect_memory_hierarchy
    from otel_oom.kernel.btf import KernelBtf, LayoutMismatch, struct_fields
    from otel_oom.kernel.features import CONTEXT_HOOKS, VICTIM_HOOKS, detect_features

    facts: dict = {"release": os.uname().release, "proc_version": _read("/proc/version").strip(),
                   "page_size": os.sysconf("SC_PAGE_SIZE"), "cpus": os.cpu_count(), "meminfo_kb": _meminfo_kb()}
    h = detect_memory_hierarchy()
    facts["hierarchy"] = {"version": h.version, "mount": h.mount} if h else None
    try:
        facts["tracefs_format"] = _read("/sys/kernel/tracing/events/oom/mark_victim/format")
    except OSError as e:
        facts["tracefs_format"] = f"ERROR {e.strerror}"
    facts["tracefs_fields"] = tracefs_fields(facts["tracefs_format"])
    with KernelBtf() as kbtf:
        facts["btf_mark_victim_args"] = kbtf.mark_victim_args()
        facts["btf_has_oom_kill_process"] = kbtf.has_func("oom_kill_process")
        facts["btf_has_mark_oom_victim"] = kbtf.has_func("mark_oom_victim")
        try:
            fields = struct_fields(kbtf.ptr, "trace_event_raw_mark_victim")
            facts["btf_tp_struct"] = {k: list(v) for k, v in fields.items()}
        except LayoutMismatch as e:
            facts["btf_tp_struct"] = {"error": str(e)}
    f = detect_features()
    facts["features"] = {hook: f.available(hook) for hook in (*VICTIM_HOOKS, *CONTEXT_HOOKS)}
    facts["features"].update({f"task_{hook}": f.task_available(hook) for hook in ("fentry", "kprobe")})
    facts["feature_reasons"] = f.reasons
    facts["kprobe_symbol"] = f.kprobe_symbol
    facts["task_kprobe_symbol"] = f.task_kprobe_symbol
    facts["kallsyms_oom_kill_process"] = sorted(
        line.split()[2] for line in _read("/proc/kallsyms").splitlines()
        if len(line.split()) >= 3 and line.split()[2].split(".")[0] == "oom_kill_process")
    if copy_btf_to:
        with open("/sys/kernel/btf/vmlinux", "rb") as src, open(copy_btf_to, "wb") as dst:
            dst.write(src.read())
        facts["btf_copy"] = copy_btf_to
    return facts


def run_check(without_btf: bool = False, *args: str) -> dict:
    from .guest_agents import WITHOUT_BTF, agent_env

    t0 = time.monotonic()
    argv = [sys.executable, "-m", "otel_oom", "check", *args]
    r = subprocess.run((WITHOUT_BTF if without_btf else []) + argv, cwd=REPO, capture_output=True, text=True,
                       env=agent_env(None), timeout=900)
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-3000:],
            "seconds": round(time.monotonic() - t0, 2)}


# ---- the cases --------------------------------------------------------------------------------

def memcg_case(tag: str) -> dict:
    from otel_oom.trigger import trigger_oom

    kill = trigger_oom(limit_bytes=32 * MiB, cgroup=f"/kmx-{tag}-memcg", timeout=120)
    return {"victims": [kill.victim_pid], "cgroup": kill.cgroup_path, "limit": 32 * MiB,
            "hierarchy_version": kill.hierarchy_version, "memcg_oom_kills": kill.memcg_oom_kills,
            "victim_comm": kill.victim_comm.decode("utf-8", "surrogateescape")}


class TestCgroup:
    """A throwaway memory cgroup (v1 or v2) with a limit read back before anything may allocate in it."""

    def __init__(self, mount: str, version: int, rel: str, limit: int, oom_group: bool = False):
        self.mount, self.version, self.rel, self.limit = mount, version, rel, limit
        self.leaf = mount + rel
        if oom_group and version != 2:
            raise CaseError("memory.oom.group is a cgroup v2 interface")
        os.mkdir(self.leaf)
        try:
            if version == 2:
                self._set("memory.max", limit)
                if os.path.exists(f"{self.leaf}/memory.swap.max"):
                    _write(f"{self.leaf}/memory.swap.max", "0")
                if oom_group:
                    _write(f"{self.leaf}/memory.oom.group", "1")
            else:
                self._set("memory.limit_in_bytes", limit)
                if os.path.exists(f"{self.leaf}/memory.memsw.limit_in_bytes"):
                    self._set("memory.memsw.limit_in_bytes", limit)
                _write(f"{self.leaf}/memory.oom_control", "0")  # v1 children inherit a disabled killer
        except BaseException:
            _rmdir(self.leaf)
            raise

    def _set(self, name: str, value: int) -> None:
        _write(f"{self.leaf}/{name}", str(value))
        if int(_read(f"{self.leaf}/{name}")) != value:
            raise CaseError(f"{self.leaf}/{name} did not take {value}; refusing to allocate without a limit")

    def events(self) -> dict[str, int]:
        return _keyed(_read(f"{self.leaf}/{'memory.events' if self.version == 2 else 'memory.oom_control'}"))

    def run(self, members: list[tuple[str, int]], timeout: float = 120) -> dict:
        """Start (role, MiB) members in order; the last must be the allocator. pid -> returncode, by role."""
        procs: list[subprocess.Popen] = []
        try:
            for role, mb in members:
                p = subprocess.Popen([sys.executable, "-I", "-S", "-c", _MEMBER, f"{self.leaf}/cgroup.procs",
                                      str(mb), role],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                procs.append(p)
                _wait_line(p, 60)
            inside = sorted(int(x) for x in _read(f"{self.leaf}/cgroup.procs").split())
            if inside != sorted(p.pid for p in procs):
                raise CaseError(f"{self.rel} holds {inside}, expected {[p.pid for p in procs]}; not allocating")
            procs[-1].stdin.write(b"g")
            procs[-1].stdin.flush()
            codes = _reap(procs, timeout)
        finally:
            _reap(procs, 0)
        roles = {str(p.pid): role for p, (role, _) in zip(procs, members, strict=False)}
        return {"victims": [p.pid for p in procs], "roles": roles,
                "returncodes": codes, "memory_events": self.events(), "cgroup": self.rel, "limit": self.limit,
                "hierarchy_version": self.version}

    def remove(self) -> None:
        _rmdir(self.leaf)


def group_case(tag: str, mount: str, agents_stopped=contextlib.nullcontext) -> dict:
    """memory.oom.group: the kernel kills every member of the cgroup in one decision. The agents are
    stopped from before the kill until the cgroup is removed, as a container runtime removes it
    right after a group kill: each reads the kill only once the cgroup is gone, so what it says
    about the group must be what the kernel captured, not what a file read afterwards says."""
    cg = TestCgroup(mount, 2, f"/kmx-{tag}-group", 64 * MiB, oom_group=True)
    before = _vmstat_oom_kill()
    with agents_stopped():
        try:
            result = cg.run([("sleeper", 8), ("sleeper", 8), ("allocator", 2)])
        finally:
            cg.remove()
    result["vmstat_oom_kill_delta"] = _vmstat_oom_kill() - before
    return result


@contextlib.contextmanager
def stopped(agents: list):
    """The agents stopped (SIGSTOP) meanwhile; their BPF programs still run, what they caught waits."""
    for a in agents:
        a.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for a in agents:
            a.proc.send_signal(signal.SIGCONT)


def userspace_case(tag: str, mount: str, version: int) -> dict:
    """A user-space OOM killer's kill: a process named like one (USERSPACE_KILLER) SIGKILLs a sleeper
    in a throwaway memory cgroup; the kernel's OOM killer takes no part."""
    from testing.around import fake_killer

    cg = TestCgroup(mount, version, f"/kmx-{tag}-userspace", 64 * MiB)
    victim = subprocess.Popen([sys.executable, "-I", "-S", "-c", _MEMBER, f"{cg.leaf}/cgroup.procs", "8", "sleeper"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_line(victim, 60)
        killer_pid = fake_killer(USERSPACE_KILLER, victim.pid, timeout=60)
        codes = _reap([victim], 30)
    finally:
        _reap([victim], 0)
        cg.remove()
    return {"victims": [victim.pid], "killer": USERSPACE_KILLER, "killer_pid": killer_pid,
            "returncodes": {str(k): v for k, v in codes.items()}, "cgroup": cg.rel, "hierarchy_version": version}


def bystander_case(tag: str, mount: str, version: int) -> dict:
    """Victim and trigger differ: the allocator hits the limit and the kernel kills the bystander
    (oom_score_adj 1000); the allocator then hits it again and is killed itself."""
    cg = TestCgroup(mount, version, f"/kmx-{tag}-bystander", 48 * MiB)
    try:
        return cg.run([("bystander", 8), ("allocator", 2)])
    finally:
        cg.remove()


PTRACE_CONT, PTRACE_DETACH, PTRACE_SEIZE = 7, 17, 0x4206
PTRACE_O_TRACEEXIT, PTRACE_EVENT_EXIT = 0x40, 6


def _ptrace(libc: ctypes.CDLL, request: int, pid: int, data: int = 0) -> None:
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(request, pid, None, ctypes.c_void_p(data)) != 0:
        raise CaseError(f"ptrace({request:#x}, {pid}) failed: {os.strerror(ctypes.get_errno())}")


def exiting_case(tag: str, mount: str, version: int) -> dict:
    """The kernel's task_will_free_mem() shortcut: the task it picks is already exiting, so it is
    marked as a victim (mark_oom_victim, the mark_victim tracepoint) without being killed or
    counted: no "Killed process" line, no oom_kill count. The exiting task is a SIGKILLed process
    held at its exit by a ptrace PTRACE_EVENT_EXIT stop (group exit set, memory not yet freed), with
    oom_score_adj 1000 so it is chosen. After the OOM reaper took its memory, the allocator hits the
    limit again and is killed the ordinary way (a second decision)."""
    libc = ctypes.CDLL(None, use_errno=True)
    cg = TestCgroup(mount, version, f"/kmx-{tag}-exiting", 48 * MiB)
    exiting = subprocess.Popen([sys.executable, "-I", "-S", "-c", _MEMBER, f"{cg.leaf}/cgroup.procs", "8", "bystander"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    held, allocator = True, None
    try:
        _wait_line(exiting, 60)
        _ptrace(libc, PTRACE_SEIZE, exiting.pid, PTRACE_O_TRACEEXIT)
        os.kill(exiting.pid, signal.SIGKILL)
        _, status = os.waitpid(exiting.pid, 0x40000000)  # __WALL
        if not os.WIFSTOPPED(status) or status >> 8 != signal.SIGTRAP | (PTRACE_EVENT_EXIT << 8):
            raise CaseError(f"pid {exiting.pid} did not stop at its exit (wait status {status:#x})")
        # held at its exit, nothing changes its memory: what the kernel will read when it marks it
        before = _proc_status(exiting.pid)
        allocator = subprocess.Popen([sys.executable, "-I", "-S", "-c", _MEMBER, f"{cg.leaf}/cgroup.procs", "2",
                                      "allocator"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_line(allocator, 60)
        allocator.stdin.write(b"g")
        allocator.stdin.flush()
        codes = _reap([allocator], 120)
        events = cg.events()
        # let the exiting task finish its exit
        _ptrace(libc, PTRACE_DETACH, exiting.pid)
        _, status = os.waitpid(exiting.pid, 0)
        held = False
        exiting.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        codes[exiting.pid] = exiting.returncode
    finally:
        if held and exiting.returncode is None:
            try:
                os.kill(exiting.pid, signal.SIGKILL)
                _ptrace(libc, PTRACE_DETACH, exiting.pid)
            except (OSError, CaseError):
                pass
        _reap([p for p in (exiting, allocator) if p], 10)
        cg.remove()
    return {"victims": [exiting.pid, allocator.pid], "roles": {str(exiting.pid): "exiting",
                                                               str(allocator.pid): "allocator"},
            "returncodes": {str(k): v for k, v in codes.items()}, "memory_events": events, "cgroup": cg.rel,
            "limit": cg.limit, "hierarchy_version": version, "exiting_status": before}


def _proc_status(pid: int) -> dict[str, int]:
    """/proc/PID/status sizes (kB) and ids, plus oom_score_adj: the victim as the kernel will see it."""
    out = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmSize", "RssAnon", "RssFile", "RssShmem", "VmPTE", "VmSwap"):
            out[key] = int(value.split()[0])
        elif key in ("Uid", "PPid", "Tgid"):
            out[key] = int(value.split()[0])
        elif key == "Name":
            out["Name"] = value.strip()  # type: ignore[assignment]
    out["oom_score_adj"] = int(_read(f"/proc/{pid}/oom_score_adj"))
    return out


def global_case() -> dict:
    before = _vmstat_oom_kill()
    # this process holds the receiver: the global OOM must never pick it. Only for this case, since
    # children inherit the value and a memcg victim at -1000 could never be killed.
    _write("/proc/self/oom_score_adj", "-1000")
    # Lock what this process already has resident (MCL_CURRENT | MCL_ONFAULT: nothing new is
    # populated). Otherwise reclaim keeps evicting and re-reading this process's code from 9p
    # near the OOM point, and the kill takes 10-15 s under TCG instead of about 2 s.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlockall(1 | 4)
    try:
        return _global_kill(before)
    finally:
        libc.munlockall()
        _write("/proc/self/oom_score_adj", "0")


def _global_kill(before: int) -> dict:
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GLOBAL],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_line(p, 60)
        cgroup_line = _read(f"/proc/{p.pid}/cgroup")
        p.stdin.write(b"g")
        p.stdin.flush()
        codes = _reap([p], 180)
    finally:
        _reap([p], 0)
    return {"victims": [p.pid], "returncodes": codes, "victim_cgroup": cgroup_line,
            "vmstat_oom_kill_delta": _vmstat_oom_kill() - before, "meminfo_kb": _meminfo_kb()}


# ---- driving it --------------------------------------------------------------------------------

def _kmsg_since(seq: int) -> list[list]:
    from otel_oom.reconcile.kmsg import read_kmsg

    return [[r.seq, r.usec, r.level, r.message] for r in read_kmsg() if r.seq > seq]


def _last_seq() -> int:
    from otel_oom.reconcile.kmsg import read_kmsg

    recs = read_kmsg()
    return recs[-1].seq if recs else -1


def _records(receiver, agent, pids: set[int], event_name: str = "oom.kill") -> list[dict]:
    from .guest_agents import RESOURCE_KEY

    recs = receiver.log_records() if agent.otlp else agent.json_records()
    return [r for r in recs if r["resource"].get(RESOURCE_KEY) == agent.spec.tag
            and r["attributes"].get("process.pid") in pids and not r["attributes"].get("oom.recovered")
            and r.get("event_name", "oom.kill") == event_name]


def _wait_for_records(receiver, agents: list, pids: set[int], timeout: float,
                      event_name: str = "oom.kill") -> dict[str, list[dict]]:
    """Every agent's records of these victims, once each agent has one per victim (or the timeout);
    from the receiver, or (no receiver) from each agent's JSON lines."""
    deadline = time.monotonic() + timeout
    while True:
        got = {a.spec.tag: _records(receiver, a, pids, event_name) for a in agents}
        if all({r["attributes"]["process.pid"] for r in recs} >= pids for recs in got.values()) \
                or time.monotonic() > deadline:
            return got  # judged on the host: what arrived is recorded either way
        time.sleep(0.2)


def _settle(seconds: float = 0.5) -> None:
    # let exiting victims be reaped and their memory return before the next case
    time.sleep(seconds)


def _run_case(case: str, hierarchy: dict, agents: list) -> dict:
    if case == "memcg":
        return memcg_case("m")
    if case == "group":
        return group_case("m", hierarchy["mount"], lambda: stopped(agents))
    if case == "userspace":
        return userspace_case("m", hierarchy["mount"], hierarchy["version"])
    if case == "bystander":
        return bystander_case("m", hierarchy["mount"], hierarchy["version"])
    if case == "exiting":
        return exiting_case("m", hierarchy["mount"], hierarchy["version"])
    return global_case()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agents(specs, endpoint: Optional[str], doc: dict) -> list:
    """Start the agents one after another (a TCG vCPU runs several Python start-ups at once far
    slower than in turn), each ready before the next; the first exports to `endpoint` (if any), the
    others print JSON. Returns the ready ones."""
    from .guest_agents import Agent

    ready = []
    for i, spec in enumerate(specs):
        agent = Agent(spec, endpoint if i == 0 else None, _free_port(), f"/tmp/spool-{spec.tag}")
        ok = agent.wait_ready(900 if spec.backend == "bcc" else 180)
        progress(f"agent {spec.tag}: {agent.ready_line or 'NOT ready'}")
        entry = agent.report()
        doc["agents"].append(entry)
        if ok:
            ready.append(agent)
        else:
            agent.terminate()
            entry["exit_code"] = agent.wait()
            entry["stderr"] = agent.stderr[-5000:]
    return ready


def run(out_path: str, cases: list[str], specs: Optional[list], bcc_buffers: list[str], oomkill: bool,
        headers: Optional[str], copy_btf: bool, bcc_check: bool = False, json_agents: bool = False) -> dict:
    from otel_oom.kernel.features import detect_features

    from .guest_agents import RECONCILE_INTERVAL_S, AgentSpec, OomkillTool, install_headers, offered_specs

    t_start = time.monotonic()
    doc: dict = {"started_uptime_s": float(_read("/proc/uptime").split()[0]), "runner_pid": os.getpid(),
                 "agents": [], "cases": {}, "checks": {}}
    base = os.path.dirname(os.path.abspath(out_path))
    facts = kernel_facts(os.path.join(base, f"btf-{os.uname().release}") if copy_btf else None)
    doc["facts"] = facts
    progress("kernel facts read; running otel-oom check")
    doc["checks"]["libbpf"] = run_check()
    if headers:
        doc["headers"] = install_headers(headers)
    if bcc_check:
        progress("otel-oom check with the kernel's BTF hidden")
        doc["checks"]["bcc"] = run_check(without_btf=True)
    progress("checks done")
    specs = specs if specs is not None else offered_specs(detect_features())
    specs = list(specs) + [AgentSpec("tracepoint", "kprobe", "kprobe", "bcc", b) for b in bcc_buffers]
    hierarchy = facts["hierarchy"]
    t0 = time.monotonic()
    receiver = None
    if not json_agents:
        from testing.otlp_receiver import OtlpGrpcReceiver

        receiver = OtlpGrpcReceiver().start()
    doc["receiver_start_s"] = round(time.monotonic() - t0, 2)
    tool = None
    agents: list = []
    try:
        if oomkill:
            tool = OomkillTool()
            progress(f"BCC oomkill: {'tracing' if tool.wait_ready(900) else 'NOT ready'}")
        t0 = time.monotonic()
        agents = start_agents(specs, receiver.endpoint if receiver else None, doc)
        doc["agents_start_s"] = round(time.monotonic() - t0, 2)
        for case in cases:
            if case == "group" and (hierarchy is None or hierarchy["version"] != 2):
                continue  # memory.oom.group is a cgroup v2 interface
            seq = _last_seq()
            progress(f"case {case}")
            t_case = time.monotonic()
            try:
                result = _run_case(case, hierarchy, agents)
            except Exception as e:  # noqa: BLE001 - recorded and judged on the host
                doc["cases"][case] = {"error": f"{type(e).__name__}: {e}", "kmsg": _kmsg_since(seq)}
                continue
            progress(f"case {case} killed {result['victims']}; waiting for records")
            result["records"] = _wait_for_records(receiver, agents, set(result["victims"]), 30)
            # and when each victim's memory was back (oom.reclaim), as far as that comes within 10 s
            result["reclaims"] = _wait_for_records(receiver, agents, set(result["victims"]), 10, "oom.reclaim")
            result["kmsg"] = _kmsg_since(seq)
            # two reconciliations later every agent's snapshot of the kernel's count includes this case
            time.sleep(2 * RECONCILE_INTERVAL_S + 0.3)
            result["unobserved"] = {a.spec.tag: a.unobserved() for a in agents}
            result["seconds"] = round(time.monotonic() - t_case, 2)
            doc["cases"][case] = result
            _settle()
    finally:
        t_stop = time.monotonic()
        for a in agents:
            a.terminate()
        for a, entry in zip(agents, [e for e in doc["agents"] if e["ready_line"]], strict=False):
            entry["alive_after_cases"] = a.proc.poll() is None or a.proc.returncode == 0
            entry["exit_code"] = a.wait()
            entry["stderr"] = a.stderr[-5000:]
        doc["stop_s"] = round(time.monotonic() - t_stop, 2)
        if tool:
            doc["oomkill"] = tool.stop()
        if receiver:
            receiver.stop()
    doc["seconds"] = round(time.monotonic() - t_start, 2)
    with open(out_path + ".tmp", "w") as f:
        json.dump(doc, f, ensure_ascii=True)
    os.replace(out_path + ".tmp", out_path)
    return doc


def _refuse_outside_a_test_guest() -> Optional[str]:
    if os.environ.get("OTEL_OOM_QEMU_GUEST") != "1":
        return "OTEL_OOM_QEMU_GUEST is not 1: this causes a global OOM and runs only in a QEMU test guest"
    if "panic=-1" not in _read("/proc/cmdline").split():
        return "the kernel was not booted by tests/qemu/harness.py (no panic=-1 on its command line)"
    if os.geteuid() != 0:
        return "needs root (it is root in a test guest)"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    from .guest_agents import AgentSpec

    ap = argparse.ArgumentParser(prog="python3 -m tests.qemu.guest_cases", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="where to write the JSON result (e.g. in the share dir)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--plan", action="append", metavar="VICTIM:CONTEXT[:TASK]",
                    help="only this libbpf hook plan (repeatable); default every plan the kernel offers")
    ap.add_argument("--bcc", action="append", default=[], choices=("auto", "ring", "perf"),
                    help="also a bcc agent (BTF hidden) with this event buffer (repeatable)")
    ap.add_argument("--oomkill", action="store_true", help="also run BCC's oomkill tool (BTF hidden) as a reference")
    ap.add_argument("--bcc-check", action="store_true", help="also run `otel-oom check` with the kernel's BTF hidden")
    ap.add_argument("--headers", help="unpacked Debian kernel headers to install for BCC (harness.headers())")
    ap.add_argument("--json-agents", action="store_true",
                    help="agents print JSON lines instead of exporting OTLP (a userland with only the standard library)")
    ap.add_argument("--pure-site", metavar="PURELIB",
                    help="with --json-agents: take the agent's pure-Python metrics packages from this site-packages")
    ap.add_argument("--copy-btf", action="store_true", help="copy /sys/kernel/btf/vmlinux next to --out")
    args = ap.parse_args(argv)
    why = _refuse_outside_a_test_guest()
    if why:
        print(f"guest_cases: error: {why}", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        print(f"guest_cases: error: unknown case(s) {bad}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    specs = [AgentSpec(*p.split(":")) for p in args.plan] if args.plan else None
    if args.pure_site:
        from .guest_agents import pure_site

        pure_site(args.pure_site)
    doc = run(args.out, cases, specs, args.bcc, args.oomkill, args.headers, args.copy_btf, args.bcc_check,
              args.json_agents)
    summary = {"release": doc["facts"]["release"], "seconds": doc["seconds"],
               "agents": [(a["tag"], a["ready_s"]) for a in doc["agents"]], "cases": sorted(doc["cases"])}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
