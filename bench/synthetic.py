"""The bench-only synthetic-event program, writing into a running agent's own ring buffer.

`bench/bpf/synthetic.bpf.o` is the agent's object plus `synthetic_events` (see synthetic.bpf.c).
It is loaded here with only that program enabled, and its `events` and `stats` maps replaced by the
agent's, found by map id in the agent's /proc/<pid>/fdinfo — so the agent runs exactly as shipped,
with no benchmark hook of any kind. Needs root (BPF_MAP_GET_FD_BY_ID needs CAP_SYS_ADMIN).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from otel_oom.kernel import libbpf as L

OBJECT = Path(__file__).resolve().parent / "bpf" / "synthetic.bpf.o"
PROGRAM = "synthetic_events"
EVENTS_PER_RUN = 64  # synthetic_batch in synthetic.bpf.c

_u32 = ctypes.c_uint32
# int bpf_map_get_fd_by_id(__u32 id);
_map_get_fd_by_id = L._fn("bpf_map_get_fd_by_id", ctypes.c_int, _u32)
# int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
_obj_get_info_by_fd = L._fn("bpf_obj_get_info_by_fd", ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_u32))
# int bpf_map__reuse_fd(struct bpf_map *map, int fd);
_map_reuse_fd = L._fn("bpf_map__reuse_fd", ctypes.c_int, ctypes.c_void_p, ctypes.c_int)


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1)."""
    _fields_ = [
        ("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
        ("data_size_in", _u32), ("data_size_out", _u32),
        ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", _u32), ("ctx_size_out", _u32),
        ("retval", _u32), ("repeat", ctypes.c_int), ("duration", _u32),
        ("flags", _u32), ("cpu", _u32), ("batch_size", _u32),
    ]


# int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
_prog_test_run = L._fn("bpf_prog_test_run_opts", ctypes.c_int, ctypes.c_int, ctypes.POINTER(BpfTestRunOpts))


def build() -> Path:
    """Build the bench object if needed (same flags as the shipped one); returns its path."""
    subprocess.run(["make", "-s", "-C", str(OBJECT.parent)], check=True)
    return OBJECT


def obj_id(fd: int) -> int:
    """The kernel id of a BPF program or map fd (struct bpf_{prog,map}_info: __u32 type; __u32 id)."""
    buf = (ctypes.c_uint8 * 256)()
    size = _u32(ctypes.sizeof(buf))
    if _obj_get_info_by_fd(fd, buf, ctypes.byref(size)) != 0:
        return 0
    return int.from_bytes(bytes(buf[4:8]), "little")


def _map_name(fd: int) -> str:
    buf = (ctypes.c_uint8 * 256)()
    size = _u32(ctypes.sizeof(buf))
    if _obj_get_info_by_fd(fd, buf, ctypes.byref(size)) != 0:
        return ""
    # struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags (6 x u32), name[16]
    return bytes(buf[24:40]).split(b"\0", 1)[0].decode()


def agent_maps(pid: int, names: tuple[str, ...] = ("events", "stats")) -> dict[str, int]:
    """Fds (owned by the caller) for the named maps process `pid` holds open."""
    found: dict[str, int] = {}
    fdinfo = f"/proc/{pid}/fdinfo"
    for entry in os.listdir(fdinfo):
        try:
            with open(f"{fdinfo}/{entry}") as f:
                info = f.read()
        except OSError:
            continue
        map_id = next((int(line.split()[1]) for line in info.splitlines() if line.startswith("map_id:")), None)
        if map_id is None:
            continue
        fd = _map_get_fd_by_id(map_id)
        if fd < 0:
            continue
        name = _map_name(fd)
        if name in names and name not in found:
            found[name] = fd
        else:
            os.close(fd)
    missing = set(names) - set(found)
    if missing:
        for fd in found.values():
            os.close(fd)
        raise RuntimeError(f"process {pid} holds no BPF map named {', '.join(sorted(missing))}: is it an agent?")
    return found


class SyntheticProgram:
    """`synthetic_events` loaded against the given maps; `run(n)` writes n * 64 events."""

    def __init__(self, maps: dict[str, int], object_path: Path = OBJECT) -> None:
        self._obj = L.bpf_object__open_file(str(object_path).encode(), None)
        if not self._obj:
            raise RuntimeError(f"cannot open {object_path}: build it with `make -C bench/bpf`")
        prog = L.bpf_object__next_program(self._obj, None)
        while prog:
            L.bpf_program__set_autoload(prog, L.bpf_program__name(prog).decode() == PROGRAM)
            prog = L.bpf_object__next_program(self._obj, prog)
        for name, fd in maps.items():
            if _map_reuse_fd(L.bpf_object__find_map_by_name(self._obj, name.encode()), fd) != 0:
                raise RuntimeError(f"cannot reuse map {name}")
        if L.bpf_object__load(self._obj) != 0:
            raise RuntimeError("cannot load the synthetic-event program (see the libbpf messages)")
        self.fd = L.bpf_program__fd(L.bpf_object__find_program_by_name(self._obj, PROGRAM.encode()))
        self.id = obj_id(self.fd)
        self._opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts))

    def run(self, times: int = 1) -> int:
        """BPF_PROG_TEST_RUN `times` times; returns the events written (the kernel may drop on a full ring)."""
        for _ in range(times):
            rc = _prog_test_run(self.fd, ctypes.byref(self._opts))
            if rc != 0:
                raise RuntimeError(f"BPF_PROG_TEST_RUN failed: {rc}")
        return times * EVENTS_PER_RUN

    def close(self) -> None:
        if self._obj:
            L.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "SyntheticProgram":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
