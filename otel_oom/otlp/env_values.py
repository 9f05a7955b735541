"""How each kind of OTEL_* value is read: header lists, numbers with their ranges, booleans.

Each reader raises ConfigError with one line that names the variable and says what to write; a
header value is never shown (it is often a credential). `env.py` decides which variables apply.
"""
from __future__ import annotations

import math
import re
from typing import Optional
from urllib.parse import unquote

from ..errors import UsageError
from ..numbers import ascii_float, ascii_int


class ConfigError(UsageError):
    """A bad OTEL_* setting; the message names the variable and the fix, never a header value."""




# W3C baggage syntax, as the OTLP exporter specification asks: key=value pairs separated by commas,
# the key a token, the value URL-encoded (a space is %20). Anything else fails here: the SDK would
# print the offending item (a secret) in a warning and silently drop the header.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# gRPC metadata (its HTTP/2 wire spec): keys of a-z 0-9 - _ . (the agent lower-cases them), values of
# printable ASCII without tab; "-bin" keys carry bytes and "grpc-" keys are gRPC's own.
_GRPC_KEY = re.compile(r"[0-9a-z_.\-]+")


def check_headers_for_grpc(var: str, headers: tuple[tuple[str, str], ...]) -> None:
    """ConfigError when gRPC cannot send one of these headers (each export would fail, or raise, forever)."""
    for key, value in headers:
        why = ("has characters gRPC metadata keys cannot have (only a-z 0-9 - _ .)" if not _GRPC_KEY.fullmatch(key)
               else "ends in -bin, which gRPC sends as binary, not the text given here" if key.endswith("-bin")
               else "starts with grpc-, which gRPC reserves for itself" if key.startswith("grpc-")
               else "has a tab in its value, which gRPC metadata cannot carry" if "\t" in value
               else "")
        if why:
            raise ConfigError(f"{var} key {key!r} {why}; rename it, or use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
                              "(values are not shown)")


def parse_headers(var: str, value: str) -> tuple[tuple[str, str], ...]:
    """`k1=v1,k2=v2` (values URL-encoded) -> ((k1, v1), ...); ConfigError naming the item, never its value."""
    out: dict[str, str] = {}
    for i, raw in enumerate(value.split(","), 1):
        item = raw.strip(" \t")
        if not item:
            continue
        key, sep, val = item.partition("=")
        key, val = key.strip(" \t"), val.strip(" \t")

        def bad(why: str, i: int = i, key: str = key, sep: str = sep) -> ConfigError:
            shown = f" (key {key!r})" if sep and _TOKEN.fullmatch(key) else ""
            return ConfigError(f"{var} item {i}{shown} {why}; expected k1=v1,k2=v2 with URL-encoded values "
                               "(a space is %20; values are not shown)")
        if not sep or not key:
            raise bad("is not key=value")
        if not _TOKEN.fullmatch(key):
            raise bad("has a key that is not a header name")
        if not _VALUE.fullmatch(val):
            what = ("a quote" if '"' in val else "a space" if " " in val or "\t" in val
                    else "a line break or control character" if any(ord(c) < 0x20 or ord(c) == 0x7F for c in val)
                    else "a character that must be URL-encoded")
            raise bad(f"has {what} in its value")
        if _BAD_ESCAPE.search(val):
            raise bad("has a % not followed by two hex digits (a % itself is written %25)")
        try:
            decoded = unquote(val, errors="strict") if "%" in val else val
        except UnicodeDecodeError:
            raise bad("has %-escapes that do not decode as UTF-8") from None
        if any(ord(c) < 0x20 or ord(c) >= 0x7F for c in decoded if c != "\t"):
            raise bad("decodes to a control or non-ASCII character")
        if decoded[:1] in (" ", "\t") or decoded[-1:] in (" ", "\t"):
            raise bad("begins or ends with a space or tab, which a header value cannot keep")
        out[key.lower()] = decoded
    return tuple(out.items())


def positive(var: str, value: str, unit: str, lo: float = 0.0, hi: float = math.inf) -> float:
    """A positive number of `unit` in ASCII digits, lo <= n <= hi (ranges: what the SDK's waits can take)."""
    n = ascii_float(value)
    if n is None or n <= 0:
        raise ConfigError(f"{var} must be a positive number of {unit}, got {value.strip()!r}")
    if not lo <= n <= hi:
        raise ConfigError(f"{var} must be between {lo:g} and {hi:g} {unit}, got {value.strip()!r}")
    return n


def whole_number(var: str, value: str) -> Optional[int]:
    """A whole number >= 0 in ASCII digits, or None for "unset" (the SDK's attribute limits)."""
    text = value.strip().lower()
    if text == "unset":
        return None
    n = ascii_int(text) if text.isascii() and text.isdigit() else None
    if n is None:
        raise ConfigError(f"{var} must be a whole number >= 0 (or unset), got {value.strip()!r}")
    return n


def bool_var(var: str, value: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise ConfigError(f"{var} must be true or false, got {value.strip()!r}")
    return v == "true"
