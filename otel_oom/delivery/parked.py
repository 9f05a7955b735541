"""Where records the collector rejected as such are kept for inspection: `parked.jsonl`, bounded.

A record the collector refuses permanently (gRPC INVALID_ARGUMENT, HTTP 400, or a single record
still too large) would block every later kill if it stayed at the head of the spool, so the sender
acknowledges it and hands it here. One JSON line per record: when, why, which signal (`logs`, or
`traces` for an episode's span), and the record as it was sent, readable (`otlp.requests.readable`:
its time, event name, body and attributes) with the encoded message beside it (`otlp_base64`), so
an operator can see what was refused and replay it by hand. The file has its own size bound; past
it a record is only logged (with its id) and counted like every other rejected one.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Optional

from .segments import NotRegularFile, open_regular

log = logging.getLogger("otel_oom.delivery")

PARKED_FILE = "parked.jsonl"


class ParkedEvents:
    def __init__(self, directory: Optional[str], max_bytes: int) -> None:
        self.path = os.path.join(directory, PARKED_FILE) if directory else None
        self.max_bytes = max_bytes
        self.parked = 0       # written to the file
        self.not_kept = 0     # rejected but the file was full, missing or unwritable
        self._lock = threading.Lock()

    def park(self, record: dict[str, Any], event_id: str, reason: str, signal: str = "logs") -> bool:
        """Keep one rejected record (JSON-able); False when it could only be logged."""
        # ensure_ascii: a name's raw kernel bytes stay \udcNN escapes, lossless and plain ASCII
        line = json.dumps({"parked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason,
                           "signal": signal, "event": record}, ensure_ascii=True, separators=(",", ":")) + "\n"
        with self._lock:
            if self.path is None:
                self.not_kept += 1
                return False
            try:
                # never blocks, never follows a link: a FIFO or a link put there must not stall the sender
                fd = open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            except OSError as e:
                self.not_kept += 1
                what = f"it is {e.strerror}" if isinstance(e, NotRegularFile) else e.strerror
                log.error("cannot write rejected OOM event %s to %s: %s", event_id, self.path, what)
                return False
            try:
                if os.fstat(fd).st_size + len(line) > self.max_bytes:
                    self.not_kept += 1
                    log.error("parked events file %s is full (%d bytes): rejected OOM event %s not kept",
                              self.path, self.max_bytes, event_id)
                    return False
                os.write(fd, line.encode("ascii"))
            except OSError as e:
                self.not_kept += 1
                log.error("cannot write rejected OOM event %s to %s: %s", event_id, self.path, e.strerror)
                return False
            finally:
                os.close(fd)
            self.parked += 1
            return True
