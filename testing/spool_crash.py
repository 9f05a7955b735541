"""What a SIGKILL leaves of an in-process spool: its descriptors closed (its lock released) and
nothing more written. The page cache keeps whatever was written before, as it does for a killed
process, so a `Spool` opened next on the same directory sees what a restarted agent would."""
from __future__ import annotations

from otel_oom.delivery.spool import Spool


def abandon(spool: Spool) -> None:
    spool._closed = True  # no close(): nothing is persisted, counted or logged at the end
    for seg in spool._segments:
        seg.close()
    spool._files.close()
