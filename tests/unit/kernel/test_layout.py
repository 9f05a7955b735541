"""The event contract: the compiled object's BTF and the Python mirror agree field by field."""
from __future__ import annotations

import ctypes
import platform
import re
import subprocess

import pytest
from conftest import REPO, require_tool

from otel_oom.kernel import libbpf as L
from otel_oom.kernel.btf import check_event_layout, layout_differences, struct_fields
from otel_oom.kernel.reclaim_wire import RECLAIM_EVENT_SIZE
from otel_oom.kernel.wire import EVENT_SIZE, RawEvent


@pytest.fixture(scope="module")
def built_object(tmp_path_factory):
    """Build the object with the production recipe (bpf/Makefile) into a fresh directory."""
    require_tool("clang")
    out = tmp_path_factory.mktemp("bpf")
    subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), f"OUT={out}"], check=True)
    return out / f"oomkill.{platform.machine()}.bpf.o"


def _open(path):
    obj = L.bpf_object__open_file(str(path).encode(), None)
    assert obj, f"libbpf could not open {path}"
    return obj


def test_every_field_matches_btf(built_object):
    obj = _open(built_object)
    try:
        btf = L.bpf_object__btf(obj)
        assert layout_differences(btf) == []
        fields = struct_fields(btf, "oom_event")
        assert fields["<size>"] == (0, EVENT_SIZE) == (0, 1728)
        # spot-check the contract's ends and a nested array, in bytes
        assert fields["timestamp_ns"] == (0, 8)
        assert fields["victim_memcg"] == (RawEvent.victim_memcg.offset, 8 * 184)
        assert fields["__pad1"] == (1724, 4)
        # the second record (issue 13): what happened to a victim's memory after the kill
        assert struct_fields(btf, "oom_reclaim_event")["<size>"] == (0, RECLAIM_EVENT_SIZE) == (0, 40)
    finally:
        L.bpf_object__close(obj)


def test_a_drifted_mirror_is_detected(built_object, monkeypatch):
    class Drifted(ctypes.Structure):
        _fields_ = [(n, t) for n, t in RawEvent._fields_ if n != "victim_uid"] + [("victim_uid", ctypes.c_uint32)]

    obj = _open(built_object)
    try:
        monkeypatch.setattr("otel_oom.kernel.btf.RawEvent", Drifted)
        problems = layout_differences(L.bpf_object__btf(obj))
        assert any(p.startswith("oom_event.victim_uid:") for p in problems)
        with pytest.raises(Exception, match="victim_uid"):
            check_event_layout(L.bpf_object__btf(obj))
    finally:
        L.bpf_object__close(obj)


def test_header_version_matches_python():
    header = (REPO / "bpf" / "oomkill.h").read_text()
    from otel_oom.kernel.wire import OOM_EVENT_VERSION

    assert f"#define OOM_EVENT_VERSION {OOM_EVENT_VERSION}\n" in header


@pytest.mark.parametrize("flags, source, task_hook", [
    (1 << 0 | 1 << 16, "task", "fentry"),   # victim task from fentry/mark_oom_victim
    (1 << 0 | 1 << 17, "task", "kprobe"),
    (1 << 0, "task", "none"),               # tp_btf, or oc->chosen / current
    (1 << 1 | 1 << 5, "tracepoint", "none"),  # the 6.9+ tracepoint's fields
    (0, "pid", "none"),                     # a pid-only tracepoint and nothing else
])
def test_where_the_victim_came_from_is_decoded(flags, source, task_hook):
    from otel_oom.kernel.wire import OOM_EVENT_VERSION, decode

    raw = RawEvent(version=OOM_EVENT_VERSION, flags=flags, victim_pid=42, hook=2)
    ev = decode(bytes(raw), 4096)
    assert (ev.victim_source, ev.task_hook) == (source, task_hook)
    assert (ev.victim_tgid is None) == (source != "task")


def test_both_architectures_objects_read_their_own_kprobe_registers(built_object):
    """bpf/Makefile builds an object per architecture: the same event layout, and kprobes that read
    the first argument from that architecture's register (x86_64: di, 14th slot of pt_regs; arm64:
    regs[0], the first)."""
    require_tool("llvm-objdump")
    first_load = {}
    for machine in ("x86_64", "aarch64"):
        obj_path = built_object.parent / f"oomkill.{machine}.bpf.o"
        obj = _open(obj_path)
        try:
            assert layout_differences(L.bpf_object__btf(obj)) == []
        finally:
            L.bpf_object__close(obj)
        out = subprocess.run(["llvm-objdump", "-d", "--section=kprobe/mark_oom_victim", str(obj_path)],
                             capture_output=True, text=True, check=True).stdout
        first_load[machine] = re.search(r"= \*\(u64 \*\)\(r1 \+ (0x[0-9a-f]+|\d+)\)", out).group(1)
    assert {m: int(v, 0) for m, v in first_load.items()} == {"x86_64": 14 * 8, "aarch64": 0}
