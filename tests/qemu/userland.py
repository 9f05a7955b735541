"""A minimal Debian userland for a guest whose architecture is not the host's (arm64 on an amd64 host).

An amd64 guest runs the host's own tree. An arm64 guest cannot, so it chroots into a small root
made here from Debian's arm64 packages, unpacked with `dpkg-deb -x` (no maintainer scripts run, no
emulation needed on the host): Debian's Python 3.11 with its standard library, libbpf and its
libraries, and a static busybox for /bin/sh and the few tools init.sh and the command use. The
checkout is bound into it at its own path by init.sh; the agent runs from it with only the standard
library (`otel-oom run --no-otlp --json`), since the virtualenv's compiled packages are amd64.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from . import apt

# Debian bookworm packages, by name: the interpreter, the libraries its standard modules and
# libbpf link, and busybox. Their Depends are not followed (that would pull a whole system).
PACKAGES = (
    "libc6", "libgcc-s1", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libexpat1", "zlib1g", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1",
    "libcrypt1", "libzstd1", "libsqlite3-0", "libtirpc3", "libnsl2", "libgssapi-krb5-2", "libkrb5-3",
    "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1", "libdb5.3", "libncursesw6", "libtinfo6",
    "libreadline8", "libbpf1", "libelf1", "busybox-static",
)
# busybox applets the guest's /init chroot and the tests call by name
APPLETS = ("sh", "env", "mount", "umount", "cat", "ls", "mkdir", "sleep", "uname", "kill", "id", "rm", "cp", "ln")
FORMAT = 1  # bump when the layout changes


class UserlandError(Exception):
    pass


def userland(cache: str, arch: str, suite: str = "bookworm") -> str:
    """Path of the unpacked `arch` userland under `cache` (built once)."""
    root = os.path.join(cache, f"userland-{suite}-{arch}")
    marker = os.path.join(root, ".otel-oom-userland")
    try:
        with open(marker) as f:
            if f.read().strip() == str(FORMAT):
                return root
    except OSError:
        pass
    repo = apt.Apt(cache, suite, arch)
    with tempfile.TemporaryDirectory(prefix=f".userland-{arch}-", dir=cache) as tmp:
        tree = os.path.join(tmp, "root")
        try:
            for package in PACKAGES:
                apt.run(["dpkg-deb", "-x", repo.download(package, tmp), tree], timeout=600)
        except apt.AptError as e:
            raise UserlandError(f"cannot build the {arch} userland: {e}") from None
        busybox = os.path.join(tree, "bin", "busybox")
        if not os.path.isfile(busybox):
            raise UserlandError("busybox-static has no /bin/busybox")
        for d in ("proc", "sys", "dev", "tmp", "run", "var/tmp", "usr/bin", "sys/fs/cgroup"):
            os.makedirs(os.path.join(tree, d), exist_ok=True)
        for applet in APPLETS:
            for d in ("bin", "usr/bin"):
                path = os.path.join(tree, d, applet)
                if not os.path.lexists(path):
                    os.symlink("/bin/busybox", path)
        os.symlink("python3.11", os.path.join(tree, "usr", "bin", "python3"))
        with open(os.path.join(tree, ".otel-oom-userland"), "w") as f:
            f.write(f"{FORMAT}\n")
        if os.path.exists(root):
            shutil.rmtree(root)
        os.rename(tree, root)
    return root
