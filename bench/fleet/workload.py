"""What a fleet's agents report, and when: nodes with pods, a calm hour compressed, then a rollout.

- Calm: one hour of a quiet fleet squeezed into the first half of the run. Per node and real hour,
  on average `CALM_KILLS_PER_NODE_HOUR` OOM kills of a random pod of the node (each followed by
  its `oom.reclaim` 50 ms later) and `CALM_PRESSURE_PER_NODE_HOUR` memory-pressure episodes
  (`oom.pressure` start and end).
- Rollout: a bad release of one deployment (`shop/checkout`, one pod per node) OOM-kills its pod
  on every node within one minute (or the second half of a shorter run): pressure starts 1.5 s
  before the kill, the kill, its reclaim 50 ms later, the pressure ends 2 s after.

Records are built when they are sent (`build`), with the send time as their time, as the agent
stamps a kill when it happens; ids follow the agent's forms (`<boot id>:<boot ns>:<pid>` for a
kill, `<kill id>:reclaim`, `<episode id>:start|end`).
"""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Optional

from otel_oom.schema.records import OomKill, OomPressure, OomReclaim, Record

CALM_KILLS_PER_NODE_HOUR = 1.0
CALM_PRESSURE_PER_NODE_HOUR = 2.0
ROLLOUT_NAMESPACE, ROLLOUT_DEPLOYMENT = "shop", "checkout"
_CALM_WORKLOADS = [("batch", "report-worker", "python3"), ("search", "indexer", "java"), ("cache", "redis", "redis-server"),
                   ("payments", "api", "node"), ("ml", "trainer", "python3"), ("web", "frontend", "nginx")]
LIMIT = 512 << 20


@dataclass(frozen=True)
class Pod:
    namespace: str
    deployment: str
    name: str
    uid: str
    container_id: str
    container: str
    comm: str
    image: str

    @property
    def cgroup_path(self) -> str:
        return (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{self.uid.replace('-', '_')}.slice/"
                f"cri-containerd-{self.container_id}.scope")


@dataclass
class Node:
    index: int
    name: str
    machine_id: str
    boot_id: str
    pods: list[Pod]
    _pid: int = 1000
    _boot_ns: int = 3_600_000_000_000

    def next_ids(self) -> tuple[int, int]:
        self._pid += random.randint(7, 400)
        self._boot_ns += random.randint(1_000_000, 900_000_000)
        return self._pid, self._boot_ns


def _pod(rng: random.Random, node: int, namespace: str, deployment: str, comm: str) -> Pod:
    suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    return Pod(namespace, deployment, f"{deployment}-{rng.randrange(16**9):09x}-{suffix}",
               str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"{rng.getrandbits(256):064x}",
               deployment, comm, f"registry.example.com/{namespace}/{deployment}")


def make_nodes(count: int, seed: int = 1) -> list[Node]:
    rng = random.Random(seed)
    nodes = []
    for i in range(count):
        pods = [_pod(rng, i, ROLLOUT_NAMESPACE, ROLLOUT_DEPLOYMENT, "checkout")]
        pods += [_pod(rng, i, ns, dep, comm) for ns, dep, comm in rng.sample(_CALM_WORKLOADS, 3)]
        nodes.append(Node(i, f"fleet-node-{i:04d}", f"{rng.getrandbits(128):032x}",
                          str(uuid.UUID(int=rng.getrandbits(128), version=4)), pods))
    return nodes


@dataclass(order=True)
class Occurrence:
    """Something the agent on `node` reports at `at` seconds into the run."""
    at: float
    node: int = field(compare=False)
    kind: str = field(compare=False)        # "kill" | "reclaim" | "pressure_start" | "pressure_end"
    pod: Pod = field(compare=False)
    phase: str = field(compare=False)       # "calm" | "rollout"
    episode: str = field(compare=False, default="")
    follows: Optional["Occurrence"] = field(compare=False, default=None)  # a reclaim: its kill
    built: list = field(compare=False, default_factory=list)  # the record, once sent


def schedule(nodes: list[Node], seconds: float, seed: int = 2) -> list[Occurrence]:
    """Every occurrence of the run, in time order (see the module docstring)."""
    rng = random.Random(seed)
    calm_s = seconds / 2
    rollout_s = min(60.0, seconds - calm_s)
    rollout_at = seconds - rollout_s
    out: list[Occurrence] = []

    def kill(at: float, node: Node, pod: Pod, phase: str) -> None:
        k = Occurrence(at, node.index, "kill", pod, phase)
        out.append(k)
        out.append(Occurrence(at + 0.05, node.index, "reclaim", pod, phase, follows=k))

    def pressure(start: float, end: float, node: Node, pod: Pod, phase: str) -> None:
        episode = f"{node.boot_id}:pressure:{rng.getrandbits(48):012x}"
        out.append(Occurrence(max(0.0, start), node.index, "pressure_start", pod, phase, episode))
        out.append(Occurrence(end, node.index, "pressure_end", pod, phase, episode))

    for node in nodes:
        # calm: Poisson arrivals at the hourly rates (expovariate gives hours), an hour squeezed into calm_s
        for rate, what in ((CALM_KILLS_PER_NODE_HOUR, "kill"), (CALM_PRESSURE_PER_NODE_HOUR, "pressure")):
            t = rng.expovariate(rate) * calm_s
            while t < calm_s:
                pod = rng.choice(node.pods[1:])
                if what == "kill":
                    kill(t, node, pod, "calm")
                else:
                    pressure(t, min(calm_s, t + rng.uniform(0.5, 4.0)), node, pod, "calm")
                t += rng.expovariate(rate) * calm_s
        # rollout: the checkout pod of every node, once, within the rollout window
        t = rollout_at + rng.uniform(2.0, max(2.5, rollout_s - 3.0))
        checkout = node.pods[0]
        pressure(t - 1.5, t + 2.0, node, checkout, "rollout")
        kill(t, node, checkout, "rollout")
    return sorted(out)


def build(occ: Occurrence, node: Node, now_ns: int) -> Record:
    """The record the agent sends for `occ`, stamped `now_ns` (a kill: when it happened)."""
    pod = occ.pod
    if occ.kind == "kill":
        pid, boot_ns = node.next_ids()
        rss = random.randint(LIMIT - (40 << 20), LIMIT)
        kill = OomKill(
            event_id=f"{node.boot_id}:{boot_ns}:{pid}", time_unix_nano=now_ns, boot_time_ns=boot_ns, hook="tp_btf",
            context_hook="none", recovered=False, victim_pid=pid, victim_tid=pid, victim_comm=pod.comm,
            victim_ppid=pid - 3, victim_uid=1000, oom_score_adj=984, total_vm_bytes=rss + (64 << 20),
            anon_rss_bytes=rss - (8 << 20), file_rss_bytes=8 << 20, shmem_rss_bytes=0, pgtables_bytes=1 << 20,
            cgroup_path=pod.cgroup_path, cgroup_line=f"0::{pod.cgroup_path}", container_runtime="containerd",
            container_id=pod.container_id, pod_uid=pod.uid, pod_qos_class="burstable", container_name=pod.container,
            container_image=pod.image, container_image_tag="1.4.2", pod_name=pod.name, pod_namespace=pod.namespace,
            k8s_container_name=pod.container, restart_count=0, names_source="cache", trigger_pid=pid,
            trigger_tid=pid, trigger_comm=pod.comm, constraint="memcg", constraint_source="derived",
            memcg_path=pod.cgroup_path, memcg_limit_bytes=LIMIT, memcg_usage_bytes=LIMIT, memcg_source="derived",
            killed=True, victim_source="task")
        occ.built.append(kill)
        return kill
    if occ.kind == "reclaim":
        assert occ.follows is not None and occ.follows.built, "a reclaim is built after its kill"
        k: OomKill = occ.follows.built[0]
        return OomReclaim(event_id=f"{k.event_id}:reclaim", time_unix_nano=now_ns, kill_event_id=k.event_id,
                          method="exit_mmap", duration_ns=now_ns - k.time_unix_nano, victim_pid=k.victim_pid,
                          victim_tid=k.victim_tid, victim_comm=k.victim_comm, rss_bytes=k.rss_bytes,
                          cgroup_path=pod.cgroup_path, container_runtime="containerd", container_id=pod.container_id,
                          pod_uid=pod.uid, memcg_path=pod.cgroup_path)
    state = "start" if occ.kind == "pressure_start" else "end"
    return OomPressure(event_id=f"{occ.episode}:{state}", time_unix_nano=now_ns, state=state, scope="memcg",
                       source="usage", episode_id=occ.episode, cgroup_path=pod.cgroup_path,
                       container_runtime="containerd", container_id=pod.container_id, pod_uid=pod.uid,
                       limit_bytes=LIMIT, usage_bytes=int(LIMIT * 0.93), psi_some_avg10=12.5, psi_full_avg10=3.1,
                       duration_ns=None if state == "start" else 2_000_000_000,
                       peak_usage_bytes=None if state == "start" else LIMIT,
                       ended_by=None if state == "start" else "cleared")
