"""What a node leaves on the host, and the sweep that removes it.

`leftovers(node, ns_ids)` lists, one line each, whatever of the node is still there: processes
in its namespaces (`ns_ids`, taken while it ran) or started from its state directory, cgroups
under its cgroup root in any hierarchy, host mounts under its state directory, its namespace
pins, its veth, its state directory. Empty means nothing was left behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable

from .layout import Node

CGROUP_MOUNT = Path("/sys/fs/cgroup")


def cgroup_hierarchies() -> list[Path]:
    """Where the kubelet and runc make cgroups: each v1 hierarchy mounted under /sys/fs/cgroup
    (and a hybrid host's unified one), or /sys/fs/cgroup itself on a cgroup v2 host."""
    if (CGROUP_MOUNT / "cgroup.controllers").exists():
        return [CGROUP_MOUNT]
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    return sorted(p for p in CGROUP_MOUNT.iterdir() if str(p) in points)


def cgroup_dirs(node: Node) -> list[Path]:
    """Every directory under the node's cgroup root, deepest first, in every hierarchy."""
    found: list[Path] = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / node.cgroup_root.lstrip("/")
        if top.is_dir():
            found.extend(Path(p) for p, _, _ in os.walk(top))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_pids(node: Node) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(node):
        try:
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return pids


def _ns_and_cmdline(pid: str) -> tuple[set[str], str]:
    ns = set()
    for kind in ("net", "mnt"):
        try:
            ns.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
        except OSError:
            pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return ns, cmd


def node_processes(node: Node, ns_ids: Iterable[str], by_path: bool = True) -> dict[int, str]:
    """pid -> command line of every process in the node's namespaces or cgroups, and (by_path) of
    every process whose command line names the node's state directory."""
    ns_ids = set(ns_ids)
    marker = str(node.state) + "/" if by_path else "\0"
    found = {pid: "" for pid in cgroup_pids(node)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        ns, cmd = _ns_and_cmdline(entry)
        if int(entry) in found or (ns & ns_ids) or marker in cmd:
            found[int(entry)] = cmd
    return found


def host_mounts(node: Node) -> list[str]:
    prefix = str(node.state)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [m for m in points if m == prefix or m.startswith(prefix + "/")]


def leftovers(node: Node, ns_ids: Iterable[str] = ()) -> list[str]:
    out = [f"process {pid}: {cmd}" for pid, cmd in sorted(node_processes(node, ns_ids).items())]
    out += [f"cgroup {d}" for d in cgroup_dirs(node)]
    out += [f"mount {m}" for m in host_mounts(node)]
    if Path(f"/sys/class/net/{node.host_veth}").exists():
        out.append(f"link {node.host_veth}")
    if node.state.exists():
        out.append(f"directory {node.state}")
    return out


def kill_all(node: Node, ns_ids: Iterable[str], timeout: float = 30.0) -> None:
    """SIGKILL whatever of the node still runs (pods' processes, shims) until nothing does."""
    deadline = time.monotonic() + timeout
    while True:
        # only what runs inside the node: a host process merely naming its files is someone else's
        pids = node_processes(node, ns_ids, by_path=False)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"node processes survive SIGKILL: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def remove_cgroups(node: Node, timeout: float = 30.0) -> None:
    """rmdir the node's cgroups, deepest first (a cgroup whose tasks just died may stay busy briefly)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for d in cgroup_dirs(node):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(d)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroups still busy: {busy}")
        time.sleep(0.2)


def bpf_programs_of(pids: Iterable[int]) -> set[int]:
    """The ids of the BPF programs these processes hold, by program or link fd (`prog_id:` in
    /proc/<pid>/fdinfo; bpftool's pid column needs a BPF iterator this kernel may refuse)."""
    ids: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            ids.update(int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:"))
    return ids


def bpf_programs_present(ids: Iterable[int]) -> set[int]:
    """Which of these program ids the kernel still has loaded."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"bpftool prog show: {r.stderr.strip()}")
    return {p["id"] for p in json.loads(r.stdout or "[]")} & set(ids)
