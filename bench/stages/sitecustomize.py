"""Bench-only: time each stage of every kill inside a real agent process (`bench/latency.py`).

Loaded by Python at start-up (this directory first on PYTHONPATH) when OTEL_OOM_BENCH_STAGES names
a file; nothing in otel_oom/ knows about it. It wraps, by name, the functions at each stage's
boundary and appends one JSON line per delivered kill: wall-clock ns (time.time_ns, the clock the
kernel stamp is converted to) when the ring-buffer callback got the sample, when the worker took
it, when it was attributed, when it was in the spool, when the sender started the export and when
the export returned. Keyed by the victim's pid (the wrapper of the callback decodes the sample once
more for it, ~20 µs that the measured path would not otherwise spend).
"""
from __future__ import annotations

import json
import os
import threading
import time

_PATH = os.environ.get("OTEL_OOM_BENCH_STAGES")


def _install() -> None:
    from otel_oom import agent as agent_mod
    from otel_oom import pipeline as pipeline_mod
    from otel_oom.kernel.wire import decode

    stamps: dict[int, dict[str, int]] = {}
    lock = threading.Lock()
    page = os.sysconf("SC_PAGE_SIZE")
    out = open(_PATH, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def pid_of(raw: bytes) -> int:
        try:
            ev = decode(raw, page)
        except Exception:  # noqa: BLE001 - not a kill (a reclaim event)
            return 0
        return (ev.victim_tgid or ev.victim_pid) if ev is not None else 0

    def stamp(pid: int, stage: str) -> None:
        if pid:
            with lock:
                stamps.setdefault(pid, {}).setdefault(stage, time.time_ns())

    on_sample = agent_mod.Agent._on_sample

    def _on_sample(self, raw):
        stamp(pid_of(raw), "callback")
        return on_sample(self, raw)

    agent_mod.Agent._on_sample = _on_sample

    handle_samples = pipeline_mod.Pipeline.handle_samples

    def _handle_samples(self, raws):
        t = time.time_ns()
        for raw in raws:
            pid = pid_of(raw)
            if pid:
                with lock:
                    stamps.setdefault(pid, {}).setdefault("worker", t)
        return handle_samples(self, raws)

    pipeline_mod.Pipeline.handle_samples = _handle_samples

    commit = pipeline_mod.Pipeline._commit

    def _commit(self, group):
        for kill, _ in group:
            stamp(kill.victim_pid, "attributed")
        commit(self, group)
        for kill, _ in group:
            stamp(kill.victim_pid, "stored")

    pipeline_mod.Pipeline._commit = _commit

    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from otel_oom.otlp import export as export_mod

    send = export_mod.OtlpExport.send

    def _send(self, signal, messages, timeout_s=None):
        t0 = time.time_ns()
        result = send(self, signal, messages, timeout_s)
        t1 = time.time_ns()
        if signal != "logs":
            return result
        with lock:
            for m in messages:  # the spooled LogRecords: the victim's pid and the kernel's stamp
                r = LogRecord.FromString(m)
                if r.event_name != "oom.kill":
                    continue
                pid = next((kv.value.int_value for kv in r.attributes if kv.key == "process.pid"), 0)
                s = stamps.pop(pid, None)
                if s is not None and r.time_unix_nano:
                    out.write(json.dumps({"pid": pid, "kernel": r.time_unix_nano, **s, "send": t0, "sent": t1}) + "\n")
        return result

    export_mod.OtlpExport.send = _send

if _PATH:
    _install()
