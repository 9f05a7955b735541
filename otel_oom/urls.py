"""The one place where a URL the user gave (OTLP endpoints, the webhook) is parsed and validated.

Every URL is parsed once, at start-up, into an `Url`; the rest of the agent uses its fields and its
`redacted` form and never parses the text again, so a malformed value fails with one line naming
the setting, and a credential in it (`user:secret@host`) never reaches a log line.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

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
    query: str = ""    # may hold a token (`?api-key=...`): never log it

    @property
    def redacted(self) -> str:
        """The URL for messages: user:password@ replaced by ***@, query values by ***."""
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
        """The secret parts of the URL as written and decoded, user info and query values (for log redaction)."""
        netloc = urlsplit(self.text).netloc
        if "@" not in netloc:
            return self._query_secrets()
        raw = netloc.rpartition("@")[0]
        user, password = self.userinfo()
        userinfo = {raw, raw.partition(":")[2], password or "", user or "" if not password else ""}
        return [x for x in userinfo if x] + self._query_secrets()

    def _query_secrets(self) -> list[str]:
        """The query's values as written and decoded: a token may ride there (`?api-key=...`). Values
        under 6 characters (`?v=1`) are taken for flags, not tokens, so logs keep them."""
        if not self.query:
            return []
        values = [item.partition("=")[2] or item for item in self.query.split("&")]
        return sorted({x for v in values for x in (v, unquote(v)) if len(x) >= 6})

    def with_path_suffix(self, suffix: str) -> str:
        """The URL text with `suffix` appended to the path, before any query (`/v1/logs`)."""
        parts = urlsplit(self.text)
        return parts._replace(path=parts.path.rstrip("/") + suffix).geturl()

    @property
    def without_credentials(self) -> str:
        """The URL with any user:password@ removed: what is handed to libraries."""
        parts = urlsplit(self.text)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    @property
    def authority(self) -> str:
        """host:port without user info ("[v6]:port" for IPv6), as a gRPC channel target."""
        return urlsplit(self.text).netloc.rpartition("@")[2]


_AUTHORITY_END = re.compile(r"[/?#]")


def _split(text: str) -> tuple[str, str, str]:
    """("scheme://", authority, rest) as RFC 3986 splits them: the authority ends at the first / ? or #.
    Done by hand, not by urlsplit, which raises on some hosts and drops tabs and line breaks."""
    scheme, sep, after = text.partition("://")
    head = scheme + sep if sep else ""
    after = after if sep else text
    m = _AUTHORITY_END.search(after)
    cut = m.start() if m else len(after)
    return head, after[:cut], after[cut:]


def _has_at(text: str) -> bool:
    """An @, or a character that Unicode normalization turns into one (the parser refuses those)."""
    return "@" in text or (not text.isascii() and "@" in unicodedata.normalize("NFKC", text))


def _redacted_rest(rest: str) -> str:
    """The path as is, every query value as ***, a fragment as ***."""
    rest, hash_sign, _ = rest.partition("#")
    path, question, query = rest.partition("?")
    if question:
        items = [k + "=***" if eq else "***" for k, eq, _v in (i.partition("=") for i in query.split("&"))]
        path += "?" + "&".join(items)
    return path + ("#***" if hash_sign else "")


def redact(text: str) -> str:
    """`text` with its user info as ***@ and its query values as ***, even when it does not parse.

    An @ after the authority (in what the parser takes for the path, query or fragment) means either
    user info holding / ? or # (`https://u:pa/ss@h/`) or an @ in the path: the two cannot be told
    apart, so all after "://" goes, rather than showing a password or the wrong host.
    """
    head, authority, rest = _split(text)
    if _has_at(rest) or ("@" not in authority and _has_at(authority)):
        return head + "***"
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return head + authority + _redacted_rest(rest)


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
    _, authority, rest = _split(text)
    if _has_at(rest) or ("@" not in authority and _has_at(authority)):
        raise UrlError(f"{setting} has an @ outside the user info: {shown!r}; percent-encode @ / ? # in a user "
                       "name or password (%40 %2F %3F %23) and an @ in the path (%40)")
    if "#" in rest:
        raise UrlError(f"{setting} has a #fragment, which no request carries: {shown!r}; "
                       "percent-encode a # in a user name or password as %23")
    if parts.scheme not in schemes or not host:
        raise UrlError(f"{setting} must be a URL such as {example}, got {shown!r}"
                       f" (a {' or '.join(s + '://' for s in schemes)} URL with a host)" + (f"; {hint}" if hint else ""))
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UrlError(f"{setting} contains whitespace or control characters: {shown!r}; {want}")
    return Url(text=text, scheme=parts.scheme, host=host, port=port, path=parts.path, query=parts.query)
