"""Start and clear levels (pure), and the PSI trigger line the source writes."""
from __future__ import annotations

import pytest

from otel_oom.pressure.psi_trigger import trigger_text
from otel_oom.pressure.thresholds import Thresholds


def test_psi_trigger_lines():
    assert trigger_text(10, 2) == b"some 200000 2000000\0"
    assert trigger_text(100, 10) == b"some 9999999 10000000\0"  # at most the window, less one microsecond
    for window in (3, 0, 12):
        with pytest.raises(ValueError, match="2, 4, 6, 8 or 10"):
            trigger_text(10, window)


def test_hysteresis_levels():
    t = Thresholds(usage_percent=90, stall_percent=10, clear_seconds=10)
    assert t.usage_starts(90, 100) and not t.usage_starts(89, 100)
    assert t.usage_hot(80, 100) and not t.usage_hot(79, 100)
    assert not t.usage_starts(None, 100) and not t.usage_starts(100, None)
    assert t.psi_hot(5.0) and not t.psi_hot(4.9) and not t.psi_hot(None)
    assert t.start_threshold_bytes(1000) == 900
    assert Thresholds(usage_percent=11).clear_usage_percent == 1.0
