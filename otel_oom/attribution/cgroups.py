"""Find the memory cgroup hierarchy and turn kernel cgroup ids into paths inside it.

The kernel's cgroup id (the kernfs node id the BPF program reads) is the inode number of the
cgroup's directory, so an id is resolved by scanning the hierarchy's directories once and
keeping an inode -> path map. Paths are relative to the hierarchy mount: "/" is the root.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional


class CgroupError(ValueError):
    """The cgroup setup is readable but not usable (the message says what to do)."""


@dataclass(frozen=True)
class MemoryHierarchy:
    version: int           # 1 or 2
    mount: str             # mount point as this process sees it, e.g. "/sys/fs/cgroup/memory"
    hierarchy_id: int      # v1: /proc/cgroups column 2 of the memory row; v2: 0
    controllers: str = "memory"  # v1: the controller list /proc/<pid>/cgroup prints ("cpu,memory")


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


def path_from_names(names_leaf_first: list[str]) -> str:
    """Join cgroup names captured leaf first by the kernel walk: ["c", "b", "a", ""] -> "/a/b/c".

    The walk must have reached the root (whose name is ""); a truncated walk raises
    ValueError because the remaining names would otherwise read as a different, rooted path.
    """
    if not names_leaf_first or names_leaf_first[-1] != "":
        raise ValueError("cgroup name walk did not reach the root: the path is incomplete")
    return "/" + "/".join(reversed(names_leaf_first[:-1]))


class CgroupResolver:
    """cgroup id -> path inside the hierarchy mounted at `mount`, via a rescanned inode map."""

    def __init__(self, mount: str, min_rescan_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mount = mount
        self.min_rescan_interval = min_rescan_interval
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._last_scan: dict[int, str] = {}
        self._scanned_at: Optional[float] = None
        self.scans = 0

    def path_for_id(self, cgroup_id: int) -> Optional[str]:
        path = self._paths.get(cgroup_id)
        if path is not None:
            return path
        now = self._clock()
        # a storm of kills in cgroups deleted right away must not turn into a scan per event
        if self._scanned_at is not None and now - self._scanned_at < self.min_rescan_interval:
            return None
        self.rescan()
        return self._paths.get(cgroup_id)

    def rescan(self) -> None:
        scanned = _scan(self.mount)
        # ids are not reused within a boot, so a cgroup seen one scan ago still resolves after
        # it is removed; keeping only two scans bounds memory on hosts with cgroup churn
        self._paths = {**self._last_scan, **scanned}
        self._last_scan = scanned
        self._scanned_at = self._clock()
        self.scans += 1


def walk(mount: str) -> Iterator[tuple[str, str, int]]:
    """Every cgroup under `mount`, root first: (path inside the hierarchy, directory, inode).

    The one walker of the cgroup tree (id resolution and the kernel counters both use it). Paths
    are "/" for the root and "/a/b" below, decoded with surrogateescape like every cgroup path in
    otel-oom. A subtree removed (or made unreadable) while it is walked is skipped.
    """
    try:
        root_inode = os.stat(mount).st_ino
    except OSError:
        return
    yield "/", mount, root_inode
    stack = [(mount, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                children = [(e.path, f"{rel}/{e.name}", e.inode()) for e in it
                            # cgroup directories never are symlinks; following one could loop
                            if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for path, child, inode in children:
            yield child, path, inode
            stack.append((path, child))


def _scan(mount: str) -> dict[int, str]:
    return {inode: rel for rel, _directory, inode in walk(mount)}
