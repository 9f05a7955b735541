"""What reached the VictoriaLogs cluster, asked of its select node (vlselect): which kills became
queryable when, what is stored once or more, and whether each kill is found by its pod; and what
each copy holds, asked of its vlstorage node directly."""
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


def logsql(url: str, query: str, partial: Optional[bool] = None, limit: int = 1_000_000) -> list[dict]:
    """Rows of a LogsQL query at vlselect (all time); QueryError on a refusal (502: a storage node
    down and no partial answer allowed). `partial` None: vlselect's own setting."""
    args = {"query": query, "limit": str(limit)}
    if partial is not None:
        args["allow_partial_response"] = "1" if partial else "0"
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
    when it became queryable. It asks for a full answer first (allow_partial_response=0), which
    vlselect refuses (502) while a storage node is down; it then takes the partial answer (what
    vlselect gives by default here, -search.allowPartialResponse) and checks that it still names
    every kill seen before: with every record in two copies, the surviving copy has them all."""
    url: str
    first_seen: dict[str, float] = field(default_factory=dict)
    refused: list[float] = field(default_factory=list)   # wall times of 502 answers
    partial_answers: int = 0
    partial_answers_incomplete: int = 0                 # partial answers missing a kill seen before
    partial_kills_missing: int = 0                      # the most kills one of them missed
    errors: int = 0

    def run(self, stop: threading.Event) -> None:
        query = 'event_name:="oom.kill" | uniq by (oom.event.id)'
        while not stop.wait(POLL_S):
            try:
                try:
                    rows = logsql(self.url, query, partial=False)
                except QueryError as e:
                    if e.code != 502:
                        raise
                    self.refused.append(time.time())
                    rows = logsql(self.url, query, partial=True)
                    self._check_partial({r.get("oom.event.id", "") for r in rows})
            except (QueryError, urllib.error.URLError, OSError):
                self.errors += 1
                continue
            now = time.time()
            for row in rows:
                self.first_seen.setdefault(row.get("oom.event.id", ""), now)

    def _check_partial(self, ids: set[str]) -> None:
        missing = len(set(self.first_seen) - ids)
        self.partial_answers += 1
        if missing:
            self.partial_answers_incomplete += 1
            self.partial_kills_missing = max(self.partial_kills_missing, missing)


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


def wait_all_stored(url: str, copy_urls: list[str], sent: dict[str, Sent], timeout: float,
                    settle: float = 90.0, settle_copies: float = 35.0) -> tuple[dict[str, int], list[dict[str, int]]]:
    """Poll until every sent id is in every copy, or nothing new was stored for `settle` seconds
    (longer than the Collectors' longest retry interval, 30 s: what is missing then is lost), or
    every id is in some copy and no copy changed for `settle_copies` seconds (what a crashed
    storage node lost from its copy never comes back), or timeout. The rows per id at vlselect
    and in each copy."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    copies: list[dict[str, int]] = [{} for _ in copy_urls]
    seen: tuple = ()
    changed = time.monotonic()
    while True:
        try:
            counts = stored_counts(url)
            copies = [stored_counts(u) for u in copy_urls]
        except (QueryError, urllib.error.URLError, OSError):
            pass
        in_any = sum(1 for i in sent if i in counts)
        in_all = sum(1 for i in sent if all(i in c for c in copies))
        now_seen = (in_any, in_all, *(sum(c.values()) for c in copies))
        if now_seen != seen:
            seen, changed = now_seen, time.monotonic()
        quiet = time.monotonic() - changed
        if (in_all == len(sent) or quiet > settle or (in_any == len(sent) and quiet > settle_copies)
                or time.monotonic() > deadline):
            return counts, copies
        time.sleep(1.0)


def copies_and_duplicates(sent: dict[str, Sent], copies: list[dict[str, int]], sent_twice: set[str]) -> dict:
    """Each record is stored once per copy by design; a row beyond that is a duplicate. Where it
    arose: a record an agent sent twice (`sent_twice`) has one extra row per copy from that; the
    rest, if in both copies, reached the gateways twice (a node Collector's replay); if in one
    copy only, a gateway sent it twice to that copy's vlinsert (a replay from its disk queue). A
    storage node's crash can take a duplicate from its copy too, so this is where the rows that
    remain came from, not a count of the replays."""
    kills = {i for i, s in sent.items() if s.kind == "oom.kill"}
    dup = {"total": 0, "kills": 0, "agent_replay": 0, "node_collector_replay": 0, "gateway_replay": 0}
    in_copies = {n: 0 for n in range(len(copies) + 1)}
    for i in sent:
        per_copy = [c.get(i, 0) for c in copies]
        in_copies[sum(1 for n in per_copy if n)] += 1
        extra = [max(0, n - 1) for n in per_copy]
        dup["total"] += sum(extra)
        dup["kills"] += sum(extra) if i in kills else 0
        agent = [min(e, 1) if i in sent_twice else 0 for e in extra]
        rest = [e - a for e, a in zip(extra, agent, strict=True)]
        both = min(rest) if all(per_copy) else 0
        dup["agent_replay"] += sum(agent)
        dup["node_collector_replay"] += both * len(copies)
        dup["gateway_replay"] += sum(rest) - both * len(copies)
    return {"duplicates": dup["total"], "duplicates_kills": dup["kills"],
            "duplicates_by_hop": {k: v for k, v in dup.items() if k not in ("total", "kills")},
            "in_both_copies": in_copies[len(copies)], "in_one_copy_only": sum(in_copies[n] for n in range(1, len(copies))),
            "copy_rows": [sum(c.get(i, 0) for i in sent) for c in copies],
            "copy_kill_rows": [sum(c.get(i, 0) for i in kills) for c in copies],
            "copy_kill_distinct": [sum(1 for i in kills if c.get(i)) for c in copies],
            "copy_distinct": [sum(1 for i in sent if c.get(i)) for c in copies]}


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
