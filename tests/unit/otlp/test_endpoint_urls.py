"""URLs in settings (OTLP endpoints, the webhook) as an attacker or an unlucky operator writes them:
a user info holding @ # / ?, an @ in the path, a token in the query string. Each is parsed or refused
in one line, and no message, redacted form or log line shows the secret or names the wrong host."""
from __future__ import annotations

import logging

import pytest

from otel_oom import logredact
from otel_oom.otlp.env import ConfigError, resolve_otlp
from otel_oom.urls import UrlError, parse_url, redact

SECRET = "s3cr3tpw"


@pytest.mark.parametrize("text", [
    f"http://user:p@{SECRET}@collector:4317",      # an @ in the password, written as is
    f"http://user:{SECRET}@@collector:4317",
    f"http://us@er:{SECRET}@collector:4317/",
])
def test_an_at_in_the_user_info_is_all_masked_and_the_host_is_the_last_one(text):
    url = parse_url("X", text, "http://example")
    assert url.host == "collector"
    assert url.redacted.startswith("http://***@collector:4317") and SECRET not in url.redacted
    assert any(SECRET in c for c in url.credentials())


@pytest.mark.parametrize("text", [
    f"http://user:p#{SECRET}@collector:4317",      # a # in the password: the parser would see a fragment
    f"https://u#:{SECRET}@collector/",             # accepted before as host "u", the password in the fragment
    f"https://user:pa/{SECRET}@collector/",        # a / in the password
    f"https://user:pa?{SECRET}@collector/",        # a ? in the password
    f"https://@0?:{SECRET}@h/",                    # found by hypothesis: its redacted form showed the password
    f"http://user:{SECRET}\uff20collector:4317",   # a fullwidth @, which NFKC makes an @
])
def test_user_info_with_a_delimiter_is_refused_without_the_secret(text):
    with pytest.raises(UrlError) as e:
        parse_url("X", text, "http://example")
    msg = str(e.value)
    assert SECRET not in msg and "\n" not in msg, msg
    assert SECRET not in redact(text)


@pytest.mark.parametrize("text", ["http://collector:4318/v1/logs@evil.example", "http://collector:4318/a@b?c=d",
                                  "http://collector:4318/?x=a@b"])
def test_an_at_in_the_path_is_refused_and_no_wrong_host_is_shown(text):
    with pytest.raises(UrlError) as e:
        parse_url("X", text, "http://example")
    assert "%40" in str(e.value)                    # says what to write instead
    shown = redact(text)
    assert "evil" not in shown and "@b" not in shown and shown == "http://***"


def test_a_fragment_is_refused():
    with pytest.raises(UrlError, match="fragment"):
        parse_url("X", "http://collector:4318/v1/logs#x", "http://example")


def test_a_token_in_the_query_is_masked_everywhere():
    url = parse_url("X", f"https://user:pw@collector:4318/v1/logs?api-key={SECRET}&tenant=t1&flag",
                    "http://example")
    assert url.redacted == "https://***@collector:4318/v1/logs?api-key=***&tenant=***&***"
    assert SECRET in url.credentials() and "t1" not in url.credentials()   # short values are not tokens
    logredact.install(url.credentials())
    try:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "retrying %s", (url.text,), None)
        assert SECRET not in logredact.scrub(record.getMessage())
    finally:
        logredact.install([])


def test_the_log_filter_masks_a_password_with_an_at():
    assert logredact.scrub(f"failed: http://user:p@{SECRET}@host:4318/v1/logs") == "failed: http://***@host:4318/v1/logs"


def test_the_signal_path_goes_before_the_query_and_the_token_stays_out_of_messages():
    s = resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://collector:4318/otlp/?api-key={SECRET}"})
    assert s.logs.endpoint.text == f"https://collector:4318/otlp/v1/logs?api-key={SECRET}"
    assert s.metrics.endpoint.without_credentials == f"https://collector:4318/otlp/v1/metrics?api-key={SECRET}"
    assert s.logs.endpoint.redacted == "https://collector:4318/otlp/v1/logs?api-key=***"
    assert SECRET in s.secrets()


def test_a_query_on_a_grpc_endpoint_is_refused_in_one_line():
    for env in ({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://collector:4317?token={SECRET}"},
                {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"http://collector:4317/?token={SECRET}"}):
        with pytest.raises(ConfigError) as e:
            resolve_otlp(env)
        assert "HEADERS" in str(e.value) and SECRET not in str(e.value) and "\n" not in str(e.value)
