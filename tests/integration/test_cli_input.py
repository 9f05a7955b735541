"""The hostile-input suite: the real `otel-oom` process against bad flags and environment values, a
missing libbpf, credentials that must not reach a log line, a spool on a full and on a read-only
filesystem, collectors that answer garbage or never answer, SIGSTOP during kills, SIGKILL mid-burst,
thousands of cgroups, a real mark that is not a kill and cgroup names longer than the kernel side
captures. Every test asserts: no traceback, one clear line where the agent cannot run, and every
kill delivered or counted under a reason."""
from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import pytest
from conftest import REPO, agent_env, require_root_bpf

MiB = 1 << 20
DOWN = "http://127.0.0.1:9"  # discard port: nothing answers




def cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otel_oom", *args], cwd=REPO, env=agent_env(**env),
                          capture_output=True, text=True, timeout=timeout)


BAD = [
    # (arguments, environment, what the one line says)
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1:bad"}, "OTEL_EXPORTER_OTLP_ENDPOINT has a malformed address"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:pw@[::1:bad"}, "malformed address"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "without http:// or https://"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:99999"}, "invalid port"),
    ([], {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "ftp://c"}, "must be a URL"),
    ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json is not supported"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": 'authorization="Bearer%20x"'}, "has a quote in its value"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer x"}, "has a space in its value"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": "a=1\r\nb=2"}, "line break or control character"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": "justatoken"}, "is not key=value"),
    ([], {"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, "positive number of seconds"),
    ([], {"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"}, "positive number of seconds"),
    ([], {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "must be gzip"),
    ([], {"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "must be true or false"),
    ([], {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "cannot read"),
    ([], {"OTEL_ATTRIBUTE_COUNT_LIMIT": "abc"}, "OTEL_ATTRIBUTE_COUNT_LIMIT must be a whole number"),
    ([], {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "-5"}, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT must be"),
    ([], {"OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT": "x"}, "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT must be"),
    ([], {"OTEL_METRIC_EXPORT_TIMEOUT": "soon"}, "OTEL_METRIC_EXPORT_TIMEOUT must be"),
    ([], {"OTEL_METRICS_EXEMPLAR_FILTER": "sometimes"}, "OTEL_METRICS_EXEMPLAR_FILTER must be one of"),
    ([], {"OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": "NOPE"}, "not a gRPC status name"),
    (["--no-otlp"], {"OTEL_METRIC_EXPORT_INTERVAL": "abc"}, "OTEL_METRIC_EXPORT_INTERVAL must be"),
    (["--notify-webhook=http://[::1:bad"], {}, "--notify-webhook has a malformed address"),
    (["--notify-webhook=http://hooks:abc/x"], {}, "--notify-webhook has an invalid port"),
    (["--notify-webhook=http://hooks:99999/x"], {}, "--notify-webhook has an invalid port"),
    (["--notify-webhook=file:///etc/passwd"], {}, "--notify-webhook must be a URL"),
    (["--notify-webhook="], {}, "--notify-webhook must be a URL"),
    ([], {"OTEL_OOM_NOTIFY_WEBHOOK": "gopher://x"}, "--notify-webhook must be a URL"),
    (["--spool-dir="], {}, "use --no-spool"),
    (["--spool-max-bytes=1k"], {}, "--spool-max-bytes must be a whole number"),
    (["--spool-max-bytes=100"], {}, "--spool-max-bytes must be between"),
    ([], {"OTEL_OOM_SPOOL_MAX_AGE": "0"}, "--spool-max-age must be between"),
    (["--shutdown-timeout=inf"], {}, "--shutdown-timeout must be between"),
    ([], {"OTEL_OOM_SHUTDOWN_TIMEOUT": "-1"}, "--shutdown-timeout must be between"),
    (["--ring-buffer-bytes=3000"], {}, "--ring-buffer-bytes must be between"),
    (["--ring-buffer-bytes=12288"], {}, "must be a power of two"),
    (["--oom-score-adj=5000"], {}, "--oom-score-adj must be between"),
    ([], {"OTEL_OOM_OOM_SCORE_ADJ": "low"}, "--oom-score-adj must be a whole number"),
    (["--listen=9464"], {}, "--listen must be HOST:PORT"),
    (["--listen=::1:9464"], {}, "--listen must be HOST:PORT"),
    ([], {"OTEL_OOM_LISTEN": "host:70000"}, "--listen must be HOST:PORT"),
    ([], {"OTEL_OOM_PROMETHEUS": "maybe"}, "OTEL_OOM_PROMETHEUS must be true or false"),
    ([], {"OTEL_OOM_CONSOLE": "2"}, "OTEL_OOM_CONSOLE must be true or false"),
    ([], {"OTEL_OOM_VICTIM_HOOK": "kprobe"}, "--victim-hook must be one of"),
    ([], {"OTEL_OOM_LOG_LEVEL": "loud"}, "--log-level must be one of"),
    (["--victim-hook=nope"], {}, "invalid choice"),
    (["--bogus"], {}, "unrecognized arguments"),
]


def _one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("otel-oom: error: ") and needle in lines[0], r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)


def test_bad_flags_and_environment_values_fail_in_one_line():
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda case: cli("run", *case[0], **case[1]), BAD))
    for (_args, _env, needle), r in zip(BAD, runs, strict=True):
        _one_line_error(r, needle)
        assert "s3cr3t" not in r.stderr and "pw@" not in r.stderr
    print(f"\n{len(BAD)} bad flag and environment values: one line each, exit 2")


@pytest.mark.parametrize("limit", ["infM", "nanM", "1e3M", "-5M", "lots"])
def test_trigger_limits_fail_in_one_line(limit):
    _one_line_error(cli("trigger", f"--limit={limit}"), "--limit must be a size like 32M")


@pytest.mark.root
@pytest.mark.parametrize("command", [["check"], ["run", "--no-otlp"]])
def test_a_missing_libbpf_is_one_line(command):
    require_root_bpf()
    lib = os.path.realpath("/usr/lib/x86_64-linux-gnu/libbpf.so.1")
    # hide the library in a private mount namespace: dlopen then fails as on a host without libbpf1
    script = f"mount --bind /dev/null {lib} && exec {sys.executable} -m otel_oom {' '.join(command)}"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                       env=agent_env(), capture_output=True, text=True, timeout=30)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1 and "libbpf.so.1 not found: install it" in r.stderr, r.stderr
