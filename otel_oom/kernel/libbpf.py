"""ctypes declarations for the parts of libbpf (Debian `libbpf1`, 1.1+) the agent uses.

Declarations only: every function has argtypes/restype set and its C prototype above it; opaque
libbpf objects are plain void pointers. Error checking lives in `probe.py`; here we only route
libbpf's own messages into `logging`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

from ..errors import AgentError

log = logging.getLogger("otel_oom.libbpf")


class LibbpfMissing(AgentError):
    """libbpf.so.1 cannot be loaded: raised at import, reported by the CLI as one line."""


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise LibbpfMissing("libbpf.so.1 not found: install it (Debian/Ubuntu: apt-get install libbpf1)")


lib = _load()
libc = ctypes.CDLL(None, use_errno=True)

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_size_t = ctypes.c_size_t


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# __u32 libbpf_major_version(void); __u32 libbpf_minor_version(void);
libbpf_major_version = _fn("libbpf_major_version", ctypes.c_uint32)
libbpf_minor_version = _fn("libbpf_minor_version", ctypes.c_uint32)

# libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
# typedef int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *, va_list ap);
PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
libbpf_set_print = _fn("libbpf_set_print", c_void_p, PRINT_FN)

class BpfObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf 1.1; later versions only append fields, guarded by sz)."""
    _fields_ = [
        ("sz", c_size_t), ("object_name", c_char_p), ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p), ("_removed_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", c_char_p), ("btf_custom_path", c_char_p), ("kernel_log_buf", c_char_p),
        ("kernel_log_size", c_size_t), ("kernel_log_level", ctypes.c_uint32),
    ]


assert ctypes.sizeof(BpfObjectOpenOpts) == 80 and BpfObjectOpenOpts.btf_custom_path.offset == 48

# struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
bpf_object__open_file = _fn("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
# int bpf_object__load(struct bpf_object *obj);
bpf_object__load = _fn("bpf_object__load", c_int, c_void_p)
# void bpf_object__close(struct bpf_object *obj);
bpf_object__close = _fn("bpf_object__close", None, c_void_p)
# struct btf *bpf_object__btf(const struct bpf_object *obj);
bpf_object__btf = _fn("bpf_object__btf", c_void_p, c_void_p)
# struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);
bpf_object__find_program_by_name = _fn("bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
# struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
bpf_object__find_map_by_name = _fn("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
# struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
bpf_object__next_program = _fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)

# const char *bpf_program__name(const struct bpf_program *prog);
bpf_program__name = _fn("bpf_program__name", c_char_p, c_void_p)
# int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
bpf_program__set_autoload = _fn("bpf_program__set_autoload", c_int, c_void_p, ctypes.c_bool)
# struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
bpf_program__attach = _fn("bpf_program__attach", c_void_p, c_void_p)
# struct bpf_link *bpf_program__attach_kprobe(const struct bpf_program *prog, bool retprobe,
#                                             const char *func_name);
bpf_program__attach_kprobe = _fn("bpf_program__attach_kprobe", c_void_p, c_void_p, ctypes.c_bool, c_char_p)
# int bpf_program__fd(const struct bpf_program *prog);
bpf_program__fd = _fn("bpf_program__fd", c_int, c_void_p)
# int bpf_link__destroy(struct bpf_link *link);
bpf_link__destroy = _fn("bpf_link__destroy", c_int, c_void_p)

# int bpf_map__fd(const struct bpf_map *map);
bpf_map__fd = _fn("bpf_map__fd", c_int, c_void_p)
# int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", c_int, c_void_p, ctypes.c_uint32)
# int bpf_map_lookup_elem(int fd, const void *key, void *value);
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)

# int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, ctypes.c_uint64)
# int libbpf_num_possible_cpus(void);
libbpf_num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)

# typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
# struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx,
#                                      const struct ring_buffer_opts *opts);
ring_buffer__new = _fn("ring_buffer__new", c_void_p, c_int, SAMPLE_FN, c_void_p, c_void_p)
# int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
ring_buffer__poll = _fn("ring_buffer__poll", c_int, c_void_p, c_int)
# int ring_buffer__consume(struct ring_buffer *rb);
ring_buffer__consume = _fn("ring_buffer__consume", c_int, c_void_p)
# void ring_buffer__free(struct ring_buffer *rb);
ring_buffer__free = _fn("ring_buffer__free", None, c_void_p)

# struct btf *btf__load_vmlinux_btf(void);
btf__load_vmlinux_btf = _fn("btf__load_vmlinux_btf", c_void_p)
# void btf__free(struct btf *btf);
btf__free = _fn("btf__free", None, c_void_p)
# __s32 btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);
btf__find_by_name_kind = _fn("btf__find_by_name_kind", ctypes.c_int32, c_void_p, c_char_p, ctypes.c_uint32)
# const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
btf__type_by_id = _fn("btf__type_by_id", c_void_p, c_void_p, ctypes.c_uint32)
# const char *btf__name_by_offset(const struct btf *btf, __u32 offset);
btf__name_by_offset = _fn("btf__name_by_offset", c_char_p, c_void_p, ctypes.c_uint32)
# __s64 btf__resolve_size(const struct btf *btf, __u32 type_id);
btf__resolve_size = _fn("btf__resolve_size", ctypes.c_int64, c_void_p, ctypes.c_uint32)
# int btf__resolve_type(const struct btf *btf, __u32 type_id);  (skips typedefs and modifiers)
btf__resolve_type = _fn("btf__resolve_type", c_int, c_void_p, ctypes.c_uint32)

# int vasprintf(char **strp, const char *fmt, va_list ap): the whole message, however long (a
# verifier log ends with the line that says why a program was rejected)
libc.vasprintf.restype = c_int
libc.vasprintf.argtypes = [ctypes.POINTER(c_void_p), c_char_p, c_void_p]
# int malloc_trim(size_t pad);  (glibc; absent from musl)
_malloc_trim = getattr(libc, "malloc_trim", None)
if _malloc_trim is not None:
    _malloc_trim.restype = c_int
    _malloc_trim.argtypes = [ctypes.c_size_t]


def release_freed_memory() -> None:
    """Hand the heap that was freed back to the kernel (glibc keeps it otherwise).

    Loading an object makes libbpf parse the kernel's BTF (~15 MB of heap on a 5.5 MB vmlinux BTF,
    once per plan tried) and free it after the load; the OTel SDK's imports leave freed heap too.
    Without this the agent's RSS keeps it all for good (measured: 63 -> 47 MiB idle).
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
# void free(void *ptr);
libc.free.restype = None
libc.free.argtypes = [c_void_p]

# BTF kinds (linux/btf.h)
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT = 1, 2, 3, 4
BTF_KIND_TYPEDEF, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO = 8, 12, 13


class BtfType(ctypes.Structure):
    """struct btf_type; `size_or_type` is size for structs, type id for pointers/typedefs."""
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_or_type", ctypes.c_uint32)]

    @property
    def kind(self) -> int:
        return (self.info >> 24) & 0x1F

    @property
    def vlen(self) -> int:
        return self.info & 0xFFFF

    @property
    def kflag(self) -> bool:
        return bool(self.info >> 31)


class BtfMember(ctypes.Structure):
    """struct btf_member, following a struct's btf_type."""
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class BtfParam(ctypes.Structure):
    """struct btf_param, following a func proto's btf_type."""
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32)]


class BtfArray(ctypes.Structure):
    """struct btf_array, following an array's btf_type."""
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32), ("nelems", ctypes.c_uint32)]


# libbpf print levels
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
_LEVELS = {LIBBPF_WARN: logging.WARNING, LIBBPF_INFO: logging.INFO, LIBBPF_DEBUG: logging.DEBUG}


# while set, libbpf's messages are collected here instead of logged (see probe.open_probe)
captured: "list[tuple[int, str]] | None" = None


@PRINT_FN
def _print(level: int, fmt: bytes, args: int) -> int:
    if level != LIBBPF_WARN and not log.isEnabledFor(logging.DEBUG):
        return 0  # shown at DEBUG only: a load prints over a thousand of them (~10 ms before `ready`)
    out = c_void_p()
    if libc.vasprintf(ctypes.byref(out), fmt, args) < 0 or not out.value:
        return 0
    try:
        text = (ctypes.string_at(out.value) or b"").decode("utf-8", "backslashreplace").rstrip()
    finally:
        libc.free(out)
    # libbpf's INFO is chatty about things that are fine; keep it at DEBUG
    py_level = logging.DEBUG if level != LIBBPF_WARN else logging.WARNING
    if text:
        if captured is not None:
            captured.append((py_level, text))
        else:
            log.log(py_level, "%s", text)
    return 0


def route_messages_to_logging() -> None:
    """Send libbpf's messages to the `otel_oom.libbpf` logger (the callback stays referenced here)."""
    libbpf_set_print(_print)


def version() -> str:
    return f"{libbpf_major_version()}.{libbpf_minor_version()}"
