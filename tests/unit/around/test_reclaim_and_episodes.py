"""The reclaim tracker (kill -> memory back, or a timeout) and the episode tracker (--traces: which records
belong together, their trace, the span), fed synthetic records, real decoded reclaim events and a fake clock."""
from __future__ import annotations

from otel_oom.around.episodes import EpisodeTracker
from otel_oom.around.reclaim import ReclaimTracker
from otel_oom.kernel.reclaim_wire import KINDS, RECLAIM_EVENT_SIZE, RawReclaimEvent, ReclaimEvent, decode_reclaim
from otel_oom.kernel.wire import F_BOOT_CLOCK
from otel_oom.schema.records import OomKill, OomNoKill, OomPressure, OomReclaim

MiB = 1 << 20
T = 1795602667_000000000
CG = "/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def kill(**over) -> OomKill:
    base = dict(event_id="b:100:42", time_unix_nano=T, boot_time_ns=100, hook="tp_btf", context_hook="none",
                recovered=False, victim_pid=42, victim_tid=42, victim_comm="leaky", cgroup_path=CG + "/c",
                constraint="memcg", memcg_path=CG, anon_rss_bytes=30 * MiB, file_rss_bytes=0, shmem_rss_bytes=0)
    base.update(over)
    return OomKill(**base)


def pressure(state="start", **over) -> OomPressure:
    base = dict(event_id=f"ep1:{state}", time_unix_nano=T - 5_000_000_000, state=state, scope="memcg",
                source="usage", episode_id="ep1", cgroup_path=CG, limit_bytes=64 * MiB, usage_bytes=60 * MiB)
    base.update(over)
    return OomPressure(**base)


def reclaim_event(kind, ts, pid=42, tgid=42) -> ReclaimEvent:
    r = RawReclaimEvent()
    r.version, r.flags, r.kind = 1, F_BOOT_CLOCK, {v: k for k, v in KINDS.items()}[kind]
    r.timestamp_ns, r.marked_ns, r.pid, r.tgid = ts, 100, pid, tgid
    raw = bytes(r)
    assert len(raw) == RECLAIM_EVENT_SIZE == 40
    return decode_reclaim(raw)


# ---- reclaim ------------------------------------------------------------------------------------
def test_reclaim_time_is_from_the_kill_to_the_first_of_exit_and_reaper_finish():
    clock = [0.0]
    tr = ReclaimTracker(timeout_s=30, clock=lambda: clock[0])
    tr.killed(kill())
    assert tr.observe(reclaim_event("reaper_wake", 2_000_000_100)) is None
    r = tr.observe(reclaim_event("reaper_finish", 2_004_000_100))
    assert r is not None and r.method == "reaper" and r.duration_ns == 2_004_000_000 and r.reaper_woken
    assert r.kill_event_id == "b:100:42" and r.time_unix_nano == T + 2_004_000_000
    assert tr.observe(reclaim_event("exit", 2_005_000_100)) is None  # only the first counts
    tr.killed(kill(event_id="b:200:43", boot_time_ns=200, victim_pid=43, victim_tid=43))
    clock[0] = 31
    (late,) = tr.expire()
    assert late.method == "timeout" and late.duration_ns is None and late.victim_pid == 43
    assert tr.expire() == [] and tr.pending() == 0  # reported once


def test_a_thread_victims_exit_mmap_pairs_by_its_tgid_and_unknown_or_recovered_kills_are_not_timed():
    tr = ReclaimTracker(clock=lambda: 0.0)
    tr.killed(kill(victim_pid=50, victim_tid=51, event_id="b:100:51"))
    tr.killed(kill(recovered=True, victim_pid=60, victim_tid=60, event_id="r"))  # from the kernel log: no stamp
    tr.killed(kill(boot_time_ns=0, victim_pid=61, victim_tid=61, event_id="u"))
    assert tr.pending() == 1
    assert tr.observe(reclaim_event("reaper_skip", 150, pid=999, tgid=50)) is None
    assert tr.observe(reclaim_event("reaper_start", 160, pid=999, tgid=50)) is None  # not back yet
    r = tr.observe(reclaim_event("exit_mmap", 1100, pid=999, tgid=50))
    assert r is not None and (r.method, r.duration_ns, r.reaper_skipped, r.victim_tid) == ("exit_mmap", 1000, True, 51)
    assert tr.observe(reclaim_event("exit", 1200, pid=7, tgid=7)) is None  # a victim from before the agent


# ---- episodes -----------------------------------------------------------------------------------
def test_an_episode_spans_pressure_start_to_reclaim_and_the_late_pressure_end_keeps_its_trace():
    t = EpisodeTracker()
    s, ended = t.observe(pressure())
    assert ended == [] and s.trace_id and len(s.trace_id) == 32 and len(s.span_id) == 16
    k, ended = t.observe(kill())
    assert (k.trace_id, k.span_id) == (s.trace_id, s.span_id) and ended == []
    r, ended = t.observe(OomReclaim("r", T + 1, "b:100:42", "exit", 1, 42, 42, "leaky"))
    (span,) = ended
    assert span.start_unix_nano == s.time_unix_nano and span.end_unix_nano == T + 1
    assert [e["name"] for e in span.events] == ["oom.pressure.start", "oom.kill", "oom.reclaim"]
    assert (span.outcome, span.ended_by, span.kills, span.cgroup_path) == ("kill", "reclaimed", 1, CG)
    e, ended = t.observe(pressure("end"))
    assert ended == [] and e.trace_id == s.trace_id and t.open_count() == 0


def test_kills_elsewhere_start_their_own_episode_and_a_user_space_kill_joins_the_host():
    t = EpisodeTracker(expect_reclaim=False)
    h, _ = t.observe(pressure(scope="host", cgroup_path=None, episode_id="h", event_id="h:start"))
    other, ended = t.observe(kill(cgroup_path="/elsewhere", memcg_path="/elsewhere", event_id="o"))
    assert other.trace_id != h.trace_id and len(ended) == 1  # no reclaim expected: the kill ends it
    u, _ = t.observe(kill(killer="earlyoom", cgroup_path="/x", memcg_path=None, constraint="unknown", event_id="u"))
    assert u.trace_id == h.trace_id


def test_an_oom_without_a_kill_joins_the_deepest_open_episode_and_its_end_closes_the_span():
    clock = [0.0]
    t = EpisodeTracker(clock=lambda: clock[0], max_s=600)
    outer, _ = t.observe(pressure(cgroup_path="/a", episode_id="pa", event_id="pa:start"))
    inner, _ = t.observe(pressure(cgroup_path="/a/b", episode_id="pb", event_id="pb:start"))
    nk = OomNoKill("n:start", T, "start", "nothing_killable", "n", cgroup_path="/a/b/c")
    stamped, ended = t.observe(nk)
    assert stamped.trace_id == inner.trace_id != outer.trace_id and ended == []
    _, ended = t.observe(OomNoKill("n:end", T + 9, "end", "nothing_killable", "n", cgroup_path="/a/b/c"))
    (span,) = ended  # the no-kill ended: the span is done although the pressure goes on
    assert (span.outcome, span.ended_by, span.cgroup_path) == ("no_kill", "cleared", "/a/b")
    assert [e["attributes"].get("oom.no_kill.reason") for e in span.events if e["name"] == "oom.no_kill.start"] \
        == ["nothing_killable"]
    clock[0] = 600
    (expired,) = t.expire()  # the outer one ran too long
    assert expired.trace_id == outer.trace_id and expired.ended_by == "timeout" and expired.outcome == "pressure"
    t.observe(pressure(scope="host", cgroup_path=None, episode_id="h", event_id="h:start"))
    (last,) = t.close_all()
    assert last.ended_by == "shutdown" and last.scope == "host" and t.open_count() == 0
