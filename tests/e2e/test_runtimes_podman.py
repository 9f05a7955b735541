"""Real podman containers OOM-killed for real; the agent names them from podman's API socket.

Podman (Debian 4.3, runc, cgroupfs manager: this machine's layout, see docs/runtimes.md) runs a
locally made image; the static victim inside allocates until its 32 MiB container limit kills it.
A real agent (`AgentProcess`) with `--podman-socket` ships the kill to a real OTLP receiver, and the
test asserts what podman itself says about the container: id, name, image.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from conftest import require, require_root_bpf, require_tool

from testing.images import VICTIM_COMM
from testing.podman import IMAGE, Podman

pytestmark = pytest.mark.root
NO_OTHER_RUNTIMES = ["--cri-socket=none", "--docker-socket=none"]


@pytest.fixture(scope="module")
def podman():
    require_root_bpf()
    for tool in ("podman", "runc", "conmon", "clang"):
        require_tool(tool)
    require(Path("/bin/busybox").exists(), "needs busybox-static")
    p = Podman(Path(tempfile.mkdtemp(prefix="otel-oom-wt12-podman-")))
    try:
        yield p.start()
    finally:
        p.close()


def _kill(rec: dict, cid: str) -> bool:
    """The container's oom.kill (not the records around it: pressure in its cgroup, the reclaim)."""
    return rec["event_name"] == "oom.kill" and rec["attributes"].get("container.id") == cid


def _record_for_container(receiver, cid: str, timeout: float = 20.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(_kill(r, cid) for r in recs), timeout)
    return next(r for r in receiver.log_records() if _kill(r, cid))


def _run_victim(podman: Podman, name: str, delay_ms: int, *extra: str) -> str:
    return podman.run("run", "-d", "--name", name, "--memory", "32m", "--memory-swap", "32m", "--network", "none",
                      *extra, IMAGE, "/victim", "alloc", str(delay_ms)).stdout.strip()


def test_a_killed_podman_container_is_named_even_when_removed_right_after(podman, receiver, start_agent):
    agent = start_agent(["--console", "--json", f"--podman-socket={podman.socket}", *NO_OTHER_RUNTIMES],
                        receiver.endpoint)
    name = podman.unique_name("api")
    # --rm: podman removes the container as soon as it exits, right after the kill
    cid = _run_victim(podman, name, 2500, "--rm")
    rec = _record_for_container(receiver, cid)
    a = rec["attributes"]
    assert a["container.id"] == cid
    assert a["container.runtime.name"] == "podman"
    assert a["container.name"] == name
    assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
    assert a["container.image.tags"] == ["1"]
    assert a["container.image.id"].startswith("sha256:")
    assert a["oom.names.source"] == "cache"  # known before the kill: the 2.5 s sleep outlasts a refresh
    assert a["process.executable.name"] == VICTIM_COMM
    assert a["oom.victim.cgroup.path"] == f"/libpod_parent/libpod-{cid}"
    assert "k8s.pod.name" not in a
    deadline = time.monotonic() + 60
    while podman.exists(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not podman.exists(name), "podman --rm did not remove the container"

    # console and JSON show the names, escaped like every other untrusted string
    out = agent.wait_stdout(lambda s: f"container={name}" in s)
    assert f"Names:   container={name} image=localhost/otel-oom-wt12-victim:1 (names: cache)" in out
    line = next(json.loads(x) for x in out.splitlines() if x.startswith("{") and cid in x and '"oom.kill"' in x)
    assert line["container.name"] == name and line["oom.names.source"] == "cache"
    assert agent.stop() == 0


def test_podman_events_warm_the_cache_between_lists(podman, receiver, start_agent):
    # lists 600 s apart: only the event stream can tell the agent about the new container
    agent = start_agent([f"--podman-socket={podman.socket}", "--runtime-refresh=600", *NO_OTHER_RUNTIMES],
                        receiver.endpoint)
    name = podman.unique_name("late")
    time.sleep(1.0)  # the watcher's first (and, here, only) list has run
    cid = _run_victim(podman, name, 1000)
    try:
        a = _record_for_container(receiver, cid)["attributes"]
        assert a["oom.names.source"] == "cache"
        assert a["container.name"] == name
        assert a["container.image.name"] == "localhost/otel-oom-wt12-victim"
        assert agent.stop() == 0
    finally:
        podman.run("rm", "--force", name, check=False)


def test_without_events_a_container_is_asked_for_at_the_kill(podman):
    """The lookup path against the real podman API: the client's by-id answer, cold cache."""
    import threading
    from collections import Counter

    from otel_oom.attribution.runtime.cache import RuntimeNames, RuntimeWatcher
    from otel_oom.attribution.runtime.engine_api import EngineApiClient
    from otel_oom.schema.records import OomKill

    watcher = RuntimeWatcher(EngineApiClient("podman", podman.socket), Counter(), refresh_s=600)
    stop = threading.Event()
    t = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    t.start()
    name = podman.unique_name("asked")
    try:
        deadline = time.monotonic() + 60
        while not watcher.up:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cid = podman.run("create", "--name", name, IMAGE, "/victim", "pause").stdout.strip()
        kill = OomKill(event_id="b:1:1", time_unix_nano=0, boot_time_ns=0, hook="tp_btf", context_hook="none",
                       recovered=False, victim_pid=1, victim_tid=1, victim_comm="x", container_id=cid,
                       container_runtime="podman")
        named = RuntimeNames([watcher], Counter(), lookup_wait_s=1.0).annotate(kill)
        assert (named.names_source, named.container_name, named.container_image) == (
            "lookup", name, "localhost/otel-oom-wt12-victim")
    finally:
        stop.set()
        t.join(2)
        podman.run("rm", "--force", name, check=False)


def test_a_socket_that_stops_answering_is_logged_once_and_counted(podman, receiver, start_agent, tmp_path):
    sock = tmp_path / "gone.sock"
    # a podman API service of its own on a socket this test can take away
    import subprocess

    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=podman.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        agent = start_agent([f"--podman-socket={sock}", "--runtime-refresh=0.2", *NO_OTHER_RUNTIMES],
                            receiver.endpoint)
        time.sleep(1.0)
        service.terminate()
        service.wait(10)
        name = podman.unique_name("nosock")
        cid = _run_victim(podman, name, 0)
        a = _record_for_container(receiver, cid)["attributes"]
        # podman itself created it, but its API is gone: the kill goes out at once, marked
        assert a["oom.names.source"] == "unavailable"
        assert "container.name" not in a
        assert a["container.runtime.name"] == "podman"  # still known from the cgroup path
        receiver.wait_for_metric("otel_oom.faults", lambda pts: any(
            p["attributes"].get("stage") == "runtime_podman" and p["value"] >= 1 for p in pts), 15)
        time.sleep(1.0)  # several failed refreshes
        assert agent.stderr.count(f"container runtime podman at {sock} stopped answering") == 1, agent.stderr
        podman.run("rm", "--force", name, check=False)
        assert agent.stop() == 0
        assert "Traceback" not in agent.stderr
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
