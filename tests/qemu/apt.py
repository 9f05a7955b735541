"""Debian packages for the QEMU harness from any suite, without touching the system's APT sources.

The system's own sources (bookworm here) serve the kernels they carry. Other suites (bullseye for
5.10, sid for the newest kernel) and other architectures (arm64) come through a private APT
configuration: a sources list, package lists and a download cache of their own under the harness
cache, passed to apt through `APT_CONFIG`. `apt-get update` with it writes only there.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import Mapping, Optional, Sequence

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# suites with a security archive of their own (sid and the testing suite have none)
_WITH_SECURITY = ("bullseye", "bookworm", "trixie")


class AptError(Exception):
    """An apt command failed; the message holds its command line and the tail of its output."""


def run(cmd: Sequence[str], env: Optional[Mapping[str, str]] = None, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True,
                              env={**os.environ, **env} if env else None, **kw)
    except FileNotFoundError:
        raise AptError(f"{cmd[0]} not found: this harness needs Debian's apt tools") from None
    except subprocess.CalledProcessError as e:
        raise AptError(f"{shlex.join(cmd)} failed: {(e.stderr or e.stdout).strip()[-300:]}") from None


def sources(suite: str) -> str:
    lines = [f"deb [signed-by={KEYRING}] {MIRROR} {suite} main"]
    if suite in _WITH_SECURITY:
        lines.append(f"deb [signed-by={KEYRING}] {SECURITY} {suite}-security main")
    return "\n".join(lines) + "\n"


def private_config(cache: str, suite: str, arch: str = "amd64") -> str:
    """Write (once) and return the path of an APT configuration for `suite` on `arch` under `cache`."""
    root = os.path.join(cache, "apt", f"{suite}-{arch}")
    for d in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "sources.list"), "w") as f:
        f.write(sources(suite))
    conf = os.path.join(root, "apt.conf")
    with open(conf, "w") as f:
        f.write(f'Dir::Etc::SourceList "{root}/sources.list";\n'
                'Dir::Etc::SourceParts "/dev/null";\n'
                f'Dir::State::Lists "{root}/lists";\n'
                f'Dir::Cache "{root}/cache";\n'
                f'APT::Architecture "{arch}";\n'
                f'APT::Architectures "{arch}";\n')
    return conf


class Apt:
    """apt-cache / apt-get download against the system's sources (suite None) or a private list."""

    def __init__(self, cache: str, suite: Optional[str] = None, arch: str = "amd64") -> None:
        self.suite, self.arch = suite, arch
        self.env: dict[str, str] = {}
        if suite is not None or arch != "amd64":
            self.env["APT_CONFIG"] = private_config(cache, suite or "bookworm", arch)
            self._lists = os.path.join(os.path.dirname(self.env["APT_CONFIG"]), "lists")

    def describe(self) -> str:
        return f"{self.suite or 'the system sources'} ({self.arch})"

    def update(self) -> None:
        run(["apt-get", "update", "-qq"], env=self.env, timeout=600)

    def _has_lists(self) -> bool:
        if not self.env:
            return True  # the system's: updated by root when empty (see names())
        return any(f.endswith("Packages") or "Packages." in f for f in os.listdir(self._lists))

    def names(self, prefix: str) -> list[str]:
        """Package names starting with `prefix` (apt-cache pkgnames), updating private lists first."""
        if not self._has_lists():
            self.update()
        names = run(["apt-cache", "pkgnames", prefix], env=self.env).stdout.split()
        if not names and not self.env and os.geteuid() == 0:
            self.update()  # fresh CI images ship without package lists
            names = run(["apt-cache", "pkgnames", prefix], env=self.env).stdout.split()
        return names

    def depends(self, package: str) -> list[str]:
        out = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", package], env=self.env).stdout
        return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Depends:")]

    def download(self, package: str, directory: str) -> str:
        """Download `package` into `directory`; returns the .deb's path."""
        before = set(os.listdir(directory))
        run(["apt-get", "download", package], env=self.env, cwd=directory, timeout=900)
        debs = [f for f in set(os.listdir(directory)) - before if f.endswith(".deb")]
        if len(debs) != 1:
            raise AptError(f"apt-get download {package} left {debs!r} in {directory}")
        return os.path.join(directory, debs[0])
