"""The kernel's OOM kill counters (reconcile/kcounters.py over cgroupfs/memcg.py): on fixture trees."""
from __future__ import annotations

import os

import pytest

from otel_oom.reconcile.kcounters import memcg_oom_kills, vmstat_oom_kills
from testing.agent_process import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "proc")


def test_vmstat_counter_from_a_fixture():
    assert vmstat_oom_kills(FIXTURES) == 17


def test_vmstat_without_the_counter_is_none():
    # kernels before 4.13 have no oom_kill line; a missing proc root reads the same
    assert vmstat_oom_kills(os.path.join(FIXTURES, "linux-4.12")) is None
    assert vmstat_oom_kills(os.path.join(FIXTURES, "no-such-proc")) is None


def test_memcg_v1_tree():
    assert memcg_oom_kills(os.path.join(FIXTURES, "memcg_v1"), 1) == {
        "/": 0,
        "/kubepods": 2,
        "/kubepods/burstable": 0,
        "/kubepods/burstable/pod1": 5,
        "/with space (x)": 1,
    }


def test_memcg_v2_tree_prefers_local_events():
    # kubepods.slice's hierarchical memory.events says 3, but those kills were its child's
    assert memcg_oom_kills(os.path.join(FIXTURES, "memcg_v2"), 2) == {
        "/kubepods.slice": 0,
        "/kubepods.slice/pod-a.slice": 3,
        "/system.slice/old.service": 2,  # a kernel before 5.2: only memory.events
    }


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="1 or 2"):
        memcg_oom_kills(os.path.join(FIXTURES, "memcg_v1"), 3)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        memcg_oom_kills(os.path.join(FIXTURES, "no-such-mount"), 1)


