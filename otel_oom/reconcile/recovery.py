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
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from typing import Optional

from ..attribution.cgroups import MemoryHierarchy
from ..model import OomKill
from .kcounters import memcg_oom_kills, vmstat_oom_kills

log = logging.getLogger("otel_oom.recovery")

STATE_FILE = "reconcile.json"
# at most this many recovered kills are replayed at one start; the rest stay counted as unobserved
MAX_RECOVERED = 1000
STATE_BYTES = 256  # the state record's fixed size on disk
GROUP_WINDOW_NS = 1_000_000_000  # victims of one group decision are marked within this


class Reconciler:
    def __init__(self, state_dir: Optional[str], hierarchy: Optional[MemoryHierarchy], boot_id: str,
                 proc_root: str = "/proc", kmsg_path: str = "/dev/kmsg") -> None:
        self.state_path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self.hierarchy = hierarchy
        self.boot_id = boot_id
        self.proc_root = proc_root
        self.kmsg_path = kmsg_path
        self._lock = threading.RLock()
        self.observed_count = 0
        self.missed_without_details = 0
        # read after the probes are attached: every later kill is either observed or unobserved
        self.baseline = vmstat_oom_kills(proc_root)
        self._previous = self._latest = self.baseline
        # read now, before the worker's first save can overwrite the previous run's state
        self._prior_state = self._load()
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

    def observed(self, kill: OomKill) -> None:
        """Count a kill the probe delivered; call it once the kill is in the spool.

        The state is saved at once (without fsync: a SIGKILL keeps the page cache, and after a
        power loss the boot id differs anyway), so a restart never replays a spooled kill again
        from the kernel log as a "recovered" duplicate with another event id.
        """
        with self._lock:
            self.observed_count += 1
            if kill.cgroup_path:
                self._observed_by_cgroup[kill.cgroup_path] += 1
            else:
                self._observed_without_cgroup += 1
            if kill.oom_group_path:
                self._count_group_decision(kill)
        self.save(durable=False)

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
            return max(self._previous, self.baseline + self.observed_count + self.group_decisions)

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
            state = {"boot_id": self.boot_id, "vmstat_oom_kill": accounted, "saved_at": time.time()}
            record = json.dumps(state).encode().ljust(STATE_BYTES)
            try:
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

    def _load(self) -> Optional[dict]:
        if not self.state_path:
            return None
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            return state if isinstance(state, dict) else None
        except (OSError, ValueError):
            return None

    def recover_missed(self) -> list[OomKill]:
        """Kills the kernel counted while no agent was running, with what the kernel log says of them."""
        if not self.state_path or self.baseline is None:
            return []
        state = self._prior_state
        self.save()
        if state is None:
            # first start on this host: there was no agent before, so nothing was "missed"
            if self.baseline:
                log.info("%d OOM kill(s) happened on this boot before otel-oom's first start here; "
                         "not replayed (no earlier state in %s)", self.baseline, self.state_path)
            return []
        if state.get("boot_id") == self.boot_id:
            missed = self.baseline - int(state.get("vmstat_oom_kill", self.baseline))
        else:
            missed = self.baseline  # rebooted since the last run: every kill of this boot was missed
        if missed <= 0:
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
        from .kmsg import read_kmsg
        from .oom_report import recovered_kills, to_oom_kill

        try:
            records = read_kmsg(self.kmsg_path)
        except OSError as e:
            log.warning("cannot read the kernel log %s (%s): recovered kills get no details; "
                        "grant CAP_SYSLOG or mount /dev/kmsg", self.kmsg_path, e.strerror)
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
