"""cgroup v1 memory notifications: an eventfd registered through `cgroup.event_control`.

The kernel signals the eventfd when the cgroup's usage crosses a threshold (either way,
`memory.usage_in_bytes`), when it is under reclaim pressure at a level (`memory.pressure_level`,
"medium,local": reclaim caused by this cgroup's own limit), and when it is out of memory
(`memory.oom_control`: the OOMing cgroup and every cgroup below it). The target file descriptor is
only needed while registering; the registration lives as long as the eventfd (closing it
unregisters) or the cgroup (removing the cgroup signals the eventfd one last time).
"""
from __future__ import annotations

import os


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def register(directory: str, efd: int, target: str, args: str = "") -> None:
    """Ask for `efd` to be signalled by `target` ("memory.usage_in_bytes", ...); OSError if refused."""
    tfd = os.open(os.path.join(directory, target), os.O_RDONLY | os.O_CLOEXEC)
    try:
        ctl = os.open(os.path.join(directory, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(ctl, f"{efd} {tfd} {args}".strip().encode())
        finally:
            os.close(ctl)
    finally:
        os.close(tfd)


def drain(efd: int) -> int:
    """How many signals arrived since the last drain (0 when none)."""
    try:
        return os.eventfd_read(efd)
    except BlockingIOError:
        return 0
