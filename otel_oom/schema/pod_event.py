"""A kill as a Kubernetes Event on the victim's Pod (core v1), and the words it says (pure).

`kubectl describe pod` lists a Pod's Events as Type, Reason, Age, From, Message; `kubectl get
events` as Last Seen, Type, Reason, Object, Message. The Event says, in its note (the Message):
the container, the process killed (name and pid) and whether it was the container's main process,
which memory limit was hit (the container's, the pod's, or one above the pod) and how much memory
the process held, then the kill's `oom.event.id`, which joins it to the `oom.kill` record.

    Warning  OOMKilled  12s  otel-oom  Container app: process dd (pid 21412, the container's main
             process) OOM-killed; the pod's memory limit (16.0 MiB) was hit; it held 15.4 MiB
             (anon 15.3 MiB, file 92.0 KiB, shmem 0 B). oom.event.id=...

The same facts are on the `oom.kubelet` record (`oom.victim.main`, `oom.memcg.scope`: see
kubelet.py) and the kill record itself carries the sizes and paths the note is made of. Names are
untrusted (the kernel's comm, the names whoever created the pod chose): escaped with
`text.for_terminal`, as the console does, since kubectl prints the note to a terminal as it is.

The Event's name is derived from the kill's `oom.event.id`: a second POST of the same kill (a retry
after a timeout whose request did arrive, the same kill handed over twice) is answered 409
AlreadyExists, and counts as done. It is a core v1 Event, as the kubelet's are, with `firstTimestamp`
= `lastTimestamp` = the kill's time and `count` 1: `kubectl describe` orders a Pod's Events by
`lastTimestamp`, so the kill shows in its place among the kubelet's (an events.k8s.io/v1 Event may not
set it, and is listed before all of them); From is `source.component`, otel-oom.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Optional

from ..text import for_terminal
from .records import KILLER_KERNEL, OomKill

API_VERSION = "v1"
REASON = "OOMKilled"
ACTION = "OOMKill"
TYPE = "Warning"
REPORTING_CONTROLLER = "otel-oom"
EVENT_ID_ANNOTATION = "otel-oom/event-id"
NOTE_MAX_BYTES = 1024  # the API server's limit on an Event's note (in bytes)
NAME_MAX = 253

# oom.memcg.scope: whose memory limit the kill hit, for a victim in a pod's container
SCOPE_CONTAINER = "container"  # the container's own cgroup
SCOPE_POD = "pod"              # the pod's cgroup (every container had a limit: the kubelet set their sum)
SCOPE_ANCESTOR = "ancestor"    # a cgroup above the pod: kubepods (the node's allocatable memory), a QoS class
SCOPE_NODE = "node"            # no cgroup limit: the node itself ran out of memory (a global OOM)


def wants_event(kill: OomKill) -> bool:
    """A kill in a Kubernetes pod the runtime named (namespace, pod name and uid), that killed."""
    return bool(kill.pod_uid and kill.pod_name and kill.pod_namespace and kill.killed is not False)


def limit_scope(kill: OomKill) -> Optional[str]:
    """SCOPE_* from `oom.memcg.path` against the victim's cgroup and its pod's; None when unknown."""
    if kill.constraint == "global":
        return SCOPE_NODE
    memcg, victim = kill.memcg_path, kill.cgroup_path
    if kill.constraint != "memcg" or not memcg or not victim:
        return None
    if memcg == victim:
        return SCOPE_CONTAINER if kill.container_id else None
    parent, _, _ = victim.rpartition("/")
    uid = kill.pod_uid or ""
    last = parent.rpartition("/")[2]
    if uid and memcg == parent and (uid in last or uid.replace("-", "_") in last):
        return SCOPE_POD
    if victim.startswith(memcg.rstrip("/") + "/"):
        return SCOPE_ANCESTOR
    return None


def human_size(n: Optional[int]) -> str:
    """As people read memory limits: 0 B, 512 B, 92.0 KiB, 16.0 MiB, 1.5 GiB."""
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def main_words(main: Optional[bool]) -> str:
    return {True: "the container's main process", False: "not the container's main process"}.get(
        main, "main process: unknown")  # type: ignore[arg-type]


def limit_words(kill: OomKill) -> str:
    scope, limit = limit_scope(kill), human_size(kill.memcg_limit_bytes)
    if scope == SCOPE_CONTAINER:
        return f"the container's memory limit ({limit}) was hit"
    if scope == SCOPE_POD:
        return f"the pod's memory limit ({limit}) was hit"
    if scope == SCOPE_ANCESTOR:
        path = kill.memcg_path or "?"
        if path.rpartition("/")[2] in ("kubepods", "kubepods.slice"):
            return f"the node's allocatable memory for pods ({limit}, {for_terminal(path)}) was used up"
        return f"the memory limit of {for_terminal(path)} ({limit}), above the pod, was hit"
    if scope == SCOPE_NODE:
        return "the node ran out of memory (no cgroup limit was hit)"
    return f"the limit hit is unknown (constraint {for_terminal(kill.constraint)})"


def note(kill: OomKill, main: Optional[bool]) -> str:
    """The Event's note: one line, at most NOTE_MAX_BYTES bytes."""
    k = kill
    container = for_terminal(k.k8s_container_name or k.container_name or "?")
    who = f"process {for_terminal(k.victim_comm)} (pid {k.victim_pid}, {main_words(main)})"
    if k.killer == KILLER_KERNEL:
        how = "OOM-killed"
    else:
        pid = k.killer_pid if k.killer_pid is not None else "?"
        how = f"killed by the user-space OOM killer {for_terminal(k.killer)} (pid {pid})"
    held = f"it held {human_size(k.rss_bytes)}"
    if k.rss_bytes is not None:
        held += (f" (anon {human_size(k.anon_rss_bytes)}, file {human_size(k.file_rss_bytes)}, "
                 f"shmem {human_size(k.shmem_rss_bytes)})")
    text = f"Container {container}: {who} {how}; {limit_words(k)}; {held}. oom.event.id={for_terminal(k.event_id)}"
    return _clip(text, NOTE_MAX_BYTES)


def _clip(text: str, limit: int) -> str:
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return text
    return raw[:limit - 3].decode("utf-8", "ignore") + "..."


def event_name(kill: OomKill) -> str:
    """`<pod>.oom-<16 hex of sha256(oom.event.id)>`: the same for every copy of one kill."""
    digest = hashlib.sha256(kill.event_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    suffix = f".oom-{digest}"
    pod = (kill.pod_name or "pod")[:NAME_MAX - len(suffix)].rstrip(".-")
    return f"{pod}{suffix}"


def kube_time(time_unix_nano: int) -> str:
    """A Kubernetes Time: RFC 3339 UTC, whole seconds."""
    return datetime.fromtimestamp(time_unix_nano // 10**9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_event(kill: OomKill, main: Optional[bool], node: str) -> dict[str, Any]:
    """The core v1 Event for a kill that `wants_event`, reported by the agent on `node`."""
    assert kill.pod_name and kill.pod_namespace and kill.pod_uid
    when = kube_time(kill.time_unix_nano)
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {"name": event_name(kill), "namespace": kill.pod_namespace,
                     "annotations": {EVENT_ID_ANNOTATION: kill.event_id}},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": kill.pod_namespace,
                           "name": kill.pod_name, "uid": kill.pod_uid},
        "reason": REASON,
        "message": note(kill, main),
        "type": TYPE,
        "source": {"component": REPORTING_CONTROLLER, "host": node},
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
        "action": ACTION,
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": node,
    }
