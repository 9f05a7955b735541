"""Configuration of `otel-oom run`: command line > environment > default, in one pure function.

otel-oom's own settings are OTEL_OOM_*. The standard OTEL_* variables are checked here too, once,
through `otlp.env.resolve_otlp` (which settles protocol and endpoint per signal; the SDK reads the
rest), and every URL is parsed here (`urls.parse_url`), so nothing later has to re-validate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .attribution.runtime.settings import RuntimeSettings, resolve_runtimes
from .errors import UsageError
from .numbers import ascii_float, ascii_int
from .urls import Url, parse_url

if TYPE_CHECKING:
    from .kube.settings import KubeSettings
    from .otlp.env import OtlpSettings

# environment variables and their defaults
ENV_SPOOL_DIR = "OTEL_OOM_SPOOL_DIR"              # default /var/lib/otel-oom/spool
ENV_SPOOL_MAX_BYTES = "OTEL_OOM_SPOOL_MAX_BYTES"  # default 64 MiB
ENV_SPOOL_MAX_AGE = "OTEL_OOM_SPOOL_MAX_AGE"      # seconds, default 7 days
ENV_LISTEN = "OTEL_OOM_LISTEN"                    # HOST:PORT for /healthz /readyz /metrics; default off
ENV_PROMETHEUS = "OTEL_OOM_PROMETHEUS"            # "true": serve /metrics on the listen address
ENV_WEBHOOK = "OTEL_OOM_NOTIFY_WEBHOOK"           # URL; default off
ENV_OOM_SCORE_ADJ = "OTEL_OOM_OOM_SCORE_ADJ"      # default -900
ENV_VICTIM_HOOK = "OTEL_OOM_VICTIM_HOOK"          # auto | tp_btf | tracepoint
ENV_CONTEXT_HOOK = "OTEL_OOM_CONTEXT_HOOK"        # auto | fentry | kprobe | none
ENV_TASK_HOOK = "OTEL_OOM_TASK_HOOK"              # auto | fentry | kprobe | none (pid-only mark_victim kernels)
ENV_BACKEND = "OTEL_OOM_BACKEND"                  # auto | libbpf | bcc | kmsg (the kernel log, no BPF)
ENV_BCC_BUFFER = "OTEL_OOM_BCC_BUFFER"            # bcc backend: auto (ring buffer on 5.8+) | ring | perf
ENV_RECONCILE_INTERVAL = "OTEL_OOM_RECONCILE_INTERVAL"  # seconds between reads of the kernel's kill count; default 5
ENV_RING_BUFFER = "OTEL_OOM_RING_BUFFER_BYTES"    # default 4 MiB
ENV_LOG_LEVEL = "OTEL_OOM_LOG_LEVEL"              # default info
ENV_CONSOLE = "OTEL_OOM_CONSOLE"                  # "true": --console
ENV_JSON = "OTEL_OOM_JSON"                        # "true": --json
ENV_NO_OTLP = "OTEL_OOM_NO_OTLP"                  # "true": --no-otlp
ENV_NO_SPOOL = "OTEL_OOM_NO_SPOOL"                # "true": --no-spool
ENV_SHUTDOWN_TIMEOUT = "OTEL_OOM_SHUTDOWN_TIMEOUT"  # seconds, default 5
# ---- around the kill: the records besides the kills ----
ENV_EVENTS = "OTEL_OOM_EVENTS"                    # default pressure,no_kill,reclaim,userspace_kill; "none"
ENV_TRACES = "OTEL_OOM_TRACES"                    # "true": each OOM episode as a span over OTLP traces
ENV_USERSPACE_KILLERS = "OTEL_OOM_USERSPACE_KILLERS"  # process names, default systemd-oomd,earlyoom,oomd,nohang,lmkd
ENV_STALL_PERCENT = "OTEL_OOM_PRESSURE_STALL_PERCENT"  # PSI some, % of the window, default 10
ENV_USAGE_PERCENT = "OTEL_OOM_PRESSURE_USAGE_PERCENT"  # of the memcg limit, default 90
ENV_PSI_WINDOW = "OTEL_OOM_PRESSURE_WINDOW"            # seconds: 2, 4, 6, 8 or 10; default 2
ENV_CLEAR_SECONDS = "OTEL_OOM_PRESSURE_CLEAR_SECONDS"  # below the clear levels this long ends an episode; 10
ENV_SCAN_INTERVAL = "OTEL_OOM_PRESSURE_SCAN_INTERVAL"  # seconds between limit (and v2 usage) sweeps; 10
ENV_MAX_CGROUPS = "OTEL_OOM_PRESSURE_MAX_CGROUPS"      # limited memory cgroups watched at most; 10000
ENV_RECLAIM_TIMEOUT = "OTEL_OOM_RECLAIM_TIMEOUT"       # seconds a victim's memory may take; 30

DEFAULT_SPOOL_DIR = "/var/lib/otel-oom/spool"
DEFAULT_SPOOL_MAX_BYTES = 64 << 20
DEFAULT_SPOOL_MAX_AGE = 7 * 86400
# low enough that the OOM killer picks a runaway workload first, not -1000 (never killable):
# a leaking agent must stay killable
DEFAULT_OOM_SCORE_ADJ = -900
DEFAULT_RING_BUFFER = 4 << 20
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
EVENT_KINDS = ("pressure", "no_kill", "reclaim", "userspace_kill")
DEFAULT_KILLERS = ("systemd-oomd", "earlyoom", "oomd", "nohang", "lmkd")


@dataclass(frozen=True)
class EventSettings:
    """What otel-oom reports around the kill, besides the kernel's kills, checked once here."""

    kinds: frozenset[str] = frozenset(EVENT_KINDS)
    traces: bool = False
    userspace_killers: tuple[str, ...] = DEFAULT_KILLERS
    stall_percent: float = 10.0
    usage_percent: float = 90.0
    psi_window_s: int = 2
    clear_seconds: float = 10.0
    scan_interval_s: float = 10.0
    max_cgroups: int = 10000
    reclaim_timeout_s: float = 30.0

    def on(self, kind: str) -> bool:
        return kind in self.kinds
DEFAULT_RECONCILE_INTERVAL = 5.0
HOOK_CHOICES = {"victim": ("auto", "tp_btf", "tracepoint"), "context": ("auto", "fentry", "kprobe", "none"),
                "task": ("auto", "fentry", "kprobe", "none")}
BACKENDS = ("auto", "libbpf", "bcc", "kmsg")
BCC_BUFFERS = ("auto", "ring", "perf")


@dataclass(frozen=True)
class RunConfig:
    console: bool = False
    json: bool = False
    otlp: bool = True
    spool_dir: Optional[str] = DEFAULT_SPOOL_DIR   # None: no spool (memory only)
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_max_age: float = DEFAULT_SPOOL_MAX_AGE
    listen: Optional[str] = None
    prometheus: bool = False
    webhook: Optional[Url] = None
    oom_score_adj: Optional[int] = DEFAULT_OOM_SCORE_ADJ
    victim_hook: str = "auto"
    context_hook: str = "auto"
    task_hook: str = "auto"
    backend: str = "auto"
    bcc_buffer: str = "auto"
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL
    ring_buffer_bytes: int = DEFAULT_RING_BUFFER
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    log_level: str = "info"
    otlp_settings: Optional["OtlpSettings"] = None  # resolved when OTLP export is on
    runtimes: RuntimeSettings = RuntimeSettings()    # container runtime sockets for names (auto-detected)
    events: EventSettings = EventSettings()         # around the kill: pressure, no-kill, reclaim, user-space kills, traces
    kube: Optional["KubeSettings"] = None           # --k8s-events, --k8s-kubelet-check (kube/settings.py)


def _pick(flag: Any, environ: Mapping[str, str], env: str, default: Any) -> Any:
    if flag is not None:
        return flag
    value = environ.get(env)
    return default if value in (None, "") else value


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    n = ascii_int(value)
    if n is None:
        raise UsageError(f"{what} must be a whole number (ASCII digits), got {value!r}")
    if not lo <= n <= hi:
        raise UsageError(f"{what} must be between {lo} and {hi}, got {n}")
    return n


def _seconds(value: Any, what: str, hi: float, lo: float = 0.0) -> float:
    n = ascii_float(value)
    if n is None and str(value).strip().lower().lstrip("+-") not in ("inf", "infinity", "nan"):
        raise UsageError(f"{what} must be a number of seconds, got {value!r}")
    if n is None or not lo <= n <= hi:
        raise UsageError(f"{what} must be between {lo:g} and {hi:g} seconds, got {value!r}")
    return n


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{what} must be true or false, got {value!r}")


def _choice(value: str, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _switch(flags: Mapping[str, object], name: str, environ: Mapping[str, str], env: str) -> bool:
    """A store_true flag (False = not given) or its variable (true/false; empty means unset)."""
    return _bool(_pick(flags.get(name) or None, environ, env, False), env)


def resolve(flags: Mapping[str, object], environ: Mapping[str, str]) -> RunConfig:
    """Merge parsed flags (None = not given) with the environment; validate every value."""
    if flags.get("spool_dir") is not None and not str(flags["spool_dir"]).strip():
        # an empty flag is a mistake to report (an empty variable means unset, i.e. the default)
        raise UsageError("--spool-dir must name a directory; to keep events in memory only, use --no-spool")
    spool = _pick(flags.get("spool_dir"), environ, ENV_SPOOL_DIR, DEFAULT_SPOOL_DIR)
    ring = _int(_pick(flags.get("ring_buffer_bytes"), environ, ENV_RING_BUFFER, DEFAULT_RING_BUFFER),
                "--ring-buffer-bytes", 4096, 1 << 30)
    if ring & (ring - 1):
        raise UsageError(f"--ring-buffer-bytes must be a power of two, got {ring}")
    adj = _pick(flags.get("oom_score_adj"), environ, ENV_OOM_SCORE_ADJ, DEFAULT_OOM_SCORE_ADJ)
    listen = _pick(flags.get("listen"), environ, ENV_LISTEN, None)
    if listen:
        from .health import parse_listen

        parse_listen(listen)  # fail before anything starts, not after the probes are attached
    # a flag given as "" is a mistake to report; an empty variable means unset
    webhook = flags.get("notify_webhook")
    webhook = webhook if webhook is not None else (environ.get(ENV_WEBHOOK) or None)
    otlp = not _switch(flags, "no_otlp", environ, ENV_NO_OTLP)
    from .otlp.env import metric_export_interval_ms, resolve_otlp

    otlp_settings = resolve_otlp(environ) if otlp else None
    metric_export_interval_ms(environ)  # also read by --prometheus-only runs: a typo fails either way
    return RunConfig(
        console=_switch(flags, "console", environ, ENV_CONSOLE),
        json=_switch(flags, "json", environ, ENV_JSON),
        otlp=otlp,
        spool_dir=None if _switch(flags, "no_spool", environ, ENV_NO_SPOOL) else spool,
        spool_max_bytes=_int(_pick(flags.get("spool_max_bytes"), environ, ENV_SPOOL_MAX_BYTES,
                                   DEFAULT_SPOOL_MAX_BYTES), "--spool-max-bytes", 1 << 16, 1 << 40),
        spool_max_age=_int(_pick(flags.get("spool_max_age"), environ, ENV_SPOOL_MAX_AGE,
                                 DEFAULT_SPOOL_MAX_AGE), "--spool-max-age", 1, 10 * 365 * 86400),
        listen=listen,
        prometheus=_switch(flags, "prometheus", environ, ENV_PROMETHEUS),
        webhook=None if webhook is None else parse_url("--notify-webhook", str(webhook),
                                                       "https://hooks.example.com/T000/B000/XXXX"),
        oom_score_adj=None if str(adj).lower() == "keep" else _int(adj, "--oom-score-adj", -1000, 1000),
        victim_hook=_choice(_pick(flags.get("victim_hook"), environ, ENV_VICTIM_HOOK, "auto"),
                            "--victim-hook", HOOK_CHOICES["victim"]),
        context_hook=_choice(_pick(flags.get("context_hook"), environ, ENV_CONTEXT_HOOK, "auto"),
                             "--context-hook", HOOK_CHOICES["context"]),
        task_hook=_choice(_pick(flags.get("task_hook"), environ, ENV_TASK_HOOK, "auto"), "--task-hook",
                          HOOK_CHOICES["task"]),
        backend=_choice(_pick(flags.get("backend"), environ, ENV_BACKEND, "auto"), "--backend", BACKENDS),
        bcc_buffer=_choice(_pick(flags.get("bcc_buffer"), environ, ENV_BCC_BUFFER, "auto"), "--bcc-buffer",
                           BCC_BUFFERS),
        reconcile_interval=_seconds(_pick(flags.get("reconcile_interval"), environ, ENV_RECONCILE_INTERVAL,
                                          DEFAULT_RECONCILE_INTERVAL), "--reconcile-interval", 3600, lo=0.1),
        ring_buffer_bytes=ring,
        shutdown_timeout=_seconds(_pick(flags.get("shutdown_timeout"), environ, ENV_SHUTDOWN_TIMEOUT,
                                        DEFAULT_SHUTDOWN_TIMEOUT), "--shutdown-timeout", 600),
        log_level=_choice(str(_pick(flags.get("log_level"), environ, ENV_LOG_LEVEL, "info")).lower(),
                          "--log-level", ("debug", "info", "warning", "error")),
        otlp_settings=otlp_settings,
        runtimes=resolve_runtimes(flags, environ),
        events=resolve_events(flags, environ, otlp),
        kube=_kube(flags, environ),
    )


def _kube(flags: Mapping[str, object], environ: Mapping[str, str]) -> Optional["KubeSettings"]:
    """The Kubernetes extras: off (None, nothing imported) unless a flag or variable turns them on."""
    from .kube.switches import ENV_EVENTS, ENV_KUBECONFIG, ENV_KUBELET_CHECK

    if not (flags.get("k8s_events") or flags.get("k8s_kubelet_check") or flags.get("kubeconfig")
            or environ.get(ENV_EVENTS) or environ.get(ENV_KUBELET_CHECK) or environ.get(ENV_KUBECONFIG)):
        return None
    from .kube.settings import resolve_kube

    return resolve_kube(flags, environ)


def _names(value: str, what: str, choices: Optional[tuple[str, ...]] = None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(value).split(",") if n.strip())
    for n in names:
        if choices is not None and n not in choices:
            raise UsageError(f"{what}: unknown item {n!r}; choose from {', '.join(choices)} (or none)")
        if choices is None and (len(n.encode()) > 15 or "/" in n):
            raise UsageError(f"{what}: {n!r} is not a process name: at most 15 bytes, the kernel's comm "
                             f"(a longer name shows truncated, e.g. {n.encode()[:15].decode(errors='ignore')!r})")
    return names


def resolve_events(flags: Mapping[str, object], environ: Mapping[str, str], otlp: bool) -> EventSettings:
    """The issue-13 settings: which records besides oom.kill, their thresholds, the killers' names."""
    kinds_text = str(_pick(flags.get("events"), environ, ENV_EVENTS, ",".join(EVENT_KINDS)))
    kinds = () if kinds_text.strip().lower() == "none" else _names(kinds_text, "--events", EVENT_KINDS)
    traces = _bool(_pick(flags.get("traces") or None, environ, ENV_TRACES, False), ENV_TRACES)
    if traces and not otlp:
        raise UsageError("--traces exports over OTLP: it cannot be combined with --no-otlp")
    window = _int(_pick(flags.get("pressure_window"), environ, ENV_PSI_WINDOW, 2), "--pressure-window", 2, 10)
    if window % 2:
        raise UsageError(f"--pressure-window must be 2, 4, 6, 8 or 10 seconds (PSI triggers without "
                         f"CAP_SYS_RESOURCE need a multiple of 2 s), got {window}")
    return EventSettings(
        kinds=frozenset(kinds),
        traces=traces,
        userspace_killers=_names(_pick(flags.get("userspace_killers"), environ, ENV_USERSPACE_KILLERS,
                                       ",".join(DEFAULT_KILLERS)), "--userspace-killers"),
        stall_percent=float(_int(_pick(flags.get("pressure_stall_percent"), environ, ENV_STALL_PERCENT, 10),
                                 "--pressure-stall-percent", 1, 99)),
        usage_percent=float(_int(_pick(flags.get("pressure_usage_percent"), environ, ENV_USAGE_PERCENT, 90),
                                 "--pressure-usage-percent", 11, 100)),
        psi_window_s=window,
        clear_seconds=float(_int(_pick(flags.get("pressure_clear_seconds"), environ, ENV_CLEAR_SECONDS, 10),
                                 "--pressure-clear-seconds", 1, 3600)),
        scan_interval_s=float(_int(_pick(flags.get("pressure_scan_interval"), environ, ENV_SCAN_INTERVAL, 10),
                                   "--pressure-scan-interval", 1, 3600)),
        max_cgroups=_int(_pick(flags.get("pressure_max_cgroups"), environ, ENV_MAX_CGROUPS, 10000),
                         "--pressure-max-cgroups", 0, 1_000_000),
        reclaim_timeout_s=float(_int(_pick(flags.get("reclaim_timeout"), environ, ENV_RECLAIM_TIMEOUT, 30),
                                     "--reclaim-timeout", 1, 3600)),
    )
