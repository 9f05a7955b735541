"""The `otel-oom` command: `run`, `check`, `trigger`.

Expected failures (bad flags, missing privileges, no BTF, a bad endpoint, a stale object) end
with one line on stderr saying what to do and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn, Optional, Sequence

from . import __version__
from .config import BACKENDS, BCC_BUFFERS, HOOK_CHOICES, resolve
from .errors import AgentError, UsageError

log = logging.getLogger("otel_oom")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="otel-oom", description="Every Linux OOM kill, caught with eBPF, shipped as OpenTelemetry.")
    p.add_argument("--version", action="version", version=f"otel-oom {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run the agent")
    out = run.add_argument_group("output")
    out.add_argument("--console", action="store_true", help="print a readable block per kill on stdout")
    out.add_argument("--json", action="store_true", help="print one JSON object per kill on stdout")
    out.add_argument("--no-otlp", action="store_true", help="do not export over OTLP (console/JSON only)")
    out.add_argument("--notify-webhook", metavar="URL", help="POST one JSON message per kill (env OTEL_OOM_NOTIFY_WEBHOOK)")
    dur = run.add_argument_group("durable delivery")
    dur.add_argument("--spool-dir", metavar="DIR",
                     help="on-disk spool (env OTEL_OOM_SPOOL_DIR, default /var/lib/otel-oom/spool)")
    dur.add_argument("--no-spool", action="store_true", help="keep undelivered events in memory only")
    dur.add_argument("--spool-max-bytes", type=str, metavar="N", help="spool size bound (default 64 MiB)")
    dur.add_argument("--spool-max-age", type=str, metavar="SECONDS", help="spool age bound (default 7 days)")
    dur.add_argument("--shutdown-timeout", type=str, metavar="SECONDS", help="flush time on SIGTERM (default 5)")
    srv = run.add_argument_group("health and metrics")
    srv.add_argument("--listen", metavar="HOST:PORT", help="serve /healthz and /readyz (env OTEL_OOM_LISTEN)")
    srv.add_argument("--prometheus", action="store_true", help="also serve /metrics on --listen")
    krn = run.add_argument_group("kernel")
    krn.add_argument("--backend", choices=BACKENDS,
                     help="libbpf: the CO-RE object (needs BTF); bcc: compiled at start against the kernel headers "
                          "(kernels without BTF); default auto: libbpf when /sys/kernel/btf/vmlinux exists, else bcc")
    krn.add_argument("--victim-hook", choices=HOOK_CHOICES["victim"], help="default auto")
    krn.add_argument("--context-hook", choices=HOOK_CHOICES["context"], help="default auto")
    krn.add_argument("--task-hook", choices=HOOK_CHOICES["task"],
                     help="mark_oom_victim hook that gives the classic tracepoint the victim's task on kernels whose "
                          "mark_victim passes only the pid; default auto")
    krn.add_argument("--bcc-buffer", choices=BCC_BUFFERS,
                     help="bcc backend: ring buffer (5.8+) or perf buffer; default auto")
    krn.add_argument("--reconcile-interval", type=str, metavar="SECONDS",
                     help="how often the kernel's own kill count is compared (default 5)")
    krn.add_argument("--ring-buffer-bytes", type=str, metavar="N", help="power of two (default 4 MiB)")
    krn.add_argument("--oom-score-adj", type=str, metavar="N|keep", help="the agent's own oom_score_adj (default -900)")
    rt = run.add_argument_group("container names (from the runtime's API socket)")
    rt.add_argument("--cri-socket", metavar="auto|none|PATH[,PATH]",
                    help="containerd/CRI-O CRI socket (env OTEL_OOM_CRI_SOCKET, default auto)")
    rt.add_argument("--docker-socket", metavar="auto|none|PATH[,PATH]",
                    help="docker API socket (env OTEL_OOM_DOCKER_SOCKET, default auto)")
    rt.add_argument("--podman-socket", metavar="auto|none|PATH[,PATH]",
                    help="podman API socket (env OTEL_OOM_PODMAN_SOCKET, default auto)")
    rt.add_argument("--runtime-root", metavar="DIR",
                    help="auto-detect the sockets below DIR, where the host's / is mounted (env OTEL_OOM_RUNTIME_ROOT)")
    rt.add_argument("--runtime-refresh", metavar="SECONDS", help="full list interval (default 1)")
    rt.add_argument("--runtime-lookup-wait-ms", metavar="MS",
                    help="longest wait for a name the cache lacks at a kill (default 50)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    chk = sub.add_parser("check", help="preflight: can `run` work here, and with which hooks")
    chk.add_argument("--backend", default="auto", choices=BACKENDS)
    chk.add_argument("--victim-hook", default="auto", choices=HOOK_CHOICES["victim"])
    chk.add_argument("--context-hook", default="auto", choices=HOOK_CHOICES["context"])
    chk.add_argument("--task-hook", default="auto", choices=HOOK_CHOICES["task"])
    chk.add_argument("--bcc-buffer", default="auto", choices=BCC_BUFFERS)

    trg = sub.add_parser("trigger", help="cause one real OOM kill in a throwaway memory cgroup")
    trg.add_argument("--limit", default="32M", help="memory limit of the throwaway cgroup (4M..1G, default 32M)")
    trg.add_argument("--cgroup", help="cgroup path to create under the memory hierarchy (default: a unique name)")
    trg.add_argument("--comm", help="process name for the victim (up to 15 bytes)")
    return p


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise UsageError(f"--limit must be a size like 32M, got {text!r}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="otel-oom: %(levelname)s: %(message)s")
    for noisy in ("opentelemetry", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _run(args: argparse.Namespace) -> int:
    from .agent import Agent

    cfg = resolve(vars(args), os.environ)
    _setup_logging(cfg.log_level)
    return Agent(cfg).run()


def _check(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    from .check import run_check

    return run_check(sys.stdout, args.victim_hook, args.context_hook, task=args.task_hook, backend=args.backend,
                     bcc_buffer=args.bcc_buffer)


def _trigger(args: argparse.Namespace) -> int:
    from .trigger import TriggerError, trigger_oom

    try:
        r = trigger_oom(limit_bytes=_size(args.limit), cgroup=args.cgroup,
                        comm=os.fsencode(args.comm) if args.comm else None)
    except (TriggerError, ValueError) as e:
        raise AgentError(str(e)) from None
    print(r.victim_pid)
    print(f"otel-oom: OOM-killed pid {r.victim_pid} in memory cgroup {r.cgroup_path} (v{r.hierarchy_version}, "
          "removed)", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("a command is needed: run, check or trigger (see `otel-oom --help`)")
        return {"run": _run, "check": _check, "trigger": _trigger}[args.command](args)
    except AgentError as e:
        print(f"otel-oom: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
