"""The records around the kill, measured: the agent's CPU with thousands of memory cgroups watched,
and real reclaim times (kill -> the victim's memory back).

    sudo python3 -m bench.around [--cgroups 2000] [--idle 60] [--kills 20] [--json out.json]

Watching: N throwaway memory cgroups, each with a limit (so each is registered: three eventfds on
v1, a PSI trigger and an inotify watch on v2), under one parent; the agent's CPU (utime + stime)
over `idle` seconds, quiet; then while 200 cgroups are created and removed (discovery through
inotify); then while 20 of them sit at 94 % of their limit (20 pressure episodes followed each
second). The same agent with --events=none is the baseline. Reclaim: real memcg OOM kills of
victims of several sizes and a user-space killer's SIGKILLs, each victim's `oom.reclaim` duration
as the agent reported it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

from otel_oom.trigger import memory_hierarchy, trigger_oom
from testing.agent_process import AgentProcess, agent_env
from testing.around import MemoryHolder, fake_killer, wait_killed

from .common import cpu_seconds, percentiles, rss_kib

MiB = 1 << 20


def _agent(args: list[str]) -> tuple[AgentProcess, str]:
    spool = tempfile.mkdtemp(prefix="otel-oom-bench-around-")
    return AgentProcess(["--no-otlp", f"--spool-dir={spool}", *args], agent_env(None), ready_timeout=300), spool


def _cgroups(n: int) -> tuple[str, list[str]]:
    mount, version = memory_hierarchy()
    parent = f"{mount}/otel-oom-bench-around-{os.getpid()}"
    os.mkdir(parent)
    if version == 2:
        with open(f"{parent}/cgroup.subtree_control", "w") as f:
            f.write("+memory")
    limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
    kids = []
    for i in range(n):
        d = f"{parent}/c{i:05d}"
        os.mkdir(d)
        with open(f"{d}/{limit_file}", "w") as f:
            f.write(str(256 * MiB))
        kids.append(d)
    return parent, kids


def _remove(parent: str) -> None:
    for d in sorted((e.path for e in os.scandir(parent) if e.is_dir()), reverse=True):
        os.rmdir(d)
    os.rmdir(parent)


def _cpu_over(pid: int, seconds: float, during=None) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    if during is not None:
        during()
    left = seconds - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100  # percent of one CPU


def watching(n: int, idle_s: float) -> dict:
    parent, kids = _cgroups(n)
    out: dict = {"cgroups": n}
    try:
        for label, args in (("baseline_events_none", ["--events=none"]), ("watching", ["--json"])):
            t0 = time.monotonic()
            agent, spool = _agent(args)
            try:
                ready = time.monotonic() - t0
                registered = None
                if label == "watching":  # the cgroups are registered in the background after ready
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline and "limited memory cgroups for pressure" not in agent.stderr:
                        time.sleep(0.2)
                    registered = time.monotonic() - t0
                m = re.search(r"watching (\d+) limited memory cgroups for pressure", agent.stderr)
                row = {"ready_s": round(ready, 2), "watched": int(m.group(1)) if m else 0,
                       "registered_s": None if registered is None else round(registered, 1),
                       "idle_cpu_percent": round(_cpu_over(agent.proc.pid, idle_s), 3),
                       "fds": len(os.listdir(f"/proc/{agent.proc.pid}/fd")),
                       "rss_mib": round(rss_kib(agent.proc.pid) / 1024, 1)}
                if label == "watching":
                    def churn() -> None:
                        for i in range(200):
                            d = f"{parent}/churn{i:04d}"
                            os.mkdir(d)
                            time.sleep(0.05)
                            os.rmdir(d)
                    row["churn_cpu_percent"] = round(_cpu_over(agent.proc.pid, 20, churn), 3)
                    holders = [MemoryHolder(64 * MiB, 60 * MiB, name=f"otel-oom-bench-around-h{i}") for i in range(20)]
                    try:
                        for h in holders:
                            h.__enter__()
                            h.start()
                        for h in holders:
                            h.wait_held()
                        time.sleep(3)  # every episode has started
                        row["episodes_cpu_percent"] = round(_cpu_over(agent.proc.pid, 20), 3)
                        names = {h.path for h in holders}
                        row["pressure_starts_for_holders"] = sum(
                            1 for line in agent.stdout_lines if line.startswith("{") and '"start"' in line
                            and json.loads(line).get("oom.memcg.path") in names)
                    finally:
                        for h in holders:
                            h.__exit__(None, None, None)
                out[label] = row
            finally:
                agent.stop()
                shutil.rmtree(spool, ignore_errors=True)
    finally:
        _remove(parent)
    return out


def reclaim(kills: int) -> dict:
    agent, spool = _agent(["--json", "--events=reclaim,userspace_kill"])
    by_pid: dict[int, str] = {}
    try:
        for i in range(kills):
            limit = (32, 128, 512)[i % 3] * MiB
            k = trigger_oom(limit_bytes=limit, timeout=120)
            by_pid[k.victim_pid] = f"kernel, {limit // MiB} MiB limit"
        for i in range(max(3, kills // 3)):
            size = (16, 128, 512)[i % 3] * MiB
            with MemoryHolder(size + 64 * MiB, size) as h:
                h.start()
                h.wait_held(120)
                fake_killer("systemd-oomd", h.pid)
                assert h.proc is not None
                wait_killed(h.proc)
                by_pid[h.pid] = f"systemd-oomd, {size // MiB} MiB victim"
        deadline = time.monotonic() + 60
        docs: list[dict] = []
        while time.monotonic() < deadline:
            docs = [json.loads(line) for line in agent.stdout_lines if line.startswith("{")]
            got = {d["process.pid"] for d in docs if d.get("event_name") == "oom.reclaim"}
            if set(by_pid) <= got:
                break
            time.sleep(0.5)
    finally:
        agent.stop()
        shutil.rmtree(spool, ignore_errors=True)
    groups: dict[str, list[float]] = {}
    methods: dict[str, int] = {}
    rss: dict[str, list[float]] = {}
    for d in docs:
        if d.get("event_name") != "oom.reclaim" or d["process.pid"] not in by_pid:
            continue
        key = by_pid[d["process.pid"]]
        methods[d["oom.reclaim.method"]] = methods.get(d["oom.reclaim.method"], 0) + 1
        if d.get("oom.reclaim.duration") is not None:
            groups.setdefault(key, []).append(d["oom.reclaim.duration"] * 1000)
            rss.setdefault(key, []).append(d.get("oom.victim.memory.rss", 0) / MiB)
    return {"methods": methods, "missing": len(by_pid) - sum(len(v) for v in groups.values()),
            "ms_by_case": {k: {**{q: round(v, 2) for q, v in percentiles(vs).items()},
                               "rss_mib_mean": round(sum(rss[k]) / len(rss[k]), 1)} for k, vs in sorted(groups.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.around", description=__doc__.splitlines()[0])
    ap.add_argument("--cgroups", type=int, default=2000)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--kills", type=int, default=18)
    ap.add_argument("--only", default="watching,reclaim")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench.around: needs root", file=sys.stderr)
        return 2
    results: dict = {}
    if "watching" in args.only:
        results["watching"] = watching(args.cgroups, args.idle)
        print(json.dumps(results["watching"], indent=1), flush=True)
    if "reclaim" in args.only:
        results["reclaim"] = reclaim(args.kills)
        print(json.dumps(results["reclaim"], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
