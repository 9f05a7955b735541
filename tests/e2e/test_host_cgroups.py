"""The cgroup walker on this host's real memory hierarchy (root): kernel ids -> paths, attribution."""
from __future__ import annotations

import ctypes
import os
import secrets
import struct

import pytest
from conftest import require

from otel_oom.attribution.containers import Workload, parse_cgroup_path
from otel_oom.cgroupfs.hierarchy import detect_memory_hierarchy
from otel_oom.cgroupfs.tree import CgroupResolver

C = "4f1a3c9be2d07a65b8c0e9d1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5"    # container id
N = "9e8d7c6b5a49382716051f2e3d4c5b6a79881726354a5b6c7d8e9f0a1b2c3d4e"    # kind/k3d node
UID = "0f6b0d5c-3b53-4a67-9a1e-7c2f2f3e6c11"
W = Workload


def kernfs_cgroup_id(path: str) -> int:
    """The kernel's cgroup id, as name_to_handle_at reports it for kernfs (FILEID_KERNFS)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + 64)
    struct.pack_into("I", buf, 0, 64)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, os.fsencode(path), buf, ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    size, kind = struct.unpack_from("Ii", buf, 0)
    assert kind == 0xFE and size == 8, (kind, size)
    return int.from_bytes(buf.raw[8:16], "little")


def real_memory_mount() -> str:
    h = detect_memory_hierarchy()
    require(os.geteuid() == 0, "needs root to create a memory cgroup")
    require(h is not None, "no memory cgroup controller mounted")
    return h.mount


def test_real_cgroup_resolves_to_its_kernel_id():
    mount = real_memory_mount()
    name = f"otel-oom-test-{secrets.token_hex(6)}"
    top = os.path.join(mount, name)
    # names no runtime would write, in a nested cgroup (the kernel refuses only "\n" in names)
    child = os.path.join(top, "a b\t\"q\"\x01", "bad\udcffname")
    expected = f"/{name}/a b\t\"q\"\x01/bad\udcffname"
    os.mkdir(top)
    try:
        with pytest.raises(OSError):
            os.mkdir(os.path.join(top, "new\nline"))
        os.makedirs(child)
        try:
            now = [0.0]
            r = CgroupResolver(mount, clock=lambda: now[0])
            cid = kernfs_cgroup_id(child)
            assert cid == os.stat(child).st_ino  # the premise of the resolver
            assert r.path_for_id(cid) == expected
            assert os.fsencode(expected).endswith(b"/bad\xffname")
            assert r.path_for_id(kernfs_cgroup_id(top)) == f"/{name}"
            assert r.path_for_id(kernfs_cgroup_id(mount)) == "/"
        finally:
            os.rmdir(child)
            os.rmdir(os.path.dirname(child))
        # removed right after the kill: still resolves, and a storm of misses within the
        # interval does not rescan; after it, one rescan, and the removed cgroup survives it
        assert r.path_for_id(cid) == expected
        assert all(r.path_for_id(2**62 + i) is None for i in range(1000))
        assert r.scans == 1
        now[0] += 1
        assert r.path_for_id(2**62) is None
        assert r.scans == 2
        assert r.path_for_id(cid) == expected
    finally:
        os.rmdir(top)


def test_a_rescan_of_the_real_hierarchy_finds_its_root():
    mount = real_memory_mount()
    r = CgroupResolver(mount)
    r.rescan()  # (its speed is a figure of bench/, not a test)
    assert r._last_scan[os.stat(mount).st_ino] == "/"



def test_real_kubepods_shaped_cgroup_resolves_and_parses():
    """Kernel-created cgroups shaped like a k3d node's pod, found by id, then attributed."""
    h = detect_memory_hierarchy()
    require(os.geteuid() == 0, "needs root to create memory cgroups")
    require(h is not None, "no memory cgroup controller mounted")
    top = f"otel-oom-test-{secrets.token_hex(6)}"
    rel = f"/{top}/docker/{N}/kubepods/burstable/pod{UID}/{C}/sub"
    os.makedirs(h.mount + rel)
    try:
        r = CgroupResolver(h.mount)
        path = r.path_for_id(os.stat(h.mount + rel).st_ino)
        assert path == rel
        assert parse_cgroup_path(path) == W(None, C, UID, "burstable")
        assert parse_cgroup_path(r.path_for_id(os.stat(f"{h.mount}/{top}/docker/{N}").st_ino)) == W("docker", N)
    finally:
        d = rel
        while d != "/":
            os.rmdir(h.mount + d)
            d = os.path.dirname(d)
