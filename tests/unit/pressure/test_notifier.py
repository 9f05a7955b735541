"""The source's epoll (notifier.py) with real eventfds: owners, disarm until the next tick, stop."""
from __future__ import annotations

import os
import select

from otel_oom.pressure import v1_events
from otel_oom.pressure.notifier import Notifier


def test_a_fired_descriptor_names_its_owner_and_a_disarmed_one_waits_for_the_rearm():
    n: Notifier[tuple[str, str]] = Notifier()
    a, b = v1_events.new_eventfd(), v1_events.new_eventfd()
    try:
        n.add(a, ("/a", "oom"))
        n.add(b, ("/b", "usage"))
        assert n.wait(0) == [] and not n.any_disarmed()
        os.eventfd_write(a, 3)
        assert n.wait(5) == [(("/a", "oom"), a, select.EPOLLIN)]
        assert v1_events.drain(a) == 3 and v1_events.drain(a) == 0
        n.disarm(a)
        os.eventfd_write(a, 1000)  # a storm while disarmed: no wake-up
        os.eventfd_write(b, 1)
        assert n.wait(0) == [(("/b", "usage"), b, select.EPOLLIN)]
        v1_events.drain(b)
        assert n.any_disarmed() and n.owner(a) == ("/a", "oom")
        assert n.rearm() == [(("/a", "oom"), a)]  # the tick: armed again, the caller drains
        assert v1_events.drain(a) == 1000 and not n.any_disarmed()
        n.remove(b)
        os.eventfd_write(b, 1)
        assert n.wait(0) == [] and n.owner(b) is None
    finally:
        n.close()
        os.close(a)
        os.close(b)


def test_stop_wakes_a_wait():
    n: Notifier[str] = Notifier()
    try:
        n.stop()
        assert n.wait(600) == []  # returns at once: the wake descriptor fired (and is drained)
        assert n.wait(0) == []
    finally:
        n.close()
