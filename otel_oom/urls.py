"""The one place where a URL the user gave (OTLP endpoints, the webhook) is parsed and validated.

Every URL is parsed once, at start-up, into an `Url`; the rest of the agent uses its fields and its
`redacted` form and never parses the text again, so a malformed value fails with one line naming
the setting, and a credential in it (`user:secret@host`) never reaches a log line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import SplitResult, unquote, urlsplit

from .errors import UsageError


class UrlError(UsageError, ValueError):
    """A URL setting that cannot be used; the message names the setting, never its credentials."""


@dataclass(frozen=True)
class Url:
    text: str          # as given (stripped); may hold credentials: never log it
    scheme: str
    host: str
    port: int | None
    path: str

    @property
    def redacted(self) -> str:
        """The URL for messages: user:password@ replaced by ***@."""
        return redact(self.text)

    @property
    def has_credentials(self) -> bool:
        return "@" in urlsplit(self.text).netloc

    def userinfo(self) -> tuple[Optional[str], Optional[str]]:
        """(user, password), URL-decoded, or (None, None) without user info."""
        parts = urlsplit(self.text)
        if parts.username is None:
            return None, None
        return unquote(parts.username), None if parts.password is None else unquote(parts.password)

    def credentials(self) -> list[str]:
        """The secret parts of the URL as written and decoded (for log redaction)."""
        netloc = urlsplit(self.text).netloc
        if "@" not in netloc:
            return []
        raw = netloc.rpartition("@")[0]
        user, password = self.userinfo()
        return [x for x in {raw, raw.partition(":")[2], password or "", user or "" if not password else ""} if x]

    @property
    def without_credentials(self) -> str:
        """The URL with any user:password@ removed: what is handed to libraries."""
        parts = urlsplit(self.text)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    @property
    def authority(self) -> str:
        """host:port without user info ("[v6]:port" for IPv6), as a gRPC channel target."""
        return urlsplit(self.text).netloc.rpartition("@")[2]


def _redacted_netloc(parts: SplitResult) -> str:
    netloc = parts.netloc
    return "***@" + netloc.rpartition("@")[2] if "@" in netloc else netloc


def redact(text: str) -> str:
    """`text` with anything that may be a user:password@ replaced by ***@, even when it does not parse.

    When the parser finds no user info but an "@" is there all the same (say `https://?:pw@h/`,
    where the parser sees a query), everything between "://" and the last "@" goes: a message may
    show less of a malformed URL, never a password.
    """
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
    except ValueError:
        parts, netloc = None, ""
    if parts is not None and "@" in netloc:
        return parts._replace(netloc=_redacted_netloc(parts)).geturl()
    if "@" not in text:
        return text
    scheme, sep, rest = text.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if sep else "***@" + text.rpartition("@")[2]


def parse_url(setting: str, value: str, example: str, schemes: tuple[str, ...] = ("http", "https"),
              hint: str = "") -> Url:
    """Parse `value` of `setting` (a flag or variable name) or raise UrlError saying what to write."""
    text = value.strip()
    shown = redact(text)
    want = f"use a URL such as {example}" + (f"; {hint}" if hint else "")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
        host = parts.hostname
    except ValueError as e:
        what = "an invalid port" if "port" in str(e).lower() else "a malformed address"
        raise UrlError(f"{setting} has {what}: {shown!r}; {want}") from None
    if parts.scheme not in schemes or not host:
        raise UrlError(f"{setting} must be a URL such as {example}, got {shown!r}"
                       f" (a {' or '.join(s + '://' for s in schemes)} URL with a host)" + (f"; {hint}" if hint else ""))
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UrlError(f"{setting} contains whitespace or control characters: {shown!r}; {want}")
    return Url(text=text, scheme=parts.scheme, host=host, port=port, path=parts.path)
