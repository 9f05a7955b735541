"""The health listener under slow clients: each sends its request one byte at a time, a byte well
inside the per-read timeout, so only a bound on the whole request frees its slot. Before, 16 such
clients held every slot for as long as they kept trickling, and /readyz was refused to everyone."""
from __future__ import annotations

import socket
import threading
import time
import urllib.request

from otel_oom import health
from otel_oom.health import HealthServer

# at a byte each 0.2 s, 45 s of trickle: nine times the deadline
REQUEST = b"GET /readyz HTTP/1.0\r\nHost: x\r\nX-Padding: " + b"a" * 190 + b"\r\n\r\n"


def _trickle(port: int, stop: threading.Event, cut: list[bool], sent_all: list[bool]) -> None:
    """Send REQUEST a byte every 0.2 s (far inside the read timeout) until the server cuts us or `stop`."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for i in range(len(REQUEST) + 1):
            if i == len(REQUEST):
                sent_all.append(True)   # never cut: held its slot for the whole trickle
                return
            if stop.is_set():
                return
            try:
                s.sendall(REQUEST[i:i + 1])
            except OSError:
                cut.append(True)
                return
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":   # the server closed it: our slot is free again
                    cut.append(True)
                    return
            except socket.timeout:
                pass
            except OSError:
                cut.append(True)
                return


def _probe(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status
    except OSError:
        return None   # refused: every slot taken


def test_slow_clients_are_cut_at_the_request_deadline_and_readyz_answers_meanwhile():
    assert health.REQUEST_TIMEOUT_S * 5 < len(REQUEST) * 0.2  # a trickle outlasts the deadline many times
    srv = HealthServer("127.0.0.1:0", lambda: (True, "ok"))
    stop, cut, sent_all = threading.Event(), [], []
    slow = [threading.Thread(target=_trickle, args=(srv.port, stop, cut, sent_all), daemon=True)
            for _ in range(health.MAX_CONNECTIONS)]
    try:
        for t in slow:
            t.start()
        while srv._server.slots._value > 0 and all(t.is_alive() for t in slow):  # every slot taken
            time.sleep(0.05)
        # before any slow client got its whole request through, a probe gets its answer
        answers: list[int] = []
        while not answers and not sent_all:
            status = _probe(srv.port)
            if status is not None:
                answers.append(status)
            time.sleep(0.2)
        assert answers == [200], "the slow clients kept every slot for as long as they trickled"
        for t in slow:
            t.join(60)
        assert not sent_all and len(cut) == health.MAX_CONNECTIONS and srv._server.expired >= health.MAX_CONNECTIONS
    finally:
        stop.set()
        srv.close()
