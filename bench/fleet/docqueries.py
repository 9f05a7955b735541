"""The kill counts the project's docs give, run as written at vlselect and held to what was sent.

Every LogsQL query in a ```logsql block of docs/scale.md and collector-config/README.md that counts
kills (`count_uniq(oom.event.id)`) is read from the files at run time, sent to the cluster's select
node, and each row compared with the kills the agents sent for that group (namespace, pod,
container, node, deployment). The same query with `count()` in place of `count_uniq(...)` gives
the raw records per group: every record is stored in two copies and some more than once, so the
raw counts exceed the kills, and only the distinct counts may equal them.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional

from .feed import Sent
from .measure import logsql
from .stack import REPO

DOCS = (REPO / "docs" / "scale.md", REPO / "collector-config" / "README.md")
DISTINCT = "count_uniq(oom.event.id)"
# the record fields the docs group by, and where the simulation knows each kill's value
FIELDS = {"k8s.namespace.name": "namespace", "k8s.pod.name": "pod", "k8s.container.name": "container",
          "k8s.node.name": "node", "k8s.deployment.name": "deployment"}


def doc_queries(docs: tuple[Path, ...] = DOCS) -> list[tuple[str, str]]:
    """(file, query) for each kill-counting LogsQL query of the docs. A query is a line that is no
    comment, with the indented lines after it (a pipe continued on the next line)."""
    out: list[tuple[str, str]] = []
    for path in docs:
        for block in re.findall(r"```logsql\n(.*?)```", path.read_text(), flags=re.S):
            queries: list[list[str]] = []
            for line in block.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0].isspace() and queries:
                    queries[-1].append(line.strip())
                else:
                    queries.append([line.strip()])
            out += [(str(path.relative_to(REPO)), " ".join(q)) for q in queries if DISTINCT in " ".join(q)]
    return out


def _alias(query: str) -> Optional[str]:
    m = re.search(re.escape(DISTINCT) + r"\s+(?:as\s+)?([\w.]+)", query)
    return m.group(1) if m else None


def _group_fields(query: str) -> list[str]:
    m = re.search(r"stats\s+by\s*\(([^)]*)\)\s*" + re.escape(DISTINCT), query)
    return [f.strip() for f in m.group(1).split(",")] if m else []


def _key(kill: Sent, fields: list[str], deployments: dict[str, str]) -> tuple:
    """The kill's values of the query's group fields, as vlselect would return them."""
    return tuple(deployments.get(kill.pod, "") if FIELDS[f] == "deployment" else getattr(kill, FIELDS[f])
                 for f in fields)


def check(url: str, kills: list[Sent], deployments: dict[str, str]) -> list[dict]:
    """Each docs query's rows against the kills sent: `matching` rows of `rows`, the first
    mismatches, and the raw record total beside the distinct one."""
    results = []
    for doc, query in doc_queries():
        alias, fields = _alias(query), _group_fields(query)
        if alias is None or any(f not in FIELDS for f in fields):
            results.append({"doc": doc, "query": query, "skipped": "groups by a field the simulation does not track"})
            continue

        rows = logsql(url, query)
        absent = [f for f in fields if rows and all(f not in r for r in rows)]
        if absent:
            results.append({"doc": doc, "query": query, "skipped": f"no stored kill has {', '.join(absent)}"
                            + (": the Kubernetes API test double serves pods, not the ReplicaSets k8s_attributes "
                               "takes a deployment's name from" if "k8s.deployment.name" in absent else "")})
            continue
        expected = Counter(_key(k, fields, deployments) for k in kills)
        limit = re.search(r"\|\s*limit\s+(\d+)", query)
        want_rows = min(int(limit.group(1)), len(expected)) if limit else len(expected)
        mismatches = [{**r, "expected": expected.get(tuple(r.get(f, "") for f in fields), 0)} for r in rows
                      if int(r[alias]) != expected.get(tuple(r.get(f, "") for f in fields), 0)]
        # raw records of the same groups: count() in place of the distinct count, no limit
        raw_rows = logsql(url, re.sub(r"\|\s*limit\s+\d+", "", query.replace(DISTINCT, "count()")))
        raw = {tuple(r.get(f, "") for f in fields): int(r[alias]) for r in raw_rows}
        results.append({"doc": doc, "query": query, "rows": len(rows), "expected_rows": want_rows,
                        "matching": len(rows) - len(mismatches), "mismatches": mismatches[:5],
                        "distinct_total": sum(int(r[alias]) for r in rows),
                        "expected_total": sum(sorted(expected.values(), reverse=True)[:want_rows]) if limit
                        else sum(expected.values()),
                        "raw_total": sum(raw.get(tuple(r.get(f, "") for f in fields), 0) for r in rows)})
    return results
