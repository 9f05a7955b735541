"""Which memory cgroups exist: a walk of the tree, kept current by inotify (no reading on a timer).

inotify IN_CREATE / IN_DELETE on every cgroup directory (mkdir and rmdir of a child go through
the VFS), and IN_MODIFY on its limit file (`memory.limit_in_bytes` / `memory.max`: a write to it is
a VFS write), so a cgroup is considered when it appears and again when its limit changes; the
same inotify descriptor watches the files the registry asks for (v2 `memory.events.local`, which
kernfs_notify touches when a counter moves). A full rescan (`rescan()`) catches what a watch
missed, and follows an inotify queue overflow. Works on any directory tree (a tmpfs in tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from ..cgroupfs.hierarchy import directory as directory_of
from ..cgroupfs.tree import is_under, walk
from . import inotify as ino

DIR_MASK = ino.IN_CREATE | ino.IN_DELETE | ino.IN_ONLYDIR

# Change kinds
CREATED = "created"      # a cgroup directory appeared (its subtree was walked: every new path is listed)
DELETED = "deleted"      # a cgroup directory was removed
LIMIT = "limit"          # its limit file was written
FILE = "file"            # a file watched with watch_file() changed
OVERFLOW = "overflow"    # inotify lost events: rescan


@dataclass(frozen=True)
class Change:
    kind: str
    path: str = ""


class Discovery:
    """`limit_file`: the file whose writes are watched per cgroup; `warn(key, message)` says a problem once."""

    def __init__(self, mount: str, limit_file: str, inotify: Optional[ino.Inotify],
                 warn: Callable[[str, str], None]) -> None:
        self.mount = mount
        self.limit_file = limit_file
        self.inotify = inotify
        self._warn = warn
        self.known: set[str] = set()              # every cgroup seen (limited or not)
        self._dir_wd: dict[int, str] = {}          # directory watch -> cgroup path
        self._limit_wd: dict[int, str] = {}        # limit file watch -> cgroup path
        self._file_wd: dict[int, str] = {}         # watch_file() -> cgroup path

    def directory(self, path: str) -> str:
        return directory_of(self.mount, path)

    def rescan(self, stopping: Callable[[], bool] = lambda: False) -> tuple[list[str], list[str]]:
        """Walk the whole tree: (paths found that were not known, the highest known paths that are
        gone: the caller forgets each with `gone()`)."""
        seen: set[str] = set()
        found: list[str] = []
        for path, directory, _inode in walk(self.mount):
            if stopping():
                return found, []  # a partial walk must not forget the cgroups not reached
            seen.add(path)
            if path not in self.known:
                self._add(path, directory)
                found.append(path)
        roots: list[str] = []
        for path in sorted(self.known - seen):
            if not any(is_under(path, root) for root in roots):
                roots.append(path)
        return found, roots

    def _add(self, path: str, directory: str) -> None:
        self.known.add(path)
        if self.inotify is None:
            return
        try:
            self._dir_wd[self.inotify.add_watch(directory, DIR_MASK)] = path
            if path != "/":
                wd = self.inotify.add_watch(os.path.join(directory, self.limit_file), ino.IN_MODIFY)
                self._limit_wd[wd] = path
        except OSError as e:
            self._warn("inotify", f"cannot watch {directory} for new cgroups ({e.strerror}; "
                       "raise fs.inotify.max_user_watches): found by the rescan instead")

    def gone(self, path: str) -> list[str]:
        """Forget `path` and everything below it; the known paths forgotten."""
        forgotten = [q for q in self.known if is_under(q, path)]
        self.known.difference_update(forgotten)
        for table in (self._dir_wd, self._limit_wd, self._file_wd):
            for wd in [w for w, p in table.items() if is_under(p, path)]:
                del table[wd]
        return forgotten

    def watch_file(self, path: str, name: str) -> int:
        """Watch a file of the cgroup for IN_MODIFY (reported as FILE changes); -1 without inotify."""
        if self.inotify is None:
            return -1
        wd = self.inotify.add_watch(os.path.join(self.directory(path), name), ino.IN_MODIFY)
        self._file_wd[wd] = path
        return wd

    def unwatch_file(self, wd: int) -> None:
        if wd >= 0 and self._file_wd.pop(wd, None) is not None and self.inotify is not None:
            self.inotify.rm_watch(wd)

    def changes(self) -> list[Change]:
        """What inotify reported since the last call, in order (a new directory's subtree walked)."""
        assert self.inotify is not None
        out: list[Change] = []
        for wd, mask, name in self.inotify.read():
            if mask & ino.IN_Q_OVERFLOW:
                out.append(Change(OVERFLOW))
                continue
            for table, kind in ((self._limit_wd, LIMIT), (self._file_wd, FILE)):
                if wd in table:
                    if mask & ino.IN_IGNORED:
                        del table[wd]
                    elif table[wd] in self.known:
                        out.append(Change(kind, table[wd]))
                    break
            else:
                out += self._directory_change(wd, mask, name)
        return out

    def _directory_change(self, wd: int, mask: int, name: str) -> list[Change]:
        if mask & ino.IN_IGNORED:
            self._dir_wd.pop(wd, None)
            return []
        parent = self._dir_wd.get(wd)
        if parent is None or not name or not mask & ino.IN_ISDIR:
            return []
        path = (parent.rstrip("/") + "/" + name) if parent != "/" else "/" + name
        if mask & ino.IN_CREATE and path not in self.known:
            # children made before the watch on the new directory existed: walk it
            out = []
            for sub, directory, _ in walk(self.directory(path)):
                full = path if sub == "/" else path + sub
                if full not in self.known:
                    self._add(full, directory)
                    out.append(Change(CREATED, full))
            return out
        if mask & ino.IN_DELETE and path in self.known:
            return [Change(DELETED, path)]
        return []
