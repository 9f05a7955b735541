"""Which proxy an http/protobuf export uses (otlp/proxy.py), from the variables curl and requests read,
and that the export really goes through it: a real forward proxy (testing/http_proxy.py) in front
of a real OTLP receiver, plain HTTP (absolute URL) and HTTPS (CONNECT tunnel, TLS end to end)."""
from __future__ import annotations

import shutil

import pytest
from conftest import require

from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.env_values import ConfigError
from otel_oom.otlp.proxy import proxy_for
from otel_oom.otlp.transport import transport
from otel_oom.urls import parse_url
from testing.http_proxy import HttpProxy
from testing.otlp_receiver import OtlpHttpReceiver, make_test_pki

LOGS = "logs"


def one_kill() -> bytes:
    """An OTLP logs request holding one record."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(
        log_records=[LogRecord(event_name="oom.kill")])])]).SerializeToString()


def url(text: str):
    return parse_url("endpoint", text, "http://x")


def proxy(environ: dict, endpoint: str = "https://collector.example:4318/v1/logs"):
    p = proxy_for(environ, url(endpoint))
    return None if p is None else p.text


def test_the_scheme_picks_the_variable_lower_case_first_then_all_proxy():
    env = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "http_proxy": "http://plain:1"}
    assert proxy(env) == "http://lower:3128"
    assert proxy({"HTTPS_PROXY": "http://upper:3128"}) == "http://upper:3128"
    assert proxy(env, "http://collector:4318/v1/logs") == "http://plain:1"
    assert proxy({"ALL_PROXY": "http://all:8080"}, "http://collector:4318/v1/logs") == "http://all:8080"
    assert proxy({"https_proxy": "proxy.corp:3128"}) == "http://proxy.corp:3128"  # no scheme: http://
    assert proxy({}) is None and proxy({"https_proxy": "  "}) is None
    # CGI: a client can set the Proxy header, so HTTP_PROXY is not to be trusted there
    assert proxy({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"}, "http://collector/v1/logs") is None


@pytest.mark.parametrize("no_proxy, endpoint, bypassed", [
    ("*", "https://collector.example/v1/logs", True),
    ("example", "https://collector.example/v1/logs", True),           # a name and its subdomains
    (".example", "https://collector.example/v1/logs", True),
    ("collector.example", "https://collector.example/v1/logs", True),
    ("ollector.example", "https://collector.example/v1/logs", False),  # not a suffix at a dot
    ("other.example, COLLECTOR.example", "https://collector.example/v1/logs", True),
    ("collector.example:4318", "https://collector.example:4318/v1/logs", True),
    ("collector.example:4318", "https://collector.example/v1/logs", False),   # 443
    ("collector.example:443", "https://collector.example/v1/logs", True),
    ("10.0.0.0/8", "http://10.1.2.3:4318/v1/logs", True),
    ("10.0.0.0/8", "http://11.1.2.3:4318/v1/logs", False),
    ("10.1.2.3", "http://10.1.2.3:4318/v1/logs", True),
    ("::1", "http://[::1]:4318/v1/logs", True),
    ("[::1]:4318", "http://[::1]:4318/v1/logs", True),
    ("fd00::/8", "http://[fd00::5]:4318/v1/logs", True),
    ("example", "http://10.1.2.3:4318/v1/logs", False),
    (",, ,", "https://collector.example/v1/logs", False),
])
def test_no_proxy(no_proxy, endpoint, bypassed):
    env = {"https_proxy": "http://proxy:3128", "http_proxy": "http://proxy:3128", "NO_PROXY": no_proxy}
    assert (proxy(env, endpoint) is None) == bypassed


@pytest.mark.parametrize("value", ["https://proxy:3128", "socks5://proxy:1080", "http://proxy:99999", "http://"])
def test_a_proxy_that_cannot_be_used_fails_at_start_in_one_line(value):
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318",
           "HTTPS_PROXY": value.replace("proxy", "u:s3cret-pw@proxy")}
    with pytest.raises(ConfigError) as e:
        resolve_otlp(env)
    assert "HTTPS_PROXY" in str(e.value) and "\n" not in str(e.value) and "s3cret-pw" not in str(e.value)


def test_grpc_leaves_the_proxy_to_grpc_and_credentials_are_redacted():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "HTTP_PROXY": "http://u:s3cret-pw@proxy:3128"}
    assert resolve_otlp(env).logs.proxy is None
    s = resolve_otlp({**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert s.logs.proxy is not None and s.logs.proxy.host == "proxy" and "s3cret-pw" in s.secrets()


def http_settings(endpoint: str, **environ: str):
    return resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                         "OTEL_EXPORTER_OTLP_TIMEOUT": "10", **environ})


def test_plain_http_goes_through_the_proxy_with_its_credentials():
    with OtlpHttpReceiver() as rx, HttpProxy(credentials="agent:pr0xy-pw") as p:
        bare = p.url.replace("http://", "")
        t = transport(http_settings(rx.endpoint, http_proxy=f"http://agent:pr0xy-pw@{bare}").logs, LOGS)
        assert t.export(one_kill(), 10).outcome == "accepted"
        t.close()
        assert p.requests[0][:2] == ("POST", f"{rx.endpoint}/v1/logs") and rx.log_count() == 1

        wrong = transport(http_settings(rx.endpoint, http_proxy=f"http://agent:wrong@{bare}").logs, LOGS)
        r = wrong.export(one_kill(), 10)
        wrong.close()
        assert (r.outcome, r.message) == ("retry", "HTTP 407 Proxy Authentication Required")
        assert rx.log_count() == 1

        direct = transport(http_settings(rx.endpoint, http_proxy=p.url, no_proxy="127.0.0.1").logs, LOGS)
        assert direct.export(one_kill(), 10).outcome == "accepted"
        direct.close()
        assert len(p.requests) == 2 and rx.log_count() == 2   # past the proxy


def test_https_is_tunnelled_through_the_proxy_with_tls_to_the_collector(tmp_path):
    require(shutil.which("openssl") is not None, "needs `openssl` on PATH for the TLS tests")
    pki = make_test_pki(tmp_path)
    with OtlpHttpReceiver(tls=pki.server_tls(mutual=True)) as rx, HttpProxy() as p:
        s = http_settings(rx.endpoint, https_proxy=p.url, OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert,
                          OTEL_EXPORTER_OTLP_CLIENT_KEY=pki.client_key,
                          OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki.client_cert)
        t = transport(s.logs, LOGS)
        try:
            assert t.export(one_kill(), 10).outcome == "accepted"
        finally:
            t.close()
        host_port = rx.endpoint.removeprefix("https://")
        assert p.requests == [("CONNECT", host_port, None)]
        with HttpProxy(credentials="agent:pr0xy-pw") as strict:
            refused = transport(http_settings(rx.endpoint, https_proxy=strict.url,
                                              OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert).logs, LOGS)
            r = refused.export(one_kill(), 10)
            refused.close()
            assert (r.outcome, r.message) == (
                "retry", "ConnectionError: the proxy refused the tunnel (407 Proxy Authentication Required)")
        assert [r["event_name"] for r in rx.log_records()] == ["oom.kill"]
        assert rx.requests[-1]["peer_cn"] == "otel-oom-client"   # our client certificate, through the tunnel
