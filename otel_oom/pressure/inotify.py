"""inotify through ctypes (the standard library has none): kernfs tells about cgroup changes this way.

cgroupfs raises IN_CREATE/IN_DELETE on a cgroup directory when a child cgroup is made or removed
(mkdir/rmdir go through the VFS), and IN_MODIFY on `memory.events` / `memory.events.local` when
one of their counters changes (kernfs_notify, at most every 20 ms per file). One inotify
descriptor watches thousands of cgroups, so discovery and v2 event counters cost no file
descriptor per cgroup and no periodic reading.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Optional

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len

_libc: Optional[ctypes.CDLL] = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        # int inotify_init1(int flags);
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        # int inotify_add_watch(int fd, const char *pathname, uint32_t mask);
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        # int inotify_rm_watch(int fd, int wd);
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


class Inotify:
    def __init__(self) -> None:
        fd = _lib().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor; OSError (ENOSPC: fs.inotify.max_user_watches reached) otherwise."""
        wd = _lib().inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def rm_watch(self, wd: int) -> None:
        _lib().inotify_rm_watch(self._fd, wd)  # EINVAL when the kernel already dropped it: fine

    def read(self) -> list[tuple[int, int, str]]:
        """Pending events as (wd, mask, name); [] when none."""
        out: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                raw = data[pos + _EVENT.size:pos + _EVENT.size + length]
                out.append((wd, mask, os.fsdecode(raw.split(b"\0", 1)[0])))
                pos += _EVENT.size + length

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
