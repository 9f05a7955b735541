"""Shared test plumbing: the CI rule for privileged tests, and a running agent.

With CI=true, a test that needs root, BPF or a tool must run: `require()` fails it instead of
skipping, so a green CI always means the privileged end-to-end tests really ran.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Optional

import pytest

from testing.agent_process import REPO, AgentProcess, agent_env
from testing.otlp_receiver import OtlpGrpcReceiver

__all__ = ["REPO", "AgentProcess", "agent_env", "require", "require_tool", "require_root_bpf", "as_nobody"]
IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {reason}")
    pytest.skip(reason)


def as_nobody(fn) -> str:
    """Run fn() in a forked child that dropped to uid/gid 65534; return what it raised (or "ok")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fn()
            msg = "ok"
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = f"{type(e).__name__}: {e}"
        os.write(w, msg.encode("utf-8", "surrogateescape"))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode("utf-8", "surrogateescape")
    os.waitpid(pid, 0)
    return out


def after_the_oom_report_rate_limit() -> None:
    """Wait until the kernel prints full OOM reports again (10 per 5 s), e.g. after a storm test:
    tests that compare a record with the kernel's report of the same kill need the report."""
    from otel_oom.reconcile.kmsg import read_kmsg

    last = max((r.usec for r in read_kmsg() if "Killed process" in r.message), default=None)
    if last is not None:
        # printk's local_clock runs with CLOCK_MONOTONIC closely enough for a 5 s window
        since = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 - last
        if since < 5_500_000:
            time.sleep((5_500_000 - since) / 1e6)


def require_root_bpf() -> None:
    require(os.geteuid() == 0, "needs root")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "needs kernel BTF")
    from otel_oom.kernel.probe import DEFAULT_OBJECT

    require(DEFAULT_OBJECT.exists(), "BPF object not built: make -C bpf")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs `{name}` on PATH")
    return path  # type: ignore[return-value]


@pytest.fixture
def start_agent(tmp_path):
    """Start real agents; every one still running is stopped at teardown."""
    agents: list[AgentProcess] = []

    def start(args: list[str], endpoint: Optional[str] = None, **env: str) -> AgentProcess:
        require_root_bpf()
        if not any(a.startswith("--spool-dir") or a == "--no-spool" for a in args):
            args = [*args, f"--spool-dir={tmp_path / 'spool'}"]
        agent = AgentProcess(args, agent_env(endpoint, **env))
        agents.append(agent)
        return agent

    yield start
    for a in agents:
        a.stop(9)


@pytest.fixture
def receiver():
    """A real OTLP/gRPC receiver on a free loopback port, for the agents a test starts."""
    with OtlpGrpcReceiver() as r:
        yield r
