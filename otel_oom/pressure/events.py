"""What the pressure source tells the worker: plain values, no behaviour, no file descriptors.

The source (source.py, its own thread) turns every kernel notification into one of these and hands
it to `submit` (the agent's worker queue); the trackers around the kill (`around/`) consume them on
the worker thread. A cgroup is named by its path inside the memory hierarchy ("/a/b").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# CgroupSignal kinds: which notification fired (count: how many since the last one, at least 1)
USAGE = "usage"            # usage crossed the start level: the v1 memory.usage_in_bytes threshold
                           # eventfd, or a sweep found it there (v2, and v1 on a read-only cgroupfs)
VMPRESSURE = "vmpressure"  # v1 memory.pressure_level at VMPRESSURE_LEVEL: reclaim caused by its own limit
PSI = "psi"                # v2 memory.pressure trigger: its tasks stalled on memory
MAX = "max"                # v2 memory.events.local `max` rose: charges hit memory.max
HIGH = "high"              # v2 memory.events.local `high` rose: throttled over memory.high
OOM = "oom"                # out of memory: the v1 memory.oom_control eventfd (the OOMing cgroup and every
                           # cgroup below it), v2 memory.events.local `oom` rose, or (v1 on a read-only
                           # cgroupfs) `under_oom` at a sweep
KINDS = (USAGE, VMPRESSURE, PSI, MAX, HIGH, OOM)
# a notification that keeps firing is reported at most this often (the source's tick): a tracker that
# decides "no further signal for N seconds" must wait at least twice this to be sure of the news
REPORT_EVERY_S = 1.0
VMPRESSURE_LEVEL = "medium,local"  # what the v1 vmpressure eventfd is registered for


@dataclass(frozen=True)
class CgroupAppeared:
    """A limited memory cgroup is watched now: found, or its limit changed (watched again with it)."""
    path: str
    limit: int


@dataclass(frozen=True)
class CgroupUnlimited:
    """A watched cgroup's limit was lifted: no longer watched (its pressure episode ends)."""
    path: str


@dataclass(frozen=True)
class CgroupRemoved:
    """The cgroup at `path`, and everything below it, is gone."""
    path: str


@dataclass(frozen=True)
class CgroupSignal:
    path: str
    kind: str
    count: int = 1


@dataclass(frozen=True)
class HostPressure:
    """The host's PSI trigger fired: tasks stalled on memory for the start level within a window."""


SourceEvent = Union[CgroupAppeared, CgroupUnlimited, CgroupRemoved, CgroupSignal, HostPressure]


@dataclass(frozen=True)
class Batch:
    """Events of one wake-up, in order (at most `BATCH_MAX`): one queue slot instead of one each."""
    events: tuple[SourceEvent, ...]


BATCH_MAX = 8  # small values: a batch stays within the queue's flat charge for a non-sample item
Submitted = Union[SourceEvent, Batch]  # what goes to `submit`
EVENT_TYPES = (CgroupAppeared, CgroupUnlimited, CgroupRemoved, CgroupSignal, HostPressure, Batch)
