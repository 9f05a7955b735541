"""Which memory cgroup a kill was in when the kernel log does not say: the kill counters that rose.

Under a storm the kernel rate-limits the OOM report's header, summary line included, while every
kill still gets its "Killed process" line: such a kill names its victim but not the victim's cgroup.
The kernel also counts every kill twice over: host-wide (/proc/vmstat `oom_kill`) and in the
victim's own memory cgroup (v1 `memory.oom_control`, v2 `memory.events.local` `oom_kill`). So
between two readings of the counters, each kill line read in between raised the host count by one
and exactly one cgroup's count by one. When the host count rose by exactly the kill lines read
(none in flight, none lost), the kills whose cgroup the log named are taken off their cgroups'
rises, and what is left rose in exactly one cgroup by exactly the number of kills without a cgroup,
every one of those kills was in that cgroup. Anything else (two cgroups, a cgroup removed, a line
lost, a kill between two counter reads) leaves the cgroup out: never guessed.

Reading every memory cgroup costs about 0.05 ms each, so it is done only for a batch of kill lines
holding such a kill, and at most a tenth of the time (`DUTY`), or once every `MAX_WAIT_S` on a
node whose cgroups take longer: the kmsg source holds such a batch until the next reading is due.
"""
from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..reconcile.kcounters import memcg_oom_kills, vmstat_oom_kills

if TYPE_CHECKING:
    from ..cgroupfs.hierarchy import MemoryHierarchy

log = logging.getLogger("otel_oom.kernel")

DUTY = 0.1  # the share of time the counters may be read during a storm
MAX_WAIT_S = 0.5  # the longest a batch waits for its reading (a node with very many memory cgroups)


@dataclass(frozen=True)
class Reading:
    total: Optional[int]         # host-wide kills; None: it moved while the cgroups were read
    by_cgroup: dict[str, int]    # cgroup path -> its own kill count


class KillCounterCgroups:
    """`read_total`: the host's kill count; `read_cgroups`: every memory cgroup's own kill count
    (`reconcile.kcounters`); either may raise OSError (that reading is then skipped)."""

    def __init__(self, read_total: Callable[[], Optional[int]], read_cgroups: Callable[[], dict[str, int]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read_total, self._read_cgroups, self._clock = read_total, read_cgroups, clock
        self._base: Optional[Reading] = None
        self._known: Counter[str] = Counter()  # kill lines since the base, by the cgroup the log named
        self._unknown = 0                     # kill lines since the base whose cgroup is not known
        self._next_reading = 0.0
        self.assigned = 0                     # kills given a cgroup this way (for tests and the status)

    def start(self) -> None:
        """The first reading, once the log read so far is taken into account."""
        self._base = self._reading()

    def line(self, cgroup: Optional[str]) -> None:
        """A kill line read from the log (a kill, or the group scan's second kill of one): the kernel
        counted it once, in `cgroup` when the log named it."""
        if cgroup is None:
            self._unknown += 1
        else:
            self._known[cgroup] += 1

    def wait_s(self) -> float:
        """Seconds until the next reading is due (the duty cycle); 0: now."""
        return max(0.0, self._next_reading - self._clock())

    def read(self) -> Optional[Reading]:
        """A reading now (None if the counters could not be read); the next is due after the duty cycle's pause."""
        t0 = self._clock()
        reading = self._reading()
        took = self._clock() - t0
        self._next_reading = self._clock() + min(took * (1 / DUTY - 1), MAX_WAIT_S)
        return reading

    def consistent(self, reading: Optional[Reading]) -> bool:
        """Every kill counted between the base and `reading` has its line read, and only those."""
        base = self._base
        if base is None or reading is None or base.total is None or reading.total is None:
            return False
        return reading.total - base.total == sum(self._known.values()) + self._unknown

    def cgroup_of_unknown(self, reading: Optional[Reading]) -> Optional[str]:
        """The one cgroup every kill line without a cgroup since the base was in, or None."""
        if not self._unknown or not self.consistent(reading):
            return None
        assert reading is not None and self._base is not None
        before = self._base.by_cgroup
        left = {path: n - before.get(path, 0) - self._known[path] for path, n in reading.by_cgroup.items()}
        if any(n < 0 for n in left.values()):
            return None  # a cgroup removed and made again, or a line that named another cgroup
        rose = [path for path, n in left.items() if n > 0]
        if len(rose) == 1 and left[rose[0]] == self._unknown:
            return rose[0]
        return None

    def rebase(self, reading: Optional[Reading], assigned: int = 0) -> None:
        """`reading` is the new base: the lines read before it are accounted for."""
        if reading is None or reading.total is None:
            return  # no instant to count from: the lines stay counted against the old base
        self._base = reading
        self._known.clear()
        self._unknown = 0
        self.assigned += assigned

    def _reading(self) -> Optional[Reading]:
        try:
            before = self._read_total()
            by_cgroup = self._read_cgroups()
            after = self._read_total()
        except OSError as e:
            log.debug("kill counters unreadable (%s): kills without a summary line keep no cgroup", e)
            return None
        return Reading(total=after if before == after else None, by_cgroup=by_cgroup)


def for_hierarchy(hierarchy: Optional["MemoryHierarchy"], proc_root: str = "/proc") -> Optional[KillCounterCgroups]:
    """The counters of this host: /proc/vmstat and every memory cgroup of `hierarchy` (None: no hierarchy)."""
    if hierarchy is None:
        return None
    return KillCounterCgroups(functools.partial(vmstat_oom_kills, proc_root),
                              functools.partial(memcg_oom_kills, hierarchy.mount, hierarchy.version))
