"""Thresholds and hysteresis: the levels at which pressure starts, and below which it clears (pure).

An episode starts when one signal crosses its start level (usage at `usage_percent` of the limit,
PSI "some" at `stall_percent` over the trigger window, a v2 `max`/`high` event, a v1 medium
reclaim-pressure notification). It stays on while any reading is still above its clear level
(usage 10 points below the start level, PSI at half the start level, any further limit event)
and ends only after `clear_seconds` with none. The source registers the start levels with the
kernel (v1 usage thresholds, PSI triggers); the tracker (`around/pressure.py`) applies the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

USAGE_CLEAR_GAP = 10.0  # percentage points between the usage start level and its clear level


@dataclass(frozen=True)
class Thresholds:
    stall_percent: float = 10.0    # PSI some, percent of the trigger window
    usage_percent: float = 90.0    # of the memory limit
    window_s: int = 2              # PSI trigger window (multiple of 2 s)
    clear_seconds: float = 10.0

    @property
    def clear_usage_percent(self) -> float:
        return max(1.0, self.usage_percent - USAGE_CLEAR_GAP)

    @property
    def clear_stall_percent(self) -> float:
        return self.stall_percent / 2

    def usage_starts(self, usage: Optional[int], limit: Optional[int]) -> bool:
        return usage is not None and bool(limit) and usage * 100 >= limit * self.usage_percent  # type: ignore[operator]

    def usage_hot(self, usage: Optional[int], limit: Optional[int]) -> bool:
        return usage is not None and bool(limit) and usage * 100 >= limit * self.clear_usage_percent  # type: ignore[operator]

    def psi_hot(self, some_avg10: Optional[float]) -> bool:
        return some_avg10 is not None and some_avg10 >= self.clear_stall_percent

    def start_threshold_bytes(self, limit: int) -> int:
        return int(limit * self.usage_percent / 100)
