"""The cgroup tree: walking it, "is this cgroup under that one", and kernel cgroup ids to paths.

The kernel's cgroup id (the kernfs node id the BPF program reads) is the inode number of the
cgroup's directory, so an id is resolved by scanning the hierarchy's directories once and
keeping an inode -> path map. Paths are relative to the hierarchy mount: "/" is the root.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Optional


def is_under(path: Optional[str], root: str) -> bool:
    """`path` is the cgroup `root` or below it ("/" holds every cgroup); None is under nothing."""
    return path is not None and (root == "/" or path == root or path.startswith(root.rstrip("/") + "/"))


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

    The one walker of the cgroup tree (id resolution, the kernel counters and the pressure source
    use it). Paths are "/" for the root and "/a/b" below, decoded with surrogateescape like every
    cgroup path in otel-oom. A subtree removed (or made unreadable) while it is walked is skipped.
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
