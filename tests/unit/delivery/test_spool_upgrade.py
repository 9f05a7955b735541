"""The upgrade to the ledger: a spool and reconcile.json written by otel-oom before it (the fixture in
tests/fixtures/spool-v1, made by main's own code at the commit it names, see its make_fixture.py)
are read, migrated and delivered by this code: every kill once, nothing replayed twice, nothing lost.

The story the fixture holds (one boot): kills 101-103 before the first start, 104-105 delivered,
106-108 waiting in the spool, 109 counted but SIGKILLed before its spool write, 110 while down."""
from __future__ import annotations

import os
import shutil
from collections import Counter

from otel_oom.attribution.enrich import Enricher
from otel_oom.delivery.spool import Spool
from otel_oom.delivery.store import DeliveryStore
from otel_oom.pipeline import Pipeline
from otel_oom.reconcile.recovery import Reconciler
from testing.agent_process import REPO
from testing.spool_crash import abandon
from testing.spooled import spooled_attributes

FIXTURE = REPO / "tests" / "fixtures" / "spool-v1"
BOOT = (FIXTURE / "BOOT").read_text().strip()


def copy_fixture(tmp_path):
    for name in ("spool", "proc", "kmsg"):
        src, dst = FIXTURE / name, tmp_path / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return tmp_path / "spool"


def start(tmp_path) -> tuple[DeliveryStore, Reconciler]:
    """What the agent does at start, with the fixture's kernel: open the store, recover, account."""
    store = DeliveryStore(Spool(tmp_path / "spool", fsync=False, boot_id=BOOT))
    r = Reconciler(store, None, BOOT, proc_root=str(tmp_path / "proc"), kmsg_path=str(tmp_path / "kmsg"),
                   state_dir=str(tmp_path / "spool"))
    Pipeline(Enricher(None, BOOT), Counter(), Counter(), store=store, reconciler=r).handle_kills(r.recover_missed())
    r.start()
    return store, r


def deliver(store: DeliveryStore) -> list[dict]:
    """What the sender does: everything pending, in order, acknowledged."""
    out = []
    while batch := store.pending(100):
        out += [spooled_attributes(p) for _, p in batch]
        store.ack(batch[-1][0])
    return out


def live_id(pid: int) -> str:
    return f"{BOOT}:{pid * 1_000_000_000}:{pid}"


def kmsg_id(pid: int) -> str:
    return f"{BOOT}:{(pid - 100) * 1_000_000 * 1000}:{pid}"  # the log line's printk time, in ns


EXPECTED = [(106, False, live_id(106)), (107, False, live_id(107)), (108, False, live_id(108)),
            (109, True, kmsg_id(109)), (110, True, kmsg_id(110))]


def test_the_spool_and_state_before_the_ledger_are_migrated_and_every_kill_delivered_once(tmp_path):
    spool_dir = copy_fixture(tmp_path)
    store, r = start(tmp_path)
    got = deliver(store)
    assert [(k["process.pid"], k["oom.recovered"], k["oom.event.id"]) for k in got] == EXPECTED
    assert r.accounted() == 10 and r.unobserved() == 0
    assert not (spool_dir / "reconcile.json").exists()  # migrated: the ledger holds it now
    store.close()
    with Spool(spool_dir, boot_id=BOOT) as spool:
        assert spool.ledger.accounted == 10 and spool.pending() == []

    store, r = start(tmp_path)  # and the next start replays nothing
    assert deliver(store) == [] and r.accounted() == 10
    store.close()


def test_a_sigkill_right_after_the_migration_replays_nothing_twice(tmp_path):
    spool_dir = copy_fixture(tmp_path)
    store, _ = start(tmp_path)  # migrated, 109 and 110 recovered into the spool, nothing delivered yet
    abandon(store.spool)  # SIGKILL: the descriptors go, nothing else is written
    assert not (spool_dir / "reconcile.json").exists()

    store, r = start(tmp_path)
    assert [(k["process.pid"], k["oom.recovered"], k["oom.event.id"]) for k in deliver(store)] == EXPECTED
    assert r.accounted() == 10
    store.close()


def test_the_migration_keeps_the_state_when_the_ledger_cannot_be_written(tmp_path):
    # a read-only ack file: the ledger's first count stays in memory, so reconcile.json must stay too
    spool_dir = copy_fixture(tmp_path)
    store = DeliveryStore(Spool(spool_dir, fsync=False, boot_id=BOOT))
    os.chmod(spool_dir / "ack", 0o400)
    try:
        files = store.spool._files
        files.ack_fd, ack_fd = os.open(spool_dir / "ack", os.O_RDONLY), files.ack_fd
        os.close(ack_fd)
        r = Reconciler(store, None, BOOT, proc_root=str(tmp_path / "proc"), kmsg_path=str(tmp_path / "kmsg"),
                       state_dir=str(spool_dir))
        r.recover_missed()  # (not stored: only the state's fate matters here)
        r.start()
        assert (spool_dir / "reconcile.json").exists()
    finally:
        store.close()
