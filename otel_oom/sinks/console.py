"""Human and JSON renderings of an OomKill (and of the records around it) for stdout (`--console`,
`--json`), both terminal-safe.

Process names and cgroup paths come from the kernel as arbitrary bytes: every untrusted string
goes through `text.for_terminal` (console) or the JSON encoder plus `text.for_json_line` (JSON
lines). The JSON line is the OTLP log record (`schema.log_records.log_record`, pure: a console-only
agent never imports the OpenTelemetry SDK): its event name, body, trace and attributes. The console
shows a kill as a block of its fields and every other record as one line with its log record's body.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable, Optional

from ..schema.log_records import log_record
from ..schema.records import OomKill, Record
from ..text import for_json_line, for_terminal


def format_size(n: Optional[int]) -> str:
    """Binary units with one decimal, as people read memory limits: 0 B, 512 B, 1.2 MiB, 4.0 GiB."""
    if n is None:
        return "?"
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if abs(value) < 1024.0 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_time(time_unix_nano: int, sep: str = " ", digits: int = 3) -> str:
    """UTC wall-clock time with `digits` fractional digits (nanoseconds kept exactly, no float)."""
    seconds, nanos = divmod(time_unix_nano, 10**9)
    base = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits <= 0:
        return base
    return f"{base}.{nanos:09d}"[: len(base) + 1 + digits]


def rfc3339(time_unix_nano: int) -> str:
    """RFC 3339 UTC timestamp with nanosecond precision, e.g. 2026-11-25T10:31:07.123456789Z."""
    return format_time(time_unix_nano, sep="T", digits=9) + "Z"


def _who(pid: Optional[int], tid: Optional[int], comm: Optional[str]) -> str:
    parts = [f"pid={pid if pid is not None else '?'}"]
    if tid is not None and tid != pid:
        parts.append(f"tid={tid}")
    parts.append(f"comm={for_terminal(comm) if comm is not None else '?'}")
    return " ".join(parts)


def workload_summary(kill: OomKill, escape: Callable[[str], str]) -> str:
    """"pod=shop/checkout-7d9f container=api restarts=2 image=app:1.2 (names: cache)", each name
    through `escape`; "" when no runtime was asked."""
    k = kill
    parts = []
    if k.pod_name:
        parts.append(f"pod={escape(k.pod_namespace or '?')}/{escape(k.pod_name)}")
    container = k.k8s_container_name or k.container_name
    if container:
        parts.append(f"container={escape(container)}")
    if k.restart_count:
        parts.append(f"restarts={k.restart_count}")
    if k.container_image:
        tag = f":{k.container_image_tag}" if k.container_image_tag else ""
        parts.append(f"image={escape(k.container_image + tag)}")
    if k.names_source:
        parts.append(f"(names: {escape(k.names_source)})")
    return " ".join(parts)


def format_console(kill: OomKill) -> str:
    """One readable block per kill, ending with a newline; unknown fields are left out or shown as "?"."""
    k = kill
    what = "OOM MARK" if k.killed is False else "OOM KILL"
    header = f"[{format_time(k.time_unix_nano)} UTC] {what} ({k.constraint}"
    header += ", recovered from the kernel log)" if k.recovered else \
        ", already exiting: marked, not killed)" if k.killed is False else ")"
    lines = [header]

    victim = [_who(k.victim_pid, k.victim_tid, k.victim_comm)]
    if k.victim_ppid is not None:
        victim.append(f"ppid={k.victim_ppid}")
    if k.victim_uid is not None:
        victim.append(f"uid={k.victim_uid}")
    if k.rss_bytes is not None:
        victim.append(f"rss={format_size(k.rss_bytes)} (anon {format_size(k.anon_rss_bytes)}, "
                      f"file {format_size(k.file_rss_bytes)}, shmem {format_size(k.shmem_rss_bytes)})")
    elif k.anon_rss_bytes is not None:
        victim.append(f"anon-rss={format_size(k.anon_rss_bytes)}")
    if k.total_vm_bytes is not None:
        victim.append(f"vm={format_size(k.total_vm_bytes)}")
    if k.oom_score_adj is not None:
        victim.append(f"oom_score_adj={k.oom_score_adj}")
    lines.append("  Victim:  " + " ".join(victim))

    if k.trigger_pid is not None or k.trigger_comm is not None:
        lines.append("  Trigger: " + _who(k.trigger_pid, k.trigger_tid, k.trigger_comm))
    else:
        lines.append("  Trigger: ?")

    if k.cgroup_truncated:
        lines.append("  Cgroup:  ? (a name longer than the kernel side captures; the cgroup is gone)")
    if k.cgroup_path is not None or k.container_id or k.pod_uid:
        cg = [for_terminal(k.cgroup_path) if k.cgroup_path is not None else "?"]
        if k.container_id:
            runtime = f"{for_terminal(k.container_runtime)}://" if k.container_runtime else ""
            cg.append(f" container={runtime}{for_terminal(k.container_id[:12])}")
        if k.pod_uid:
            qos = f" ({for_terminal(k.pod_qos_class)})" if k.pod_qos_class else ""
            cg.append(f" pod={for_terminal(k.pod_uid)}{qos}")
        lines.append("  Cgroup:  " + " ".join(cg))

    workload = workload_summary(k, for_terminal)
    if workload:
        lines.append("  Names:   " + workload)

    if k.memcg_path is not None or k.memcg_limit_bytes is not None:
        memcg = [for_terminal(k.memcg_path) if k.memcg_path is not None else "?"]
        if k.memcg_limit_bytes is not None:
            memcg.append(f"limit={format_size(k.memcg_limit_bytes)}")
        if k.memcg_usage_bytes is not None:
            memcg.append(f"usage={format_size(k.memcg_usage_bytes)}")
        memcg.append(f"({k.memcg_source})")
        lines.append("  OOM memcg: " + " ".join(memcg))

    why = [f"constraint={k.constraint} ({k.constraint_source})"]
    if k.domain_bytes is not None:
        why.append(f"domain={format_size(k.domain_bytes)}")
    if k.badness_points is not None:
        why.append(f"badness={k.badness_points}")
    if k.gfp_mask is not None:
        why.append(f"gfp_mask={k.gfp_mask:#x}")
    if k.order is not None:
        why.append(f"order={k.order}")
    lines.append("  Why:     " + " ".join(why))

    hook = f"  Hook:    {for_terminal(k.hook)} (context: {for_terminal(k.context_hook)})"
    hook += f"   event={for_terminal(k.event_id)}"
    if k.decision_id:
        hook += f" decision={for_terminal(k.decision_id)}"
    lines.append(hook)
    return "\n".join(lines) + "\n"


def format_json(kill: OomKill) -> str:
    """A kill's JSON line (see `format_record_json`)."""
    return format_record_json(kill)


# ---- issue 13: every record type ----------------------------------------------------------------

def format_record_console(record: Record) -> str:
    """A kill as its block; the records around it (pressure, no-kill, reclaim) as one line each."""
    if isinstance(record, OomKill):
        return format_console(record)
    fields = log_record(record)
    label = fields.event_name.upper().replace("OOM.", "OOM ").replace("_", "-")
    state = getattr(record, "state", None)
    if state:
        label += f" {state.upper()}"
    return f"[{format_time(record.time_unix_nano)} UTC] {label}: {fields.body}\n"


def format_record_json(record: Record) -> str:
    """Any record as one JSON line: `time`, `event_name`, `body`, trace ids when set, then the attributes."""
    # raw: kernel bytes (lone surrogates) become \udcNN escapes here, lossless, and never the text "\xNN"
    fields = log_record(record, raw=True)
    doc = {"time": rfc3339(record.time_unix_nano), "event_name": fields.event_name, "body": fields.body}
    if record.trace_id:
        doc.update(trace_id=record.trace_id, span_id=record.span_id or "")
    doc.update(fields.attributes)
    return for_json_line(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
