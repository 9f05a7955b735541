"""Chat/webhook notification: one JSON POST per OOM kill, sent from a background thread.

The caller (the agent's worker thread) must never wait on a slow or dead webhook: `notify`
only enqueues into a bounded queue, an overflow is counted and dropped, and delivery retries
with backoff happen on the sender thread. The message is Slack-compatible (`text`) and carries
the kill's full record (`oom`) for other receivers. Names in the kill come from the kernel and
are untrusted, so the one-line `text` (the kernel's wording, then the pod and container names when
the runtime gave them) goes through `text.for_chat`; the caller passes the schema's body
(`schema.mapping.log_body`). The URL was validated at start-up (`config.resolve`).
"""
from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

from .. import __version__
from ..schema.records import OomKill, record_fields
from ..service import ServiceThread
from ..text import CHAT_TEXT_MAX, for_chat
from ..urls import Url
from .console import workload_summary

log = logging.getLogger("otel_oom.webhook")

QUEUE_MAX = 256
TEXT_MAX = CHAT_TEXT_MAX
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def build_message(kill: OomKill, summary: str) -> bytes:
    """The POST body: {"text": one escaped line, "oom": the kill's own fields (`schema.records.record_fields`)}."""
    record = record_fields(kill)
    record["rss_bytes"] = kill.rss_bytes
    workload = workload_summary(kill, str)  # escaped with the whole line below
    if workload:
        summary = f"{summary} [{workload}]"
    # ensure_ascii: lone surrogates in the record stay as \\udcNN escapes, lossless for the
    # receiver that wants the raw bytes, and the body stays plain ASCII
    return json.dumps({"text": for_chat(summary), "oom": record}, ensure_ascii=True,
                      separators=(",", ":")).encode("ascii")


class WebhookNotifier:
    """`notify()` enqueues and returns at once; a daemon thread POSTs with retries. A `service.Service`:
    `join(timeout)` sends what is queued within the timeout, then stops (`close`).

    Counters (read them any time): `sent`, `failures` (gave up after retries or a
    non-retryable answer), `dropped` (queue full, or still queued when `close` ran out of time).
    """

    def __init__(self, url: Url, timeout: float = 5.0, *, queue_max: int = QUEUE_MAX, attempts: int = 4,
                 backoff: float = 0.5, max_backoff: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sent = 0
        self.failures = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(queue_max)
        self._abort = threading.Event()   # close() ran out of time: stop retrying
        self._closed = False
        self.name = "otel-oom-webhook"
        self.thread = ServiceThread(self.name, self._run)
        self.thread.start()

    # ---- the service (started when made) ----------------------------------------------------
    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.thread.stopping = True

    def join(self, timeout: float) -> bool:
        self.close(max(0.5, timeout))  # what is left of the agent's stop, at least half a second
        return not self.thread.alive()

    def healthy(self) -> tuple[bool, str]:
        return self.thread.healthy()

    # ---- caller side ---------------------------------------------------------------------
    def notify(self, kill: OomKill, summary: str) -> bool:
        """Queue one message; False (and counted in `dropped`) if the queue is full or closed."""
        if self._closed:
            self._count("dropped")
            return False
        try:
            body = build_message(kill, summary)
        except (TypeError, ValueError) as e:
            log.error("webhook message for %s could not be built: %s", kill.event_id, e)
            self._count("failures")
            return False
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self._count("dropped")
            log.warning("webhook queue full (%d messages): OOM notification dropped", self._queue.maxsize)
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued within `timeout` seconds, then stop; the rest counts as dropped."""
        if self._closed:
            return
        self._closed = self.thread.stopping = True
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self.thread.join(deadline - time.monotonic())
        if self.thread.alive():
            self._abort.set()
            self.thread.join(self.timeout + 1.0)
        # whatever never left the queue was not delivered
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._count("dropped")

    # ---- sender thread -----------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            if self._abort.is_set():
                self._count("dropped")
                continue
            try:
                self._deliver(body)
            except Exception:  # noqa: BLE001 - one message's failure must never end the thread
                self._count("failures")
                log.exception("OOM webhook notification failed unexpectedly; the next one is still sent")

    def _deliver(self, body: bytes) -> None:
        delay = self.backoff
        last = ""
        for attempt in range(1, self.attempts + 1):
            retry_after: Optional[float] = None
            try:
                req = urllib.request.Request(self.url.text, data=body, method="POST", headers={
                    "Content-Type": "application/json", "User-Agent": f"otel-oom/{__version__}"})
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    r.read()
                self._count("sent")
                return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code not in RETRYABLE_STATUS:
                    break
                retry_after = _retry_after(e.headers.get("Retry-After"))
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                # HTTPException: a server answering with something that is not HTTP
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"[:200]
            if attempt == self.attempts or self._abort.is_set():
                break
            wait = min(self.max_backoff, retry_after if retry_after is not None else delay)
            if self._abort.wait(wait):
                break
            delay = min(self.max_backoff, delay * 2)
        self._count("failures")
        log.warning("OOM webhook notification failed (%s) after %d attempt(s)", last, attempt)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
