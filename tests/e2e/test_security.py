"""Security properties of the real agent: hostile cgroup names, least privilege, its own OOM score.

- A workload chooses its cgroup names: spaces, quotes, tabs and bytes that are not UTF-8 must be
  attributed exactly at the collector and never reach a terminal raw.
- The agent runs with exactly the capabilities docs/security.md lists (uid 0, everything else
  dropped from the bounding set) and delivers a kill; without CAP_BPF or CAP_PERFMON it stops
  with one line saying what is missing.
- `--oom-score-adj`: raising needs no privilege; lowering needs CAP_SYS_RESOURCE and otherwise
  gives a warning, never a failure.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading

import pytest
from conftest import REPO, agent_env, require_root_bpf, require_tool

from otel_oom.kernel.features import effective_capabilities
from otel_oom.text import for_terminal as escape_untrusted
from otel_oom.trigger import trigger_oom

MiB = 1 << 20
pytestmark = pytest.mark.root
CAP_SYS_RESOURCE = 24

# what `otel-oom run` needs on a 5.8+ kernel, as uid 0 with every other capability dropped
# (see docs/security.md for why each one is needed)
MINIMAL_CAPS = ("bpf", "perfmon", "syslog")
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls but the newline


def _wait_pid(receiver, pid: int, timeout: float = 30.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(r["attributes"].get("process.pid") == pid for r in recs), timeout)
    return next(r for r in receiver.log_records() if r["attributes"].get("process.pid") == pid)


# ---- hostile cgroup names --------------------------------------------------------------------------

def test_hostile_cgroup_names_are_attributed_exactly_and_printed_escaped(receiver, start_agent):
    agent = start_agent(["--console", "--json"], receiver.endpoint)
    # the kernel refuses "\n" (and "/") in a cgroup name; everything else is allowed
    raw = f"/otel-oom-hostile-{secrets.token_hex(2)}/pod x/".encode() + b"\"q\" 'a'\t\xfe;$(id)"
    kill = trigger_oom(limit_bytes=16 * MiB, cgroup=raw)
    assert kill.cgroup_path.encode("utf-8", "surrogateescape") == raw

    a = _wait_pid(receiver, kill.victim_pid)["attributes"]
    # not valid UTF-8: the path arrives as OTLP bytes_value holding exactly the kernel's bytes
    assert a["oom.victim.cgroup.path"] == raw
    assert a["oom.memcg.path"] == raw
    assert a["process.linux.cgroup"].endswith(b":" + raw)

    out = agent.wait_stdout(lambda s: f"pid={kill.victim_pid} " in s
                            and f'"process.pid":{kill.victim_pid}' in s.replace(" ", ""))
    assert not RAW_CONTROL.search(out), "raw control characters on stdout"
    assert "\ufffd" not in out
    assert escape_untrusted(kill.cgroup_path) in out  # the console shows the escaped form
    assert "\\t" in out and "\\xfe" in out
    assert agent.stop() == 0
    assert not RAW_CONTROL.search(agent.stderr)


# ---- least privilege -------------------------------------------------------------------------------

class CappedAgent:
    """`otel-oom run` as uid 0 with exactly `caps` (bounding, permitted, effective, ambient)."""

    def __init__(self, caps, args: list[str], env: dict[str, str], ready_timeout: float = 30.0) -> None:
        spec = ",".join(["-all", *(f"+{c}" for c in caps)])
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid=0", "--regid=0", "--clear-groups", f"--inh-caps={spec}", f"--ambient-caps={spec}",
             f"--bounding-set={spec}", "--", sys.executable, "-m", "otel_oom", "run", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.ready.wait(ready_timeout)

    def _pump(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "backslashreplace")
            self.lines.append(line)
            if " ready " in line:
                self.ready.set()
        self.proc.stderr.close()
        self.ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(30)   # all it wrote is read: on a loaded machine the reader lags behind the exit
        self.proc.stdout.close()
        return rc


def _caps_of(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, v in (ln.split(":\t") for ln in f if ln.startswith("Cap"))}


def _mask(caps) -> int:
    bits = {"bpf": 39, "perfmon": 38, "syslog": 34, "sys_admin": 21}
    return sum(1 << bits[c] for c in caps)


def test_minimal_capabilities_are_enough_to_deliver_a_kill(receiver, tmp_path):
    require_root_bpf()
    require_tool("setpriv")
    agent = CappedAgent(MINIMAL_CAPS, [f"--spool-dir={tmp_path / 'spool'}"], agent_env(receiver.endpoint))
    try:
        assert agent.proc.poll() is None and " ready " in agent.stderr, agent.stderr
        caps = _caps_of(agent.proc.pid)
        assert caps["CapEff"] == caps["CapBnd"] == _mask(MINIMAL_CAPS), caps
        kill = trigger_oom(limit_bytes=16 * MiB)
        a = _wait_pid(receiver, kill.victim_pid)["attributes"]
        assert a["oom.victim.cgroup.path"] == kill.cgroup_path
        assert a["oom.hook"] == "tp_btf"
        assert os.stat(tmp_path / "spool").st_mode & 0o777 == 0o700
    finally:
        rc = agent.stop()
    assert rc == 0, agent.stderr
    assert "Traceback" not in agent.stderr
    assert "cannot read the kernel log" not in agent.stderr  # CAP_SYSLOG: recovered kills keep their details


@pytest.mark.parametrize("drop, missing", [("bpf", "CAP_BPF"), ("perfmon", "CAP_PERFMON")])
def test_without_bpf_or_perfmon_one_line_says_what_is_missing(drop, missing, tmp_path):
    """--backend=libbpf: one line naming the missing capability, exit != 0. The default (auto) falls
    back to the kernel log (CAP_SYSLOG is kept) with one warning that names it too."""
    require_root_bpf()
    require_tool("setpriv")
    caps = [c for c in MINIMAL_CAPS if c != drop]
    args = ["--no-otlp", "--console"]
    agent = CappedAgent(caps, [*args, f"--spool-dir={tmp_path / 'spool'}", "--backend=libbpf"], agent_env())
    rc = agent.proc.wait(60)
    agent.stop()
    assert rc != 0
    errors = [ln for ln in agent.lines if ln.startswith("otel-oom: error: ")]
    assert len(errors) == 1, agent.stderr
    assert f"missing privileges ({missing})" in errors[0]
    assert "Traceback" not in agent.stderr

    agent = CappedAgent(caps, [*args, f"--spool-dir={tmp_path / 'spool-auto'}"], agent_env(), ready_timeout=60)
    try:
        assert agent.ready.is_set() and agent.proc.poll() is None, agent.stderr
        warnings = [ln for ln in agent.lines if "eBPF cannot be used on this node" in ln]
        assert len(warnings) == 1 and missing in warnings[0] and "backend kmsg" in warnings[0], agent.stderr
    finally:
        rc = agent.stop()
    assert rc == 0 and "Traceback" not in agent.stderr, agent.stderr


# ---- the agent's own oom_score_adj ------------------------------------------------------------------

def _score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def test_raising_oom_score_adj_needs_no_privilege(start_agent):
    agent = start_agent(["--no-otlp", "--oom-score-adj", "500"])
    assert _score_adj(agent.proc.pid) == 500
    assert "could not set" not in agent.stderr
    assert agent.stop() == 0


def test_default_lowers_oom_score_adj_or_says_it_could_not(start_agent):
    agent = start_agent(["--no-otlp"])
    if effective_capabilities() & (1 << CAP_SYS_RESOURCE):
        assert _score_adj(agent.proc.pid) == -900
        assert "could not set" not in agent.stderr
    else:
        # this machine's root lacks CAP_SYS_RESOURCE: the kernel refuses a lower value; the agent
        # says so once and runs on
        assert _score_adj(agent.proc.pid) == 0
        warnings = [ln for ln in agent.stderr_lines if "could not set" in ln]
        assert len(warnings) == 1 and warnings[0].startswith("otel-oom: WARNING: could not set the agent's "
                                                             "oom_score_adj to -900")
        assert "CAP_SYS_RESOURCE" in warnings[0]
    assert agent.proc.poll() is None
    assert agent.stop() == 0


# ---- files ---------------------------------------------------------------------------------------------

def test_spool_directory_and_files_are_private(receiver, start_agent, tmp_path):
    agent = start_agent([f"--spool-dir={tmp_path / 'spool'}"], receiver.endpoint)
    kill = trigger_oom(limit_bytes=16 * MiB)
    _wait_pid(receiver, kill.victim_pid)
    assert agent.stop() == 0
    spool = tmp_path / "spool"
    assert os.stat(spool).st_mode & 0o777 == 0o700
    names = os.listdir(spool)
    assert "ack" in names and "lock" in names  # (the ledger is in the ack file and the records)
    for name in names:
        assert os.stat(spool / name).st_mode & 0o077 == 0, f"{name} is readable by others"
