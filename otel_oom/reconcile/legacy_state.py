"""The reconciliation state of agents before the ledger (`reconcile.json`), read once at the upgrade.

Those agents kept the kernel's OOM kill count they had accounted for in `reconcile.json` beside the
spool, apart from the spool's records: `{"boot_id", "vmstat_oom_kill", "storing", "storing_kills"}`,
one fixed-size JSON record. `storing` was the spool sequence number the kill (or burst of kills)
being written would get, counted already: if the spool never reached that number, the agent died
before writing it and those `storing_kills` kills are not accounted. The first start of the new
agent turns that into the ledger's count (`Reconciler.recover_missed`) and, once the ledger holds
it on disk, removes the file.
"""
from __future__ import annotations

import json
import os
from typing import Callable, NamedTuple, Optional

STATE_FILE = "reconcile.json"
STATE_BYTES = 256  # the record's fixed size on disk


class LegacyState(NamedTuple):
    path: str
    state: Optional[dict]   # the parsed record (None: no file, or unusable)
    problem: Optional[str]  # why it is unusable (None: usable, or no file)


def parse_state(raw: bytes) -> tuple[Optional[dict], Optional[str]]:
    """The reconciliation state record -> (state, None) or (None, what is wrong with it)."""
    try:
        state = json.loads(raw.decode("utf-8").strip() or "null")
    except (UnicodeDecodeError, ValueError):
        return None, "not JSON"
    if not isinstance(state, dict):
        return None, f"a JSON {type(state).__name__}, not an object"
    count = state.get("vmstat_oom_kill")
    if not isinstance(state.get("boot_id"), str) or not state["boot_id"]:
        return None, "no boot_id"
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return None, "no vmstat_oom_kill count"
    return state, None


def read_state(directory: str) -> Optional[LegacyState]:
    """The state file in `directory`, or None when there is none."""
    path = os.path.join(directory, STATE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        return LegacyState(path, None, f"cannot read it: {e.strerror}")
    try:
        raw = os.read(fd, 64 * STATE_BYTES)
    except OSError as e:
        return LegacyState(path, None, f"cannot read it: {e.strerror}")
    finally:
        os.close(fd)
    state, problem = parse_state(raw)
    return LegacyState(path, state, problem)


def accounted_then(state: dict, boot_id: str, next_seq: Callable[[], int]) -> Optional[int]:
    """This boot's kernel kills that state had accounted for (and stored), or None if it is of another boot."""
    if state.get("boot_id") != boot_id:
        return None
    storing = state.get("storing")
    # counted just before it was written to the spool, and the agent died in between
    # (a burst stored in one spool write counted all its kills: `storing_kills` of them)
    burst = state.get("storing_kills", 1)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
        burst = 1
    unstored = burst if isinstance(storing, int) and not isinstance(storing, bool) and next_seq() <= storing else 0
    return max(0, state["vmstat_oom_kill"] - unstored)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # read again, and ignored, at the next start: the ledger has a value by then
