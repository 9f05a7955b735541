"""PSI triggers: the kernel wakes a poll when tasks stalled on memory long enough (files: cgroupfs/psi.py).

A trigger ("some <stall us> <window us>" written to an open PSI file) makes the kernel wake a
poll() for POLLPRI once the tasks stalled on memory for at least the stall time within a window.
Without CAP_SYS_RESOURCE the window must be a multiple of 2 s (the kernel then evaluates it in its
regular 2 s averaging instead of a dedicated real-time poller); otel-oom always uses such windows,
so it needs no extra privilege and adds no kernel thread per cgroup.
"""
from __future__ import annotations

import os

WINDOW_STEP_S = 2        # unprivileged triggers: the window is a multiple of 2 s
WINDOW_MAX_S = 10        # the kernel's largest trigger window


class PsiUnavailable(OSError):
    """The kernel refused a trigger (no PSI, psi=0 on the command line, a window it does not allow)."""


def trigger_text(stall_percent: float, window_s: int) -> bytes:
    """The trigger line for "some task stalled at least stall_percent of a window_s window"."""
    if window_s % WINDOW_STEP_S or not WINDOW_STEP_S <= window_s <= WINDOW_MAX_S:
        raise ValueError(f"PSI trigger window must be 2, 4, 6, 8 or 10 s, got {window_s}")
    window_us = window_s * 1_000_000
    stall_us = max(1, min(window_us - 1, int(window_us * stall_percent / 100)))
    return f"some {stall_us} {window_us}".encode() + b"\0"


class PsiTrigger:
    """An open PSI file with a trigger on it; poll `fileno()` for POLLPRI. `close()` removes the trigger."""

    def __init__(self, path: str, stall_percent: float, window_s: int) -> None:
        self.path = path
        text = trigger_text(stall_percent, window_s)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise PsiUnavailable(e.errno, f"cannot open {path}: {e.strerror}") from None
        try:
            os.write(self._fd, text)
        except OSError as e:
            os.close(self._fd)
            self._fd = -1
            raise PsiUnavailable(e.errno, f"PSI trigger {text[:-1].decode()!r} refused by {path}: {e.strerror}") from None

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
