"""WebhookNotifier against a real local HTTP server: real POSTs, retries, failures, overflow,
and the escaping of untrusted names in the Slack `text`."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from otel_oom.config import resolve
from otel_oom.errors import UsageError
from otel_oom.schema.records import OomKill
from otel_oom.sinks.webhook import WebhookNotifier as _Notifier
from otel_oom.sinks.webhook import build_message
from otel_oom.text import for_chat as escape_text
from otel_oom.urls import parse_url


def WebhookNotifier(url: str, **kw) -> _Notifier:  # noqa: N802 - reads like the class it builds
    """The notifier for a URL validated the way the agent validates it at start-up."""
    return _Notifier(parse_url("--notify-webhook", url, "http://example"), **kw)


def make_kill(comm: str = "leaky", pid: int = 4242) -> OomKill:
    return OomKill(event_id=f"boot:123:{pid}", time_unix_nano=1_700_000_000_000_000_000, boot_time_ns=123,
                   hook="tp_btf", context_hook="none", recovered=False, victim_pid=pid, victim_tid=pid,
                   victim_comm=comm, anon_rss_bytes=30 << 20, file_rss_bytes=1 << 20, shmem_rss_bytes=0,
                   cgroup_path="/kubepods/burstable/pod0f5e6c2a/abc", container_id="abc",
                   pod_uid="0f5e6c2a-1111-4222-8333-944455556666", constraint="memcg")


class Receiver:
    """A real HTTP server: answers each POST with the next status from `script` (then 200), after
    `delay` seconds, or with `hold`, only once `release` is set (or its close)."""

    def __init__(self, script=(), delay: float = 0.0, hold: bool = False) -> None:
        self.script = list(script)
        self.delay = delay
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.statuses: list[int] = []
        self.got = threading.Condition()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay)
                outer.release.wait(60)
                with outer.got:
                    status = outer.script.pop(0) if outer.script else 200
                    outer.statuses.append(status)
                    if status == 200:
                        outer.bodies.append(json.loads(body))
                        outer.headers.append(dict(self.headers))
                    outer.got.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 10.0) -> None:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= n, timeout), self.statuses

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(*a, **kw):
        r = Receiver(*a, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_success_posts_one_json_message_per_kill(receiver):
    r = receiver()
    n = WebhookNotifier(r.url)
    try:
        assert n.notify(make_kill(pid=1), "OOM kill: leaky (pid 1) in pod default/web")
        assert n.notify(make_kill(pid=2), "OOM kill: leaky (pid 2)")
        r.wait(2)
    finally:
        n.close(5)
    assert (n.sent, n.failures, n.dropped) == (2, 0, 0)
    first = r.bodies[0]
    assert first["text"] == "OOM kill: leaky (pid 1) in pod default/web"
    assert first["oom"]["victim_pid"] == 1
    assert first["oom"]["pod_uid"] == "0f5e6c2a-1111-4222-8333-944455556666"
    assert first["oom"]["rss_bytes"] == 31 << 20
    assert first["oom"]["event_id"] == "boot:123:1"
    assert r.headers[0]["Content-Type"] == "application/json"
    assert r.headers[0]["User-Agent"].startswith("otel-oom/")


def test_500_then_success_retries(receiver):
    r = receiver(script=[500, 503])
    n = WebhookNotifier(r.url, backoff=0.05)
    try:
        n.notify(make_kill(), "OOM kill")
        r.wait(1)
    finally:
        n.close(5)
    assert r.statuses == [500, 503, 200]
    assert (n.sent, n.failures, n.dropped) == (1, 0, 0)


def test_4xx_is_not_retried(receiver):
    r = receiver(script=[400])
    n = WebhookNotifier(r.url, backoff=0.05)
    n.notify(make_kill(), "OOM kill")
    n.close(5)
    assert r.statuses == [400]
    assert (n.sent, n.failures) == (0, 1)


def test_unreachable_counts_a_failure_and_never_blocks_the_caller():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = WebhookNotifier(f"http://127.0.0.1:{port}/x", timeout=0.5, attempts=3, backoff=0.05)
    assert n.notify(make_kill(), "OOM kill")  # queued (its failure is counted later, off the caller's thread)
    deadline = time.monotonic() + 10
    while n.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    n.close(1)
    assert (n.sent, n.failures, n.dropped) == (0, 1, 0)


def test_queue_overflow_is_counted_not_blocking(receiver):
    r = receiver(hold=True)  # a webhook that does not answer until the test lets it
    n = WebhookNotifier(r.url, queue_max=2)
    # the caller is never held: all ten calls return while the first POST is still unanswered
    results = [n.notify(make_kill(pid=i), f"kill {i}") for i in range(10)]
    assert r.statuses == []
    r.release.set()
    n.close(5)
    assert results.count(False) == n.dropped >= 7   # 1 in flight + 2 queued at most
    assert n.sent + n.dropped + n.failures == 10
    assert n.sent == len(r.bodies)


def test_close_timeout_drops_what_is_left(receiver):
    r = receiver(hold=True)  # never answers while the notifier closes
    n = WebhookNotifier(r.url, queue_max=50, timeout=2)
    for i in range(5):
        n.notify(make_kill(pid=i), "k")
    n.close(0.2)  # returns (the test would hang otherwise) and drops what it could not send
    assert r.statuses == []
    assert n.sent + n.dropped + n.failures == 5 and n.dropped >= 3
    assert not n.notify(make_kill(), "after close")


def test_untrusted_names_are_escaped_in_text(receiver):
    evil = "<!channel> a&b\n\x1b[31m\udcff\u2028`*x*`"
    r = receiver()
    n = WebhookNotifier(r.url)
    try:
        n.notify(make_kill(comm=evil), f"OOM kill: {evil} (pid 9)")
        r.wait(1)
    finally:
        n.close(5)
    text = r.bodies[0]["text"]
    assert text == "OOM kill: &lt;!channel&gt; a&amp;b\\x0a\\x1b[31m\\xff\\u2028`*x*` (pid 9)"
    assert "\n" not in text and "<" not in text
    # the structured record keeps the exact name, lone surrogate included
    assert r.bodies[0]["oom"]["victim_comm"] == evil


def test_escape_text_limits_length():
    assert len(escape_text("x" * 10000)) == 3000
    assert escape_text("plain pod/name-1") == "plain pod/name-1"


def test_message_body_is_ascii_json():
    body = build_message(make_kill(comm="caf\xe9\udc80"), "s")
    body.decode("ascii")
    assert json.loads(body)["oom"]["victim_comm"] == "caf\xe9\udc80"


@pytest.mark.parametrize("url", ["", "ftp://x/y", "hooks.slack.com/abc", "http://", "file:///etc/passwd"])
def test_bad_url_is_a_usage_error(url):
    with pytest.raises(UsageError, match="--notify-webhook"):
        resolve({"notify_webhook": url, "no_otlp": True}, {})


@pytest.mark.parametrize("answer", [b"\x00\xffnot http at all\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\nshort"])
def test_a_server_answering_garbage_costs_one_failure_and_the_thread_goes_on(answer, receiver):
    # before, http.client's BadStatusLine (not an OSError) ended the webhook thread for good
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen(8)

    def serve():
        for _ in range(8):
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    n = WebhookNotifier(f"http://127.0.0.1:{garbage.getsockname()[1]}/hook", attempts=2, backoff=0.01, timeout=2)
    try:
        n.notify(make_kill(), "x")
        deadline = time.monotonic() + 10
        while n.failures < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert n.failures == 1 and n.thread.alive() and n.healthy() == (True, "ok")
    finally:
        n.close(1)
        garbage.close()
    good = receiver()  # the same kind of notifier still delivers to a real server
    n2 = WebhookNotifier(good.url, attempts=1)
    n2.notify(make_kill(), "x")
    n2.close(5)
    assert n2.sent == 1
