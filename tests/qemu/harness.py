"""Boot a real Debian kernel under QEMU (TCG), run one command in the host's own tree, return the result.

The guest is a throwaway: a Debian distribution kernel, a busybox initramfs whose /init
(``init.sh``) mounts the host's root filesystem read-only over 9p, lays out /proc, /sys, tracefs,
bpffs and the requested cgroup hierarchy, and runs the command chrooted into that tree with the
host's Python. Kernels are fetched with ``apt-get download`` once and cached (vmlinuz, the few
modules the initramfs needs, the kernel config) under ``$OTEL_OOM_QEMU_CACHE``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping, Optional, Sequence

from . import apt, userland

CACHE_ENV = "OTEL_OOM_QEMU_CACHE"
DEFAULT_CACHE = "/var/cache/otel-oom-qemu"
QEMU = "qemu-system-x86_64"
INIT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "init.sh")
GUEST_CTL = "/run/otel-oom-qemu"  # where init.sh binds the control share inside the guest
CACHE_FORMAT = 2  # bump when the cached layout changes; older entries are re-fetched


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    name: str
    package_re: str  # full-match regex over Debian package names; group 1 orders them (ABI or version)
    description: str
    suite: Optional[str] = None  # None: the system's APT sources; else a private list (apt.py)
    order: tuple[int, ...] = ()  # sorts available_kernels(), oldest first
    arch: str = "amd64"          # Debian's name; not amd64: a userland of that architecture (userland.py)
    headers: bool = False        # the matrix also needs its headers (the bcc backend's guests)


@dataclasses.dataclass(frozen=True)
class Machine:
    """How QEMU emulates one architecture: its binary, machine options and the kernel's console."""
    qemu: str
    options: tuple[str, ...]
    console: str
    output_serial: bool  # a second serial port carries the command's output; else a file on the control share


MACHINES = {
    # qemu64 (x86-64 baseline): glibc and the interpreter then take their SSE2 paths, which TCG runs
    # ~15% faster than the AVX ones "-cpu max" invites (measured: Python start-up and imports)
    "amd64": Machine("qemu-system-x86_64", ("-accel", "tcg", "-cpu", "qemu64"), "ttyS0", True),
    # QEMU 7.2's virt board has a single PL011 UART; cortex-a72 is cheaper to emulate than "max"
    "arm64": Machine("qemu-system-aarch64", ("-accel", "tcg", "-machine", "virt", "-cpu", "cortex-a72"),
                     "ttyAMA0", False),
}


# The *generic* -amd64 flavour, not -cloud-amd64: Debian's cloud kernels are built without 9p
# (CONFIG_NET_9P is not set), so they cannot see the host tree the way this harness shares it.
KERNELS: dict[str, KernelSpec] = {
    "5.10": KernelSpec("5.10", r"linux-image-5\.10\.0-(32)-amd64",
                       "Debian 11 (bullseye) 5.10 LTS, amd64, ABI 32: the last with the pid-only mark_victim",
                       suite="bullseye", order=(5, 10), headers=True),
    "6.1": KernelSpec("6.1", r"linux-image-6\.1\.0-(\d+)-amd64", "Debian 12 (bookworm) 6.1 LTS, amd64", order=(6, 1)),
    "6.12": KernelSpec("6.12", r"linux-image-6\.12\.(\d+)\+deb12-amd64", "Debian 6.12 LTS (bookworm/trixie), amd64",
                       order=(6, 12)),
    "6.12-rt": KernelSpec("6.12-rt", r"linux-image-6\.12\.(\d+)\+deb12-rt-amd64",
                          "Debian 6.12 LTS with PREEMPT_RT (bookworm), amd64", order=(6, 12, 1)),
    "6.1-arm64": KernelSpec("6.1-arm64", r"linux-image-6\.1\.0-(\d+)-arm64", "Debian 12 (bookworm) 6.1 LTS, arm64",
                            order=(6, 1, 64), arch="arm64"),
    # whatever sid carries now: the newest Debian kernel (7.2 when this was written)
    "sid": KernelSpec("sid", r"linux-image-(\d+\.\d+\.\d+)\+deb\d+-amd64", "Debian unstable (sid), newest, amd64",
                      suite="sid", order=(99,)),
}

# Module roots the initramfs needs; their dependencies are found from each module's .modinfo.
MODULE_ROOTS = ("virtio_pci", "9pnet_virtio", "9p", "overlay")


class QemuError(Exception):
    """Base for every failure of the harness; the message says what to do."""

    output: str = ""  # what the command wrote before things went wrong (guest errors only)
    console: str = ""  # the whole kernel console (guest errors only)


class PrepareError(QemuError):
    """A kernel could not be fetched or unpacked."""


class GuestSetupError(QemuError):
    """The guest never reported an exit code: /init failed, the kernel panicked, or QEMU died."""


class GuestTimeout(QemuError):
    """The guest did not finish within the timeout; QEMU was killed."""


@dataclasses.dataclass
class GuestResult:
    exit_code: int
    output: str  # the command's stdout+stderr, exactly as written (no kernel messages)
    duration_s: float  # host wall time from starting QEMU to QEMU exiting
    kernel_release: str  # uname -r inside the guest
    boot_s: float = 0.0  # guest uptime when the command started (kernel + init)
    command_s: float = 0.0  # guest time the command ran
    console: str = ""  # kernel console (ttyS0): boot log, OOM reports, setup errors


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    kernel: str
    package: str
    version: str
    release: str
    directory: str
    modules: tuple[str, ...]
    memcg_v1: bool  # False on kernels built without CONFIG_MEMCG_V1 (6.12 in Debian)
    arch: str = "amd64"

    @property
    def vmlinuz(self) -> str:
        return os.path.join(self.directory, "vmlinuz")

    @property
    def boot_image(self) -> str:
        """The uncompressed PVH vmlinux when extracted (boots ~3 s faster under TCG), else vmlinuz."""
        vmlinux = os.path.join(self.directory, "vmlinux")
        return vmlinux if os.path.isfile(vmlinux) else self.vmlinuz

    @property
    def config(self) -> str:
        return os.path.join(self.directory, "config")


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE


def available_kernels() -> list[str]:
    """Kernel names this harness can fetch and boot, oldest first."""
    return sorted(KERNELS, key=lambda k: KERNELS[k].order)


def _spec(kernel: str) -> KernelSpec:
    try:
        return KERNELS[kernel]
    except KeyError:
        raise QemuError(f"unknown kernel {kernel!r}: choose one of {', '.join(available_kernels())}") from None


def qemu_usable(arch: str = "amd64") -> tuple[bool, str]:
    """Whether QEMU can run a TCG guest of `arch` with 9p here; the reason says what is missing."""
    name = MACHINES[arch].qemu
    qemu = shutil.which(name)
    if not qemu:
        return False, f"{name} not found: apt-get install {'qemu-system-x86' if arch == 'amd64' else 'qemu-system-arm'}"
    try:
        devices = subprocess.run([qemu, "-device", "help"], capture_output=True, text=True, timeout=30)
        # -machine none starts no guest; "quit" on the monitor proves the TCG accelerator initialises.
        probe = subprocess.run(
            [qemu, "-accel", "tcg", "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "stdio"],
            input="quit\n", capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{name} does not start: {e}"
    if "virtio-9p-pci" not in devices.stdout:
        return False, f"{name} was built without virtio-9p-pci (needed to share the host tree)"
    if probe.returncode != 0:
        return False, f"{name} -accel tcg failed: {(probe.stderr or probe.stdout).strip()[:200]}"
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            return False, f"{tool} not found: kernels are fetched from Debian's archive with apt"
    return True, "ok"


# --- kernel fetching -------------------------------------------------------------------------


def kernel_info(kernel: str, cache: str | None = None) -> KernelInfo | None:
    """The cached kernel, or None when prepare() has not run yet."""
    _spec(kernel)
    d = os.path.join(cache or cache_dir(), kernel)
    try:
        with open(os.path.join(d, "kernel.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    info = KernelInfo(kernel=kernel, package=meta["package"], version=meta["version"], release=meta["release"],
                      directory=d, modules=tuple(meta["modules"]), memcg_v1=meta["memcg_v1"],
                      arch=meta.get("arch", "amd64"))
    needed = [info.vmlinuz] + [os.path.join(d, "modules", m + ".ko") for m in info.modules]
    return info if all(os.path.isfile(p) for p in needed) else None


def _run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    try:
        return apt.run(cmd, **kw)
    except apt.AptError as e:
        raise PrepareError(str(e)) from None


def _apt(spec: KernelSpec, cache: str) -> apt.Apt:
    return apt.Apt(cache, spec.suite, spec.arch)


def _candidates(spec: KernelSpec, cache: str) -> list[str]:
    prefix = re.split(r"[\\(\[]", spec.package_re)[0]  # e.g. "linux-image-6" — pkgnames takes a plain prefix
    try:
        names = _apt(spec, cache).names(prefix)
    except apt.AptError as e:
        raise PrepareError(str(e)) from None
    found = [(tuple(int(x) for x in m.group(1).split(".")), n) for n in names if (m := re.fullmatch(spec.package_re, n))]
    return [n for _, n in sorted(found, reverse=True)]


def pin_variable(kernel: str) -> str:
    """The environment variable that pins `kernel` to one package name."""
    return "OTEL_OOM_QEMU_PACKAGE_" + re.sub(r"[^A-Za-z0-9]", "_", kernel)


def _pick_package(spec: KernelSpec, cache: str) -> str:
    pinned = os.environ.get(pin_variable(spec.name))
    if pinned:
        return pinned
    names = _candidates(spec, cache)
    if not names:
        where = spec.suite or "the system's sources (bookworm + bookworm-security)"
        raise PrepareError(f"no Debian package in {where} matches {spec.package_re}: run apt-get update and retry")
    return names[0]


def _modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of an ELF64 module's .modinfo section."""
    if ko[:4] != b"\x7fELF":
        raise PrepareError("not an ELF kernel module")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    out: dict[str, str] = {}
    for name_off, _t, _f, _a, off, size in headers:
        name = ko[strtab + name_off:ko.index(b"\0", strtab + name_off)]
        if name == b".modinfo":
            for item in ko[off:off + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    out.setdefault(key, value)
    return out


def _read_module(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    # busybox insmod cannot decompress; 6.12's modules ship as .ko.xz.
    return lzma.decompress(data) if path.endswith(".xz") else data


def _resolve_modules(moddir: str, roots: Iterable[str]) -> list[tuple[str, bytes]]:
    """Modules to insmod, dependencies first, skipping those built into the kernel."""
    index: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            m = re.fullmatch(r"(.+)\.ko(\.xz)?", f)
            if m:
                index[m.group(1).replace("-", "_")] = os.path.join(dirpath, f)
    builtin = set()
    try:
        with open(os.path.join(moddir, "modules.builtin")) as f:
            builtin = {os.path.basename(line.strip())[:-3].replace("-", "_") for line in f if line.strip()}
    except OSError:
        pass
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise PrepareError(f"module {name} is neither built in nor shipped in {moddir}")
        data = _read_module(index[name])
        for dep in filter(None, _modinfo(data).get("depends", "").split(",")):
            visit(dep)
        order.append((name, data))

    for root in roots:
        visit(root)
    return order


def _memcg_v1(config_text: str) -> bool:
    if not re.search(r"^CONFIG_MEMCG=y$", config_text, re.M):
        return False
    # Before 6.11 there was no separate switch: v1 came with MEMCG.
    if "CONFIG_MEMCG_V1" not in config_text:
        return True
    return bool(re.search(r"^CONFIG_MEMCG_V1=y$", config_text, re.M))


def _extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage, so QEMU can PVH-boot it without decompressing under TCG."""
    if bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start:start + payload_length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(wbits=31).decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd") and shutil.which("zstd"):
            # The kernel build appends the 4-byte uncompressed size, which zstd calls garbage.
            elf = subprocess.run(["zstd", "-d", "-q", "-c"], input=payload[:-4], capture_output=True,
                                 check=True).stdout
        else:
            return None
    except (lzma.LZMAError, zlib.error, subprocess.CalledProcessError):
        return None
    return elf if elf.startswith(b"\x7fELF") else None


class _Lock:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _ensure_cache(cache: str) -> None:
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise PrepareError(f"cannot create the kernel cache {cache} ({e.strerror}): "
                           f"set {CACHE_ENV} to a writable directory") from None
    if not os.access(cache, os.W_OK):
        raise PrepareError(f"kernel cache {cache} is not writable: set {CACHE_ENV} to a writable directory")


def _find_kernel(tree: str, package: str) -> tuple[str, str, str]:
    """(vmlinuz, config, release) in an unpacked kernel package: /boot/vmlinuz-<release> and
    /boot/config-<release>, or (7.x) /usr/lib/modules/<release>/vmlinuz and .../config."""
    boot = os.path.join(tree, "boot")
    found = [(os.path.join(boot, f), os.path.join(boot, "config-" + f[len("vmlinuz-"):]), f[len("vmlinuz-"):])
             for f in (os.listdir(boot) if os.path.isdir(boot) else []) if f.startswith("vmlinuz-")]
    mods = os.path.join(tree, "usr", "lib", "modules")
    found += [(os.path.join(mods, r, "vmlinuz"), os.path.join(mods, r, "config"), r)
              for r in (os.listdir(mods) if os.path.isdir(mods) else [])
              if os.path.isfile(os.path.join(mods, r, "vmlinuz"))]
    if len(found) != 1:
        raise PrepareError(f"{package} has {len(found)} kernel images, expected one")
    if not os.path.isfile(found[0][1]):
        raise PrepareError(f"{package} has no kernel config next to {found[0][0]}")
    return found[0]


def prepare(kernel: str, cache: str | None = None, refresh: bool = False) -> KernelInfo:
    """Fetch and unpack `kernel` into the cache (no-op when cached; refresh=True re-fetches)."""
    spec = _spec(kernel)
    cache = cache or cache_dir()
    if not refresh and (info := kernel_info(kernel, cache)):
        return info
    _ensure_cache(cache)
    with _Lock(os.path.join(cache, f".{kernel}.lock")):
        if not refresh and (info := kernel_info(kernel, cache)):
            return info  # another process prepared it while we waited
        package = _pick_package(spec, cache)
        with tempfile.TemporaryDirectory(prefix=f".{kernel}-", dir=cache) as tmp:
            tree = os.path.join(tmp, "tree")
            try:
                repo = _apt(spec, cache)
                deb = repo.download(package, tmp)
                version = _run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
                # since 7.x (sid) linux-image-* is a meta package: the kernel is in linux-binary-*,
                # its modules in linux-modules-*, its config in linux-base-*, at /usr/lib/modules/<release>/
                suffix = package[len("linux-image-"):]
                parts = [d.split()[0] for d in repo.depends(package)
                         if d.split()[0] in (f"linux-{p}-{suffix}" for p in ("binary", "modules", "base"))]
                for part in [deb] + [repo.download(p, tmp) for p in parts]:
                    _run(["dpkg-deb", "-x", part, tree], timeout=900)
            except apt.AptError as e:
                raise PrepareError(str(e)) from None
            kernel_file, config_file, release = _find_kernel(tree, package)
            moddir = os.path.join(tree, "lib", "modules", release)
            if not os.path.isdir(moddir):
                moddir = os.path.join(tree, "usr", "lib", "modules", release)
            modules = _resolve_modules(moddir, MODULE_ROOTS)
            with open(config_file) as f:
                config_text = f.read()

            out = os.path.join(tmp, "out")
            os.makedirs(os.path.join(out, "modules"))
            shutil.copyfile(kernel_file, os.path.join(out, "vmlinuz"))
            if re.search(r"^CONFIG_PVH=y$", config_text, re.M):
                with open(os.path.join(out, "vmlinuz"), "rb") as f:
                    elf = _extract_vmlinux(f.read())
                if elf:
                    with open(os.path.join(out, "vmlinux"), "wb") as f:
                        f.write(elf)
            with open(os.path.join(out, "config"), "w") as f:
                f.write(config_text)
            for name, data in modules:
                with open(os.path.join(out, "modules", name + ".ko"), "wb") as f:
                    f.write(data)
            meta = {"format": CACHE_FORMAT, "kernel": kernel, "arch": spec.arch, "package": package, "version": version,
                    "release": release,
                    "modules": [n for n, _ in modules], "memcg_v1": _memcg_v1(config_text),
                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with open(os.path.join(out, "kernel.json"), "w") as f:
                json.dump(meta, f, indent=2)
            final = os.path.join(cache, kernel)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(out, final)
    info = kernel_info(kernel, cache)
    if info is None:
        raise PrepareError(f"prepared {kernel} in {cache} but the result is incomplete")
    return info


def headers(kernel: str, cache: str | None = None) -> str:
    """The kernel's headers (Debian's linux-headers-<release> and the -common package it depends
    on, what BCC compiles against), unpacked once into the cache; returns the root they were
    unpacked into (usr/src/linux-headers-*, lib/modules/<release>/{build,source} -> /usr/src/...)."""
    cache = cache or cache_dir()
    info = prepare(kernel, cache)
    spec = _spec(kernel)
    root = os.path.join(info.directory, "headers")
    build = os.path.join(root, "usr", "src", f"linux-headers-{info.release}")
    done = os.path.join(root, ".complete")
    if os.path.isfile(done):
        return root
    with _Lock(os.path.join(cache, f".{kernel}.lock")):
        if os.path.isfile(done):
            return root
        repo = _apt(spec, cache)
        package = f"linux-headers-{info.release}"
        try:
            wanted = [package] + [d.split()[0] for d in repo.depends(package) if d.startswith("linux-headers-")]
            with tempfile.TemporaryDirectory(prefix=f".{kernel}-headers-", dir=cache) as tmp:
                debs = [repo.download(p, tmp) for p in wanted]
                if os.path.exists(root):
                    shutil.rmtree(root)
                for deb in debs:
                    _run(["dpkg-deb", "-x", deb, root], timeout=900)
        except apt.AptError as e:
            raise PrepareError(str(e)) from None
        if not os.path.isfile(os.path.join(build, ".config")):
            raise PrepareError(f"{package} unpacked without {build}/.config")
        with open(done, "w") as f:
            f.write(" ".join(wanted) + "\n")
    return root


# --- initramfs -------------------------------------------------------------------------------


def _busybox(cache: str, arch: str = "amd64") -> str:
    """A static busybox from Debian's busybox-static: the installed one, else downloaded into the cache;
    for another architecture, the one in its userland."""
    if arch != "amd64":
        return os.path.join(userland.userland(cache, arch), "bin", "busybox")
    try:
        listed = _run(["dpkg-query", "-L", "busybox-static"]).stdout.split()
    except PrepareError:
        listed = []
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if p in listed and os.path.isfile(p):
            return p
    path = os.path.join(cache, "busybox")
    if os.path.isfile(path):
        return path
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["apt-get", "download", "busybox-static"], cwd=tmp, timeout=300)
        deb = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".deb"))
        _run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")])
        for p in ("bin/busybox", "usr/bin/busybox"):
            if os.path.isfile(os.path.join(tmp, "x", p)):
                shutil.copyfile(os.path.join(tmp, "x", p), path + ".tmp")
                os.chmod(path + ".tmp", 0o755)
                os.rename(path + ".tmp", path)
                return path
    raise PrepareError("busybox-static has no busybox binary")


def _newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio "newc" archive (what `cpio -o -H newc` writes) of (name, mode, data, rdev) entries."""
    out = bytearray()

    def pad():
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries + [("TRAILER!!!", 0, b"", 0)], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(raw), 0)
        out.extend(b"070701" + b"".join(b"%08X" % v for v in fields) + raw)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


def initramfs(kernel: str, cache: str | None = None) -> str:
    """Path of the kernel's initramfs, rebuilt whenever init.sh, busybox or the module set changes."""
    cache = cache or cache_dir()
    info = prepare(kernel, cache)
    bb_path = _busybox(cache, info.arch)
    with open(INIT_SCRIPT, "rb") as f:
        init = f.read()
    with open(bb_path, "rb") as f:
        busybox = f.read()
    modules = []
    for m in info.modules:
        with open(os.path.join(info.directory, "modules", m + ".ko"), "rb") as f:
            modules.append((m, f.read()))
    h = hashlib.sha256(init + busybox + repr(info.modules).encode())
    for _, data in modules:
        h.update(data)
    path = os.path.join(info.directory, f"initramfs-{h.hexdigest()[:16]}.cpio")
    if os.path.isfile(path):
        return path
    d, f_ = 0o040755, 0o100755
    entries = [("bin", d, b"", 0), ("dev", d, b"", 0), ("dev/console", 0o020600, b"", os.makedev(5, 1)),
               ("proc", d, b"", 0), ("sys", d, b"", 0), ("ctl", d, b"", 0), ("newroot", d, b"", 0),
               ("init", f_, init, 0), ("bin/busybox", f_, busybox, 0), ("modules", d, b"", 0),
               ("modules/order", 0o100644, "".join(m + "\n" for m in info.modules).encode(), 0)]
    entries += [(f"modules/{m}.ko", 0o100644, data, 0) for m, data in modules]
    with _Lock(os.path.join(cache, f".{kernel}.lock")):
        for old in os.listdir(info.directory):
            if old.startswith("initramfs-") and old.endswith(".cpio"):
                os.unlink(os.path.join(info.directory, old))
        with open(path + ".tmp", "wb") as f:
            f.write(_newc(entries))
        os.rename(path + ".tmp", path)
    return path


# --- booting ---------------------------------------------------------------------------------


def _guest_path(p: str, what: str) -> str:
    if not p.startswith("/") or re.search(r"\s", p) or "/../" in p + "/" or "'" in p:
        raise QemuError(f"{what} {p!r} must be an absolute path without spaces, quotes or '..'")
    return p.rstrip("/") or "/"


def _opt(value: str) -> str:
    return value.replace(",", ",,")  # QEMU option values escape commas by doubling them


def guest_env(env: Mapping[str, str] | None = None, arch: str = "amd64") -> dict[str, str]:
    """The environment the command starts with (nothing else leaks in from the host). An amd64 guest
    finds the host's interpreter first; another architecture's, its userland's."""
    first = [os.path.dirname(sys.executable)] if arch == "amd64" else []
    base = {
        "PATH": os.pathsep.join(first + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",  # the host tree is read-only inside the guest
        "OTEL_OOM_QEMU_GUEST": "1",
    }
    if "CI" in os.environ:
        base["CI"] = os.environ["CI"]
    base.update(env or {})
    return base


# the guest starts these empty (tmpfs); see init.sh
_FRESH_IN_GUEST = ("/tmp", "/var/tmp", "/run")


def _hidden_but_needed(paths: Iterable[str]) -> list[str]:
    """Host paths the guest needs (the checkout, the Python environment) that lie under a directory
    the guest replaces with an empty tmpfs: init.sh binds them back from the read-only host root.
    A CI checkout may well live under /tmp. Each is bound where it really is: a checkout's .venv is
    often a symlink (to another checkout's), which init.sh's mount would resolve inside the
    initramfs, where its target does not exist; bound with the checkout, it resolves in the new root."""
    keep = []
    for p in paths:
        p = os.path.realpath(p)
        if any(p == d or p.startswith(d + "/") for d in _FRESH_IN_GUEST) and p not in keep:
            if any(c.isspace() for c in p):
                raise QemuError(f"cannot pass {p!r} into the guest: it has white space")
            keep.append(p)
    return keep


def boot(kernel: str, command: Sequence[str] | str, cgroup: str = "v2", memory_mb: int = 1024,
         timeout: float = 300, env: Mapping[str, str] | None = None, extra_cmdline: str = "", *,
         cpus: int = 1, cwd: str | None = None, tmpfs: Iterable[str] = (), share_dir: str | None = None,
         overlay: bool = True, hostroot_cache: str = "loose", cache: str | None = None) -> GuestResult:
    """Boot `kernel`, run `command` (argv list, or a shell script string) as root, power off.

    The guest sees the host's root filesystem (exported read-only by QEMU) under an overlay whose
    upper layer is guest RAM, so the command may write anywhere (overlay=False: only to tmpfs);
    /tmp, /var/tmp, /run and every path in `tmpfs` start as empty tmpfs. `share_dir` (a host
    directory) is mounted read-write at the same path inside the guest: the way to pass files in
    and get artifacts out. `cwd` defaults to the host's current directory (falls back to / when
    it is hidden in the guest, e.g. under /tmp).
    """
    if cgroup not in ("v1", "v2"):
        raise QemuError(f"cgroup must be 'v1' or 'v2', not {cgroup!r}")
    info = prepare(kernel, cache)
    if cgroup == "v1" and not info.memcg_v1:
        raise QemuError(f"kernel {info.release} is built without the cgroup v1 memory controller "
                        f"(CONFIG_MEMCG_V1 is not set): use cgroup='v2' with this kernel")
    initrd = initramfs(kernel, cache)
    tmpfs_dirs = [_guest_path(p, "tmpfs path") for p in tmpfs]
    if share_dir is not None:
        share_dir = _guest_path(os.path.abspath(share_dir), "share_dir")
        if not os.path.isdir(share_dir):
            raise QemuError(f"share_dir {share_dir} does not exist on the host: create it first")
    workdir = _guest_path(cwd or os.getcwd(), "cwd")
    machine = MACHINES[info.arch]
    root_subdir = ""
    if info.arch == "amd64":
        keep_dirs = _hidden_but_needed([workdir, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))])
    else:
        # the host's amd64 tree cannot run there: chroot into that architecture's userland, with the
        # working directory (the checkout: pure Python) and the venv bound in at their own paths
        root_subdir = _guest_path(userland.userland(cache or cache_dir(), info.arch), "userland")
        # the venv: its pure-Python packages serve too. Bound where it really is: a worktree's .venv is
        # often a symlink to another checkout's, which the userland would not have
        venv = os.path.realpath(sys.prefix)
        inside = sys.prefix.startswith(workdir.rstrip("/") + "/")
        keep_dirs = list(dict.fromkeys([workdir, venv] + ([] if inside or venv == sys.prefix else [sys.prefix])))
    script = command if isinstance(command, str) else "exec " + shlex.join(command)
    environment = guest_env(env, info.arch)
    bad = [k for k in environment if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise QemuError(f"env names {bad!r} are not valid shell variable names")

    with tempfile.TemporaryDirectory(prefix="otel-oom-qemu-") as ctl:
        with open(os.path.join(ctl, "boot.conf"), "w") as f:
            f.write(f"CGROUP={shlex.quote(cgroup)}\nTMPFS_DIRS={shlex.quote(' '.join(tmpfs_dirs))}\n"
                    f"SHARE_DIR={shlex.quote(share_dir or '')}\nHOSTROOT_CACHE={shlex.quote(hostroot_cache)}\n"
                    f"OVERLAY={int(overlay)}\nKEEP_DIRS={shlex.quote(' '.join(keep_dirs))}\n"
                    f"ROOT_SUBDIR={shlex.quote(root_subdir)}\nOUTPUT_SERIAL={int(machine.output_serial)}\n")
        with open(os.path.join(ctl, "env"), "w") as f:
            f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in environment.items())
        with open(os.path.join(ctl, "command"), "w") as f:
            f.write(f"cd {shlex.quote(workdir)} 2>/dev/null || cd /\n{script}\n")
        console, output = os.path.join(ctl, "console.log"), os.path.join(ctl, "output.log")
        argv = [
            machine.qemu, *machine.options, "-smp", str(cpus), "-m", str(memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", info.boot_image, "-initrd", initrd,
            "-append", f"console={machine.console} panic=-1 quiet {extra_cmdline}".strip(),
            "-serial", f"file:{console}", *(("-serial", f"file:{output}") if machine.output_serial else ()),
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={_opt(ctl)},mount_tag=otelctl,security_model=none",
        ]
        if share_dir:
            argv += ["-virtfs", f"local,path={_opt(share_dir)},mount_tag=otelshare,security_model=none"]
        start = time.monotonic()
        with open(os.path.join(ctl, "qemu.log"), "wb") as qlog:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                err = GuestTimeout(f"{kernel} guest did not finish in {timeout:g}s; console tail:\n"
                                   + _tail(_read(console)))
                err.output, err.console = _read(output), _read(console)
                raise err from None
            finally:
                if proc.poll() is None:  # interrupted (e.g. Ctrl-C): never leave a guest running
                    proc.kill()
                    proc.wait()
        duration = time.monotonic() - start
        console_text, output_text = _read(console), _read(output)
        rc_text = _read(os.path.join(ctl, "rc")).strip()
        if not rc_text:
            panic = re.search(r"Kernel panic - not syncing:[^\n]*", console_text)
            reason = (_read(os.path.join(ctl, "setup_error")).strip() or (panic and panic.group(0).strip())
                      or f"QEMU exited with {proc.returncode}: "
                         f"{_read(os.path.join(ctl, 'qemu.log')).strip()[-500:] or 'no message'}")
            err = GuestSetupError(f"{kernel} guest failed before the command finished: {reason}\n"
                                  f"console tail:\n" + _tail(console_text))
            err.output, err.console = output_text, console_text
            raise err

        def uptime(name: str) -> float:
            try:
                return float(_read(os.path.join(ctl, name)))
            except ValueError:
                return 0.0

        t_start, t_end = uptime("t_start"), uptime("t_end")
        return GuestResult(exit_code=int(rc_text), output=output_text, duration_s=duration,
                           kernel_release=_read(os.path.join(ctl, "release")).strip(), boot_s=t_start,
                           command_s=max(0.0, t_end - t_start), console=console_text)


def boot_many(jobs: Sequence[Mapping], workers: int | None = None) -> list[GuestResult | QemuError]:
    """Run several boot(**job) calls in parallel (one vCPU each); errors are returned, not raised."""
    def one(job):
        try:
            return boot(**job)
        except QemuError as e:
            return e
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])
