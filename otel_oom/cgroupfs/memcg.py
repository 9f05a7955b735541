"""A memory cgroup's own files, cgroup v1 and v2: one reader per file kind, used by every room.

limit (`memory.limit_in_bytes` / `memory.max`), usage (`memory.usage_in_bytes` / `memory.current`),
`memory.failcnt` (v1), `memory.events` and `memory.events.local` (v2), `memory.oom_control` (v1),
the kernel's OOM kill counters, `memory.oom.group` (v2), `memory.pressure` (v2 PSI), and the
cgroup's tasks (`cgroup.procs`, and which of them wait in state D).

Every reader returns None (or an empty result) when the file is gone or unreadable: a cgroup may be
removed at any moment, and a reading that failed is a missing attribute, never an error. The kill
counters for reconciliation read `strict`: a cgroup that is gone is still None, any other error
raises (the reconciler then skips that round rather than counting a cgroup as zero).
`directory` is the cgroup's directory under the mount; `MemcgFiles` reads by cgroup path.
"""
from __future__ import annotations

import errno
import os
from typing import Optional

from .hierarchy import directory as directory_of
from .psi import Psi, read_psi

# v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (about 2^63); anything this large is unlimited
_UNLIMITED = 1 << 62
# what reading a file of a cgroup that is being (or was just) removed fails with
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ESRCH, errno.ENODEV)


def read_text(path: str, strict: bool = False) -> Optional[str]:
    """A small kernel file's content; None when it is gone (or unreadable, unless `strict`)."""
    try:
        with open(path) as f:
            return f.read()
    except UnicodeDecodeError:
        return None
    except OSError as e:
        if strict and e.errno not in _GONE:
            raise
        return None


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def keyed(text: Optional[str]) -> dict[str, int]:
    """`key value` lines (memory.events, memory.oom_control, memory.stat) as a dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def limit_file(version: int) -> str:
    """The file holding the hard limit (a write to it is what inotify reports as IN_MODIFY)."""
    return "memory.limit_in_bytes" if version == 1 else "memory.max"


def limit_bytes(version: int, directory: str) -> Optional[int]:
    """The hard limit in bytes; None when unlimited or unreadable."""
    text = read_text(os.path.join(directory, limit_file(version)))
    if version == 2 and text is not None and text.strip() == "max":
        return None
    n = _int(text)
    return None if n is None or n >= _UNLIMITED else n


def usage_bytes(version: int, directory: str) -> Optional[int]:
    name = "memory.usage_in_bytes" if version == 1 else "memory.current"
    return _int(read_text(os.path.join(directory, name)))


def failcnt(directory: str) -> Optional[int]:
    """v1: how many times a charge hit the limit (ever)."""
    return _int(read_text(os.path.join(directory, "memory.failcnt")))


def events(directory: str, local: bool = True) -> dict[str, int]:
    """v2 memory.events.local (this cgroup only; `local=False`: memory.events, this cgroup and below):
    low, high, max, oom, oom_kill, oom_group_kill."""
    return keyed(read_text(os.path.join(directory, "memory.events.local" if local else "memory.events")))


def oom_control(directory: str) -> dict[str, int]:
    """v1 memory.oom_control: oom_kill_disable, under_oom, oom_kill."""
    return keyed(read_text(os.path.join(directory, "memory.oom_control")))


def oom_kills(version: int, directory: str) -> Optional[int]:
    """The kernel's OOM kill counter of this cgroup and below (v1 memory.oom_control, v2 memory.events)."""
    counts = oom_control(directory) if version == 1 else events(directory, local=False)
    return counts.get("oom_kill")


def local_oom_kills(version: int, directory: str, strict: bool = False) -> Optional[int]:
    """The kills of this cgroup's own tasks: v1 memory.oom_control; v2 memory.events.local where the
    kernel has it (5.2+), else memory.events (hierarchical unless mounted with memory_localevents)."""
    if version == 1:
        text = read_text(os.path.join(directory, "memory.oom_control"), strict)
    else:
        text = read_text(os.path.join(directory, "memory.events.local"), strict)
        if text is None:
            text = read_text(os.path.join(directory, "memory.events"), strict)
    return keyed(text).get("oom_kill")


def oom_group(directory: str) -> bool:
    """v2 memory.oom.group: an OOM kill of one task kills the whole cgroup. False when unreadable."""
    text = read_text(os.path.join(directory, "memory.oom.group"))
    return text is not None and text.strip() == "1"


def pressure(directory: str) -> Optional[Psi]:
    """v2 memory.pressure: the cgroup's own PSI."""
    return read_psi(os.path.join(directory, "memory.pressure"))


def procs(directory: str) -> list[int]:
    """The processes in this cgroup (not below it); [] when unreadable."""
    return [int(p) for p in (read_text(os.path.join(directory, "cgroup.procs")) or "").split() if p.isdigit()]


def tasks(directory: str, max_pids: int) -> tuple[int, tuple[int, ...]]:
    """Processes in the cgroup and its descendants: (count, the lowest `max_pids` pids)."""
    pids: set[int] = set()
    for dirpath, _dirs, _files in os.walk(directory):
        pids.update(procs(dirpath))
    return len(pids), tuple(sorted(pids)[:max_pids])


def waiting(pids: tuple[int, ...], proc_root: str = "/proc") -> int:
    """How many of `pids` sleep uninterruptibly (state D): what tasks waiting for memory look like."""
    n = 0
    for pid in pids:
        stat = read_text(f"{proc_root}/{pid}/stat")
        if stat and stat.rsplit(")", 1)[-1].split()[:1] == ["D"]:
            n += 1
    return n


class MemcgFiles:
    """One hierarchy's memory cgroup files by cgroup path ("/" the root, "/a/b" below): what the
    trackers around the kill read. `mount` and `proc_root` may be fixture trees."""

    def __init__(self, version: int, mount: str, proc_root: str = "/proc") -> None:
        self.version = version
        self.mount = mount
        self.proc_root = proc_root

    def directory(self, path: str) -> str:
        return directory_of(self.mount, path)

    def exists(self, path: str) -> bool:
        return os.path.isdir(self.directory(path))

    def limit(self, path: str) -> Optional[int]:
        return limit_bytes(self.version, self.directory(path))

    def usage(self, path: str) -> Optional[int]:
        return usage_bytes(self.version, self.directory(path))

    def failcnt(self, path: str) -> Optional[int]:
        return failcnt(self.directory(path)) if self.version == 1 else None

    def events_local(self, path: str) -> dict[str, int]:
        return events(self.directory(path)) if self.version == 2 else {}

    def oom_control(self, path: str) -> dict[str, int]:
        return oom_control(self.directory(path)) if self.version == 1 else {}

    def oom_kills(self, path: str) -> Optional[int]:
        return oom_kills(self.version, self.directory(path))

    def pressure(self, path: str) -> Optional[Psi]:
        return pressure(self.directory(path)) if self.version == 2 else None

    def tasks(self, path: str, max_pids: int) -> tuple[int, tuple[int, ...]]:
        return tasks(self.directory(path), max_pids)

    def waiting(self, pids: tuple[int, ...]) -> int:
        return waiting(pids, self.proc_root)
