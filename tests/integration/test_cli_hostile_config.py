"""The real `otel-oom run` process against the second round's hostile configuration (issue 21):
URLs with credentials in odd places, header keys gRPC cannot carry, non-UTF-8 %-escapes, Unicode
digits in every kind of number, intervals and timeouts past what the SDK's waits take. Each ends
with exit 2 and one line naming the setting, never a traceback, never the secret."""
from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import sys

from conftest import REPO, agent_env, require

from testing.otlp_receiver import make_test_pki

SECRET = "s3cr3tpw"

BAD = [
    # (arguments, environment, what the one line says)
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://otel:p#{SECRET}@collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/v1@evil.example"}, "an @ outside the user info"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://collector:4317?api-key={SECRET}"}, "gRPC does not send"),
    (["--notify-webhook=http://hooks.example/x@evil"], {}, "--notify-webhook has an @ outside the user info"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": f"trace-bin={SECRET}"}, "ends in -bin"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": f"x!a={SECRET}"}, "gRPC metadata keys cannot have"),
    ([], {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=%FF%FE"}, "do not decode as UTF-8"),
    ([], {"OTEL_ATTRIBUTE_COUNT_LIMIT": "\u00b2"}, "OTEL_ATTRIBUTE_COUNT_LIMIT must be a whole number"),
    ([], {"OTEL_METRIC_EXPORT_INTERVAL": "1e13"}, "OTEL_METRIC_EXPORT_INTERVAL must be between"),
    ([], {"OTEL_EXPORTER_OTLP_TIMEOUT": "1e12"}, "OTEL_EXPORTER_OTLP_TIMEOUT must be between"),
    ([], {"OTEL_EXPORTER_OTLP_TIMEOUT": "0.0001"}, "OTEL_EXPORTER_OTLP_TIMEOUT must be between"),
    (["--spool-max-bytes=\u0661\u0660\u0660\u0660\u0660\u0660\u0660\u0660"], {}, "--spool-max-bytes must be a whole"),
    ([], {"OTEL_OOM_SHUTDOWN_TIMEOUT": "\u0661\u0660"}, "--shutdown-timeout must be a number"),
    ([], {"OTEL_OOM_LISTEN": "127.0.0.1:\u00b2"}, "--listen must be HOST:PORT"),
    ([], {"OTEL_OOM_LISTEN": "127.0.0.1:\u0669\u0664\u0666\u0664"}, "--listen must be HOST:PORT"),
]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otel_oom", *args], cwd=REPO, env=agent_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_hostile_configuration_fails_in_one_line_without_the_secret():
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda case: cli("run", *case[0], **case[1]), BAD))
    for (_args, _env, needle), r in zip(BAD, runs, strict=True):
        assert "Traceback" not in r.stderr, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("otel-oom: error: ") and needle in lines[0], r.stderr
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert SECRET not in r.stderr and "evil" not in r.stderr


def test_a_client_key_not_the_certificates_fails_in_one_line(tmp_path):
    require(shutil.which("openssl") is not None, "needs `openssl` on PATH for the TLS tests")
    pki = make_test_pki(tmp_path / "hardening-pki")
    r = cli("run", OTEL_EXPORTER_OTLP_ENDPOINT="https://127.0.0.1:4317", OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert,
            OTEL_EXPORTER_OTLP_CLIENT_KEY=pki.server_key, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki.client_cert)
    assert "Traceback" not in r.stderr and r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "do not make a pair (the key is not the certificate's)" in lines[0], r.stderr
