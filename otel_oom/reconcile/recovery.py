"""Holding the agent to the kernel's own count of OOM kills.

While running: the kernel counts every kill in /proc/vmstat `oom_kill`; kills it counted that the
agent never received (ring buffer full, a hook that missed) are exported as
`oom.kills.unobserved`. The comparison uses a kernel snapshot at least one refresh old, so
events still in flight are not reported as missing.

Across restarts: the kernel count the agent has accounted for is saved with the boot id. At start,
the difference is the number of kills that happened while no agent was running; their details
come from the kernel log (/dev/kmsg "Killed process" lines) when it is readable and still holds
them, and are delivered as records marked `oom.recovered`. Kills beyond what the log still holds
stay counted as unobserved.

The counter and the log are read together, before the probes are attached, and again until the
counter did not move meanwhile: every kill counted then has its line in the snapshot, and every
later kill is the probe's (observed, or counted unobserved), so no kill is reported twice and
none is missed. Kills accounted for but lost before delivery (held in memory at shutdown,
`forget`) are taken off the saved count, so the next start recovers them from the log.
A state file that cannot be read is a warning that names it, never a silent first start.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from typing import Callable, Optional

from ..cgroupfs.hierarchy import MemoryHierarchy
from ..schema.records import OomKill
from .kcounters import memcg_oom_kills, vmstat_oom_kills

log = logging.getLogger("otel_oom.recovery")

STATE_FILE = "reconcile.json"
# at most this many recovered kills are replayed at one start; the rest stay counted as unobserved
MAX_RECOVERED = 1000
STATE_BYTES = 256  # the state record's fixed size on disk
GROUP_WINDOW_NS = 1_000_000_000  # victims of one group decision are marked within this


class Reconciler:
    def __init__(self, state_dir: Optional[str], hierarchy: Optional[MemoryHierarchy], boot_id: str,
                 proc_root: str = "/proc", kmsg_path: str = "/dev/kmsg",
                 next_seq: Optional[Callable[[], int]] = None) -> None:
        self.state_path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self.hierarchy = hierarchy
        self.boot_id = boot_id
        self.proc_root = proc_root
        self.kmsg_path = kmsg_path
        self._lock = threading.RLock()
        self.observed_count = 0
        self.missed_without_details = 0
        self.forgotten = 0  # observed kills lost before delivery: the next start recovers them
        self.window_recovered = 0  # kernel counts of kills recovered from the attach window
        self._next_seq = next_seq  # the spool's next sequence number (None: no spool)
        self._storing: Optional[int] = None  # spool seq the kill being stored will get, until stored()
        self._storing_kills = 0  # kills counted for that one spool write (a burst: group commit)
        # read now, before the worker's first save can overwrite the previous run's state
        self._prior_state, self.state_problem = self._load()
        # read before the probes are attached: every later kill is either observed or unobserved
        self.baseline, self._kmsg, self._kmsg_error = self._snapshot()
        self._previous = self._latest = self.baseline
        self._state_fd: Optional[int] = None
        # per memory cgroup: the kernel's local oom_kill counters against the kills seen there
        self._observed_by_cgroup: Counter[str] = Counter()
        # kills observed without a cgroup path (a pid-only tracepoint whose victim left /proc): they
        # belong to some cgroup's counter, so they are taken off the per-cgroup total
        self._observed_without_cgroup = 0
        # a memory.oom.group kill counts its chosen victim twice in the kernel (the group scan
        # kills it again); one extra count is expected per group decision, in the first victim's cgroup
        self._extra_by_cgroup: Counter[str] = Counter()
        self.group_decisions = 0
        self._last_group_kill: dict[object, int] = {}
        self._memcg_baseline = self._memcg_previous = self._memcg_latest = self._read_memcgs()
        self.memcg_unobserved = 0

    def _missed_since(self, state: Optional[dict], count: Optional[int]) -> int:
        if state is None or count is None:
            return 0
        if state.get("boot_id") == self.boot_id:
            storing = state.get("storing")
            # counted just before it was written to the spool, and the agent died in between
            # (a burst stored in one spool write counted all its kills: `storing_kills` of them)
            burst = state.get("storing_kills", 1)
            unstored = burst if isinstance(storing, int) and self._next_seq and self._next_seq() <= storing else 0
            return count - state["vmstat_oom_kill"] + unstored
        return count  # rebooted since the last run: every kill of this boot was missed

    def _snapshot(self) -> tuple[Optional[int], Optional[list], Optional[OSError]]:
        """(kill counter, kernel log records or None, why the log could not be read), consistent:
        the counter did not move while the log was read, so the log holds every kill it counts."""
        from .kmsg import read_kmsg

        count = vmstat_oom_kills(self.proc_root)
        if not self.state_path:
            return count, None, None
        # read even with nothing missed: where the log ends now tells the kills of the attach
        # window (recover_window) from the ones before it
        records, error = None, None
        for _ in range(5):
            try:
                records, error = read_kmsg(self.kmsg_path), None
            except OSError as e:
                return count, None, e
            again = vmstat_oom_kills(self.proc_root)
            if again == count:
                break
            count = again  # a kill happened while the log was read: read both again
        return count, records, error

    def recover_window(self, seen_pids: set[int]) -> list[OomKill]:
        """Kills of the attach window: counted after the snapshot, printed in the kernel log since,
        and not among `seen_pids` (the victims the probe has caught so far). They are delivered as
        recovered and accounted for, so no restart takes a later, delivered kill's line for them."""
        from .kmsg import read_kmsg
        from .oom_report import recovered_kills, to_oom_kill

        last = max((r.seq for r in self._kmsg or ()), default=None)
        now = vmstat_oom_kills(self.proc_root)
        if last is None or self.baseline is None or now is None or now == self.baseline:
            return []
        try:
            records = [r for r in read_kmsg(self.kmsg_path) if r.seq > last]
        except OSError:
            return []
        kills = [r for r in recovered_kills(records) if r.pid not in seen_pids]
        boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        with self._lock:
            self.window_recovered += sum(r.kernel_counts for r in kills)
        if kills:
            log.info("%d OOM kill(s) happened while the probes were being attached; recovered from the kernel log",
                     len(kills))
        return [to_oom_kill(r, self.boot_id, boot_wall_ns) for r in kills]

    def release_snapshot(self) -> None:
        """The start-up reading of the kernel log is no longer needed."""
        self._kmsg = None

    def forget(self, kills: int) -> None:
        """`kills` observed kills were lost before delivery (held in memory at shutdown): leave them
        out of the saved count, so the next start recovers them from the kernel log."""
        with self._lock:
            self.forgotten += kills

    def observed(self, kill: OomKill, save: bool = True) -> None:
        """Count a kill the probe delivered, just before it is written to the spool (`stored()` after).

        The state is saved at once (without fsync: a SIGKILL keeps the page cache, and after a
        power loss the boot id differs anyway), with the spool's next sequence number: if the agent
        dies before the kill is in the spool, the spool never reaches that number and the next start
        recovers the kill from the kernel log; if it is in the spool, the next start does not replay
        it as a "recovered" duplicate with another event id. So no crash point reports it twice or
        loses it. A burst written to the spool in one write (group commit) is counted kill by kill
        with `save=False` and saved once, before the write: `storing` is then the burst's first seq,
        `storing_kills` how many kills it holds, and the one write puts all of them in the spool or
        none (`Spool.append_many`).
        """
        if kill.killed is False:
            if save:
                self.save(durable=False)  # the burst's earlier kills
            return  # a task only marked because it was already exiting: the kernel counts no kill
        with self._lock:
            storing = self._next_seq() if self._next_seq else None
            self._storing_kills = self._storing_kills + 1 if storing is not None and storing == self._storing else 1
            self._storing = storing
            self.observed_count += 1
            if kill.cgroup_path:
                self._observed_by_cgroup[kill.cgroup_path] += 1
            else:
                self._observed_without_cgroup += 1
            if kill.oom_group_path:
                self._count_group_decision(kill)
        if save:
            self.save(durable=False)

    def stored(self) -> None:
        """The kill just counted by `observed` is in the spool now."""
        with self._lock:
            self._storing = None
            self._storing_kills = 0

    def _count_group_decision(self, kill: OomKill) -> None:
        # members of one decision arrive together from one trigger; the context hook names it exactly
        key = kill.decision_id or (kill.trigger_tid, kill.oom_group_path)
        last = self._last_group_kill.get(key)
        if last is None or kill.time_unix_nano - last > GROUP_WINDOW_NS:
            self.group_decisions += 1
            self._extra_by_cgroup[kill.cgroup_path or ""] += 1
        self._last_group_kill[key] = kill.time_unix_nano
        if len(self._last_group_kill) > 1024:
            self._last_group_kill = {k: t for k, t in self._last_group_kill.items()
                                     if kill.time_unix_nano - t <= GROUP_WINDOW_NS}

    def _read_memcgs(self) -> Optional[dict[str, int]]:
        if not self.hierarchy:
            return None
        try:
            return memcg_oom_kills(self.hierarchy.mount, self.hierarchy.version)
        except OSError:
            return None

    def refresh(self, memcgs: bool = True) -> None:
        now = vmstat_oom_kills(self.proc_root)
        by_cgroup = self._read_memcgs() if memcgs else None
        with self._lock:
            self._previous, self._latest = self._latest, now
            if by_cgroup is not None:
                self._memcg_previous, self._memcg_latest = self._memcg_latest, by_cgroup
                self.memcg_unobserved = self._memcg_missing()
        self.save()

    def _memcg_missing(self) -> int:
        """Kills counted by cgroups that still exist, beyond what the agent saw there. A cgroup created
        after start counts from zero; one removed since (a container gone) takes its counter with it,
        which is why the host-wide counter stays the primary check."""
        base, then = self._memcg_baseline, self._memcg_previous
        if base is None or then is None:
            return 0
        missing = sum(max(0, (n - base.get(path, 0)) - self._observed_by_cgroup[path] - self._extra_by_cgroup[path])
                      for path, n in then.items())
        return max(0, missing - self._observed_without_cgroup)

    def unobserved(self) -> int:
        """Kills the kernel counted, at least one refresh ago, that the agent did not observe."""
        with self._lock:
            if self.baseline is None or self._previous is None:
                host = 0
            else:
                host = max(0, (self._previous - self.baseline) - self.observed_count - self.group_decisions)
            # a task that was already exiting is marked without being counted as a kill, so the
            # host-wide difference can hide a miss that its cgroup's own counter still shows
            return max(host, self.memcg_unobserved) + self.missed_without_details

    def accounted(self) -> Optional[int]:
        """The kernel count this run has accounted for: every kill observed, and every kill the
        kernel counted at least one refresh ago (the unobserved ones are in oom.kills.unobserved).
        A kill still in flight is not included, so if the agent dies before spooling it, the next
        start recovers it from the kernel log."""
        with self._lock:
            if self.baseline is None or self._previous is None:
                return None
            return max(self._previous, self.baseline + self.observed_count + self.group_decisions
                       + self.window_recovered) - self.forgotten

    def save(self, durable: bool = True) -> None:
        if not self.state_path:
            return
        with self._lock:  # the worker (per kill) and the main loop (refresh) both save
            accounted = self.accounted()
            if accounted is None:
                return
            try:
                os.makedirs(os.path.dirname(self.state_path), mode=0o700, exist_ok=True)
            except OSError:
                pass  # reported by the write below
            state = {"boot_id": self.boot_id, "vmstat_oom_kill": accounted, "saved_at": time.time(),
                     "storing": self._storing, "storing_kills": self._storing_kills}
            record = json.dumps(state).encode().ljust(STATE_BYTES)
            try:
                if self._state_fd is not None and os.fstat(self._state_fd).st_nlink == 0:
                    os.close(self._state_fd)  # the file (or its directory) was removed: write a new one
                    self._state_fd = None
                if self._state_fd is None:
                    self._state_fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT, 0o600)
                # one fixed-size record overwritten in place: no rename (which ext4 flushes on every
                # save, a quarter of the per-kill cost in a storm) and never a half-replaced file
                # after a SIGKILL, since the page cache survives the process
                os.pwrite(self._state_fd, record, 0)
                if durable:
                    os.fdatasync(self._state_fd)
            except OSError as e:
                log.warning("cannot save reconciliation state to %s: %s", self.state_path, e.strerror)

    def close(self) -> None:
        with self._lock:
            if self._state_fd is not None:
                os.close(self._state_fd)
                self._state_fd = None

    def _load(self) -> tuple[Optional[dict], Optional[str]]:
        """(the previous run's state, None), (None, None) on a first start, or (None, what is wrong)."""
        if not self.state_path:
            return None, None
        try:
            with open(self.state_path, "rb") as f:
                raw = f.read(64 * STATE_BYTES)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            return None, f"cannot read it: {e.strerror}"
        return parse_state(raw)

    def recover_missed(self) -> list[OomKill]:
        """Kills the kernel counted while no agent was running, with what the kernel log says of them."""
        if not self.state_path or self.baseline is None:
            return []
        state = self._prior_state
        self.save()
        if state is None:
            if self.state_problem is not None:
                log.warning("reconciliation state %s is unusable (%s): the %d OOM kill(s) of this boot cannot be "
                            "told apart from those already reported, so none is replayed; kills while otel-oom "
                            "was down may be missing (the file is rewritten now)", self.state_path,
                            self.state_problem, self.baseline)
            elif self.baseline:
                # first start on this host: there was no agent before, so nothing was "missed"
                log.info("%d OOM kill(s) happened on this boot before otel-oom's first start here; "
                         "not replayed (no earlier state in %s)", self.baseline, self.state_path)
            return []
        missed = self._missed_since(state, self.baseline)
        if missed < 0:
            log.warning("reconciliation state %s says %d kill(s) were accounted for on this boot, more than the "
                        "kernel's %d: ignoring it", self.state_path, state["vmstat_oom_kill"], self.baseline)
            return []
        if missed == 0:
            return []
        kills, explained = self._from_kmsg(min(missed, MAX_RECOVERED))
        with self._lock:
            self.missed_without_details = max(0, missed - explained)
        log.warning("%d OOM kill(s) happened while otel-oom was not running; %d recovered from the kernel log%s",
                    missed, len(kills),
                    "" if explained >= missed else " (the rest are counted in oom.kills.unobserved)")
        return kills

    def _from_kmsg(self, missed: int) -> tuple[list[OomKill], int]:
        """The last kills of the kernel log that account for `missed` kernel counts, and how many
        counts they account for (a group kill's chosen victim is counted twice by the kernel)."""
        from .oom_report import recovered_kills, to_oom_kill

        records, e = self._kmsg, self._kmsg_error
        if records is None:
            why = e.strerror if e is not None else "not read"
            log.warning("cannot read the kernel log %s (%s): recovered kills get no details; "
                        "grant CAP_SYSLOG or mount /dev/kmsg", self.kmsg_path, why)
            return [], 0
        found, explained = [], 0
        for r in reversed(recovered_kills(records)):
            if explained >= missed:
                break
            found.append(r)
            explained += r.kernel_counts
        # printk stamps are CLOCK_MONOTONIC-like (local_clock), so anchor them to boot wall time
        boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return [to_oom_kill(r, self.boot_id, boot_wall_ns) for r in reversed(found)], explained


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
