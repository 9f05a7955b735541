"""Around the kill as the pipeline sees it: the pressure source's events (single and batched) go through
`Pipeline.handle_record` to the trackers on the worker thread, their records into the store; kills reach
the trackers once stored; a tracker's fault is counted, never fatal; `wiring.build` makes what the
configuration asks for. In process, on fixture cgroup trees, with an in-memory store."""
from __future__ import annotations

from collections import Counter

from otel_oom.around import wiring
from otel_oom.around.no_kill import NoKillTracker
from otel_oom.around.pressure import PressureTracker
from otel_oom.around.reclaim import ReclaimTracker
from otel_oom.around.room import Around
from otel_oom.attribution.enrich import Enricher
from otel_oom.cgroupfs.hierarchy import MemoryHierarchy
from otel_oom.cgroupfs.host import HostFiles
from otel_oom.cgroupfs.memcg import MemcgFiles
from otel_oom.config import resolve
from otel_oom.kernel import wire as Wire
from otel_oom.pipeline import Pipeline
from otel_oom.pressure.events import OOM, USAGE, Batch, CgroupAppeared, CgroupRemoved, CgroupSignal
from otel_oom.pressure.thresholds import Thresholds
from otel_oom.schema.records import OomKill, OomNoKill, OomPressure, record_from_json
from testing.events import raw_event

MiB = 1 << 20
UNLIMITED = (1 << 63) // 4096
KILLED = Wire.F_VICTIM_TASK | Wire.F_MM_SIZES | Wire.F_BOOT_CLOCK | Wire.F_SIGKILLED


class JsonCodec:
    """A test double of the spool codec (otlp.spooled): the record's JSON, which the store double reads back."""

    def encode(self, record) -> bytes:
        return record.to_json().encode()


class Store:
    """The spool's interface, in memory, decoding what it is given (a test double of delivery.spool)."""

    def __init__(self) -> None:
        self.items: list = []
        self.next_seq = 1

    def append(self, payload: bytes) -> int:
        self.items.append(record_from_json(payload))
        return len(self.items)

    def append_many(self, payloads: list[bytes]) -> list[int]:
        return [self.append(p) for p in payloads]


def v1_cgroup(root, name: str, usage_mib: int, oom_control: str = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(f"{64 * MiB}\n")
    (d / "memory.usage_in_bytes").write_text(f"{usage_mib * MiB}\n")
    (d / "memory.failcnt").write_text("0\n")
    (d / "memory.oom_control").write_text(oom_control)
    (d / "cgroup.procs").write_text("")
    return d


def room(tmp_path, clock, faults) -> Around:
    files = MemcgFiles(1, str(tmp_path))
    host = HostFiles(str(tmp_path / "no-psi"), str(tmp_path / "no-meminfo"))
    return Around(faults, pressure=PressureTracker(files, host, Thresholds(clear_seconds=2), "b", clock=clock),
                  no_kill=NoKillTracker(files, "b", grace_s=1, clock=clock), reclaim=ReclaimTracker(clock=clock))


def test_source_events_become_records_in_the_store_on_the_worker_thread(tmp_path):
    now = [0.0]
    store, faults = Store(), Counter()
    p = Pipeline(Enricher(MemoryHierarchy(1, str(tmp_path), 4), "b"), Counter(), faults, store=store, codec=JsonCodec(),
                 around=room(tmp_path, lambda: now[0], faults))
    v1_cgroup(tmp_path, "hot", 62)
    v1_cgroup(tmp_path, "full", 30)
    p.handle_record(Batch((CgroupAppeared("/hot", 64 * MiB), CgroupAppeared("/full", 64 * MiB))))
    p.handle_record(CgroupSignal("/full", OOM))
    (start,) = store.items
    assert isinstance(start, OomPressure) and (start.cgroup_path, start.state) == ("/hot", "start")
    now[0] = 1.0
    p.tick()  # the OOM notification's grace is over and no kill came
    nk = store.items[1]
    assert isinstance(nk, OomNoKill) and (nk.cgroup_path, nk.reason) == ("/full", "nothing_killable")
    v1_cgroup(tmp_path, "hot", 10)
    now[0] = 4.0
    p.tick()
    p.handle_record(CgroupRemoved("/full"))
    assert [(r.TYPE, r.cgroup_path, r.state, r.ended_by) for r in store.items[2:]] == [
        ("oom.pressure", "/hot", "end", "cleared"), ("oom.no_kill", "/full", "end", "cgroup_removed")]
    p.handle_record(CgroupSignal("/hot", USAGE))  # below the start level: nothing
    assert len(store.items) == 4 and not faults


def test_a_victim_the_kernel_only_marked_also_opens_an_oom_without_a_kill(tmp_path):
    """mark_victim for a task not exiting on SIGKILL (task_will_free_mem): its oom.kill says killed=false,
    and the no-kill tracker opens a victim_exiting episode for its cgroup, stored after the kill."""
    store, faults = Store(), Counter()
    p = Pipeline(Enricher(MemoryHierarchy(1, str(tmp_path), 4), "b"), Counter(), faults, store=store, codec=JsonCodec(),
                 around=room(tmp_path, lambda: 0.0, faults))
    chain = [(50, b"c1", 8192, 8192), (1, b"", 99999, UNLIMITED)]
    p.handle_sample(raw_event(chain, [50, 1], flags=KILLED))
    assert [type(r) for r in store.items] == [OomKill] and store.items[0].killed is True
    p.handle_sample(raw_event(chain, [50, 1], flags=KILLED & ~Wire.F_SIGKILLED, victim_pid=77, victim_tgid=77,
                              timestamp_ns=999))
    assert [(r.victim_pid, r.killed) for r in store.items[:2]] == [(4242, True), (77, False)]
    nokill = store.items[2]
    assert (nokill.reason, nokill.state, nokill.victim_pid, nokill.cgroup_path) == ("victim_exiting", "start", 77, "/c1")
    assert p.around is not None and p.around.reclaim is not None and p.around.reclaim.pending() == 2


def test_a_failing_tracker_is_counted_and_the_others_and_the_kills_go_on(tmp_path):
    class Broken(NoKillTracker):
        def handle(self, event):
            raise RuntimeError("broken")

        def kill_seen(self, kill):
            raise RuntimeError("broken")

    store, faults = Store(), Counter()
    around = room(tmp_path, lambda: 0.0, faults)
    around.no_kill = Broken(MemcgFiles(1, str(tmp_path)), "b")
    p = Pipeline(Enricher(MemoryHierarchy(1, str(tmp_path), 4), "b"), Counter(), faults, store=store, around=around,
                 codec=JsonCodec())
    v1_cgroup(tmp_path, "hot", 62)
    p.handle_record(CgroupAppeared("/hot", 64 * MiB))
    p.handle_sample(raw_event([(50, b"c1", 8192, 8192), (1, b"", 99999, UNLIMITED)], [50, 1], flags=KILLED))
    assert [type(r) for r in store.items] == [OomPressure, OomKill]
    assert faults == Counter({"no_kill": 2})


def test_wiring_builds_what_the_configuration_asks_for(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "memory.max").write_text(f"{64 * MiB}\n")
    (tmp_path / "w" / "memory.events.local").write_text("oom 0\n")
    h = MemoryHierarchy(2, str(tmp_path), 0)
    faults: Counter[str] = Counter()
    cfg = resolve({"events": "no_kill,reclaim", "no_otlp": True, "pressure_clear_seconds": "2"}, {})
    around = wiring.build(cfg, h, "b", lambda event: None, reclaim_events=True, faults=faults)
    try:
        assert around.source is not None and around.pressure is None and around.episodes is None
        # half of --pressure-clear-seconds, but at least two of the source's once-a-second reports
        assert around.no_kill is not None and around.no_kill.clear_s == 2.0
        assert around.describe() == "OOMs without a kill, reclaim times"

        class Gauges:
            pass

        class Metrics:
            episodes = Gauges()

        m = Metrics()
        around.feed_metrics(m)
        assert m.episodes.pressure_active() == {"host": 0, "memcg": 0}  # watching for OOMs only
        assert m.episodes.cgroups() == {"watched": 0, "unwatched": 0}  # registered by the source's thread
    finally:
        around.close()
    none = wiring.build(resolve({"events": "none", "no_otlp": True}, {}), h, "b", print, True, faults)
    assert none.source is None and none.describe() == "off"
    assert wiring.build(resolve({"events": "reclaim", "no_otlp": True}, {}), h, "b", print, False,
                        faults).describe() == "off"  # no reclaim events from this probe
