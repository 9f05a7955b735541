"""Alerting rules: Prometheus rules through the real promtool (check + unit tests), Loki ruler
rules structurally (no LogQL parser is available here), and the metric names the rules use
against what the OpenTelemetry Prometheus exporter really produces for the agent's instruments."""
from __future__ import annotations

import re
import shutil
import subprocess

import yaml
from conftest import require

from testing.agent_process import REPO

ALERTS = REPO / "deploy" / "alerts"


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "needs `promtool` on PATH (Debian: apt-get install prometheus)")
    return path  # type: ignore[return-value]


def test_promtool_check_rules():
    r = subprocess.run([promtool(), "check", "rules", str(ALERTS / "prometheus-rules.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout


def test_promtool_unit_tests():
    r = subprocess.run([promtool(), "test", "rules", "prometheus-rules.test.yaml"], cwd=ALERTS,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_prometheus_alert_is_unit_tested():
    rules = yaml.safe_load((ALERTS / "prometheus-rules.yaml").read_text())
    tests = yaml.safe_load((ALERTS / "prometheus-rules.test.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested_firing = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == tested_firing
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("info", "warning", "critical")
            assert r["annotations"]["summary"] and r["annotations"]["description"]


def prometheus_names_of_the_agent_metrics() -> set[str]:
    """Series names the real OTel Prometheus exporter gives the agent's instruments."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=reg)])
    m = provider.get_meter("otel_oom")
    m.create_counter("oom.kills", unit="{kill}").add(1, {"oom.constraint": "memcg"})
    m.create_histogram("oom.victim.rss", unit="By").record(1 << 20)
    m.create_counter("otel_oom.events.dropped", unit="{event}").add(1, {"reason": "queue_full"})
    m.create_counter("otel_oom.export.failures", unit="{failure}").add(1, {"signal": "logs"})
    m.create_observable_gauge("otel_oom.hooks.attached",
                              [lambda _o: [Observation(1, {"oom.hook": "tp_btf", "oom.hook.role": "victim"})]])
    m.create_observable_gauge("oom.kills.unobserved", [lambda _o: [Observation(0)]], unit="{kill}")
    text = generate_latest(reg).decode()
    provider.shutdown()
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    labels = set(re.findall(r"[{,]([a-zA-Z_][a-zA-Z0-9_]*)=", text))
    return names | {f"label:{x}" for x in labels}


AGENT_METRIC_PREFIXES = ("oom_", "otel_oom_")


# what the node-local Collector adds: oom.kill records counted by container (the count connector
# in collector-config/agent.yaml), remote-written under this name with these labels; the real
# Collector produces and Prometheus answers them in tests/test_collector_e2e.py
COLLECTOR_SERIES = {"oom_kill_records_total", "label:oom_constraint"}


def test_rules_use_real_metric_names():
    produced = prometheus_names_of_the_agent_metrics() | COLLECTOR_SERIES
    assert {"oom_kills_total", "oom_victim_rss_bytes_bucket", "otel_oom_events_dropped_total",
            "otel_oom_export_failures_total", "otel_oom_hooks_attached", "oom_kills_unobserved"} <= produced
    text = (ALERTS / "prometheus-rules.yaml").read_text()
    exprs = [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    # a metric name is followed by a selector, a range or a closing parenthesis
    used = {n for e in exprs for n in re.findall(r"\b((?:otel_)?oom_[a-z_]+)\s*(?=[{\[)]|\s+offset|\s*$)", e, re.M)}
    assert used and used <= produced, used - produced
    labels = {f"label:{n}" for e in exprs for n in re.findall(r"\b((?:otel_)?oom_[a-z_]+)\s*!?=", e)}
    assert labels <= produced, labels - produced


# ---- Loki -----------------------------------------------------------------------------------

# Loki 3.x default OTLP resource attributes promoted to index labels (dots -> underscores)
LOKI_INDEX_LABELS = {
    "service_name", "service_namespace", "service_instance_id", "deployment_environment",
    "cloud_availability_zone", "cloud_region", "container_name", "k8s_cluster_name",
    "k8s_container_name", "k8s_cronjob_name", "k8s_daemonset_name", "k8s_deployment_name",
    "k8s_job_name", "k8s_namespace_name", "k8s_pod_name", "k8s_replicaset_name", "k8s_statefulset_name",
}
# otel-oom attributes (docs/schema.md) that the rules use as structured metadata
OOM_METADATA = {"oom_event_id", "oom_recovered", "process_executable_name", "k8s_node_name", "k8s_pod_uid",
                "container_id", "oom_constraint"}


def loki_rules() -> list[dict]:
    doc = yaml.safe_load((ALERTS / "loki-rules.yaml").read_text())
    assert list(doc) == ["groups"]
    return [r for g in doc["groups"] for r in g["rules"]]


def balanced(text: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    in_str = False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            in_str = not in_str
        elif in_str:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_str


def test_loki_rules_structure():
    rules = loki_rules()
    assert len(rules) == 3
    for r in rules:
        assert set(r) == {"alert", "expr", "labels", "annotations"}, r
        e = r["expr"]
        assert balanced(e), e
        assert '{service_name="otel-oom"}' in e
        assert re.search(r"count_over_time\(.*\[\d+[smh]\]\s*\)", e, re.S), e
        by = re.search(r"sum by \(([^)]*)\)", e)
        assert by, e
        for label in (x.strip() for x in by.group(1).split(",")):
            assert label in LOKI_INDEX_LABELS | OOM_METADATA, label
        for name in re.findall(r"\|\s*([a-z_]+)\s*(?:!=|=)", e):
            assert name in OOM_METADATA, name
        assert r["labels"]["severity"] in ("info", "warning", "critical")


def test_log_kill_counts_count_distinct_event_ids():
    """Records are delivered at least once (docs/scale.md): every LogQL count of kills, in the
    Loki rules and the dashboard, counts distinct oom_event_id, never records."""
    import json

    dashboard = json.loads((REPO / "deploy" / "grafana" / "otel-oom-dashboard.json").read_text())
    exprs = [r["expr"] for r in loki_rules()] + [
        t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t["datasource"]["type"] == "loki"]
    counts = [e for e in exprs if "count_over_time" in e]
    assert len(counts) >= 7, counts  # 3 rules, 4 panels
    for e in counts:
        flat = re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", " ".join(e.split())))
        m = re.search(r"count(?: by \(([^)]*)\))? \(sum by \(([^)]*)\) \(count_over_time\(", flat)
        assert m, flat
        outer = [x.strip() for x in (m.group(1) or "").split(",") if x.strip()]
        inner = [x.strip() for x in m.group(2).split(",")]
        assert inner == outer + ["oom_event_id"], flat
        assert '| oom_event_id != ""' in flat, flat
    # and the Prometheus kill alerts no longer present a record count as a number of kills
    rules = (ALERTS / "prometheus-rules.yaml").read_text()
    assert "process(es)" not in rules and "kill record(s)" in rules
