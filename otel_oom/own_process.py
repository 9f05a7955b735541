"""The agent's own process: how killable it is (oom_score_adj)."""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger("otel_oom.agent")


def lower_oom_score(want: Optional[int]) -> None:
    """Set the agent's own oom_score_adj (None: keep it); a warning when the kernel does not take it."""
    if want is None:
        return
    have: Optional[int]
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(want))
        with open("/proc/self/oom_score_adj") as f:
            have = int(f.read())
    except (OSError, ValueError) as e:
        have, why = None, getattr(e, "strerror", None) or str(e)
    else:
        why = "the kernel kept the old value"
    if have != want:
        # lowering needs CAP_SYS_RESOURCE (some kernels ignore the write instead of refusing it);
        # the agent still works, it is just as killable as any other process
        log.warning("could not set the agent's oom_score_adj to %d (%s; lowering needs CAP_SYS_RESOURCE)",
                    want, why)
