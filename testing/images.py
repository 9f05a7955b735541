"""Container images made locally (no registry is reachable): a static OOM victim plus busybox.

`build_rootfs(dir)` compiles `VICTIM_C` statically with the system's C compiler (the glibc static
library is in libc6-dev) and adds Debian's busybox-static, so the image runs on any runtime with no
dynamic loader. `rootfs_tar` packs it for `podman import`; `oci_archive` writes it as an OCI image
archive (layout + index with the `io.containerd.image.name` annotation) for `ctr images import`.

The victim: `/victim alloc DELAY_MS` sleeps DELAY_MS (so a runtime's name cache is warm), prints
"allocating", then touches 1 MiB chunks until the memory cgroup's OOM killer ends it;
`/victim pause` waits for a signal (a pod sandbox's pause process).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

VICTIM_COMM = "oom-victim"  # the victim renames itself, so records name it whatever the binary path

VICTIM_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static char *volatile chain;

static void stop(int sig) { (void)sig; _exit(0); }

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "pause") == 0) {
        signal(SIGTERM, stop);
        signal(SIGINT, stop);
        for (;;) pause();
    }
    if (argc < 3 || strcmp(argv[1], "alloc") != 0) {
        fprintf(stderr, "usage: victim alloc DELAY_MS | victim pause\n");
        return 2;
    }
    prctl(PR_SET_NAME, "oom-victim", 0, 0, 0);
    long ms = atol(argv[2]);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    printf("allocating\n");
    fflush(stdout);
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) continue;
        memset(p, 0x5a, 1 << 20);
        /* chain the chunks through a volatile: the compiler may not drop an allocation it sees leak */
        *(char *volatile *)p = (char *)chain;
        chain = p;
    }
}
"""


def build_rootfs(root: Path, cc: str = "clang") -> Path:
    """A minimal root filesystem: /victim (static) and /bin/busybox with sh and sleep."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir(exist_ok=True)
    src = root.parent / "victim.c"
    src.write_text(VICTIM_C)
    subprocess.run([cc, "-static", "-O2", "-o", str(root / "victim"), str(src)], check=True,
                   capture_output=True, text=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat"):
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return root


def rootfs_tar(root: Path) -> bytes:
    """The root filesystem as an uncompressed tar, entries sorted, owned by root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return digest


def oci_archive(layer_tar: bytes, name: str, out: Path, cmd: list[str]) -> Path:
    """An OCI image archive of one layer, named `name` for `ctr images import`."""
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]},
    }).encode()
    with tarfile.open(out, "w") as tar:
        layer_digest = _blob(tar, layer)
        config_digest = _blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_digest}", "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{layer_digest}", "size": len(layer)}],
        }).encode()
        manifest_digest = _blob(tar, manifest)
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{manifest_digest}",
            "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}]}).encode()
        for fname, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever a runtime left mounted below `path` (deepest first)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
