"""Plumbing shared by the benchmarks: the machine, a running agent, a receiver, process figures."""
from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

from otel_oom.schema.records import OomKill
from testing.agent_process import REPO, AgentProcess, agent_env
from testing.otlp_receiver import OtlpGrpcReceiver

__all__ = ["REPO", "AgentProcess", "agent_env", "OtlpGrpcReceiver", "OomKill"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
# where spools go: the default spool (/var/lib/otel-oom/spool) is on this filesystem; /tmp may be tmpfs
DISK_DIR = "/var/tmp"


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    import google.protobuf
    import grpc
    import opentelemetry.sdk.version as sdkv

    from otel_oom import __version__
    from otel_oom.kernel import libbpf

    return {
        "kernel": platform.release(),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem / 2**20:.1f} GiB",
        "disk (spool)": f"{fs_type(DISK_DIR)} on {block_device(DISK_DIR)}",
        "python": platform.python_version(),
        "otel-oom": __version__,
        "libbpf": libbpf.version(),
        "opentelemetry-sdk": sdkv.__version__,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def fs_type(path: str) -> str:
    # findmnt names ext4 as such (stat -f says "ext2/ext3")
    return ((run(["findmnt", "-n", "-o", "FSTYPE", "-T", path]).stdout.strip().splitlines() or [""])[-1]
            or run(["stat", "-f", "-c", "%T", path]).stdout.strip() or "?")


def block_device(path: str) -> str:
    out = run(["df", "--output=source", path]).stdout.split()
    return out[-1] if out else "?"


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    q = statistics.quantiles(v, n=100, method="inclusive") if len(v) > 1 else v * 99
    return {"n": len(v), "p50": q[49], "p90": q[89], "p99": q[98], "max": v[-1]}


def start_agent(args: list[str], endpoint: str | None, spool: str | None, **env: str) -> AgentProcess:
    spool_args = [f"--spool-dir={spool}"] if spool else ["--no-spool"]
    return AgentProcess([*args, *spool_args], agent_env(endpoint, **env), ready_timeout=60)


def spool_dir(base: str = DISK_DIR) -> str:
    """A fresh directory for a spool (the agent creates `spool` inside it); remove with shutil.rmtree."""
    return tempfile.mkdtemp(prefix="otel-oom-bench-", dir=base)


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def latest_metric(rcv: OtlpGrpcReceiver, name: str, attrs: dict | None = None):
    """Value of the newest point of metric `name` (whose attributes include `attrs`), or None."""
    pts = [p for p in rcv.metric_points(name) if all(p["attributes"].get(k) == v for k, v in (attrs or {}).items())]
    return pts[-1].get("value") if pts else None


POD_UID = "8f3c2a71-5b2e-4c1d-9a7e-2f6b4d1e0c9a"
CONTAINER_ID = "4b6f0d1e9c2a7b3f5e8d6c1a0b9e7f2d3c5a8b1e6d4f7a9c0b2e5d8f1a3c6b9e"
# a container's memory cgroup under the systemd cgroup driver (containerd), relative to the hierarchy
KUBEPODS_PATH = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
                 f"cri-containerd-{CONTAINER_ID}.scope")


class RecordCounter:
    """Log records the receiver accepted whose string attribute `key` satisfies `match`, counted
    incrementally from its raw requests (cheap enough to poll): real kills elsewhere on the host,
    which the agent also reports, must not count as the benchmark's."""

    def __init__(self, rcv: OtlpGrpcReceiver, key: str, match) -> None:
        self.rcv, self.key, self.match = rcv, key, match
        self.seen, self.count, self.first_ns, self.last_ns = 0, 0, 0, 0

    def __call__(self) -> int:
        with self.rcv._cond:  # the receiver keeps (received_ns, request) per accepted export
            new = self.rcv._raw["logs"][self.seen:]
            self.seen += len(new)
        for received_ns, req in new:
            for rl in req.resource_logs:
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        if any(kv.key == self.key and self.match(kv.value.string_value) for kv in lr.attributes):
                            self.count += 1
                            self.first_ns = self.first_ns or received_ns
                            self.last_ns = max(self.last_ns, received_ns)
        return self.count


def typical_kill(i: int = 0, path: str | None = None) -> OomKill:
    """A realistic Kubernetes OOM kill as this machine reports it (no context hook: memcg derived):
    a JVM in a burstable pod, containerd, systemd cgroup driver."""
    pod, cid = POD_UID, CONTAINER_ID
    path = path or KUBEPODS_PATH
    return OomKill(
        event_id=f"3f1e6a2c-8b4d-4e7f-9a1c-5d2b7e0f4a6c:{1_234_567_890_123 + i}:{40_000 + i}",
        time_unix_nano=1_732_500_000_000_000_000 + i, boot_time_ns=1_234_567_890_123 + i,
        hook="tp_btf", context_hook="none", recovered=False,
        victim_pid=40_000 + i, victim_tid=40_000 + i, victim_comm="java", victim_ppid=39_998,
        victim_uid=1000, oom_score_adj=968, total_vm_bytes=4_831_838_208, anon_rss_bytes=536_358_912,
        file_rss_bytes=12_582_912, shmem_rss_bytes=0, pgtables_bytes=2_129_920,
        cgroup_path=path, cgroup_line=f"4:memory:{path}", container_runtime="containerd",
        container_id=cid, pod_uid=pod, pod_qos_class="burstable",
        trigger_pid=40_000 + i, trigger_tid=40_017 + i, trigger_comm="C2 CompilerThre",
        constraint="memcg", constraint_source="derived", memcg_path=path,
        memcg_limit_bytes=536_870_912, memcg_usage_bytes=536_866_816, memcg_source="derived",
    )

