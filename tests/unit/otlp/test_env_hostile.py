"""OTEL_* values that passed a too-generous check and then failed later (every export, or the
metric thread, or a traceback at start): header keys gRPC cannot carry, %-escapes that are not
UTF-8, Unicode digits, intervals and timeouts out of what the SDK's waits take, a client key that
is not its certificate's. Each is now refused by `resolve_otlp` in one line naming the variable."""
from __future__ import annotations

import shutil
import subprocess
import threading

import pytest
from conftest import require

from otel_oom.errors import UsageError
from otel_oom.otlp.env import ConfigError, OtlpSettings, resolve_otlp
from otel_oom.otlp.metrics import Metrics
from otel_oom.otlp.resource import build_resource
from testing.otlp_receiver import OtlpGrpcReceiver, make_test_pki

SECRET = "s3cr3tvalue"
HTTP = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


def refused(env: dict[str, str], needle: str) -> str:
    with pytest.raises(ConfigError) as e:
        resolve_otlp(env)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and SECRET not in msg, msg
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2
    return msg


@pytest.mark.parametrize("headers, needle", [
    (f"x!tenant={SECRET}", "gRPC metadata keys cannot have"),        # a token char gRPC refuses: INTERNAL forever
    (f"x~a={SECRET}", "gRPC metadata keys cannot have"),
    (f"trace-bin={SECRET}", "ends in -bin"),                          # a TypeError traceback on every export
    (f"grpc-timeout={SECRET}", "starts with grpc-"),
    (f"x-a=a%09{SECRET}", "tab in its value"),
])
def test_header_keys_and_values_grpc_cannot_carry_are_refused(headers, needle):
    msg = refused({"OTEL_EXPORTER_OTLP_HEADERS": headers}, needle)
    assert msg.startswith("OTEL_EXPORTER_OTLP_HEADERS key ")
    refused({"OTEL_EXPORTER_OTLP_LOGS_HEADERS": headers}, needle)  # per signal too
    # over HTTP the same headers are fine (requests sends them as they are)
    resolve_otlp({**HTTP, "OTEL_EXPORTER_OTLP_HEADERS": headers})


def test_uppercase_keys_are_lower_cased_and_go_through_grpc():
    with OtlpGrpcReceiver() as rx:
        s = resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_EXPORTER_OTLP_HEADERS": "X-Tenant=T1"})
        assert s.logs.headers == (("x-tenant", "T1"),)
        from otel_oom.otlp.transport import GrpcTransport

        t = GrpcTransport(s.logs, "logs")
        try:
            assert t.export(b"", 10).ok
        finally:
            t.close()


def test_generic_headers_shadowed_by_per_signal_ones_are_checked_only_where_used():
    # logs over gRPC with their own headers; the generic (with a -bin key) reaches only HTTP signals
    resolve_otlp({**HTTP, "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "a=b",
                  "OTEL_EXPORTER_OTLP_HEADERS": "trace-bin=x"})
    refused({**HTTP, "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_HEADERS": "trace-bin=x"},
            "ends in -bin")


@pytest.mark.parametrize("value, needle", [
    ("%FF%FE", "do not decode as UTF-8"),          # was a UnicodeDecodeError traceback
    ("%C3%28", "do not decode as UTF-8"),
    ("abc%E2%82", "do not decode as UTF-8"),
    ("abc%ZZ", "% not followed by two hex digits"),   # was sent as is
    ("abc%", "% not followed by two hex digits"),
    ("%20abc", "begins or ends with a space"),        # requests refused it at every export (InvalidHeader)
    ("abc%09", "begins or ends with a space or tab"),
])
def test_header_values_that_do_not_decode_cleanly_are_refused(value, needle):
    for env in ({"OTEL_EXPORTER_OTLP_HEADERS": f"authorization={value}"},
                {**HTTP, "OTEL_EXPORTER_OTLP_HEADERS": f"authorization={value}"}):
        refused(env, needle)


@pytest.mark.parametrize("var", ["OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT"])
@pytest.mark.parametrize("digits", ["\u00b2", "\u0661\u0662", "\U0001d7d7", "1_000", "+5", " 12 3"])
def test_unicode_digits_in_whole_numbers_are_refused(var, digits):
    # "²".isdigit() is true and int() raised (a traceback); "١٢" was read as 12
    refused({var: digits}, f"{var} must be a whole number")


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
                                 "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT"])
@pytest.mark.parametrize("digits", ["\u0661\u0660", "\u00b2", "1_0", "inf", "1e400"])
def test_unicode_digits_in_decimal_numbers_are_refused(var, digits):
    refused({var: digits}, f"{var} must be a positive number")


@pytest.mark.parametrize("var, value", [
    ("OTEL_METRIC_EXPORT_INTERVAL", "1e13"),     # the reader thread died on its first wait (OverflowError)
    ("OTEL_METRIC_EXPORT_INTERVAL", "86400001"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "1"),        # an export loop
    ("OTEL_METRIC_EXPORT_TIMEOUT", "1e15"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "1e12"),      # broke the metric export only (the log transport floors it)
    ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "0.0001"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "0.0001"),
])
def test_numbers_out_of_what_the_sdk_waits_take_are_refused(var, value):
    refused({var: value}, f"{var} must be between")


def test_numbers_inside_the_ranges_pass():
    s = resolve_otlp({"OTEL_METRIC_EXPORT_INTERVAL": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "0.05",
                      "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": " 86400 ", "OTEL_ATTRIBUTE_COUNT_LIMIT": "0"})
    assert s.metric_export_interval_ms == 100 and s.metrics.timeout_s == 0.05 and s.logs.timeout_s == 86400


def test_a_dead_metric_export_thread_fails_readiness(monkeypatch):
    """Were a value past the bounds to reach the SDK, its thread dies: readiness must say so."""
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the SDK thread's own traceback
    s = resolve_otlp({})
    settings = OtlpSettings(logs=s.logs, metrics=s.metrics, metric_export_interval_ms=1e13)
    m = Metrics(build_resource({}), settings)
    try:
        m._periodic._daemon_thread.join(10)
        ok, why = m.healthy()
        assert not ok and "metric export thread has ended" in why
    finally:
        m.shutdown(timeout_millis=100)
    healthy = Metrics(build_resource({}), s)
    try:
        assert healthy.healthy() == (True, "ok")
    finally:
        healthy.shutdown(timeout_millis=100)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require(shutil.which("openssl") is not None, "needs `openssl` on PATH for the TLS tests")
    return make_test_pki(tmp_path_factory.mktemp("hardening-pki"))


def test_a_client_key_that_is_not_the_certificates_is_refused(pki, tmp_path):
    base = {"OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_cert}
    resolve_otlp({**base, "OTEL_EXPORTER_OTLP_CLIENT_KEY": pki.client_key,
                  "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki.client_cert})
    refused({**base, "OTEL_EXPORTER_OTLP_CLIENT_KEY": pki.server_key,
             "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki.client_cert}, "the key is not the certificate's")
    refused({**HTTP, "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY": pki.server_key,
             "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE": pki.client_cert},
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY and OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE do not make a pair")
    refused({**base, "OTEL_EXPORTER_OTLP_CLIENT_KEY": pki.client_cert,
             "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki.client_cert}, "not a PEM certificate and a PEM private key")
    encrypted = tmp_path / "client-encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", pki.client_key, "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
                   check=True, capture_output=True)
    refused({**base, "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(encrypted),
             "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki.client_cert}, "is encrypted")
