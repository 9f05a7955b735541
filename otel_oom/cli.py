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
    out.add_argument("--console", action="store_true",
                     help="print a readable block per kill on stdout (env OTEL_OOM_CONSOLE=true)")
    out.add_argument("--json", action="store_true", help="print one JSON object per kill on stdout (env OTEL_OOM_JSON=true)")
    out.add_argument("--no-otlp", action="store_true",
                     help="do not export over OTLP, console/JSON only (env OTEL_OOM_NO_OTLP=true)")
    out.add_argument("--notify-webhook", metavar="URL", help="POST one JSON message per kill (env OTEL_OOM_NOTIFY_WEBHOOK)")
    dur = run.add_argument_group("durable delivery")
    dur.add_argument("--spool-dir", metavar="DIR",
                     help="on-disk spool (env OTEL_OOM_SPOOL_DIR, default /var/lib/otel-oom/spool)")
    dur.add_argument("--no-spool", action="store_true",
                     help="keep undelivered events in memory only (env OTEL_OOM_NO_SPOOL=true)")
    dur.add_argument("--spool-max-bytes", type=str, metavar="N",
                     help="spool size bound (env OTEL_OOM_SPOOL_MAX_BYTES, default 64 MiB)")
    dur.add_argument("--spool-max-age", type=str, metavar="SECONDS",
                     help="spool age bound (env OTEL_OOM_SPOOL_MAX_AGE, default 7 days)")
    dur.add_argument("--shutdown-timeout", type=str, metavar="SECONDS",
                     help="time to stop in on SIGTERM, delivery included (env OTEL_OOM_SHUTDOWN_TIMEOUT, default 5)")
    srv = run.add_argument_group("health and metrics")
    srv.add_argument("--listen", metavar="HOST:PORT", help="serve /healthz and /readyz (env OTEL_OOM_LISTEN)")
    srv.add_argument("--prometheus", action="store_true",
                     help="also serve /metrics on --listen (env OTEL_OOM_PROMETHEUS=true)")
    krn = run.add_argument_group("kernel")
    krn.add_argument("--backend", choices=BACKENDS,
                     help="libbpf: the CO-RE object (needs BTF); bcc: compiled at start against the kernel headers "
                          "(kernels without BTF); kmsg: no BPF, the kernel's own report in /dev/kmsg (needs only "
                          "CAP_SYSLOG; sees less, docs/coverage.md); default auto: libbpf when /sys/kernel/btf/vmlinux "
                          "exists, else bcc, and kmsg with a warning when neither loads (env OTEL_OOM_BACKEND)")
    krn.add_argument("--victim-hook", choices=HOOK_CHOICES["victim"], help="env OTEL_OOM_VICTIM_HOOK, default auto")
    krn.add_argument("--context-hook", choices=HOOK_CHOICES["context"], help="env OTEL_OOM_CONTEXT_HOOK, default auto")
    krn.add_argument("--task-hook", choices=HOOK_CHOICES["task"],
                     help="mark_oom_victim hook that gives the classic tracepoint the victim's task on kernels whose "
                          "mark_victim passes only the pid (env OTEL_OOM_TASK_HOOK, default auto)")
    krn.add_argument("--bcc-buffer", choices=BCC_BUFFERS,
                     help="bcc backend: ring buffer (5.8+) or perf buffer (env OTEL_OOM_BCC_BUFFER, default auto)")
    krn.add_argument("--reconcile-interval", type=str, metavar="SECONDS",
                     help="how often the kernel's own kill count is compared (env OTEL_OOM_RECONCILE_INTERVAL, default 5)")
    krn.add_argument("--ring-buffer-bytes", type=str, metavar="N",
                     help="power of two (env OTEL_OOM_RING_BUFFER_BYTES, default 4 MiB)")
    krn.add_argument("--oom-score-adj", type=str, metavar="N|keep",
                     help="the agent's own oom_score_adj (env OTEL_OOM_OOM_SCORE_ADJ, default -900)")
    rt = run.add_argument_group("container names (from the runtime's API socket)")
    rt.add_argument("--cri-socket", metavar="auto|none|PATH[,PATH]",
                    help="containerd/CRI-O CRI socket (env OTEL_OOM_CRI_SOCKET, default auto)")
    rt.add_argument("--docker-socket", metavar="auto|none|PATH[,PATH]",
                    help="docker API socket (env OTEL_OOM_DOCKER_SOCKET, default auto)")
    rt.add_argument("--podman-socket", metavar="auto|none|PATH[,PATH]",
                    help="podman API socket (env OTEL_OOM_PODMAN_SOCKET, default auto)")
    rt.add_argument("--runtime-root", metavar="DIR",
                    help="auto-detect the sockets below DIR, where the host's / is mounted (env OTEL_OOM_RUNTIME_ROOT)")
    rt.add_argument("--runtime-refresh", metavar="SECONDS",
                    help="full list interval (env OTEL_OOM_RUNTIME_REFRESH, default 1)")
    rt.add_argument("--runtime-lookup-wait-ms", metavar="MS",
                    help="longest wait for a name the cache lacks at a kill "
                         "(env OTEL_OOM_RUNTIME_LOOKUP_WAIT_MS, default 50)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="env OTEL_OOM_LOG_LEVEL, default info")
    around = run.add_argument_group("around the kill")
    around.add_argument("--events", metavar="LIST",
                       help="records besides oom.kill: pressure,no_kill,reclaim,userspace_kill (the default) or none "
                            "(env OTEL_OOM_EVENTS)")
    around.add_argument("--traces", action="store_true",
                       help="export each OOM episode as a span over OTLP traces (env OTEL_OOM_TRACES)")
    around.add_argument("--userspace-killers", metavar="NAMES",
                       help="process names whose SIGKILLs are reported as oom.kill (default "
                            "systemd-oomd,earlyoom,oomd,nohang,lmkd; env OTEL_OOM_USERSPACE_KILLERS)")
    around.add_argument("--pressure-stall-percent", metavar="N",
                       help="PSI stall share (some) of the window that starts a pressure episode "
                            "(env OTEL_OOM_PRESSURE_STALL_PERCENT, default 10)")
    around.add_argument("--pressure-usage-percent", metavar="N",
                       help="memory cgroup usage, percent of its limit, that starts one "
                            "(env OTEL_OOM_PRESSURE_USAGE_PERCENT, default 90)")
    around.add_argument("--pressure-window", metavar="SECONDS", help="PSI trigger window: 2, 4, 6, 8 or 10 "
                            "(env OTEL_OOM_PRESSURE_WINDOW, default 2)")
    around.add_argument("--pressure-clear-seconds", metavar="SECONDS",
                       help="below the clear levels this long ends an episode "
                            "(env OTEL_OOM_PRESSURE_CLEAR_SECONDS, default 10)")
    around.add_argument("--pressure-scan-interval", metavar="SECONDS",
                       help="seconds between sweeps of the cgroups' limits (and v2 usage) "
                            "(env OTEL_OOM_PRESSURE_SCAN_INTERVAL, default 10)")
    around.add_argument("--pressure-max-cgroups", metavar="N",
                       help="limited memory cgroups watched at most (env OTEL_OOM_PRESSURE_MAX_CGROUPS, default 10000)")
    around.add_argument("--reclaim-timeout", metavar="SECONDS",
                       help="report a victim whose memory is not back after this long "
                            "(env OTEL_OOM_RECLAIM_TIMEOUT, default 30)")

    k8s = run.add_argument_group("Kubernetes (the API server: in-cluster, or --kubeconfig)")
    k8s.add_argument("--k8s-events", action="store_true",
                     help="post a Kubernetes Event on the victim's Pod for every kill (env OTEL_OOM_K8S_EVENTS=true)")
    k8s.add_argument("--k8s-kubelet-check", action="store_true",
                     help="report what the kubelet said of each killed container as an oom.kubelet record "
                          "(env OTEL_OOM_K8S_KUBELET_CHECK=true)")
    k8s.add_argument("--k8s-kubelet-wait", metavar="SECONDS",
                     help="how long the kubelet gets to report a kill (env OTEL_OOM_K8S_KUBELET_WAIT, default 30)")
    k8s.add_argument("--kubeconfig", metavar="PATH",
                     help="a kubeconfig (JSON, or YAML with PyYAML) instead of the in-cluster service account "
                          "(env OTEL_OOM_KUBECONFIG)")

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
    """"32M", "512k", "1G", "4194304": bytes. Digits only (no inf, nan, exponents or signs)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    whole, _, frac = number.partition(".")
    if not (number.isascii() and whole.isdigit() and (not frac or frac.isdigit())):  # "1.²" passed isdigit
        raise UsageError(f"--limit must be a size like 32M, got {text!r}")
    return int(float(number) * unit) if frac else int(whole) * unit


def _setup_logging(level: str, secrets: "Sequence[str]" = ()) -> None:
    from .logredact import install

    install(secrets)  # before any library logs: no credential reaches a log line
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="otel-oom: %(levelname)s: %(message)s")
    for noisy in ("opentelemetry", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _run(args: argparse.Namespace) -> int:
    from .agent import Agent

    cfg = resolve(vars(args), os.environ)
    secrets = cfg.otlp_settings.secrets() if cfg.otlp_settings else []
    if cfg.webhook is not None:
        secrets += cfg.webhook.credentials()
        if len(cfg.webhook.path) > 1:
            secrets.append(cfg.webhook.path)  # chat webhooks carry their token in the path
    if cfg.kube is not None:
        secrets += cfg.kube.connection.secrets()
    _setup_logging(cfg.log_level, secrets)
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
