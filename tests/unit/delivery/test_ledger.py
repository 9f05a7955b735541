"""The ledger: how many of this boot's kernel OOM kills the agent accounted for, kept in the spool with
the records (one write per kill) and mirrored in the ack file, through the memory fallback and
restarts (otel_oom/delivery/spool.py, store.py)."""
from __future__ import annotations

import os

import pytest

from otel_oom.delivery import spool as spool_module
from otel_oom.delivery.spool import Spool, SpoolError
from otel_oom.delivery.spool_format import ACK_SLOTS, read_ack_slot
from otel_oom.delivery.store import DeliveryStore

BOOT = "6c3b0a2e-1d4f-4e5a-9b8c-7d6e5f4a3b2c"
OTHER_BOOT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def segments(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("seg-"))


def test_a_fresh_spool_has_no_ledger_and_a_first_count_is_kept(tmp_path):
    with Spool(tmp_path / "s", boot_id=BOOT) as sp:
        assert sp.ledger == (None, False, None) and sp.accounted is None
        sp.append(b"kill", accounted=4)
        sp.append(b"pressure record")  # no kill: the count stays
    with Spool(tmp_path / "s", boot_id=BOOT) as sp:
        assert sp.ledger == (4, True, None)


def test_the_count_survives_the_records_deletion_in_the_ack_file(tmp_path):
    d = tmp_path / "s"
    with Spool(d, boot_id=BOOT, segment_bytes=64) as sp:
        seqs = [sp.append(b"kill %d" % i, accounted=10 + i) for i in range(3)]
        sp.ack(seqs[-1])  # delivered: every segment goes
        assert segments(d) == []
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger.accounted == 12


def test_the_count_survives_the_newest_segment_being_cut_in_the_ack_file(tmp_path):
    # damage to the records cannot take the count back: the kills in them are counted as corrupt,
    # and must not also be recovered from the kernel log as if never seen
    d = tmp_path / "s"
    with Spool(d, boot_id=BOOT, fsync=False) as sp:
        sp.append(b"kill one", accounted=1)
        sp.append(b"kill two", accounted=2)
    (seg,) = segments(d)
    os.truncate(d / seg, os.path.getsize(d / seg) - 3)
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger.accounted == 2 and sp.dropped["spool_corrupt"] == 1


def test_the_records_carry_the_count_when_the_ack_file_lost_it(tmp_path):
    d = tmp_path / "s"
    with Spool(d, boot_id=BOOT, fsync=False) as sp:
        sp.append(b"kill", accounted=7)
    (d / "ack").unlink()  # made anew, empty, at the next open
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger.accounted == 7


def test_a_count_of_another_boot_is_not_this_boots(tmp_path):
    d = tmp_path / "s"
    with Spool(d, boot_id=OTHER_BOOT) as sp:
        sp.append(b"kill", accounted=30)
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger == (None, True, None)  # seen: a reboot, not a first start
        sp.append(b"kill", accounted=2)
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger.accounted == 2


def test_an_unreadable_ack_file_is_a_problem_not_a_first_start(tmp_path):
    d = tmp_path / "s"
    with Spool(d, boot_id=BOOT):
        pass
    (d / "ack").write_bytes(b"\x8fAK2" + b"\xff" * 1020)
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger.accounted is None and sp.ledger.problem == "its ack file is unreadable"


def test_account_moves_the_count_without_a_record_and_never_back(tmp_path):
    d = tmp_path / "s"
    with Spool(d, boot_id=BOOT) as sp:
        sp.account(5)
        sp.account(3)  # an older count changes nothing
        assert sp.accounted == 5 and segments(d) == []
        sp.account(5, durable=True)
    slots = [read_ack_slot((d / "ack").read_bytes()[o:o + 64]) for o in ACK_SLOTS]
    newest = max((s for s in slots if s is not None), key=lambda s: s.generation)
    assert newest.accounted == 5
    with Spool(d, boot_id=BOOT) as sp:
        assert sp.ledger.accounted == 5


def _failing(monkeypatch):
    state = {"broken": True}
    real = spool_module.Spool.append_many

    def append_many(self, payloads, accounted=None):
        if state["broken"]:
            raise SpoolError("cannot write OOM event to spool: No space left on device")
        return real(self, payloads, accounted)

    monkeypatch.setattr(spool_module.Spool, "append_many", append_many)
    return state


def test_counts_wait_in_memory_behind_the_events_they_follow(tmp_path, monkeypatch):
    store = DeliveryStore(Spool(tmp_path / "s", boot_id=BOOT, fsync=False))
    store.account(10, durable=True)
    state = _failing(monkeypatch)
    store.append_many([b"kill 11", b"its reclaim"], [11, None])
    store.account(13)  # two kills the probe never delivered: behind kill 11 in memory, not on disk yet
    assert store.spool.accounted == 10 and store.in_memory() == 2
    state["broken"] = False
    assert store.rescue_memory() == 2
    assert store.spool.accounted == 13 and store.in_memory() == 0
    assert [p for _, p in store.pending()] == [b"kill 11", b"its reclaim"]
    store.close()


def test_kills_delivered_from_memory_are_accounted_on_disk(tmp_path, monkeypatch):
    store = DeliveryStore(Spool(tmp_path / "s", boot_id=BOOT, fsync=False))
    store.account(10, durable=True)
    _failing(monkeypatch)
    store.append_many([b"kill 11"], [11])
    store.append_many([b"kill 12"], [12])
    batch = store.pending(1)
    assert batch == [(1, b"kill 11")]
    store.ack(batch[-1][0])  # the collector took kill 11 straight from memory
    assert store.spool.accounted == 11  # the next start must not recover it from the kernel log
    assert store.report_undelivered() == 1 and store.memory.kernel_kills() == 1
    store.close()
    with Spool(tmp_path / "s", boot_id=BOOT) as sp:
        assert sp.ledger.accounted == 11  # kill 12 was only in memory: the next start recovers it


@pytest.mark.parametrize("events", [[b"kill"], [b"kill", b"reclaim"]])
def test_what_is_lost_with_the_memory_is_counted_and_only_kernel_kills_are_left_to_recover(
        tmp_path, monkeypatch, events, caplog):
    store = DeliveryStore(Spool(tmp_path / "s", boot_id=BOOT, fsync=False))
    store.account(10, durable=True)
    _failing(monkeypatch)
    store.append_many([b"user-space kill"], [None])  # by earlyoom: the kernel's count does not move
    store.append_many(events, [11] + [None] * (len(events) - 1))
    assert store.report_undelivered() == 1 + len(events)
    message = caplog.records[-1].getMessage()
    assert "the next start recovers the 1 kernel OOM kill(s) among them" in message
    assert f"the other {len(events)} (kills by user-space OOM killers" in message
    store.close()


def test_an_ack_file_removed_while_no_agent_ran_is_a_problem_not_a_first_start(tmp_path, caplog):
    import logging

    from otel_oom.reconcile.recovery import Reconciler
    from testing.fake_kernel import FakeKernel

    kernel = FakeKernel(tmp_path / "kernel")
    d = tmp_path / "s"
    with Spool(d, boot_id=kernel.boot_id) as sp:
        sp.account(0, durable=True)
    (d / "ack").unlink()
    kernel.kill(101)  # while down: the state that would tell it is gone
    store = DeliveryStore(Spool(d, boot_id=kernel.boot_id))
    assert store.ledger.problem == "its ack file was missing"
    with caplog.at_level(logging.WARNING, logger="otel_oom.recovery"):
        r = Reconciler(store, None, kernel.boot_id, proc_root=kernel.proc_root, kmsg_path=kernel.kmsg_path)
        assert r.recover_missed() == []  # cannot be told apart from kills already reported: said so
    assert "is unusable (its ack file was missing)" in caplog.text and "1 OOM kill(s)" in caplog.text
    store.close()
