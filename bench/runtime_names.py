"""How long container names take, against a real podman and a real containerd (CRI).

    sudo python3 -m bench.runtime_names [--containers 30]

Measures, per runtime: one full list (what every refresh costs), one by-id lookup (what a kill the
cache lacks costs the runtime), `RuntimeNames.annotate` on a cache hit and on a miss that the lookup
answers (what it costs the kill), and the bound when a socket accepts but never answers. Needs root,
podman, runc, containerd and crictl (`make crictl`); creates containers named otel-oom-wt12-bench-*
in runtimes of its own and removes them.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from otel_oom.attribution.runtime.cache import RuntimeNames, RuntimeWatcher
from otel_oom.attribution.runtime.cri import CriClient
from otel_oom.attribution.runtime.engine_api import EngineApiClient
from otel_oom.schema.records import OomKill
from testing.containerd import Containerd
from testing.images import remove_tree
from testing.podman import IMAGE, Podman


def _kill(cid: str, runtime: str) -> OomKill:
    return OomKill(event_id="b:1:1", time_unix_nano=0, boot_time_ns=0, hook="tp_btf", context_hook="none",
                   recovered=False, victim_pid=1, victim_tid=1, victim_comm="x", container_id=cid,
                   container_runtime=runtime)


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return (f"median {statistics.median(s) * 1000:.2f} ms, p90 {s[int(len(s) * 0.9) - 1] * 1000:.2f} ms, "
            f"max {s[-1] * 1000:.2f} ms (n={len(s)})")


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(client, runtime: str, ids: list[str], make_one) -> dict[str, str]:
    results = {"list": _ms(_timed(client.list, 20)), "get": _ms(_timed(lambda: client.get(ids[0]), 20))}
    watcher = RuntimeWatcher(client, Counter(), refresh_s=600)
    stop = threading.Event()
    t = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    t.start()
    while not watcher.up:
        time.sleep(0.01)
    names = RuntimeNames([watcher], Counter(), lookup_wait_s=1.0)
    hits = _timed(lambda: names.annotate(_kill(ids[0], runtime)), 2000)
    results["annotate, cache hit"] = _ms(hits)
    misses = []
    for _ in range(10):
        cid = make_one()  # created after the only list: the cache lacks it
        t0 = time.perf_counter()
        k = names.annotate(_kill(cid, runtime))
        misses.append(time.perf_counter() - t0)
        assert k.names_source == "lookup", k.names_source
    results["annotate, miss answered by lookup"] = _ms(misses)
    if hasattr(client, "events"):
        follower = threading.Thread(target=watcher.follow, args=(stop,), daemon=True)
        follower.start()
        while not watcher.following:
            time.sleep(0.01)
        warm = []
        for _ in range(10):
            cid = make_one()
            t0 = time.perf_counter()  # the CLI has returned: the container exists
            while watcher.cached(cid) is None:
                time.sleep(0.0005)
            warm.append(time.perf_counter() - t0)
        results["created (CLI returned) -> in the cache through events"] = _ms(warm)
    stop.set()
    t.join(2)
    return results


def hung_socket_bound(workdir: Path) -> dict[str, str]:
    path = str(workdir / "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)  # accepts (the backlog) and never answers
    client = EngineApiClient("podman", path, timeout=2.0)
    watcher = RuntimeWatcher(client, Counter(), refresh_s=600)
    watcher.up = True  # as if it had answered before hanging
    stop = threading.Event()
    threading.Thread(target=watcher.run, args=(stop,), daemon=True).start()
    names = RuntimeNames([watcher], Counter(), lookup_wait_s=0.05)
    first = _timed(lambda: names.annotate(_kill(uuid.uuid4().hex * 2, "podman")), 1)
    while watcher.up:
        time.sleep(0.05)  # the watcher's own 2 s timeout marks it down
    later = _timed(lambda: names.annotate(_kill(uuid.uuid4().hex * 2, "podman")), 200)
    stop.set()
    server.close()
    return {"first kill while the socket hangs (wait 50 ms)": _ms(first),
            "later kills (socket marked down)": _ms(later)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="otel-oom-wt12-bench-"))
    (work / "podman").mkdir()
    (work / "containerd").mkdir()
    podman = Podman(work / "podman").start()
    containerd = Containerd(work / "containerd").start()
    try:
        ids = [podman.run("run", "-d", "--name", podman.unique_name("bench"), "--network", "none", IMAGE,
                          "/victim", "pause").stdout.strip() for _ in range(args.containers)]
        def new_podman() -> str:
            return podman.run("create", "--name", podman.unique_name("bench"), IMAGE, "/victim", "pause").stdout.strip()
        print(f"podman, {len(ids)} containers:")
        for k, v in measure(EngineApiClient("podman", podman.socket), "podman", ids, new_podman).items():
            print(f"  {k}: {v}")

        uid = str(uuid.uuid4())
        pod = containerd.run_pod("bench", "otel-oom-wt12-bench", uid, f"/kubepods/besteffort/pod{uid}")
        cids = [containerd.create_container(pod, f"c{i}", ["/victim", "pause"], 64 << 20)
                for i in range(args.containers)]
        counter = iter(range(10**6))

        def new_cri() -> str:
            return containerd.create_container(pod, f"late{next(counter)}", ["/victim", "pause"], 64 << 20)
        print(f"containerd CRI, 1 pod, {len(cids)} containers:")
        for k, v in measure(CriClient(containerd.socket), "containerd", cids, new_cri).items():
            print(f"  {k}: {v}")
        print("a socket that accepts and never answers:")
        for k, v in hung_socket_bound(work).items():
            print(f"  {k}: {v}")
    finally:
        containerd.close()
        podman.close()
        remove_tree(work)


if __name__ == "__main__":
    main()
