"""The names cache and its bounded wait, the settings, and the outputs, without a runtime.

The cache logic runs against `ScriptedRuntime`, a test double of a runtime client (named as one)
whose answers and delays each test sets; the real clients against real podman and containerd are
in test_runtimes_podman.py, test_runtimes_cri.py and test_runtimes_systemd.py, and against
recorded-shaped answers of runtimes that cannot run here in test_runtimes_clients.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import Counter

import pytest

from otel_oom.attribution.runtime.cache import RETAIN_S, RuntimeNames, RuntimeWatcher, with_names
from otel_oom.attribution.runtime.names import ContainerNames, RuntimeUnavailable, split_image
from otel_oom.attribution.runtime.settings import AUTO_SOCKETS, RuntimeSocket, resolve_runtimes
from otel_oom.config import resolve
from otel_oom.errors import UsageError
from otel_oom.schema.mapping import log_attributes
from otel_oom.schema.records import OomKill
from otel_oom.sinks.console import format_console, format_json
from otel_oom.sinks.webhook import build_message

C1, C2, C3 = ("a" * 64, "b" * 64, "c" * 64)
UID = "0f6b0d5c-3b53-4a67-9a1e-7c2f2f3e6c11"
API = ContainerNames(C1, runtime="containerd", name="api", image="registry:5000/shop/checkout:1.4.2",
                     image_id="sha256:" + "d" * 64, pod_name="checkout-7d9f", pod_namespace="shop", pod_uid=UID,
                     k8s_container_name="api", restart_count=2)


class ScriptedRuntime:
    """Test double of a runtime client: lists `listed`, answers `get` from `known`, optionally slowly."""

    kind = "cri"
    runtime_name = "containerd"

    def __init__(self, path: str, listed=(), known=None, get_delay: float = 0.0) -> None:
        self.path = path
        self.listed = list(listed)
        self.known = dict(known or {})
        self.get_delay = get_delay
        self.down = False
        self.gets: list[str] = []

    def list(self):
        if self.down:
            raise RuntimeUnavailable("connection refused")
        return list(self.listed)

    def get(self, cid):
        self.gets.append(cid)
        time.sleep(self.get_delay)
        if self.down:
            raise RuntimeUnavailable("connection refused")
        return self.known.get(cid)

    def close(self):
        pass


@pytest.fixture
def sock(tmp_path):
    p = tmp_path / "runtime.sock"
    p.touch()  # the watcher only checks that the path exists; the double answers
    return str(p)


def kill(cid=C1, pod_uid=None, runtime=None) -> OomKill:
    return OomKill(event_id="b:1:7", time_unix_nano=1_700_000_000_000_000_000, boot_time_ns=1, hook="tp_btf",
                   context_hook="none", recovered=False, victim_pid=7, victim_tid=7, victim_comm="java",
                   container_id=cid, pod_uid=pod_uid, container_runtime=runtime, constraint="memcg")


def running(watcher: RuntimeWatcher):
    stop = threading.Event()
    t = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_cached_container_is_named_without_asking(sock):
    client = ScriptedRuntime(sock, listed=[API])
    faults: Counter[str] = Counter()
    w = RuntimeWatcher(client, faults)
    assert w.refresh()
    names = RuntimeNames([w], faults)
    k = names.annotate(kill())
    assert (k.container_name, k.container_image, k.container_image_tag) == ("api", "registry:5000/shop/checkout", "1.4.2")
    assert (k.pod_name, k.pod_namespace, k.k8s_container_name, k.restart_count) == ("checkout-7d9f", "shop", "api", 2)
    assert k.pod_uid == UID and k.container_runtime == "containerd" and k.names_source == "cache"
    assert client.gets == [] and not faults


def test_a_miss_is_asked_and_answered_within_the_wait(sock):
    client = ScriptedRuntime(sock, known={C1: API})
    w = RuntimeWatcher(client, Counter(), refresh_s=600)
    stop, t = running(w)
    wait_until(lambda: w.up)
    names = RuntimeNames([w], Counter(), lookup_wait_s=1.0)
    k = names.annotate(kill())
    assert k.names_source == "lookup" and k.container_name == "api"
    assert names.annotate(kill()).names_source == "cache"  # the answer went into the cache
    stop.set()
    t.join(2)


def test_a_slow_runtime_never_holds_the_kill_past_the_wait(sock):
    client = ScriptedRuntime(sock, known={C1: API}, get_delay=0.5)
    w = RuntimeWatcher(client, Counter(), refresh_s=600)
    stop, t = running(w)
    wait_until(lambda: w.up)
    names = RuntimeNames([w], Counter(), lookup_wait_s=0.05)
    k = names.annotate(kill())
    # "timeout", not "lookup": the kill went on without the runtime's answer
    assert k.names_source == "timeout" and k.container_name is None
    wait_until(lambda: w.cached(C1) is not None)  # the late answer still warms the cache
    assert names.annotate(kill()).names_source == "cache"
    stop.set()
    t.join(2)


def test_a_storm_meets_a_hung_runtime_s_wait_once(sock):
    client = ScriptedRuntime(sock, known={C1: API}, get_delay=1.0)
    w = RuntimeWatcher(client, Counter(), refresh_s=600)
    stop, t = running(w)
    wait_until(lambda: w.up)
    names = RuntimeNames([w], Counter(), lookup_wait_s=0.05)
    sources = [names.annotate(kill(cid)).names_source for cid in [C2] + [f"{i:064x}" for i in range(100)]]
    assert set(sources) == {"timeout"}
    assert client.gets == [C2]  # the stalled runtime was not asked 100 more times
    client.get_delay = 0.0
    wait_until(lambda: w.answers >= 2, timeout=5)  # it answers again: waited for again
    assert names.annotate(kill(C1)).names_source == "lookup"
    stop.set()
    t.join(3)


def test_an_unknown_container_is_not_asked_again_for_a_while(sock):
    client = ScriptedRuntime(sock)
    w = RuntimeWatcher(client, Counter(), refresh_s=600)
    stop, t = running(w)
    wait_until(lambda: w.up)
    names = RuntimeNames([w], Counter(), lookup_wait_s=1.0)
    assert names.annotate(kill(C2)).names_source == "not_found"
    for _ in range(50):  # a storm in a container the runtime does not know: no wait, no asking
        assert names.annotate(kill(C2)).names_source == "not_found"
    assert client.gets == [C2]
    stop.set()
    t.join(2)


def test_pod_names_for_a_pod_level_kill_and_for_an_unknown_container_in_a_known_pod(sock):
    sandbox = ContainerNames(C3, runtime="containerd", pod_name="checkout-7d9f", pod_namespace="shop", pod_uid=UID)
    w = RuntimeWatcher(ScriptedRuntime(sock, listed=[sandbox]), Counter())
    assert w.refresh()
    names = RuntimeNames([w], Counter())
    k = names.annotate(kill(cid=None, pod_uid=UID))
    assert (k.pod_name, k.pod_namespace, k.container_name, k.names_source) == ("checkout-7d9f", "shop", None, "cache")
    w.up = False  # the runtime is down: the cached pod still names the kill
    assert names.annotate(kill(cid=C2, pod_uid=UID)).pod_name == "checkout-7d9f"


def test_a_runtime_that_stops_answering_is_logged_once_counted_and_its_cache_still_used(sock, caplog):
    client = ScriptedRuntime(sock, listed=[API])
    faults: Counter[str] = Counter()
    w = RuntimeWatcher(client, faults)
    names = RuntimeNames([w], faults)
    assert w.refresh()
    client.down = True
    client.listed = []
    with caplog.at_level(logging.INFO, logger="otel_oom.runtime"):
        for _ in range(5):
            assert not w.refresh()
        assert names.annotate(kill()).names_source == "cache"  # names known before it went away
        assert names.annotate(kill(C2)).names_source == "unavailable"  # not asked: it is down
        client.down = False
        assert w.refresh()
    assert faults["runtime_cri"] == 5
    text = caplog.text
    assert text.count("stopped answering") == 1 and text.count("answers again") == 1
    assert client.gets == []


def test_no_socket_no_names_no_error_and_a_configured_one_is_warned_about_once(tmp_path, caplog):
    faults: Counter[str] = Counter()
    auto = RuntimeWatcher(ScriptedRuntime(str(tmp_path / "absent.sock")), faults, refresh_s=0.1)
    explicit = RuntimeWatcher(ScriptedRuntime(str(tmp_path / "named.sock")), faults, refresh_s=0.1, explicit=True)
    with caplog.at_level(logging.INFO, logger="otel_oom.runtime"):
        runs = [running(w) for w in (auto, explicit)]
        time.sleep(0.3)
        names = RuntimeNames([auto, explicit], faults)
        k = names.annotate(kill())
        for stop, t in runs:
            stop.set()
            t.join(2)
    assert k.names_source is None and k == kill()
    assert not faults
    assert caplog.text.count("no cri runtime socket at") == 1 and "named.sock" in caplog.text


def test_names_stay_after_the_runtime_forgets_a_container_then_expire(sock):
    now = [1000.0]
    client = ScriptedRuntime(sock, listed=[API])
    w = RuntimeWatcher(client, Counter(), clock=lambda: now[0])
    assert w.refresh()
    client.listed = []  # removed right after the kill
    now[0] += RETAIN_S - 1
    assert w.refresh() and w.cached(C1) == API
    now[0] += 2
    assert w.refresh() and w.cached(C1) is None and w.pod(UID) is None


def test_only_the_runtime_the_cgroup_names_is_asked(sock, tmp_path):
    other = tmp_path / "podman.sock"
    other.touch()
    cri, pod = ScriptedRuntime(sock), ScriptedRuntime(str(other))
    pod.kind = pod.runtime_name = "podman"
    watchers = [RuntimeWatcher(c, Counter(), refresh_s=600) for c in (cri, pod)]
    runs = [running(w) for w in watchers]
    wait_until(lambda: all(w.up for w in watchers))
    names = RuntimeNames(watchers, Counter(), lookup_wait_s=1.0)
    names.annotate(kill(C1, runtime="podman"))
    names.annotate(kill(C2, runtime=None))  # bare id under a pod (cgroupfs): any runtime may hold it
    assert (cri.gets, pod.gets) == ([C2], [C1, C2])
    for stop, t in runs:
        stop.set()
        t.join(2)


@pytest.mark.parametrize("ref,name,tag", [
    ("registry:5000/team/app:1.2", "registry:5000/team/app", "1.2"),
    ("registry:5000/team/app", "registry:5000/team/app", None),
    ("docker.io/library/nginx:1.27@sha256:" + "e" * 64, "docker.io/library/nginx", "1.27"),
    ("nginx@sha256:" + "e" * 64, "nginx", None),
    ("localhost/otel-oom-wt12-victim:1", "localhost/otel-oom-wt12-victim", "1"),
])
def test_image_references_split_into_semconv_name_and_tag(ref, name, tag):
    assert split_image(ref) == (name, tag)


# ---- settings -------------------------------------------------------------------------------

def test_sockets_are_auto_detected_by_default_and_deduplicated():
    s = resolve_runtimes({}, {})
    paths = [x.path for x in s.sockets]
    assert paths[:len(AUTO_SOCKETS["cri"])] == list(AUTO_SOCKETS["cri"])
    assert "/run/podman/podman.sock" in paths and not any(x.explicit for x in s.sockets)
    assert (s.refresh_s, s.lookup_wait_s) == (1.0, 0.05)


def test_auto_detection_below_a_runtime_root():
    s = resolve_runtimes({}, {"OTEL_OOM_RUNTIME_ROOT": "/host", "OTEL_OOM_DOCKER_SOCKET": "none"})
    assert [x.path for x in s.sockets] == ["/host/run/containerd/containerd.sock", "/host/run/crio/crio.sock",
                                           "/host/run/k3s/containerd/containerd.sock", "/host/run/podman/podman.sock"]
    with pytest.raises(UsageError, match="--runtime-root must be an absolute directory"):
        resolve_runtimes({"runtime_root": "host"}, {})


def test_flags_beat_the_environment_and_none_turns_a_runtime_off():
    env = {"OTEL_OOM_CRI_SOCKET": "/env/cri.sock", "OTEL_OOM_DOCKER_SOCKET": "none",
           "OTEL_OOM_PODMAN_SOCKET": "none", "OTEL_OOM_RUNTIME_LOOKUP_WAIT_MS": "20"}
    s = resolve({"cri_socket": "/flag/a.sock,/flag/b.sock", "runtime_refresh": "2.5"}, env).runtimes
    assert s.sockets == (RuntimeSocket("cri", "/flag/a.sock", True), RuntimeSocket("cri", "/flag/b.sock", True))
    assert (s.refresh_s, s.lookup_wait_s) == (2.5, 0.02)
    assert resolve({}, env).runtimes.sockets == (RuntimeSocket("cri", "/env/cri.sock", True),)


@pytest.mark.parametrize("flags,env,needle", [
    ({"cri_socket": "run/containerd.sock"}, {}, "--cri-socket takes absolute socket paths"),
    ({}, {"OTEL_OOM_PODMAN_SOCKET": ","}, "--podman-socket must be auto, none or socket paths"),
    ({"runtime_refresh": "0"}, {}, "--runtime-refresh must be between"),
    ({}, {"OTEL_OOM_RUNTIME_LOOKUP_WAIT_MS": "soon"}, "--runtime-lookup-wait-ms must be a number"),
])
def test_bad_runtime_settings_are_one_clear_error(flags, env, needle):
    with pytest.raises(UsageError, match=needle):
        resolve(flags, env)


# ---- outputs: names are untrusted -----------------------------------------------------------

HOSTILE = dataclasses.replace(API, pod_name="evil\x1b]0;pwned\x07", name="<!channel>", k8s_container_name="api\nx")


def test_hostile_names_are_escaped_in_every_output_and_kept_intact_over_otlp():
    k = with_names(kill(), HOSTILE, "cache")
    console = format_console(k)
    assert "\x1b" not in console and "\x07" not in console
    assert "pod=shop/evil\\x1b]0;pwned\\x07 container=api\\x0ax restarts=2" in console
    line = format_json(k)
    assert "\x1b" not in line and "\n" not in line
    assert json.loads(line)["k8s.pod.name"] == "evil\x1b]0;pwned\x07"
    text = json.loads(build_message(k, "Memory cgroup out of memory: Killed process 7 (java)"))["text"]
    assert "\x1b" not in text and "<" not in text and "&lt;!channel&gt;" not in text  # k8s name wins: "api\nx"
    assert "[pod=shop/evil\\x1b]0;pwned\\x07 container=api\\x0ax restarts=2" in text
    attrs = log_attributes(k)
    assert attrs["k8s.pod.name"] == "evil\x1b]0;pwned\x07" and attrs["container.name"] == "<!channel>"
    assert OomKill.from_json(k.to_json()) == k  # the spool keeps the names for every replay
    assert attrs["container.image.tags"] == ["1.4.2"] and attrs["k8s.container.restart_count"] == 2


def test_a_plain_container_shows_its_name_and_a_chat_mention_is_defused():
    names = ContainerNames(C1, runtime="docker", name="<!channel>", image="nginx:1.27")
    k = with_names(kill(runtime="docker"), names, "lookup")
    assert "Names:   container=<!channel> image=nginx:1.27 (names: lookup)" in format_console(k)
    text = json.loads(build_message(k, "Killed process 7 (java)"))["text"]
    assert text.endswith("[container=&lt;!channel&gt; image=nginx:1.27 (names: lookup)]")
