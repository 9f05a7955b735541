"""What reached the VictoriaLogs cluster, asked of its select node (vlselect): which kills became
queryable when, what is stored once or more, and whether each kill is found by its pod."""
from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

from .feed import Sent

POLL_S = 0.25


class QueryError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"HTTP {code}: {text[:300]}")
        self.code = code


def logsql(url: str, query: str, partial: bool = False, limit: int = 1_000_000) -> list[dict]:
    """Rows of a LogsQL query at vlselect (all time); QueryError on a refusal (502: a storage node down)."""
    args = {"query": query, "limit": str(limit)}
    if partial:
        args["allow_partial_response"] = "1"
    try:
        with urllib.request.urlopen(f"{url}/select/logsql/query", data=urllib.parse.urlencode(args).encode(),
                                    timeout=30) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as e:
        raise QueryError(e.code, e.read().decode(errors="replace")) from None
    return [json.loads(line) for line in body.splitlines() if line.strip()]


@dataclass
class Poller:
    """Asks vlselect every POLL_S for the kills stored so far: the first answer naming a kill is
    when it became queryable. While a storage node is down vlselect refuses (502) full answers;
    the poller then takes a partial one and notes the refusal."""
    url: str
    first_seen: dict[str, float] = field(default_factory=dict)
    refused: list[float] = field(default_factory=list)   # wall times of 502 answers
    errors: int = 0

    def run(self, stop: threading.Event) -> None:
        query = 'event_name:="oom.kill" | uniq by (oom.event.id)'
        while not stop.wait(POLL_S):
            try:
                try:
                    rows = logsql(self.url, query)
                except QueryError as e:
                    if e.code != 502:
                        raise
                    self.refused.append(time.time())
                    rows = logsql(self.url, query, partial=True)
            except (QueryError, urllib.error.URLError, OSError):
                self.errors += 1
                continue
            now = time.time()
            for row in rows:
                self.first_seen.setdefault(row.get("oom.event.id", ""), now)


def quantile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency(kills: list[Sent], first_seen: dict[str, float]) -> dict:
    """Kill (the record's own time) -> first seen queryable at vlselect, in ms."""
    ms = [(first_seen[k.id] - k.time_ns / 1e9) * 1000 for k in kills if k.id in first_seen]
    return {"count": len(ms), "p50_ms": quantile(ms, 0.5), "p90_ms": quantile(ms, 0.9),
            "p99_ms": quantile(ms, 0.99), "max_ms": max(ms) if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None, "poll_interval_ms": POLL_S * 1000}


def stored_counts(url: str) -> dict[str, int]:
    """Every record id in the cluster with how many rows carry it (kills: oom.event.id; the records
    around them: oom.record.id)."""
    rows = logsql(url, '* | stats by (oom.event.id, oom.record.id) count() n')
    out: dict[str, int] = {}
    for r in rows:
        key = r.get("oom.event.id") or r.get("oom.record.id") or ""
        out[key] = out.get(key, 0) + int(r["n"])
    return out


def wait_all_stored(url: str, sent: dict[str, Sent], timeout: float, settle: float = 90.0) -> dict[str, int]:
    """Poll until every sent id is stored, or nothing new was stored for `settle` seconds (longer
    than the Collectors' longest retry interval, 30 s: what is missing then is lost), or timeout."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    stored, changed = 0, time.monotonic()
    while True:
        try:
            counts = stored_counts(url)
        except (QueryError, urllib.error.URLError, OSError):
            pass
        now_stored = sum(1 for i in sent if i in counts)
        if now_stored != stored:
            stored, changed = now_stored, time.monotonic()
        if stored == len(sent) or time.monotonic() > min(deadline, changed + settle):
            return counts
        time.sleep(1.0)


def kills_by_pod(url: str, kills: list[Sent]) -> dict:
    """Each pod that had kills, asked by its name at vlselect: the distinct oom.event.id found
    must be exactly the kills sent for it."""
    expected: dict[str, set[str]] = {}
    for k in kills:
        expected.setdefault(k.pod, set()).add(k.id)
    missing: list[str] = []
    found_total = 0
    for pod, ids in sorted(expected.items()):
        rows = logsql(url, f'k8s.pod.name:={json.dumps(pod)} event_name:="oom.kill" | uniq by (oom.event.id)')
        found = {r.get("oom.event.id", "") for r in rows}
        found_total += len(found & ids)
        if found != ids:
            missing.append(pod)
    return {"pods_checked": len(expected), "kills_queryable_by_pod": found_total, "pods_not_matching": missing[:20]}


def top_pods_query(url: str) -> list[dict]:
    """The docs' "which pods were OOM-killed most" LogsQL (docs/scale.md), run for real."""
    return logsql(url, '_time:7d event_name:="oom.kill" | stats by (k8s.namespace.name, k8s.pod.name) '
                       'count_uniq(oom.event.id) kills | sort by (kills desc) | limit 10')
