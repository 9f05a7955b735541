"""The whole agent in-process, built from real flags and environment, fed by `events.ScriptedSource`
(a test double of the kernel side) instead of BPF, so tests can place faults exactly."""
from __future__ import annotations

import io
import threading
import time

from otel_oom.agent import Agent
from otel_oom.config import resolve
from testing.events import ScriptedSource, raw_event

CHAIN = [(50, b"test-leaf", 100, 8192), (1, b"", 200, (1 << 63) // 4096)]


def sample(pid: int, comm: bytes = b"leaky", **fields) -> bytes:
    """A ring-buffer sample of a memcg kill of `pid` in /test-leaf, its timestamp derived from the pid."""
    base = dict(victim_pid=pid, victim_tgid=pid, trigger_pid=pid, trigger_tgid=pid, victim_comm=comm,
                timestamp_ns=1_000_000 + pid)
    base.update(fields)
    return raw_event(CHAIN, [50, 1], **base)


def wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def quiet_kernel(tmp_path) -> tuple[str, str]:
    """A /proc with this boot's id and an OOM kill counter at 0, and an empty kernel log."""
    root = tmp_path / "quiet-kernel"
    random = root / "proc" / "sys" / "kernel" / "random"
    random.mkdir(parents=True, exist_ok=True)
    with open("/proc/sys/kernel/random/boot_id") as f:
        (random / "boot_id").write_text(f.read())
    (root / "proc" / "vmstat").write_text("nr_free_pages 1\noom_kill 0\n")
    (root / "kmsg").write_bytes(b"")
    return str(root / "proc"), str(root / "kmsg")


class Harness:
    """An Agent built from real flags and environment, its source the scripted double."""

    def __init__(self, tmp_path, endpoint: "str | None", *flags: str, proc_root: "str | None" = None,
                 kmsg_path: "str | None" = None, **env: str) -> None:
        from otel_oom.cli import build_parser

        # --events=none: the host's real memory cgroups are not these tests' business (a later flag wins)
        args = build_parser().parse_args(["run", "--oom-score-adj=keep", "--shutdown-timeout=2", "--events=none",
                                          *flags])
        flag_map = {k: v for k, v in vars(args).items() if k != "command"}
        if not any(f.startswith("--spool-dir") or f == "--no-spool" for f in flags):
            flag_map["spool_dir"] = str(tmp_path / "spool")
        environ = {"OTEL_METRIC_EXPORT_INTERVAL": "200", **env}
        if endpoint:
            environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        self.cfg = resolve(flag_map, environ)
        self.out = io.StringIO()
        self.source: "ScriptedSource | None" = None

        def factory(on_sample):
            self.source = ScriptedSource(on_sample)
            return self.source

        # proc_root, kmsg_path: the kernel's OOM kill counter (and boot id) and log, from fixture files;
        # by default a kernel of its own that kills nobody: the host's real kills (other tests cause
        # them) must not be recovered into these tests' receivers
        if proc_root is None or kmsg_path is None:
            proc_root, kmsg_path = quiet_kernel(tmp_path)
        self.agent = Agent(self.cfg, environ, self.out, source_factory=factory, proc_root=proc_root,
                           kmsg_path=kmsg_path)
        self.thread: "threading.Thread | None" = None

    def start(self) -> "Harness":
        self.agent.start()
        self.agent.export_ready(30)  # the SDK and exporters come up on a thread after `ready`
        # the main loop (normally run()) on a thread: signal handlers are not needed here
        self.thread = threading.Thread(target=self.agent._loop, daemon=True)
        self.thread.start()
        return self

    def push(self, *samples: bytes) -> None:
        assert self.source is not None
        self.source.push(samples)

    def stop(self) -> None:
        self.agent.stopping.set()
        if self.thread:
            self.thread.join(5)
        self.agent.close()

