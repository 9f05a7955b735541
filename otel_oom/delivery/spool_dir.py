"""The spool's directory: made private, locked for one agent, and its `ack` file (the floor and the
ledger's count, spool_format.py), each checked to be what the spool made.

The directory is created with mode 0700 and its files 0600. `lock` is flock()ed by the owning
process and holds its pid for the error message of a second agent. `ack` is created whole through a
rename, so a crash never leaves a short one, and then overwritten in place, slot by slot: no new
block is ever allocated, so acknowledging (which is what frees space) works on a full disk.

Either file may be removed or replaced behind the agent's back, or be something else than a regular
file when the agent starts (a FIFO, a link). Then it is made again (`remake_ack`, or the whole
directory through the spool's `_recreate`) from what the agent holds in memory: nothing of the floor
or the ledger is lost while the agent runs.
"""
from __future__ import annotations

import fcntl
import logging
import os
from typing import Optional

from .segments import NotRegularFile, fsync_dir, open_regular
from .spool_format import ACK_FILE_BYTES, ACK_SLOTS, AckState, ack_slot, newest, read_ack_slot

log = logging.getLogger("otel_oom.delivery.spool")


class SpoolError(Exception):
    """The spool cannot do what was asked; the message says why and what to do."""

    written: list[int] = []  # append_many: the seqs of the burst's first events, written before it failed


class SpoolDirectory:
    def __init__(self, path: str, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.lock_fd = self.ack_fd = -1
        self._id: Optional[tuple[int, int, int]] = None   # (dev, inode) of the directory, inode of its lock
        self._ack_id: Optional[tuple[int, int]] = None
        self.ack_next = 0                                  # the slot to overwrite next: the older one

    # ---- opening ----
    def open(self, empty: AckState) -> tuple[Optional[AckState], bool]:
        """Create the directory if needed, take its lock, open its ack file (made with `empty` if
        missing). Returns (the ack file's state or None if unreadable, whether an earlier agent's ack
        file was missing: the directory has its lock, but no ack)."""
        missing = False
        try:
            new = not os.path.isdir(self.path)
            missing = not new and os.path.lexists(os.path.join(self.path, "lock")) and \
                not os.path.lexists(os.path.join(self.path, "ack"))
            if new:
                os.makedirs(self.path, 0o700, exist_ok=True)
                os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
            self.lock_fd = self._own("lock", os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise SpoolError(f"cannot use spool directory {self.path}: {e.strerror}; "
                             "point the spool at a writable local directory") from None
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self.lock_fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            self.close()
            raise SpoolError(f"spool {self.path} is in use by another otel-oom (pid {pid})") from None
        try:
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)
            if not os.path.lexists(os.path.join(self.path, "ack")):
                self._make_ack(empty)
            self.ack_fd = self._own("ack", os.O_RDWR, replace_with=empty)
            self._remember()
            slots = [read_ack_slot(os.pread(self.ack_fd, 64, offset)) for offset in ACK_SLOTS]
        except OSError as e:
            self.close()
            raise SpoolError(f"cannot open spool {self.path}: {e.strerror}; "
                             "check the directory's permissions and free space") from None
        state, self.ack_next = newest(slots)
        return state, missing

    def _own(self, name: str, flags: int, replace_with: Optional[AckState] = None) -> int:
        """Open one of the spool's own files; one that is not a regular file is replaced (logged)."""
        path = os.path.join(self.path, name)
        try:
            return open_regular(path, flags)
        except NotRegularFile as e:
            log.warning("spool %s: %s is %s, not the spool's file: replaced by a new one%s", self.path, name,
                        e.strerror, "; events still on disk will be delivered again" if name == "ack" else "")
        if replace_with is not None:
            self._make_ack(replace_with)
        else:
            os.unlink(path)  # (a directory there fails: the error says so)
        return open_regular(path, flags)

    def _make_ack(self, state: AckState) -> None:
        """A whole ack file holding `state`, through a rename (never a short file, whatever was there)."""
        path = os.path.join(self.path, "ack")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, ack_slot(state.generation, state.floor, state.boot, state.accounted).ljust(ACK_FILE_BYTES, b"\0"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(self.path)
        self.ack_next = 1

    def _remember(self) -> None:
        st = os.fstat(self.lock_fd)
        directory = os.stat(self.path)
        self._id = (directory.st_dev, directory.st_ino, st.st_ino)
        ack = os.fstat(self.ack_fd)
        self._ack_id = (ack.st_dev, ack.st_ino)

    # ---- while running ----
    def gone(self) -> bool:
        """The directory (or its lock) was removed or replaced since it was opened."""
        if self.lock_fd < 0:
            return True
        try:
            st = os.stat(self.path)
            lock = os.stat(os.path.join(self.path, "lock"), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            return False  # unreadable for another reason: the operation itself will say so
        return (st.st_dev, st.st_ino, lock.st_ino) != self._id

    def ack_replaced(self) -> bool:
        try:
            st = os.stat(os.path.join(self.path, "ack"), follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return (st.st_dev, st.st_ino) != self._ack_id

    def remake_ack(self, state: AckState) -> None:
        """The ack file was removed or replaced while the agent ran: write it again from `state`."""
        self._make_ack(state)
        fd = open_regular(os.path.join(self.path, "ack"), os.O_RDWR)
        if self.ack_fd >= 0:
            os.close(self.ack_fd)
        self.ack_fd = fd
        ack = os.fstat(fd)
        self._ack_id = (ack.st_dev, ack.st_ino)
        log.error("spool %s: its ack file was removed or replaced while the agent ran: written again "
                  "(floor %d, ledger kept)", self.path, state.floor)

    def write_slot(self, state: AckState, sync: bool) -> None:
        """Overwrite the older slot with `state` (fdatasync'ed if `sync`); raises OSError."""
        os.pwrite(self.ack_fd, ack_slot(state.generation, state.floor, state.boot, state.accounted),
                  ACK_SLOTS[self.ack_next])
        if self.fsync and sync:
            os.fdatasync(self.ack_fd)
        self.ack_next ^= 1

    def close(self) -> None:
        for fd in (self.ack_fd, self.lock_fd):  # closing the lock releases the flock
            if fd >= 0:
                os.close(fd)
        self.ack_fd = self.lock_fd = -1
