"""Holding the agent to the kernel's own count of OOM kills, across restarts through the ledger.

While running: the kernel counts every kill in /proc/vmstat `oom_kill`; kills it counted that the
agent never received (ring buffer full, a hook that missed) are exported as
`oom.kills.unobserved`. The comparison uses a kernel snapshot at least one refresh old, so
events still in flight are not reported as missing.

Across restarts: the ledger (`delivery/spool.py`) holds how many of this boot's kernel kills the
agent has accounted for. Each kernel kill's record carries the count once it is stored (one write:
`account` gives it), so a kill is never stored without being counted, nor counted without being
stored. Kills counted without a record move it too (`settle`: the kernel counted them and the probe
never delivered them, so they are counted as unobserved; and the start-up's own accounting), in
the spool's ack file, behind whatever still waits in memory. What is only in memory when the agent
stops is not on disk, count included: the next start finds those kills missing.

At start, the difference between the kernel's count and the ledger's is the number of kills that
happened while no agent was running (or were lost before reaching the disk); their details come
from the kernel log (/dev/kmsg "Killed process" lines) when it is readable and still holds them,
and they are delivered as records marked `oom.recovered`. The ledger's count moves exactly with the
kernel's own kills: kills by user-space OOM killers and the records around a kill never touch it.

A recovered kill's `oom.event.id` is `<boot id>:<printk time ns>:<pid>`, from its kernel log line:
the printk stamp is local_clock() (CLOCK_MONOTONIC-like: it stops during suspend and drifts from
the clock the probe reads), not the CLOCK_BOOTTIME stamp the probe records, so it is not the id the
live kill would have had; but it is the same on every replay, and the ledger never recovers a kill
it has accounted for, so no kill is reported under two ids.

The counter and the log are read together, before the probes are attached, and again until the
counter did not move meanwhile: every kill counted then has its line in the snapshot, and every
later kill is the probe's (observed, or counted unobserved), so no kill is reported twice and
none is missed. State of agents before the ledger (`reconcile.json`) is migrated once
(`legacy_state.py`). A ledger or state file that cannot be read is a warning that names it, never a
silent first start.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Optional, Protocol

from ..cgroupfs.hierarchy import MemoryHierarchy
from ..delivery.spool import Ledger
from ..schema.records import KILLER_KERNEL, OomKill
from . import legacy_state
from .kcounters import memcg_oom_kills, vmstat_oom_kills
from .legacy_state import parse_state

log = logging.getLogger("otel_oom.recovery")

__all__ = ["Reconciler", "LedgerStore", "parse_state", "MAX_RECOVERED"]

# at most this many recovered kills are replayed at one start; the rest stay counted as unobserved
MAX_RECOVERED = 1000
GROUP_WINDOW_NS = 1_000_000_000  # victims of one group decision are marked within this


class LedgerStore(Protocol):
    """The store's ledger side (`delivery.store.DeliveryStore`)."""

    @property
    def ledger(self) -> Ledger: ...
    def account(self, accounted: int, durable: bool = False) -> bool: ...
    def next_seq(self) -> int: ...


class Reconciler:
    """`store`: where the ledger is kept (None: no spool, so no state across restarts); `state_dir`:
    where an agent before the ledger kept `reconcile.json` (the spool directory)."""

    def __init__(self, store: Optional[LedgerStore], hierarchy: Optional[MemoryHierarchy], boot_id: str,
                 proc_root: str = "/proc", kmsg_path: str = "/dev/kmsg", state_dir: Optional[str] = None) -> None:
        self.store = store
        self.hierarchy = hierarchy
        self.boot_id = boot_id
        self.proc_root = proc_root
        self.kmsg_path = kmsg_path
        self._lock = threading.RLock()
        self.observed_count = 0
        self.missed_without_details = 0
        self.window_recovered = 0  # kernel counts of kills recovered from the attach window
        self.accounted_count: Optional[int] = None  # the ledger's count this run (None: no ledger)
        self._recovered_counts: dict[str, int] = {}  # recovered kills not stored yet -> their kernel counts
        self._window_ids: set[str] = set()
        # read now, before anything is written: the previous run's state
        self._legacy = legacy_state.read_state(state_dir) if store is not None and state_dir else None
        # read before the probes are attached: every later kill is either observed or unobserved
        self.baseline, self._kmsg, self._kmsg_error = self._snapshot()
        self._previous = self._latest = self.baseline
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

    def _snapshot(self) -> tuple[Optional[int], Optional[list], Optional[OSError]]:
        """(kill counter, kernel log records or None, why the log could not be read), consistent:
        the counter did not move while the log was read, so the log holds every kill it counts."""
        from .kmsg import read_kmsg

        count = vmstat_oom_kills(self.proc_root)
        if self.store is None:
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

    # ---- start-up ------------------------------------------------------------------------------
    def _prior(self) -> Optional[int]:
        """This boot's kills accounted for before this start; None when that cannot be known (logged)."""
        assert self.store is not None and self.baseline is not None
        ledger = self.store.ledger
        where = "the spool's ledger"
        if ledger.accounted is not None:
            if self._legacy is not None:
                legacy_state.remove(self._legacy.path)  # migrated by an earlier start already
            return ledger.accounted
        if ledger.seen:
            return 0  # rebooted since the last run: every kill of this boot was missed
        problem = ledger.problem
        if self._legacy is not None:
            where = self._legacy.path
            if self._legacy.state is not None:
                then = legacy_state.accounted_then(self._legacy.state, self.boot_id, self.store.next_seq)
                return 0 if then is None else then
            problem = self._legacy.problem
        if problem is not None:
            log.warning("reconciliation state %s is unusable (%s): the %d OOM kill(s) of this boot cannot be "
                        "told apart from those already reported, so none is replayed; kills while otel-oom "
                        "was down may be missing (the state is written again now)", where, problem, self.baseline)
        elif self.baseline:
            # first start on this host: there was no agent before, so nothing was "missed"
            log.info("%d OOM kill(s) happened on this boot before otel-oom's first start here; "
                     "not replayed (no earlier state in %s)", self.baseline, where)
        return None

    def recover_missed(self) -> list[OomKill]:
        """Kills the kernel counted while no agent was running, with what the kernel log says of them.

        Store them (their `account` moves the ledger), then call `start()`."""
        if self.store is None or self.baseline is None:
            return []
        prior = self._prior()
        if prior is None:
            prior = self.baseline
        elif prior > self.baseline:
            log.warning("reconciliation state says %d kill(s) were accounted for on this boot, more than the "
                        "kernel's %d: ignoring it", prior, self.baseline)
            prior = self.baseline
        with self._lock:
            self.accounted_count = prior
        missed = self.baseline - prior
        if missed == 0:
            return []
        kills, explained = self._from_kmsg(min(missed, MAX_RECOVERED))
        with self._lock:
            self.missed_without_details = max(0, missed - explained)
        log.warning("%d OOM kill(s) happened while otel-oom was not running; %d recovered from the kernel log%s",
                    missed, len(kills),
                    "" if explained >= missed else " (the rest are counted in oom.kills.unobserved)")
        return kills

    def start(self) -> None:
        """After the recovered kills are stored: every kill up to the start-up's count is accounted
        for (the ones without details as unobserved), durably, before any later kill."""
        if self.store is None or self.accounted_count is None or self.baseline is None:
            return
        with self._lock:
            self.accounted_count = max(self.accounted_count, self.baseline)
            count = self.accounted_count
        if self.store.account(count, durable=True) and self._legacy is not None:
            legacy_state.remove(self._legacy.path)  # the ledger holds it on disk now

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
        found = [r for r in recovered_kills(records) if r.pid not in seen_pids]
        boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        kills = [to_oom_kill(r, self.boot_id, boot_wall_ns) for r in found]
        with self._lock:
            for r, kill in zip(found, kills, strict=True):
                self._recovered_counts[kill.event_id] = r.kernel_counts
                self._window_ids.add(kill.event_id)
        if kills:
            log.info("%d OOM kill(s) happened while the probes were being attached; recovered from the kernel log",
                     len(kills))
        return kills

    def log_end(self) -> Optional[int]:
        """The sequence number of the last kernel log record the start-up reading held (None: not
        read): kills printed after it are the live source's, those up to it recovery's."""
        return max((r.seq for r in self._kmsg or ()), default=None)

    def release_snapshot(self) -> None:
        """The start-up reading of the kernel log is no longer needed."""
        self._kmsg = None

    # ---- while running ---------------------------------------------------------------------------
    def account(self, kill: OomKill) -> Optional[int]:
        """Count a kill about to be stored; the ledger's count to store with it (None: it does not
        move the count: no ledger, not a kernel kill, or a victim the kernel did not count).

        Called on the worker, in the order the kills are stored."""
        with self._lock:
            if kill.recovered:
                counts = self._recovered_counts.pop(kill.event_id, 1)
                if kill.event_id in self._window_ids:
                    # counted by the kernel after the start-up's reading, like a kill the probe caught:
                    # accounted for in the host's and its cgroup's comparison too, not unobserved
                    self._window_ids.discard(kill.event_id)
                    self.window_recovered += counts
                    self._tally_cgroup(kill, counts)
            elif kill.killer != KILLER_KERNEL or kill.killed is False:
                # a user-space killer's kill, or a task only marked because it was already exiting:
                # the kernel counts no OOM kill for either
                return None
            else:
                counts = 1
                self.observed_count += 1
                self._tally_cgroup(kill)
                if kill.oom_group_path:
                    counts += self._count_group_decision(kill)
            if self.accounted_count is None or self.store is None:
                return None
            self.accounted_count += counts
            return self.accounted_count

    def _tally_cgroup(self, kill: OomKill, counts: int = 1) -> None:
        if kill.cgroup_path:
            self._observed_by_cgroup[kill.cgroup_path] += counts
        else:
            self._observed_without_cgroup += counts

    def settle(self, count: int) -> None:
        """`count`: the kernel's kill count as read one refresh earlier; every kill of it the probe
        caught has been stored by now (`worker.Settle`). Those beyond what is accounted for were never
        caught: they are counted as unobserved, and the ledger moves past them."""
        with self._lock:
            if self.store is None or self.accounted_count is None or count <= self.accounted_count:
                return
            self.accounted_count = count
        self.store.account(count)

    def _count_group_decision(self, kill: OomKill) -> int:
        """1 if this kill is the first of a memory.oom.group decision (the kernel counts one kill of it twice)."""
        # members of one decision arrive together from one trigger; the context hook names it exactly
        key = kill.decision_id or (kill.trigger_tid, kill.oom_group_path)
        last = self._last_group_kill.get(key)
        first = last is None or kill.time_unix_nano - last > GROUP_WINDOW_NS
        if first:
            self.group_decisions += 1
            self._extra_by_cgroup[kill.cgroup_path or ""] += 1
        self._last_group_kill[key] = kill.time_unix_nano
        if len(self._last_group_kill) > 1024:
            self._last_group_kill = {k: t for k, t in self._last_group_kill.items()
                                     if kill.time_unix_nano - t <= GROUP_WINDOW_NS}
        return int(first)

    def _read_memcgs(self) -> Optional[dict[str, int]]:
        if not self.hierarchy:
            return None
        try:
            return memcg_oom_kills(self.hierarchy.mount, self.hierarchy.version)
        except OSError:
            return None

    def refresh(self, memcgs: bool = True) -> Optional[int]:
        """Read the kernel's counters (main loop); the count read one refresh earlier, for `settle`
        once the worker has handled every sample polled before this reading (None if unknown)."""
        now = vmstat_oom_kills(self.proc_root)
        by_cgroup = self._read_memcgs() if memcgs else None
        with self._lock:
            self._previous, self._latest = self._latest, now
            if by_cgroup is not None:
                self._memcg_previous, self._memcg_latest = self._memcg_latest, by_cgroup
                self.memcg_unobserved = self._memcg_missing()
            return self._previous

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
                host = max(0, (self._previous - self.baseline) - self.observed_count - self.group_decisions
                           - self.window_recovered)
            # a task that was already exiting is marked without being counted as a kill, so the
            # host-wide difference can hide a miss that its cgroup's own counter still shows
            return max(host, self.memcg_unobserved) + self.missed_without_details

    def accounted(self) -> Optional[int]:
        """The ledger's count as this run moved it (None: no ledger). A kill still in flight, or
        held in memory when the agent stops, is in it only once it is on disk."""
        with self._lock:
            return self.accounted_count

    def close(self) -> None:
        pass

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
