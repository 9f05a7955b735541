"""Console and JSON output of kills: exact renderings, and hostile names that must never reach a
terminal raw (escape sequences, BEL, newlines, C1 controls, undecodable bytes, quotes)."""
from __future__ import annotations

import json

import pytest

from otel_oom.schema.mapping import log_attributes
from otel_oom.schema.records import OomKill
from otel_oom.sinks.console import format_console, format_json, format_size, format_time, rfc3339
from otel_oom.text import for_terminal as escape_untrusted

MiB = 1 << 20
POD = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "4f0c3b2a1e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b"
T = 1795602667_123456789  # 2026-11-25 10:31:07.123456789 UTC


def full_kill(**over) -> OomKill:
    base = dict(
        event_id="8a1b2c3d-1111-2222-3333-444455556666:1234567890:1234", time_unix_nano=T, boot_time_ns=1234567890,
        hook="tp_btf", context_hook="fentry", recovered=False,
        victim_pid=1234, victim_tid=1235, victim_comm="stress", victim_ppid=1000, victim_uid=0, oom_score_adj=0,
        total_vm_bytes=100 * MiB, anon_rss_bytes=30 * MiB, file_rss_bytes=1200 * 1024, shmem_rss_bytes=0,
        pgtables_bytes=120 * 1024,
        cgroup_path=f"/kubepods/burstable/pod{POD}/{CID}", cgroup_line=f"4:memory:/kubepods/burstable/pod{POD}/{CID}",
        container_runtime="containerd", container_id=CID, pod_uid=POD, pod_qos_class="burstable",
        trigger_pid=1234, trigger_tid=1234, trigger_comm="stress",
        constraint="memcg", constraint_source="kernel", memcg_path=f"/kubepods/burstable/pod{POD}/{CID}",
        memcg_limit_bytes=32 * MiB, memcg_usage_bytes=32 * MiB, memcg_source="kernel",
        domain_bytes=32 * MiB, badness_points=1950, gfp_mask=0xCC0, order=0, decision_id="d-1")
    base.update(over)
    return OomKill(**base)


def minimal_kill(**over) -> OomKill:
    base = dict(event_id="b:1:77", time_unix_nano=T, boot_time_ns=0, hook="kmsg", context_hook="none",
                recovered=True, victim_pid=77, victim_tid=77, victim_comm="app")
    base.update(over)
    return OomKill(**base)


HOSTILE = [
    "\x1b[31mred\x07\nx\udcff",            # the e2e test's comm: CSI, BEL, newline, a raw 0xff byte
    "\x1b]0;pwned\x07",                      # OSC: set the terminal title
    "a\x9b2Jb",                              # C1 CSI: clears the screen on some terminals
    "tab\there\rcr\x7fdel\x00nul",
    'quote"and\\backslash\'',
    "\u202egnp.exe",                         # right-to-left override
    "\ud800lone",                            # a surrogate surrogateescape never makes
]
RAW_FORBIDDEN = [chr(c) for c in list(range(0x20)) + list(range(0x7f, 0xa0))] + ["\u202e"]


# ---- escape_untrusted --------------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("stress", "stress"),
    ("\x1b[31mred\x07\nx\udcff", "\\x1b[31mred\\x07\\x0ax\\xff"),
    ("a\\b", "a\\\\b"),
    ("\x7f\x80\x9f", "\\x7f\\x80\\x9f"),
    ("café 日本 🚀", "café 日本 🚀"),
    ("\u202eabc\u2066", "\\u202eabc\\u2066"),
    ("\u2028", "\\u2028"),
    ("\ud800", "\\ud800"),
    ("", ""),
])
def test_escape_untrusted(raw, shown):
    assert escape_untrusted(raw) == shown


def test_every_byte_value_comes_out_printable_and_encodable():
    raw = bytes(range(256)).decode("utf-8", "surrogateescape")
    shown = escape_untrusted(raw)
    assert not any(c in shown for c in RAW_FORBIDDEN)
    shown.encode("utf-8")  # no lone surrogate left
    assert shown.isprintable()
    # distinct inputs stay distinct: the escape is reversible in principle
    assert escape_untrusted("\\x41") != escape_untrusted("A")


# ---- console ---------------------------------------------------------------------------------

def test_format_console_full_kill():
    assert format_console(full_kill()) == (
        "[2026-11-25 10:31:07.123 UTC] OOM KILL (memcg)\n"
        "  Victim:  pid=1234 tid=1235 comm=stress ppid=1000 uid=0 rss=31.2 MiB "
        "(anon 30.0 MiB, file 1.2 MiB, shmem 0 B) vm=100.0 MiB oom_score_adj=0\n"
        "  Trigger: pid=1234 comm=stress\n"
        f"  Cgroup:  /kubepods/burstable/pod{POD}/{CID}  container=containerd://{CID[:12]}  pod={POD} (burstable)\n"
        f"  OOM memcg: /kubepods/burstable/pod{POD}/{CID} limit=32.0 MiB usage=32.0 MiB (kernel)\n"
        "  Why:     constraint=memcg (kernel) domain=32.0 MiB badness=1950 gfp_mask=0xcc0 order=0\n"
        "  Hook:    tp_btf (context: fentry)   event=8a1b2c3d-1111-2222-3333-444455556666:1234567890:1234 "
        "decision=d-1\n")


def test_format_console_minimal_recovered_kill_omits_the_unknown():
    assert format_console(minimal_kill()) == (
        "[2026-11-25 10:31:07.123 UTC] OOM KILL (unknown, recovered from the kernel log)\n"
        "  Victim:  pid=77 comm=app\n"
        "  Trigger: ?\n"
        "  Why:     constraint=unknown (none)\n"
        "  Hook:    kmsg (context: none)   event=b:1:77\n")


@pytest.mark.parametrize("name", HOSTILE)
def test_console_never_prints_a_hostile_name_raw(name):
    kill = full_kill(victim_comm=name, trigger_comm=name, cgroup_path=f"/x/{name}", memcg_path=f"/y/{name}",
                     container_id=name, pod_uid=name)
    out = format_console(kill)
    assert not any(c in out for c in RAW_FORBIDDEN if c != "\n")
    assert out.count("\n") == 7  # newlines in names did not add lines
    out.encode("utf-8")
    assert f"comm={escape_untrusted(name)} " in out


def test_e2e_hostile_comm_renders_as_the_e2e_test_expects():
    out = format_console(full_kill(victim_comm="\x1b[31mred\x07\nx\udcff"))
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mred\\x07\\x0ax\\xff" in out


# ---- JSON --------------------------------------------------------------------------------------

def test_format_json_is_one_object_with_the_otlp_names():
    kill = full_kill()
    line = format_json(kill)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc.pop("time") == "2026-11-25T10:31:07.123456789Z"
    assert doc.pop("event_name") == "oom.kill"
    assert doc.pop("body").startswith("Memory cgroup out of memory: Killed process 1234 (stress) total-vm:102400kB")
    assert doc == log_attributes(kill, raw=True)
    assert doc["process.pid"] == 1234 and doc["k8s.pod.uid"] == POD and doc["oom.recovered"] is False


@pytest.mark.parametrize("name", HOSTILE)
def test_json_never_carries_a_hostile_name_raw(name):
    line = format_json(full_kill(victim_comm=name, cgroup_path=f"/x/{name}"))
    assert not any(c in line for c in RAW_FORBIDDEN)
    line.encode("utf-8")  # valid UTF-8 (no lone surrogate)
    doc = json.loads(line)
    # raw kernel bytes travel as \udcNN escapes: json.loads gives back exactly the decoded kernel string
    assert doc["process.executable.name"] == name  # the data itself survives intact
    assert doc["oom.victim.cgroup.path"] == f"/x/{name}"


def test_json_keeps_printable_unicode_readable():
    line = format_json(minimal_kill(victim_comm="café"))
    assert '"process.executable.name":"café"' in line


# ---- helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, shown", [(None, "?"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                      (31 * MiB + 200 * 1024, "31.2 MiB"), (64 << 30, "64.0 GiB")])
def test_format_size(n, shown):
    assert format_size(n) == shown


def test_times_keep_nanoseconds_exactly():
    assert rfc3339(T) == "2026-11-25T10:31:07.123456789Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_time(T) == "2026-11-25 10:31:07.123"


def test_a_raw_byte_and_its_escape_text_never_look_alike():
    # before, the byte 0xff and the four characters "\xff" became the same OTLP attribute value
    from otel_oom.text import for_chat, for_otlp, for_terminal

    raw, text = "a\udcffb", "a\\xffb"
    for escape in (for_otlp, for_terminal, for_chat):
        assert escape(raw) != escape(text), escape
    # OTLP: the text stays text, the raw byte goes as bytes_value with exactly the kernel's bytes
    assert for_otlp(raw) == b"a\xffb" and for_otlp(text) == "a\\xffb"
    # a systemd-escaped name is data, kept as it is
    assert for_otlp("dev-disk-by\\x2duuid.swap") == "dev-disk-by\\x2duuid.swap"
