"""Property-based tests (hypothesis) over every parser of untrusted text: kernel log records and the
OOM killer's lines, mountinfo, cgroup paths and names, ring-buffer samples, spool segments and the
ack file, the reconciliation state, URLs, --listen and OTLP headers, and the escaping of names for
each destination. Each property is what the agent relies on: no exception but the documented one,
nothing lost that was valid, and no two different inputs that look alike downstream."""
from __future__ import annotations

import os
import re
import struct
import zlib

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from otel_oom.attribution.containers import parse_cgroup_path
from otel_oom.cgroupfs.hierarchy import _read_mounts, _unescape
from otel_oom.cgroupfs.tree import path_from_names
from otel_oom.delivery.spool import MAGIC, Spool
from otel_oom.delivery.spool_format import MAGIC_V1, record_bytes
from otel_oom.errors import UsageError
from otel_oom.health import parse_listen
from otel_oom.kernel.wire import EVENT_SIZE, OOM_EVENT_VERSION, DecodeError, RawEvent, decode
from otel_oom.otlp.env import ConfigError, parse_headers
from otel_oom.reconcile.kmsg import parse_kmsg, parse_record
from otel_oom.reconcile.oom_report import parse_oom_kill_line, recovered_kills
from otel_oom.reconcile.recovery import parse_state
from otel_oom.text import for_chat, for_otlp, for_terminal, from_kernel
from otel_oom.urls import UrlError, parse_url

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
kernel_bytes = st.binary(max_size=200)
# task names and cgroup names as the kernel may hold them: any bytes but NUL (and no "/" in a name)
comm = st.binary(min_size=1, max_size=15).filter(lambda b: b"\0" not in b)
cg_name = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b)


def kmsg_escape(raw: bytes) -> bytes:
    """What /dev/kmsg does to a message: bytes < 0x20 (but \\n... here none), >= 0x7f and "\\" as \\xNN."""
    return b"".join(b"\\x%02x" % c if c < 0x20 or c >= 0x7F or c == 0x5C else bytes([c]) for c in raw)


# ---- kernel log -------------------------------------------------------------------------------

@FAST
@given(st.binary(max_size=400))
def test_any_kmsg_bytes_parse_without_exception(data):
    for rec in parse_kmsg(data):
        assert 0 <= rec.level <= 7
    parse_record(data)


@FAST
@given(st.binary(max_size=120), st.integers(0, 2**40), st.integers(0, 2**40))
def test_kmsg_messages_are_unescaped_back_to_the_kernels_bytes(raw, seq, usec):
    assume(b"\n" not in raw)
    rec = parse_record(b"3,%d,%d,-;" % (seq, usec) + kmsg_escape(raw) + b"\n")
    assert rec is not None and (rec.seq, rec.usec) == (seq, usec)
    assert rec.message == from_kernel(raw)


@FAST
@given(st.lists(st.text(max_size=120), max_size=12))
def test_any_log_lines_give_kills_or_nothing_never_an_exception(messages):
    data = b"".join(b"3,%d,%d,-;" % (i, i * 1000) + kmsg_escape(m.encode("utf-8", "surrogatepass")) + b"\n"
                    for i, m in enumerate(messages))
    for k in recovered_kills(parse_kmsg(data)):
        assert k.pid >= 0 and k.kernel_counts >= 1
    for m in messages:
        parse_oom_kill_line(m)


@FAST
@given(comm, st.integers(1, 4_000_000), st.lists(cg_name, min_size=1, max_size=4), st.integers(0, 65535))
def test_a_killed_line_with_a_hostile_name_gives_back_the_kill(name, pid, cgs, uid):
    # names are printed unescaped between commas and brackets: whatever a workload chose, the
    # victim's pid, name and cgroup come back exactly (matched against the known victim)
    task = from_kernel(name)
    assume("\n" not in task)
    path = "/" + "/".join(from_kernel(c) for c in cgs)
    assume("\n" not in path)
    lines = [f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={path},"
             f"task_memcg={path},task={task},pid={pid},uid={uid}",
             f"Memory cgroup out of memory: Killed process {pid} ({task}) total-vm:100kB, anon-rss:50kB, "
             f"file-rss:0kB, shmem-rss:0kB, UID:{uid} pgtables:4kB oom_score_adj:0"]
    data = b"".join(b"3,%d,%d,-;" % (i + 1, 1000) + kmsg_escape(line.encode("utf-8", "surrogateescape")) + b"\n"
                    for i, line in enumerate(lines))
    (k,) = recovered_kills(parse_kmsg(data))
    assert (k.pid, k.comm, k.uid, k.constraint) == (pid, task, uid, "memcg")
    assert k.task_memcg == path and k.oom_memcg == path


# ---- mountinfo and cgroup paths ------------------------------------------------------------------

def _octal(text: bytes) -> bytes:
    return b"".join(b"\\%03o" % c if c in b" \t\n\\" else bytes([c]) for c in text)


@FAST
@given(st.binary(max_size=600))
def test_any_mountinfo_parses_without_exception(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("mi") / "mountinfo"
    path.write_bytes(data)
    for m in _read_mounts(str(path)):
        assert isinstance(m.point, str)


@FAST
@given(st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b))
def test_mountinfo_escapes_are_undone_exactly(point):
    assert _unescape(_octal(point)) == os.fsdecode(point)


@FAST
@given(st.text(max_size=300))
def test_any_cgroup_path_gives_a_workload_only_from_exact_ids(path):
    w = parse_cgroup_path(path)
    if w.container_id is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", w.container_id) and w.container_id in path
    if w.pod_uid is not None:
        assert w.pod_uid in path or w.pod_uid.replace("-", "_") in path
        assert w.qos_class in ("guaranteed", "burstable", "besteffort")


@FAST
@given(st.lists(cg_name, max_size=8))
def test_names_captured_leaf_first_join_to_the_path(names):
    decoded = [from_kernel(n) for n in names]
    assert path_from_names(list(reversed(decoded)) + [""]) == "/" + "/".join(decoded)


# ---- ring-buffer samples ------------------------------------------------------------------------

@FAST
@given(st.binary(min_size=EVENT_SIZE, max_size=EVENT_SIZE))
def test_any_sample_decodes_or_is_refused(data):
    version_offset = RawEvent.version.offset
    data = data[:version_offset] + struct.pack("<I", OOM_EVENT_VERSION) + data[version_offset + 4:]  # a valid version
    ev = decode(data, 4096)
    assert len(ev.victim_memcgs) <= 8 and len(ev.victim_comm) <= 16


@FAST
@given(st.binary(max_size=EVENT_SIZE + 8))
def test_short_or_foreign_samples_raise_only_decode_error(data):
    try:
        decode(data, 4096)
    except DecodeError:
        pass


# ---- spool segments, ack file and the reconciliation state ----------------------------------------

def _record(seq: int, payload: bytes) -> bytes:
    if seq % 2:  # odd: the format before the ledger (v1), read and delivered like the current one
        head = struct.pack("<IQq", len(payload), seq, 7)
        crc = zlib.crc32(payload, zlib.crc32(head))
        return struct.pack("<4sIIQq", MAGIC_V1, len(payload), crc, seq, 7) + payload
    return record_bytes(payload, seq, boot=5, uptime_ns=7, wall_ns=7, accounted=seq)


@FAST
@given(st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=6), st.binary(max_size=80),
       st.integers(0, 5), st.binary(max_size=1100))
def test_garbage_in_a_segment_or_the_ack_file_never_loses_a_valid_record(tmp_path_factory, payloads, junk, at, ack):
    d = tmp_path_factory.mktemp("spool")
    records = [_record(i + 1, p) for i, p in enumerate(payloads)]
    at = min(at, len(records))
    (d / "seg-00000000000000000001.log").write_bytes(b"".join(records[:at]) + junk + b"".join(records[at:]))
    (d / "ack").write_bytes(ack)
    with Spool(d, fsync=False, clock=lambda: 0.0) as sp:
        got = sp.pending(100)
        floor = sp.stats()["acked_seq"]
        # every record the garbage did not swallow, above the ack floor the (garbage) file holds
        want = [(i + 1, p) for i, p in enumerate(payloads) if i + 1 > floor]
        assert [x for x in want if x in got] == [x for x in got if x in want]
        assert all(x in want for x in got)
        if MAGIC not in junk and MAGIC_V1 not in junk and floor == 0:
            assert got == want
        seq = sp.append(b"new")
        assert seq > max(len(payloads), floor)


@FAST
@given(st.binary(max_size=300))
def test_any_state_file_is_a_state_or_a_reason(raw):
    state, problem = parse_state(raw)
    assert (state is None) != (problem is None) or (state is None and problem is not None)
    if state is not None:
        assert isinstance(state["boot_id"], str) and state["vmstat_oom_kill"] >= 0


# ---- configuration text ---------------------------------------------------------------------------

@FAST
@given(st.text(max_size=80))
@example("@0?")      # https://@0?:pw@h/ was accepted and its redacted form showed the password
@example("u#")       # a # in the user info: host "u" accepted, the password in the "fragment"
@example("h/p@x")    # an @ in the path: the redacted form named the wrong host
def test_any_url_is_parsed_or_refused_in_one_line_without_its_credentials(text):
    secret = "s3cr3tpw"
    assume(secret not in text)
    for value in (text, f"http://user:{secret}@{text}", f"https://{text}:{secret}@h/", f"http://h/{text}?k={secret}"):
        try:
            url = parse_url("X", value, "http://example")
        except UrlError as e:
            assert "\n" not in str(e) and secret not in str(e)
        else:
            assert url.host and secret not in url.redacted


@FAST
@given(st.text(max_size=40))
def test_any_listen_value_is_parsed_or_refused(text):
    try:
        host, port = parse_listen(text)
    except UsageError as e:
        assert "\n" not in str(e)
    else:
        assert 0 <= port <= 65535


@FAST
@given(st.text(max_size=80))
def test_any_headers_value_is_parsed_or_refused_without_showing_a_value(text):
    try:
        headers = parse_headers("H", text)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg
        for item in text.split(","):
            value = item.partition("=")[2].strip()
            if len(value) >= 4:
                assert value not in msg.replace("(values are not shown)", "")
    else:
        for k, v in headers:
            assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9a-z]+", k)
            assert all(0x20 <= ord(c) < 0x7F or c == "\t" for c in v)


# ---- escaping -----------------------------------------------------------------------------------

@FAST
@given(kernel_bytes, kernel_bytes)
def test_each_escaping_is_injective_and_safe(a, b):
    sa, sb = from_kernel(a), from_kernel(b)
    for escape in (for_otlp, for_terminal):
        ea, eb = escape(sa), escape(sb)
        if isinstance(ea, bytes):  # OTLP bytes_value: exactly the kernel's bytes, for non-UTF-8 input only
            assert escape is for_otlp and ea == a
        else:
            ea.encode("utf-8")  # valid UTF-8: protobuf and terminals accept it
        assert (ea == eb) == (a == b)
    otlp = for_otlp(sa)
    assert otlp == (sa if isinstance(otlp, str) else a)  # valid text is never rewritten
    t = for_terminal(sa)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in t)
    c = for_chat(sa)
    assert "<" not in c and ">" not in c and "\n" not in c


ENV_NAMES = ["OTEL_OOM_SPOOL_DIR", "OTEL_OOM_SPOOL_MAX_BYTES", "OTEL_OOM_SPOOL_MAX_AGE", "OTEL_OOM_LISTEN",
             "OTEL_OOM_PROMETHEUS", "OTEL_OOM_NOTIFY_WEBHOOK", "OTEL_OOM_OOM_SCORE_ADJ", "OTEL_OOM_VICTIM_HOOK",
             "OTEL_OOM_CONTEXT_HOOK", "OTEL_OOM_RING_BUFFER_BYTES", "OTEL_OOM_LOG_LEVEL", "OTEL_OOM_CONSOLE",
             "OTEL_OOM_JSON", "OTEL_OOM_NO_OTLP", "OTEL_OOM_NO_SPOOL", "OTEL_OOM_SHUTDOWN_TIMEOUT",
             "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TIMEOUT",
             "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_METRIC_EXPORT_INTERVAL",
             "OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_METRIC_EXPORT_TIMEOUT"]


@FAST
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=30), max_size=6))
def test_any_environment_resolves_or_fails_in_one_line(environ):
    from otel_oom.config import resolve

    try:
        cfg = resolve({}, environ)
    except UsageError as e:
        assert "\n" not in str(e)
    else:
        assert cfg.spool_max_bytes >= 1 << 16 and cfg.shutdown_timeout >= 0
