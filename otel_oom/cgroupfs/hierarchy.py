"""Which memory cgroup hierarchy this host has, and where it is mounted (from mountinfo).

v1 (a "memory" controller mount, possibly co-mounted) wins over a cgroup2 mount offering memory.
Paths inside the hierarchy are relative to its mount: "/" is the root, "/a/b" below it;
`MemoryHierarchy.directory(path)` is where that cgroup's files are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


class CgroupError(ValueError):
    """The cgroup setup is readable but not usable (the message says what to do)."""


@dataclass(frozen=True)
class MemoryHierarchy:
    version: int           # 1 or 2
    mount: str             # mount point as this process sees it, e.g. "/sys/fs/cgroup/memory"
    hierarchy_id: int      # v1: /proc/cgroups column 2 of the memory row; v2: 0
    controllers: str = "memory"  # v1: the controller list /proc/<pid>/cgroup prints ("cpu,memory")

    def directory(self, path: str) -> str:
        """The directory of the cgroup at `path` ("/" is the mount itself)."""
        return directory(self.mount, path)


def directory(mount: str, path: str) -> str:
    """The directory of the cgroup at `path` under a hierarchy mounted at `mount`."""
    return mount if path == "/" else mount.rstrip("/") + path


@dataclass(frozen=True)
class _Mount:
    root: str
    point: str
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: bytes) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    out = bytearray()
    i = 0
    while i < len(field):
        chunk = field[i + 1:i + 4]
        if field[i] == 0x5C and len(chunk) == 3 and all(0x30 <= c <= 0x37 for c in chunk):
            out.append(int(chunk, 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def _read_mounts(mountinfo: str) -> list[_Mount]:
    with open(mountinfo, "rb") as f:
        data = f.read()
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)  # optional fields (shared:N ...) end at a lone "-"
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        mounts.append(_Mount(root=_unescape(fields[3]), point=_unescape(fields[4]),
                             fstype=_unescape(fields[sep + 1]),
                             super_options=tuple(_unescape(fields[sep + 3]).split(","))))
    return mounts


def _coverage(root: str) -> int:
    # A mount of the hierarchy root shows "/"; inside a cgroup namespace a host bind mount
    # shows "/../.." (above our namespace root) and a subtree bind shows "/sub". Prefer the
    # mount that shows the most of the tree, since BPF paths are relative to the real root.
    parts = [p for p in root.split("/") if p]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return ups if ups == len(parts) else -1


def _v1_controllers(proc_cgroups: str) -> tuple[int, list[str]]:
    try:
        with open(proc_cgroups, encoding="ascii", errors="replace") as f:
            rows = [line.split() for line in f if not line.startswith("#")]
    except OSError as e:
        raise CgroupError(f"cannot read {proc_cgroups} ({e.strerror}): the memory controller's "
                          "hierarchy id is needed for cgroup v1; mount /proc from the host") from None
    by_name = {r[0]: r for r in rows if len(r) >= 4 and r[1].isdigit()}
    memory = by_name.get("memory")
    if memory is None or memory[1] == "0":
        raise CgroupError(f"{proc_cgroups} has no memory row with a hierarchy id although a v1 "
                          "memory mount exists: pass the host's /proc/cgroups")
    hid = int(memory[1])
    return hid, [r[0] for r in rows if r[0] in by_name and int(r[1]) == hid]


def _v2_has_memory(path: str) -> bool:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def detect_memory_hierarchy(mountinfo: str = "/proc/self/mountinfo",
                            proc_cgroups: str = "/proc/cgroups",
                            sys_root: str = "") -> Optional[MemoryHierarchy]:
    """The memory cgroup hierarchy: a v1 memory mount if any, else a cgroup2 mount with memory.

    `sys_root` prefixes the mount point only when reading cgroup.controllers (fixture trees);
    the returned `mount` is as mountinfo states it. None when no memory controller is mounted.
    Raises OSError if `mountinfo` is unreadable, CgroupError if only a subtree of the
    hierarchy is mounted or v1 is mounted but `proc_cgroups` does not name its hierarchy.
    """
    mounts = _read_mounts(mountinfo)
    v1 = [m for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options]
    if v1:
        best = _widest(v1)
        hid, names = _v1_controllers(proc_cgroups)
        names += [o for o in best.super_options if o.startswith("name=")]
        return MemoryHierarchy(1, best.point, hid, ",".join(names))
    v2 = [m for m in mounts if m.fstype == "cgroup2"
          and _v2_has_memory(sys_root + os.path.join(m.point, "cgroup.controllers"))]
    if v2:
        return MemoryHierarchy(2, _widest(v2).point, 0)
    return None


def _widest(candidates: list[_Mount]) -> _Mount:
    whole = [m for m in candidates if _coverage(m.root) >= 0]
    if not whole:
        m = candidates[0]
        raise CgroupError(f"only a subtree ({m.root}) of the memory cgroup hierarchy is mounted at "
                          f"{m.point}: mount the host's /sys/fs/cgroup so paths are complete")
    return max(whole, key=lambda m: _coverage(m.root))  # max() keeps the first of equals


def cgroup_line(h: MemoryHierarchy, path: str) -> str:
    """`path` as a /proc/<pid>/cgroup line: "0::/a/b" (v2) or "4:memory:/a/b" (v1)."""
    if h.version == 2:
        return f"0::{path}"
    return f"{h.hierarchy_id}:{h.controllers}:{path}"
