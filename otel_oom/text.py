"""The one place that turns untrusted kernel text into something safe for each destination.

Process names and cgroup paths come from the kernel as arbitrary bytes: a workload can name itself
"\\x1b]0;pwned\\x07", put a newline in its comm, or use bytes that are not UTF-8. They are decoded
once, losslessly (`from_kernel`: undecodable bytes become lone surrogates via surrogateescape), and
kept that way in the record. Each destination then gets its own escaping, all defined here:

- `for_terminal`: console output and log lines — controls, the backslash, raw bytes and the
  characters that make a terminal line lie about itself become visible escapes.
- `for_json_line`: a JSON text printed on a terminal — what `json.dumps` leaves raw but a terminal
  would act on.
- `for_otlp`: protobuf strings must be valid UTF-8 — valid text is kept as is, a string with raw
  bytes goes as OTLP bytes_value (so the text `\\xff` and the byte 0xff stay apart).
- `for_chat`: one line for Slack-compatible webhooks — as for a terminal, plus `&`, `<`, `>`.

Every escaping is injective: two different kernel strings never look the same at a destination.
"""
from __future__ import annotations

import re


def from_kernel(raw: bytes) -> str:
    """Kernel bytes, kept lossless: non-UTF-8 bytes become lone surrogates (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def from_kernel_cstr(raw: bytes) -> str:
    """A NUL-terminated kernel string (a char[] from BPF), decoded as `from_kernel`."""
    return from_kernel(raw.split(b"\0", 1)[0])


def to_kernel_bytes(s: str) -> bytes:
    """The inverse of `from_kernel`: the kernel's bytes again."""
    return s.encode("utf-8", "surrogateescape")


# C0 controls, DEL, C1 controls (U+009B is CSI for many terminals), the backslash (so escapes are
# unambiguous), every lone surrogate (undecodable kernel bytes), and the characters that can make
# a terminal line lie about itself: line/paragraph separators and the bidi overrides/isolates.
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(c: str) -> str:
    o = ord(c)
    if c == "\\":
        return "\\\\"
    if o <= 0xFF:
        return f"\\x{o:02x}"
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape stand-in for the raw byte o - 0xDC00
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}"


def for_terminal(s: str) -> str:
    """Printable on a terminal: controls, backslash and raw bytes become \\xNN / \\\\ / \\uNNNN."""
    return _TERMINAL_UNSAFE.sub(lambda m: _escape_char(m.group()), s)


# json.dumps(ensure_ascii=False) escapes C0 controls but passes DEL, C1 (a CSI for some
# terminals), line separators, bidi controls and lone surrogates through raw; these can only
# occur inside JSON strings, where a \uXXXX escape is equivalent.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def for_json_line(json_text: str) -> str:
    """A JSON text (from json.dumps(ensure_ascii=False)) with terminal-active characters escaped."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def _has_raw_bytes(s: str) -> bool:
    return not s.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def for_otlp(s: str) -> str | bytes:
    """An OTLP attribute value for a kernel string, lossless and unambiguous.

    Valid Unicode is sent exactly as it is (a systemd `\\x2d` in a cgroup name stays `\\x2d`, control
    characters stay: in an attribute they are data). A string holding bytes that are not UTF-8 is
    sent as `bytes_value` carrying exactly the kernel's bytes, as the OpenTelemetry specification
    asks for strings that are not valid Unicode — so the byte 0xff and the text `\\xff` never look
    alike, and nothing is lost.
    """
    if not _has_raw_bytes(s):
        return s
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # a lone surrogate that surrogateescape did not make never came from the kernel: keep it visible
        return s.encode("utf-8", "backslashreplace")


def for_otlp_label(s: str) -> str:
    """A metric attribute value (always a string): raw bytes as "\\xNN" text. Only for bounded,
    well-known values (runtime names, QoS classes), where that rendering cannot collide."""
    if not _has_raw_bytes(s):
        return s
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


CHAT_TEXT_MAX = 3000  # Slack truncates section text around 3000 characters


def for_chat(text: str, limit: int = CHAT_TEXT_MAX) -> str:
    """One safe line: no control characters, no lone surrogates, Slack's &, <, > escaped.

    Escaping <, > and & stops a process name such as "<!channel>" or "<http://x|y>" from
    becoming a mention or a link; control characters and surrogates (undecodable kernel
    bytes) become \\xNN so nothing can break the line or the receiver's JSON decoder.
    """
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\":                     # so that "\\xNN" below always means a raw byte
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:        # surrogateescape'd raw byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:        # any other lone surrogate
            out.append(f"\\u{o:04x}")
        elif o < 0x20 or 0x7F <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        elif ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"
