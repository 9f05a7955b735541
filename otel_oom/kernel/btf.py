"""Questions answered from BTF: does the event mirror match the object, and what does the kernel offer.

Two uses: before loading, the compiled object's BTF must describe `struct oom_event` exactly as
`event.RawEvent` does (a stale object is refused); and the running kernel's BTF tells which hooks
can work (the `mark_victim` tracepoint's prototype, whether `oom_kill_process` is a BTF function).
"""
from __future__ import annotations

import ctypes
from typing import Optional

from . import libbpf as L
from .reclaim_wire import RawReclaimEvent
from .wire import RawCgroupLevel, RawEvent


class LayoutMismatch(Exception):
    pass


def _type(btf: int, type_id: int) -> L.BtfType:
    ptr = L.btf__type_by_id(btf, type_id)
    if not ptr:
        raise LayoutMismatch(f"BTF type id {type_id} not found")
    return L.BtfType.from_address(ptr)


def _name(btf: int, off: int) -> str:
    raw = L.btf__name_by_offset(btf, off)
    return raw.decode() if raw else ""


def struct_fields(btf: int, struct_name: str) -> dict[str, tuple[int, int]]:
    """Field name -> (byte offset, byte size) of a struct as BTF describes it."""
    type_id = L.btf__find_by_name_kind(btf, struct_name.encode(), L.BTF_KIND_STRUCT)
    if type_id < 0:
        raise LayoutMismatch(f"struct {struct_name} is not in the object's BTF")
    t = _type(btf, type_id)
    members = (L.BtfMember * t.vlen).from_address(L.btf__type_by_id(btf, type_id) + ctypes.sizeof(L.BtfType))
    fields = {"<size>": (0, t.size_or_type)}
    for m in members:
        bit_offset = m.offset & 0xFFFFFF if t.kflag else m.offset
        fields[_name(btf, m.name_off)] = (bit_offset // 8, L.btf__resolve_size(btf, m.type))
    return fields


def mirror_fields(struct: type[ctypes.Structure]) -> dict[str, tuple[int, int]]:
    fields = {"<size>": (0, ctypes.sizeof(struct))}
    for name, *_ in struct._fields_:
        desc = getattr(struct, name)
        fields[name] = (desc.offset, desc.size)
    return fields


def layout_differences(btf: int) -> list[str]:
    """Every field whose name, offset or size differs between the object and the Python mirror."""
    problems = []
    for c_name, mirror in (("oom_event", RawEvent), ("oom_cgroup_level", RawCgroupLevel),
                           ("oom_reclaim_event", RawReclaimEvent)):
        want, have = struct_fields(btf, c_name), mirror_fields(mirror)
        for field in sorted(set(want) | set(have)):
            if want.get(field) != have.get(field):
                problems.append(f"{c_name}.{field}: object {want.get(field)}, agent {have.get(field)}")
    return problems


def check_event_layout(btf: int) -> None:
    problems = layout_differences(btf)
    if problems:
        names = ", ".join(p.split(":", 1)[0] for p in problems)
        raise LayoutMismatch(f"fields differ: {names}; first: {problems[0]}")


# int btf__parse(const char *path, struct btf_ext **btf_ext): raw BTF or an ELF's .BTF section
_btf__parse = L._fn("btf__parse", ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)


class KernelBtf:
    """The running kernel's BTF (/sys/kernel/btf/vmlinux), for feature detection; or, with `path`,
    a saved copy of another kernel's (so the same questions can be asked of a kernel not running)."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.ptr = L.btf__load_vmlinux_btf() if path is None else _btf__parse(path.encode(), None)
        if not self.ptr:
            # libbpf 1.x returns NULL and sets errno
            raise OSError(ctypes.get_errno(), "cannot load the kernel's BTF", path)

    def close(self) -> None:
        if self.ptr:
            L.btf__free(self.ptr)
            self.ptr = None

    def __enter__(self) -> "KernelBtf":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_func(self, name: str) -> bool:
        return L.btf__find_by_name_kind(self.ptr, name.encode(), L.BTF_KIND_FUNC) >= 0

    def mark_victim_args(self) -> Optional[list[str]]:
        """Argument types of the mark_victim tracepoint (after the context pointer), e.g.
        ["struct task_struct *", "uid_t"] on 6.9+, ["int"] before; None if the kernel has none."""
        tid = L.btf__find_by_name_kind(self.ptr, b"btf_trace_mark_victim", L.BTF_KIND_TYPEDEF)
        if tid < 0:
            return None
        ptr_t = _type(self.ptr, _type(self.ptr, tid).size_or_type)
        if ptr_t.kind != L.BTF_KIND_PTR:
            return None
        proto_id = ptr_t.size_or_type
        proto = _type(self.ptr, proto_id)
        if proto.kind != L.BTF_KIND_FUNC_PROTO:
            return None
        params = (L.BtfParam * proto.vlen).from_address(
            L.btf__type_by_id(self.ptr, proto_id) + ctypes.sizeof(L.BtfType)
        )
        return [self._describe(p.type) for p in params[1:]]

    def _describe(self, type_id: int) -> str:
        t = _type(self.ptr, type_id)
        if t.kind == L.BTF_KIND_PTR:
            target = _type(self.ptr, t.size_or_type)
            prefix = "struct " if target.kind == L.BTF_KIND_STRUCT else ""
            return f"{prefix}{_name(self.ptr, target.name_off)} *"
        return _name(self.ptr, t.name_off)
