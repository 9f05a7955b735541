"""Inside a QEMU test guest: the real agents the kernel matrix runs, all at once, one per hook plan.

Every agent is a real `python -m otel_oom run` with a forced plan, serving Prometheus /metrics on
its own port, where the matrix reads `oom.kills.unobserved` after each case. The first (the plan
`auto` picks) exports its records over OTLP gRPC to the guest's receiver (they carry the resource
attribute `otel_oom.test.agent=<tag>`); the others print the same attributes as JSON lines
(`--no-otlp --json`), which spares each of them the ~6 s the gRPC exporter's imports take under TCG.
Running every plan side by side on the same kills is what keeps the matrix affordable under TCG,
and it makes the comparison between plans and backends a comparison on the very same kills.

A bcc agent runs with the kernel's BTF hidden (a private mount namespace with an empty tmpfs on
/sys/kernel/btf), so it is selected the way it would be on a kernel built without BTF; the kernel
headers it compiles against are installed into the guest's (overlay) root first. BCC's own
`oomkill` tool can run the same way, as a reference.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECONCILE_INTERVAL_S = 1.0  # the agents compare with the kernel's kill count this often
RESOURCE_KEY = "otel_oom.test.agent"
# run a command with the kernel's BTF hidden, as on a kernel built without CONFIG_DEBUG_INFO_BTF
WITHOUT_BTF = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs nobtf /sys/kernel/btf && exec "$0" "$@"']
OOMKILL_TOOL = "/usr/sbin/oomkill-bpfcc"  # BCC's own tool, from Debian's bpfcc-tools


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    victim: str
    context: str
    task: str = "none"
    backend: str = "libbpf"
    bcc_buffer: str = "auto"

    @property
    def tag(self) -> str:
        tail = f"-{self.bcc_buffer}" if self.backend == "bcc" else ""
        return f"{self.backend}-{self.victim}-{self.context}-{self.task}{tail}"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tag": self.tag}


def offered_specs(features) -> list[AgentSpec]:
    """One libbpf agent per plan the kernel offers (features.candidate_plans order)."""
    from otel_oom.kernel.features import candidate_plans

    return [AgentSpec(p.victim, p.context, p.task) for p in candidate_plans(features)]


# The pure-Python distributions `run --no-otlp --prometheus` imports, for a userland without the
# virtualenv's compiled packages (arm64): the OTel SDK, its Prometheus reader, prometheus_client.
PURE_DISTRIBUTIONS = ("opentelemetry_api", "opentelemetry_sdk", "opentelemetry_semantic_conventions",
                      "opentelemetry_exporter_prometheus", "prometheus_client", "typing_extensions")
PURE_SITE = "/tmp/otel-oom-pure-site"


def pure_site(purelib: str) -> str:
    """A directory holding only the pure-Python packages of `purelib` (the host venv's site-packages)
    that the agent needs for /metrics, with their metadata (the SDK finds its parts by entry point)."""
    os.makedirs(PURE_SITE, exist_ok=True)
    for name in os.listdir(purelib):
        dist = name.split("-", 1)[0]
        if name in ("opentelemetry", "prometheus_client", "typing_extensions.py") or (
                name.endswith(".dist-info") and dist in PURE_DISTRIBUTIONS):
            os.symlink(os.path.join(purelib, name), os.path.join(PURE_SITE, name))
    return PURE_SITE


def agent_env(endpoint: Optional[str], tag: Optional[str] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_EXPORTER", "OTEL_METRIC", "OTEL_RESOURCE"))}
    env["PYTHONPATH"] = REPO + (f":{PURE_SITE}" if os.path.isdir(PURE_SITE) else "")
    env["PYTHONUNBUFFERED"] = "1"
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    if tag:
        env["OTEL_RESOURCE_ATTRIBUTES"] = f"{RESOURCE_KEY}={tag}"
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "600000"  # metrics are read from /metrics; keep the guest's CPU for kills
    return env


def install_headers(root: str) -> str:
    """Make the unpacked Debian headers (under `root`: usr/src/..., lib/modules/<release>/{build,
    source}) visible where a node that installed them has them; returns the build directory."""
    release = os.uname().release
    for name in os.listdir(os.path.join(root, "usr", "src")):
        link = os.path.join("/usr/src", name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(root, "usr", "src", name), link)
    moddir = f"/lib/modules/{release}"
    os.makedirs(moddir, exist_ok=True)
    for name in ("build", "source"):
        src = os.path.join(root, "lib", "modules", release, name)
        if os.path.lexists(src) and not os.path.lexists(os.path.join(moddir, name)):
            os.symlink(os.readlink(src), os.path.join(moddir, name))
    return os.path.realpath(os.path.join(moddir, "build"))


class Agent:
    """A real `otel-oom run` with a forced plan; stderr collected by a thread.

    With an endpoint it exports over OTLP; without one it prints its records as JSON lines
    (`--no-otlp --json`, the same attributes), collected from stdout. Either way it serves /metrics."""

    def __init__(self, spec: AgentSpec, endpoint: Optional[str], port: int, spool: str) -> None:
        self.spec, self.port = spec, port
        argv = [sys.executable, "-m", "otel_oom", "run", "--backend", spec.backend, "--victim-hook", spec.victim,
                "--context-hook", spec.context, "--task-hook", spec.task, "--spool-dir", spool,
                "--reconcile-interval", str(RECONCILE_INTERVAL_S),
                # a TCG guest with a dozen agents stopping at once is slow: time for the last export
                "--shutdown-timeout", "20",
                # no container runtime runs in the guests: no socket watchers (each would poll three
                # sockets a second, and the CRI client's gRPC is not in the arm64 userland)
                "--cri-socket", "none", "--docker-socket", "none", "--podman-socket", "none"]
        argv += ["--listen", f"127.0.0.1:{port}", "--prometheus"] + ([] if endpoint else ["--no-otlp", "--json"])
        if spec.backend == "bcc":
            argv = WITHOUT_BTF + argv + ["--bcc-buffer", spec.bcc_buffer]
        self.t0 = time.monotonic()
        self.json_lines: list[str] = []
        self.proc = subprocess.Popen(argv, cwd=REPO, env=agent_env(endpoint, spec.tag), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL if endpoint else subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.otlp = bool(endpoint)
        if not endpoint:
            threading.Thread(target=self._pump_stdout, daemon=True).start()
        self.lines: list[str] = []
        self.ready_line: Optional[str] = None
        self.ready_s: Optional[float] = None
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "backslashreplace")
            self.lines.append(line)
            if self.ready_line is None and " ready in " in line:
                self.ready_line, self.ready_s = line.strip(), time.monotonic() - self.t0
                self._ready.set()
        self._ready.set()

    def _pump_stdout(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self.json_lines.append(raw.decode("utf-8", "backslashreplace"))

    def json_records(self) -> list[dict]:
        """The --json records, shaped like the receiver's (attributes, resource)."""
        out = []
        for line in list(self.json_lines):
            doc = json.loads(line)
            attrs = {k: v for k, v in doc.items() if k not in ("time", "event_name", "body")}
            out.append({"attributes": attrs, "resource": {RESOURCE_KEY: self.spec.tag}, "body": doc["body"],
                        "event_name": doc["event_name"]})
        return out

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.ready_line is not None

    def unobserved(self) -> Optional[float]:
        """oom.kills.unobserved as the agent's /metrics shows it now (None: no answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return None
        m = re.search(r"^oom_kills_unobserved(?:\{[^}]*\})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> Optional[int]:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def report(self) -> dict:
        return {**self.spec.as_dict(), "otlp": self.otlp, "ready_line": self.ready_line, "ready_s": self.ready_s,
                "stderr": self.stderr[-5000:]}


class OomkillTool:
    """BCC's `oomkill` (bpfcc-tools), with the kernel's BTF hidden like the bcc agent: a reference
    for trigger, victim and pages on the same kills."""

    LINE = re.compile(r'^\S+ Triggered by PID (?P<tpid>\d+) \("(?P<tcomm>.*)"\), OOM kill of PID (?P<pid>\d+) '
                      r'\("(?P<comm>.*)"\), (?P<pages>\d+) pages, loadavg: ')

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(WITHOUT_BTF + [OOMKILL_TOOL], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.ready_s: Optional[float] = None
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("Tracing OOM kills"):
                self.ready_s = time.monotonic() - self.t0
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.ready_s is not None

    def kills(self) -> list[dict]:
        return [{k: (int(v) if k in ("tpid", "pid", "pages") else v) for k, v in m.groupdict().items()}
                for line in self.lines if (m := self.LINE.match(line))]

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # SIGINT is ignored by a background job
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return {"ready_s": self.ready_s, "output": self.lines[-200:], "kills": self.kills()}
