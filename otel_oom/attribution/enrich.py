"""From what the kernel reported (`OomEvent`) to the attributed record (`OomKill`).

Attribution: the victim's memory-cgroup path comes from the names the BPF program captured at the
kill (so a cgroup removed right after the kill still resolves), falling back to the inode lookup
when the path was deeper than captured; the path then names the container and the pod.
The OOMing memory cgroup comes from the context hook when one ran; without it, it is derived
from what the kernel holds at mark_victim for each level the victim and the trigger share
(`derive_oom_memcg`, evidence in `oom.memcg.evidence`): the highest level holding the memcg OOM
lock (`oom_lock`, kernels with the cgroup v1 code); else the lowest level whose OOM count rose
since the agent last saw it (`oom_events`); else the lowest whose usage sits at its limit
(`usage`); else the lowest whose watermark reached its limit (`watermark`: never lowered by the
reaper's uncharge, so a kill right after a reaped victim still finds its memcg). For the members
of a memory.oom.group kill after the first, the memcg derived for the first. A user-space
killer's SIGKILL (hook signal_generate) carries the killer in the trigger fields: it is reported
with `oom.killer` naming it and no OOM decision.
Last, the container runtime's names for that container and pod (`runtime.cache`), within a
bounded wait.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Optional

from ..cgroupfs import memcg
from ..cgroupfs.hierarchy import MemoryHierarchy, cgroup_line
from ..cgroupfs.tree import CgroupResolver, path_from_names
from ..kernel.wire import CGROUP_NAME_LEN, HOOK_SIGNAL, MemcgLevel, OomEvent
from ..schema.records import KILLER_KERNEL, SOURCE_DERIVED, SOURCE_KERNEL, SOURCE_NONE, OomKill
from ..text import to_kernel_bytes
from . import clock
from .containers import parse_cgroup_path

if TYPE_CHECKING:
    from ..reconcile.oom_report import LoggedKill
    from .runtime.cache import RuntimeNames

log = logging.getLogger("otel_oom.enrich")

# memcg OOM fires when a charge does not fit: usage sits within a charge batch (64 pages per CPU),
# a huge page, or a bit of slack for other CPUs' racing charges below the limit
_AT_LIMIT_SLACK_BYTES = 4 << 20


def at_limit(level: MemcgLevel) -> bool:
    if level.limit_bytes is None:
        return False
    slack = max(_AT_LIMIT_SLACK_BYTES, level.limit_bytes // 64)
    return level.usage_bytes + slack >= level.limit_bytes


def memcg_paths(levels: tuple[MemcgLevel, ...], leaf_path: str) -> list[str]:
    """Path of each captured level, leaf first, given the leaf's path."""
    paths = []
    path = leaf_path
    for _ in levels:
        paths.append(path or "/")
        path = path.rsplit("/", 1)[0]
    return paths


def peaked_at_limit(level: MemcgLevel) -> bool:
    """The watermark (highest usage since reset) reached the limit: an uncharge does not lower it."""
    if level.limit_bytes is None or level.watermark_bytes is None:
        return False
    slack = max(_AT_LIMIT_SLACK_BYTES, level.limit_bytes // 64)
    return level.watermark_bytes + slack >= level.limit_bytes


def derive_oom_memcg(ev: OomEvent, oom_counts: Optional[dict[int, int]] = None) -> Optional[tuple[int, str]]:
    """(index in ev.victim_memcgs, evidence) of the memcg whose limit was hit, when no context hook
    told us; `oom_counts`: each memcg's OOM count when the agent last saw it."""
    trigger_ids = set(ev.trigger_memcg_ids)
    shared = [(i, lvl) for i, lvl in enumerate(ev.victim_memcgs) if lvl.id in trigger_ids]
    locked = [i for i, lvl in shared if lvl.oom_lock]
    if locked:
        return max(locked), "oom_lock"  # held for the OOMing memcg and the cgroups below it
    for i, lvl in shared:
        before = (oom_counts or {}).get(lvl.id)
        if lvl.oom_events is not None and before is not None and lvl.oom_events > before and lvl.limit_bytes:
            return i, "oom_events"
    for i, lvl in shared:
        if at_limit(lvl):
            return i, "usage"
    for i, lvl in shared:
        if peaked_at_limit(lvl):
            return i, "watermark"
    return None


# memory.oom.group: the kernel kills every member inside one oom_kill_process call, printing a line
# to the console per member; members follow each other by well under this
_GROUP_GAP_NS = 1_000_000_000
_LEARNED_MAX = 4096  # cgroup paths remembered from captured chains (ids are never reused within a boot)


class Enricher:
    def __init__(self, hierarchy: Optional[MemoryHierarchy], boot_id: str,
                 resolver: Optional[CgroupResolver] = None, proc_root: str = "/proc",
                 names: Optional["RuntimeNames"] = None) -> None:
        self.hierarchy = hierarchy
        self.names = names  # container and pod names from the runtimes, when any socket is configured
        self.boot_id = boot_id
        self.resolver = resolver
        self.proc_root = proc_root
        # (trigger tgid, kernel timestamp, memcg id) of the last derived memcg OOM (no context hook)
        self._last_derived: Optional[tuple[int, int, int]] = None
        # memcg id -> its OOM count at the last event that captured it (the oom_events evidence)
        self._oom_counts: dict[int, int] = {}
        # cgroup id -> path, learned from the chains the kernel captured with names: a later victim
        # of the same decision (a group member reported by the pid-only or tracepoint path) names its
        # OOMing memcg by id only, and that cgroup may be newer than the resolver's last scan
        self._learned: dict[int, str] = {}

    def _learn(self, levels: tuple[MemcgLevel, ...], paths: list[str]) -> None:
        for level, path in zip(levels, paths, strict=True):
            self._learned[level.id] = path
        while len(self._learned) > _LEARNED_MAX:
            del self._learned[next(iter(self._learned))]  # oldest first

    def path_for_id(self, cgroup_id: int) -> Optional[str]:
        """A memory cgroup's path from its id: learned from an earlier event, else the inode scan."""
        path = self._learned.get(cgroup_id)
        if path is None and self.resolver:
            path = self.resolver.path_for_id(cgroup_id)
        return path

    def victim_path(self, ev: OomEvent) -> Optional[str]:
        if ev.victim_memcgs and ev.cgroup_name_cut:
            return self._path_with_cut_names(ev.victim_memcgs)
        if ev.victim_memcgs and ev.victim_memcgs_complete:
            return path_from_names([lvl.name for lvl in ev.victim_memcgs])
        if ev.victim_memcgs:
            path = self.path_for_id(ev.victim_memcgs[0].id)
            if path:
                return path
        if ev.victim_memcgs:
            # deeper than captured and already gone: the captured tail, marked as partial
            return "/..." + path_from_names([lvl.name for lvl in ev.victim_memcgs] + [""])
        return self._path_from_proc(ev.victim_pid)

    def _path_with_cut_names(self, levels: tuple[MemcgLevel, ...]) -> Optional[str]:
        """A name was cut in the kernel, and a workload can choose one that is cut into another
        cgroup's path: only ids say where the victim was. The leaf's id, else the id of the lowest
        level whose name may be cut (it fills the buffer) joined with the intact names below it;
        unknown when both are gone."""
        path = self.path_for_id(levels[0].id)
        if path:
            return path
        cut = [i for i, lvl in enumerate(levels) if len(to_kernel_bytes(lvl.name)) >= CGROUP_NAME_LEN - 1]
        base = self.path_for_id(levels[min(cut)].id) if cut else None
        if base is None:
            return None
        return base.rstrip("/") + "".join("/" + lvl.name for lvl in reversed(levels[:min(cut)]))

    def _path_from_proc(self, pid: int) -> Optional[str]:
        # the tracepoint-only path (no task pointer): the victim may still be exiting
        if not self.hierarchy:
            return None
        want = "memory" if self.hierarchy.version == 1 else ""
        found = None
        try:
            with open(f"{self.proc_root}/{pid}/cgroup") as f:
                for line in f:
                    _, controllers, path = line.rstrip("\n").split(":", 2)
                    if (want and want in controllers.split(",")) or (not want and controllers == ""):
                        found = path
                        break
        except (OSError, ValueError):
            return None
        if found is None:
            return None
        if want:
            # v1 shows every exiting task in the root cgroup: "/" is only believed of a live task
            if found == "/" and self._exiting(pid):
                return None
        elif found.endswith(" (deleted)"):
            found = found[: -len(" (deleted)")]  # v2: the cgroup was removed before the task was reaped
        return found

    def _exiting(self, pid: int) -> bool:
        """True when the task is exiting (PF_EXITING) or already gone."""
        try:
            with open(f"{self.proc_root}/{pid}/stat") as f:
                stat = f.read()
            return bool(int(stat.rsplit(")", 1)[1].split()[6]) & 0x4)
        except (OSError, ValueError, IndexError):
            return True

    def oom_group(self, path: Optional[str], oom_memcg: Optional[str],
                  levels: tuple[MemcgLevel, ...] = ()) -> Optional[str]:
        """The cgroup whose memory.oom.group made this a group kill (cgroup v2), walking up from the
        victim to the OOM domain as the kernel does and keeping the highest one set; None otherwise.
        From the victim's captured cgroup chain (`levels`), where the kernel read memory.oom.group at
        the kill; else from the files, read now: a cgroup already removed reads as not grouped (so
        two agents, or two victims of one decision, could disagree)."""
        if not path or not self.hierarchy or self.hierarchy.version != 2:
            return None
        paths = memcg_paths(levels, path) if levels and not path.startswith("/...") else []
        if paths and all(lvl.oom_group is not None for lvl in levels) and (oom_memcg in paths or paths[-1] == "/"):
            group = None
            for level, level_path in zip(levels, paths, strict=True):
                if level.oom_group:
                    group = level_path
                if level_path == oom_memcg:
                    break
            return group
        group, current = None, path
        while current not in ("", "/"):
            if memcg.oom_group(self.hierarchy.directory(current)):
                group = current
            if current == oom_memcg:
                break
            current = current.rsplit("/", 1)[0]
        return group

    def _tgid_from_proc(self, pid: int) -> Optional[int]:
        try:
            with open(f"{self.proc_root}/{pid}/status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def _same_group_kill(self, ev: OomEvent) -> Optional[int]:
        """A memory.oom.group member killed right after the chosen victim, by the same trigger, in
        the memcg derived for it: the members exiting meanwhile may have brought usage below the
        at-limit test, but it is the same decision."""
        if self._last_derived is None:
            return None
        trigger, ts, memcg_id = self._last_derived
        if trigger != ev.trigger_tgid or not 0 <= ev.timestamp_ns - ts <= _GROUP_GAP_NS:
            return None
        ids = [lvl.id for lvl in ev.victim_memcgs]
        if memcg_id in ids and memcg_id in ev.trigger_memcg_ids:
            return ids.index(memcg_id)
        return None

    def enrich(self, ev: OomEvent) -> OomKill:
        path = self.victim_path(ev)
        tgid = ev.victim_tgid or self._tgid_from_proc(ev.victim_pid) or ev.victim_pid

        constraint, constraint_source = "unknown", SOURCE_NONE
        memcg_path = memcg_limit = memcg_usage = None
        memcg_source = SOURCE_NONE
        paths = memcg_paths(ev.victim_memcgs, path) if path and ev.victim_memcgs else []
        if paths and path and not path.startswith("/..."):  # never learn from a partial (deeper than captured) path
            self._learn(ev.victim_memcgs, paths)
        evidence = None
        if ev.hook == HOOK_SIGNAL:
            pass  # a user-space killer decided: no kernel OOM decision to report
        elif ev.context:
            constraint, constraint_source = ev.constraint, SOURCE_KERNEL
            if ev.memcg_id:
                memcg_limit, memcg_usage, memcg_source = ev.memcg_limit_bytes, ev.memcg_usage_bytes, SOURCE_KERNEL
                ids = [lvl.id for lvl in ev.victim_memcgs]
                if ev.memcg_id in ids and paths:
                    memcg_path = paths[ids.index(ev.memcg_id)]
                else:
                    memcg_path = self.path_for_id(ev.memcg_id)
        else:
            found = derive_oom_memcg(ev, self._oom_counts)
            idx, evidence = found if found else (self._same_group_kill(ev), None)
            if idx is not None and evidence is None:
                evidence = "group"
            if idx is not None:
                self._last_derived = (ev.trigger_tgid, ev.timestamp_ns, ev.victim_memcgs[idx].id)
                level = ev.victim_memcgs[idx]
                constraint, constraint_source = "memcg", SOURCE_DERIVED
                memcg_limit, memcg_usage, memcg_source = level.limit_bytes, level.usage_bytes, SOURCE_DERIVED
                memcg_path = paths[idx] if paths else None

        for level in ev.victim_memcgs:
            if level.oom_events is not None:
                self._oom_counts[level.id] = level.oom_events
        while len(self._oom_counts) > _LEARNED_MAX:
            del self._oom_counts[next(iter(self._oom_counts))]
        kill = dataclasses.replace(
            bare_kill(ev, self.boot_id),
            victim_pid=tgid,
            cgroup_path=path,
            constraint=constraint,
            constraint_source=constraint_source,
            memcg_path=memcg_path,
            memcg_limit_bytes=memcg_limit,
            memcg_usage_bytes=memcg_usage,
            memcg_source=memcg_source,
            oom_group_path=self.oom_group(path, memcg_path, ev.victim_memcgs),
            cgroup_truncated=ev.cgroup_name_cut and path is None,
            memcg_evidence=evidence,
            **self._workload(path),
        )
        # last: a bounded wait at most (the cache is warm before the kill), never an exception
        return self.names.annotate(kill) if self.names is not None else kill

    def attribute(self, kill: OomKill) -> OomKill:
        """A kill whose victim's cgroup the kernel told already (the kmsg backend's, from its report):
        what that path says (the /proc form, container, pod), the memory.oom.group cgroup when the
        log did not name it, and last the runtime's names."""
        path = kill.cgroup_path
        kill = dataclasses.replace(kill, oom_group_path=kill.oom_group_path or self.oom_group(path, kill.memcg_path),
                                   **self._workload(path))
        return self.names.annotate(kill) if self.names is not None else kill

    def _workload(self, path: Optional[str]) -> dict[str, Any]:
        """The record's fields a cgroup path gives: process.linux.cgroup, container and pod."""
        workload = parse_cgroup_path(path) if path else None
        return dict(
            cgroup_line=cgroup_line(self.hierarchy, path) if (path and self.hierarchy) else None,
            container_runtime=workload.runtime if workload else None,
            container_id=workload.container_id if workload else None,
            pod_uid=workload.pod_uid if workload else None,
            pod_qos_class=workload.qos_class if workload else None,
        )


def logged_kill(logged: "LoggedKill", boot_id: str) -> OomKill:
    """A kill the kmsg backend read from the kernel's report, with only what its lines say (a live
    kill: `oom.recovered` false); `Enricher.attribute` adds what its cgroup path says."""
    from ..reconcile.oom_report import to_oom_kill

    return to_oom_kill(logged, boot_id, clock.to_wall_ns(0, boot_clock=False), recovered=False)


def bare_kill(ev: OomEvent, boot_id: str) -> OomKill:
    """The kill with only what the kernel reported: no cgroup, container, pod or derived memcg.

    What the agent delivers when attribution fails for an event (the failure is counted): it shares
    no code with the attribution above, so the same fault cannot strike twice.
    """
    user_space = ev.hook == HOOK_SIGNAL  # the trigger fields hold the killer, who sent SIGKILL
    return OomKill(
        event_id=clock.event_id(boot_id, ev.timestamp_ns, ev.victim_pid),
        time_unix_nano=clock.to_wall_ns(ev.timestamp_ns, ev.boot_clock),
        boot_time_ns=ev.timestamp_ns if ev.boot_clock else 0,
        hook=ev.hook,
        context_hook=ev.context_hook,
        recovered=False,
        victim_pid=ev.victim_tgid or ev.victim_pid,
        victim_tid=ev.victim_pid,
        victim_comm=ev.victim_comm,
        victim_ppid=ev.victim_ppid,
        victim_uid=ev.victim_uid,
        oom_score_adj=ev.oom_score_adj,
        total_vm_bytes=ev.total_vm_bytes,
        anon_rss_bytes=ev.anon_rss_bytes,
        file_rss_bytes=ev.file_rss_bytes,
        shmem_rss_bytes=ev.shmem_rss_bytes,
        pgtables_bytes=ev.pgtables_bytes,
        trigger_pid=None if user_space else ev.trigger_tgid,
        trigger_tid=None if user_space else ev.trigger_pid,
        trigger_comm=None if user_space else ev.trigger_comm,
        killer=ev.trigger_comm if user_space else KILLER_KERNEL,
        killer_pid=ev.trigger_tgid if user_space else None,
        constraint=ev.constraint if ev.context else "unknown",
        constraint_source=SOURCE_KERNEL if ev.context else SOURCE_NONE,
        domain_bytes=ev.domain_bytes,
        badness_points=ev.badness_points,
        gfp_mask=ev.gfp_mask,
        order=ev.order,
        decision_id=f"{boot_id}:{ev.decision_ns}:{ev.trigger_tgid}" if ev.context else None,
        killed=ev.killed,
        victim_source=ev.victim_source,
        task_hook=ev.task_hook if ev.task_hook != "none" else None,
    )
