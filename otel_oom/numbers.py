"""Numbers in settings, read the way they are then used: ASCII digits only, finite.

`str.isdigit()` is true for "²" (which `int()` refuses) and for "١٢" (which `int()` reads as 12),
and `int()` and `float()` also take "1_000", so neither is a check. Every number the agent reads
from a flag or a variable goes through here, and its caller then checks the range.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def ascii_int(value: Any) -> Optional[int]:
    """A whole number written in ASCII digits (sign allowed, spaces around), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    return int(text) if _INT.fullmatch(text) else None


def ascii_float(value: Any) -> Optional[float]:
    """A finite decimal number written in ASCII (1, 1.5, .5, 1e3), else None (no inf, nan, "1_0")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        text = str(value).strip()
        if not _FLOAT.fullmatch(text):
            return None
        n = float(text)
    return n if math.isfinite(n) else None
