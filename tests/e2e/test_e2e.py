"""End to end, for real: `otel-oom run` + real memcg OOM kills + a real OTLP gRPC receiver.

Each test causes real OOM kills in throwaway memory cgroups with small limits (never the host)
and asserts what the receiver got: the victim's pid, its cgroup, its pod and container, the
resource, the metrics, and what the console and JSON outputs printed.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
from conftest import REPO, agent_env, require_root_bpf

from otel_oom.cgroupfs.hierarchy import detect_memory_hierarchy
from otel_oom.trigger import trigger_oom

MiB = 1 << 20
pytestmark = pytest.mark.root


def _record_for(receiver, pid: int, timeout: float = 10.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(r["attributes"].get("process.pid") == pid for r in recs), timeout)
    return next(r for r in receiver.log_records() if r["attributes"].get("process.pid") == pid)


def _hierarchy():
    h = detect_memory_hierarchy()
    assert h is not None, "no memory cgroup hierarchy on this host"
    return h


def test_a_memcg_kill_arrives_as_one_complete_record(receiver, start_agent):
    agent = start_agent(["--console", "--json"], receiver.endpoint)
    assert "hooks victim=tp_btf" in agent.stderr or "hooks victim=tracepoint" in agent.stderr
    t_kill = time.time_ns()
    kill = trigger_oom(limit_bytes=32 * MiB)
    rec = _record_for(receiver, kill.victim_pid)
    a = rec["attributes"]
    h = _hierarchy()

    # the record itself
    assert rec["event_name"] == "oom.kill"
    assert rec["severity_number"] == 17 and rec["severity_text"] == "ERROR"
    assert abs(rec["time_unix_nano"] - t_kill) < 10 * 10**9
    assert f"Killed process {kill.victim_pid} (python" in rec["body"]
    assert rec["body"].startswith("Memory cgroup out of memory: ")
    # the victim
    assert a["process.pid"] == kill.victim_pid
    assert a["process.parent_pid"] == os.getpid()
    assert a["process.real_user.id"] == 0
    assert a["process.executable.name"].startswith("python")
    assert a["oom.victim.cgroup.path"] == kill.cgroup_path
    expected_line = f"0::{kill.cgroup_path}" if h.version == 2 else f"{h.hierarchy_id}:{h.controllers}:{kill.cgroup_path}"
    assert a["process.linux.cgroup"] == expected_line
    rss = a["oom.victim.memory.rss"]
    # most of the 32 MiB limit is the victim's anonymous memory; the interpreter's start-up memory,
    # allocated before the child joined the cgroup, is charged elsewhere and adds a few MiB on top
    assert 16 * MiB < a["oom.victim.memory.anon_rss"] < rss < 32 * MiB + 16 * MiB
    assert a["oom.victim.memory.total_vm"] > rss
    # the trigger: the victim allocated its way into the limit itself
    assert a["oom.trigger.pid"] == kill.victim_pid
    assert a["oom.trigger.executable.name"] == a["process.executable.name"]
    # why: the limit that was hit (derived on this kernel, read by the context hook elsewhere)
    assert a["oom.constraint"] == "memcg"
    assert a["oom.memcg.path"] == kill.cgroup_path
    assert a["oom.memcg.limit"] == 32 * MiB
    assert 28 * MiB <= a["oom.memcg.usage"] <= 32 * MiB
    assert a["oom.hook"] in ("tp_btf", "tracepoint")
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    assert re.fullmatch(rf"{boot_id}:\d+:{kill.victim_pid}", a["oom.event.id"])
    assert "container.id" not in a and "k8s.pod.uid" not in a
    # the reporter, on the resource
    res = rec["resource"]
    assert res["service.name"] == "otel-oom"
    assert res["host.name"] == socket.gethostname()
    assert res["os.type"] == "linux" and res["os.version"] == os.uname().release
    assert res["service.instance.id"] and res["host.id"]

    # the metrics
    receiver.wait_for_metric("oom.kills", lambda pts: sum(p["value"] for p in pts
                                                          if p["attributes"].get("oom.constraint") == "memcg") >= 1, 15)
    receiver.wait_for_metric("otel_oom.hooks.attached",
                             lambda pts: any(p["attributes"].get("oom.hook.role") == "victim" and p["value"] == 1
                                             for p in pts), 15)
    receiver.wait_for_metric("oom.victim.rss", lambda pts: any(p.get("count", 0) >= 1 for p in pts), 15)

    # console and JSON on stdout, trigger and victim right
    out = agent.wait_stdout(lambda s: f'"process.pid":{kill.victim_pid}' in s.replace(" ", ""))
    assert re.search(rf"Victim:\s+pid={kill.victim_pid} ", out)
    assert re.search(rf"Trigger:\s+pid={kill.victim_pid} ", out)
    doc = next(json.loads(line) for line in out.splitlines()
               if line.startswith("{")
               and f'"process.pid": {kill.victim_pid}' in line.replace('":', '": ').replace(":  ", ": "))
    assert doc["oom.event.id"] == a["oom.event.id"]

    assert agent.stop() == 0
    assert "Traceback" not in agent.stderr


def test_kubepods_victims_are_attributed_to_pod_and_container(receiver, start_agent):
    start_agent([], receiver.endpoint)
    pod = str(uuid.uuid4())
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    cgroupfs_path = f"/kubepods/burstable/pod{pod}/{cid}"
    systemd_pod = pod.replace("-", "_")
    cid2 = uuid.uuid4().hex + uuid.uuid4().hex
    systemd_path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_pod}.slice/"
                    f"cri-containerd-{cid2}.scope")
    k1 = trigger_oom(limit_bytes=32 * MiB, cgroup=cgroupfs_path)
    k2 = trigger_oom(limit_bytes=32 * MiB, cgroup=systemd_path)

    a1 = _record_for(receiver, k1.victim_pid)["attributes"]
    assert a1["oom.victim.cgroup.path"] == cgroupfs_path
    assert a1["container.id"] == cid
    assert a1["k8s.pod.uid"] == pod
    assert a1["oom.memcg.path"] == cgroupfs_path
    a2 = _record_for(receiver, k2.victim_pid)["attributes"]
    assert a2["oom.victim.cgroup.path"] == systemd_path
    assert a2["container.id"] == cid2
    assert a2["container.runtime.name"] == "containerd"
    assert a2["k8s.pod.uid"] == pod  # underscores of the systemd driver turned back into dashes

    # the count is bounded: by constraint, runtime and QoS class, never by pod uid or container id
    pts = receiver.wait_for_metric("oom.kills", lambda pts: any(
        p["attributes"] == {"oom.constraint": "memcg", "container.runtime.name": "containerd",
                            "oom.victim.pod.qos_class": "burstable", "oom.killer": "kernel"} for p in pts), 15)
    assert not any("container.id" in p["attributes"] or "k8s.pod.uid" in p["attributes"] for p in pts)


def test_hostile_process_names_are_delivered_intact_and_never_reach_a_terminal_raw(receiver, start_agent):
    agent = start_agent(["--console"], receiver.endpoint)
    comm = b"\x1b[31mred\x07\nx\xff"  # 11 bytes: ESC sequence, BEL, newline, a non-UTF-8 byte
    kill = trigger_oom(limit_bytes=32 * MiB, comm=comm)
    assert kill.victim_comm == comm
    a = _record_for(receiver, kill.victim_pid)["attributes"]
    # the attribute keeps the data: not valid UTF-8, so it travels as bytes_value, the kernel's very bytes
    assert a["process.executable.name"] == comm
    out = agent.wait_stdout(lambda s: f"pid={kill.victim_pid}" in s)
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mred\\x07\\x0ax\\xff" in out


def test_sigterm_exits_zero_and_reports_hooks(receiver, start_agent):
    agent = start_agent([], receiver.endpoint)
    ready = next(line for line in agent.stderr_lines if " ready " in line)
    assert re.search(r"hooks victim=(tp_btf|tracepoint) context=(fentry|kprobe|none)", ready)
    assert agent.stop(15) == 0


def _run_cli(*args: str, env=None, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "otel_oom", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all", *cmd]
    return subprocess.run(cmd, cwd=REPO, env=env or agent_env(), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, env, needle", [
    (["run", "--ring-buffer-bytes", "5000"], {}, "power of two"),
    (["run", "--ring-buffer-bytes", "1000"], {}, "between 4096"),
    (["run", "--listen", "nowhere"], {}, "--listen"),
    (["run", "--frobnicate"], {}, "unrecognized arguments"),
    (["run"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    (["run"], {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    (["run", "--victim-hook", "kprobe"], {}, "invalid choice"),
    (["trigger", "--limit", "64G"], {}, "1 GiB"),
])
def test_bad_input_is_one_clear_line(args, env, needle, tmp_path):
    require_root_bpf()
    extra = [f"--spool-dir={tmp_path}"] if args[0] == "run" else []
    r = _run_cli(*args, *extra, env=agent_env(**env))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("otel-oom: error: ")]
    assert len(errors) == 1, r.stderr
    assert needle in errors[0]


def test_unprivileged_run_and_check_explain_what_is_missing(tmp_path):
    require_root_bpf()
    os.chmod(tmp_path, 0o777)
    r = _run_cli("run", "--no-otlp", "--console", user="65534")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "missing privileges (CAP_BPF, CAP_PERFMON)" in r.stderr
    c = _run_cli("check", user="65534")
    assert c.returncode == 1
    assert "MISSING CAP_BPF, CAP_PERFMON" in c.stdout and "NOT READY" in c.stdout


def test_check_names_the_plan_run_uses():
    require_root_bpf()
    r = _run_cli("check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"will use\s+victim=tp_btf context=", r.stdout)
    assert "result: ready" in r.stdout


def _vmstat_oom_kill() -> int:
    with open("/proc/vmstat") as f:
        return int(next(line.split()[1] for line in f if line.startswith("oom_kill ")))


def test_trigger_prints_the_victim_pid():
    require_root_bpf()
    before = _vmstat_oom_kill()
    r = _run_cli("trigger", "--limit", "16M")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.strip())
    assert not os.path.exists(f"/proc/{pid}")
    after = _vmstat_oom_kill()
    assert after >= before + 1
