"""The agent's own process: how killable it is (oom_score_adj), what its signals do, what it says of
itself (the `ready` line, the status line) and when it runs out of memory.

Signals only set a flag or log a line; the main loop does the rest:
- SIGINT, SIGTERM, SIGHUP: stop (teardown within --shutdown-timeout, exit 0).
- SIGUSR1, SIGUSR2: one status line on the log (readiness, what waits in the spool and in memory,
  the drops, the kills unobserved), the agent goes on: what an operator asking a daemon "how are
  you" expects, and harmless if sent by mistake.
- SIGALRM, SIGVTALRM, SIGPROF, SIGPOLL, SIGPWR: nothing in the agent uses them; their default
  action ends the process silently, which no one sending them to an OOM monitor wants: one log
  line, and the agent goes on.
A thread that is not the agent's (the OTel SDK's exporter, gRPC's) and dies of memory exhaustion
is one log line too, never a traceback.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from .service import out_of_memory

if TYPE_CHECKING:
    from .config import RunConfig

log = logging.getLogger("otel_oom.agent")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STATUS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
IGNORED_SIGNALS = (signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGPOLL, signal.SIGPWR)
OUT_OF_MEMORY = ("out of memory; raise the agent's memory limit (its container's, or ulimit -v); "
                 "stored events stay in the spool")


def lower_oom_score(want: Optional[int]) -> None:
    """Set the agent's own oom_score_adj (None: keep it); a warning when the kernel does not take it."""
    if want is None:
        return
    have: Optional[int]
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(want))
        with open("/proc/self/oom_score_adj") as f:
            have = int(f.read())
    except (OSError, ValueError) as e:
        have, why = None, getattr(e, "strerror", None) or str(e)
    else:
        why = "the kernel kept the old value"
    if have != want:
        # lowering needs CAP_SYS_RESOURCE (some kernels ignore the write instead of refusing it);
        # the agent still works, it is just as killable as any other process
        log.warning("could not set the agent's oom_score_adj to %d (%s; lowering needs CAP_SYS_RESOURCE)",
                    want, why)


M_ARENA_MAX = -8  # mallopt(3)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates an arena of its own, 64 MiB of address space each (17
    threads here: over 1 GiB of it). Under an address-space limit (`ulimit -v`) that is what runs out
    first, and gRPC's C core aborts the process when it cannot start a thread; two arenas are plenty
    for an agent whose threads mostly wait."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to limit


GRPC_HEADROOM = 128 << 20  # address space gRPC's C core takes for its threads (measured: ~100 MiB)


def check_room_for_grpc() -> None:
    """Under an address-space limit, refuse gRPC in one line when it would not fit: its C core aborts
    the process (SIGABRT, no word from the agent) when it cannot start one of its threads."""
    import resource

    from .errors import AgentError

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return
    with open("/proc/self/status") as f:
        used = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
    if limit - used < GRPC_HEADROOM:
        raise AgentError(f"the address-space limit (ulimit -v, {limit >> 20} MiB) leaves {(limit - used) >> 20} MiB: "
                         f"OTLP over gRPC needs about {GRPC_HEADROOM >> 20} MiB more for its threads; raise the limit, "
                         "or export over http/protobuf (OTEL_EXPORTER_OTLP_PROTOCOL)")


def install_signal_handlers(stop: threading.Event, status: threading.Event) -> None:
    def stopping(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    def asked(signum: int, _frame: object) -> None:
        status.set()  # the main loop logs the status line

    def ignored(signum: int, _frame: object) -> None:
        log.info("received %s: ignored (otel-oom stops on SIGTERM, SIGINT or SIGHUP; SIGUSR1 logs its status)",
                 signal.Signals(signum).name)

    handlers: list[tuple[tuple[signal.Signals, ...], Callable[[int, object], None]]] = [
        (STOP_SIGNALS, stopping), (STATUS_SIGNALS, asked), (IGNORED_SIGNALS, ignored)]
    for signals, handler in handlers:
        for sig in signals:
            signal.signal(sig, handler)


def install_thread_hook() -> None:
    """Threads that are not the agent's: memory exhaustion is one line (the agent's own threads are
    the supervisor's, service.ServiceThread)."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and out_of_memory(args.exc_value):
            name = args.thread.name if args.thread is not None else "a thread"
            log.critical("thread %s: %s", name, OUT_OF_MEMORY)
            return
        default(args)

    threading.excepthook = hook


def status_line(readiness: tuple[bool, str], kills: int, waiting: int, in_memory: int,
                drops: Mapping[str, int], unobserved: int) -> str:
    """The line SIGUSR1 and SIGUSR2 log."""
    ok, why = readiness
    dropped = {k: v for k, v in sorted(drops.items()) if v}
    return (f"status: {'ready' if ok else 'not ready: ' + why}; {kills} kill(s) handled; {waiting} event(s) "
            f"waiting in the spool, {in_memory} in memory; dropped {dropped or 'none'}; unobserved {unobserved}")


def ready_line(plan: Any, cfg: "RunConfig", around: str, took_s: float) -> str:
    """The `ready` line: the hooks attached (`plan`: kernel.source.HookPlan), the delivery, what is
    watched around the kill."""
    task = ""
    if plan.victim == "tracepoint":
        task = f" task={plan.task}" + (f" ({plan.task_symbol})" if plan.task == "kprobe" else "")
    parts = []
    if cfg.otlp_settings is not None:
        logs = cfg.otlp_settings.logs
        parts.append(f"OTLP {logs.protocol} to {logs.endpoint.redacted}")
        parts.append(f"spool {cfg.spool_dir}" if cfg.spool_dir else "no spool (memory only)")
    parts += [what for on, what in ((cfg.console, "console"), (cfg.json, "JSON on stdout"), (cfg.webhook, "webhook"))
              if on]
    hooks = (f"hooks victim={plan.victim} context={plan.context}"
             f"{f' ({plan.kprobe_symbol})' if plan.kprobe_symbol else ''}{task}, backend {plan.backend}")
    if plan.backend == "kmsg":
        hooks = "kills from the kernel log /dev/kmsg, backend kmsg (no BPF)"
    return (f"ready in {took_s * 1000:.0f} ms: {hooks}; "
            f"delivery {', '.join(parts) or 'none'}; around the kill: {around}")
