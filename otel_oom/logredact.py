"""Keeps credentials out of every log line, whoever writes it (otel-oom, the OTel SDK, gRPC, urllib3).

otel-oom's own messages only ever show redacted URLs and never header values, and the libraries
never see a URL with user info (it becomes a header, `otlp/env.py`). This is the second line:
a log-record factory, installed once at start-up, that rewrites any record whose text (message,
arguments or traceback) holds one of the configured secrets, or a `scheme://user:password@` URL,
before any handler (stderr, or pytest's caplog) formats it.
"""
from __future__ import annotations

import logging
import re
import traceback
from typing import Any, Callable, Iterable

# up to the last @ before a / or a space: a password may hold an @ (`u:p@ss@host`), and `[^@]+@` showed `ss@host`
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
MASK = "***"

_secrets: tuple[str, ...] = ()
_base_factory: Callable[..., logging.LogRecord] | None = None


def scrub(text: str) -> str:
    """`text` with every known secret and any URL user info masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def _needs_scrub(text: str) -> bool:
    return any(s in text for s in _secrets) or _USERINFO.search(text) is not None


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _base_factory is not None
    record = _base_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string is the logging module's to report
        return record
    if _needs_scrub(message):
        record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info))
        if _needs_scrub(text):
            # the handler prints exc_text when set; the exception object itself is dropped
            record.exc_text, record.exc_info = scrub(text).rstrip("\n"), None
    return record


def install(secrets: Iterable[str]) -> None:
    """Redact these secrets (and any URL user info) from every log record from now on; idempotent."""
    global _secrets, _base_factory
    _secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    if _base_factory is None:
        _base_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_factory)
