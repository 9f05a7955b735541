"""Collector configurations in collector-config/, checked for structure (no Collector binary here).

Every file must parse, every component a pipeline names must be defined, every defined
component must be used, every extension a component references must be enabled, and every
component type must exist in the targeted distribution, otelcol-contrib v0.159.0.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "collector-config"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))

# Component types of otelcol-contrib v0.159.0 that these configs may use, with their
# deprecated aliases. The distribution's module list is
# open-telemetry/opentelemetry-collector-releases distributions/otelcol-contrib/manifest.yaml at
# v0.159.0 (every module below is in it); each type string is the `type:` (and
# `deprecated_type:`) of the module's metadata.yaml: read at tag v0.159.0 for the modules of
# open-telemetry/opentelemetry-collector, and from opentelemetry-collector-contrib's
# metadata.yaml and rename pull requests (#45901 k8s_attributes, #48705 prometheus_remote_write)
# for contrib. Extend this list only after checking a module's metadata.yaml the same way.
CONTRIB_V0_159_TYPES = {
    "receivers": {
        "otlp",                        # go.opentelemetry.io/collector/receiver/otlpreceiver
        "nop",                         # .../receiver/nopreceiver
        "prometheus",                  # contrib receiver/prometheusreceiver
    },
    "processors": {
        "batch",                       # go.opentelemetry.io/collector/processor/batchprocessor
        "memory_limiter",              # .../processor/memorylimiterprocessor
        "groupbyattrs",                # contrib processor/groupbyattrsprocessor
        "k8s_attributes", "k8sattributes",  # contrib processor/k8sattributesprocessor (alias since v0.146)
        "resource",                    # contrib processor/resourceprocessor
        "attributes",                  # contrib processor/attributesprocessor
    },
    "exporters": {
        "debug",                       # go.opentelemetry.io/collector/exporter/debugexporter
        "nop",                         # .../exporter/nopexporter
        "otlp_grpc", "otlp",           # .../exporter/otlpexporter (type otlp_grpc, deprecated_type otlp)
        "otlp_http", "otlphttp",       # .../exporter/otlphttpexporter (type otlp_http, deprecated_type otlphttp)
        "prometheus_remote_write", "prometheusremotewrite",  # contrib exporter/prometheusremotewriteexporter
        "prometheus",                  # contrib exporter/prometheusexporter
        "clickhouse",                  # contrib exporter/clickhouseexporter
    },
    "extensions": {
        "health_check",                # contrib extension/healthcheckextension
        "file_storage",                # contrib extension/storage/filestorage
        "zpages",                      # go.opentelemetry.io/collector/extension/zpagesextension
        "pprof",                       # contrib extension/pprofextension
    },
    "connectors": set(),
}
DEPRECATED_ALIASES = {"k8sattributes", "otlp" + "http", "prometheusremotewrite"}
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ctype(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def test_the_expected_configs_exist():
    assert [p.name for p in CONFIGS] == ["agent.yaml", "clickhouse.yaml", "debug.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_structure(path):
    cfg = load(path)
    assert isinstance(cfg, dict)
    assert set(cfg) <= set(KINDS) | {"service"}, set(cfg) - set(KINDS)
    service = cfg["service"]
    pipelines = service["pipelines"]
    assert pipelines, "no pipelines"
    used: dict[str, set] = {k: set() for k in KINDS}
    for name, p in pipelines.items():
        signal = name.split("/", 1)[0]
        assert signal in ("logs", "metrics", "traces", "profiles"), name
        assert p.get("receivers") and p.get("exporters"), f"{name} needs receivers and exporters"
        for kind in ("receivers", "processors", "exporters"):
            for cid in p.get(kind, []):
                assert cid in (cfg.get(kind) or {}), f"{path.name}: pipeline {name} uses undefined {kind[:-1]} {cid}"
                used[kind].add(cid)
    for kind in ("receivers", "processors", "exporters"):
        unused = set(cfg.get(kind) or {}) - used[kind]
        assert not unused, f"{path.name}: defined but in no pipeline: {unused}"
    enabled = service.get("extensions", [])
    for ext in enabled:
        assert ext in (cfg.get("extensions") or {}), f"{path.name}: enabled extension {ext} is not defined"
    assert set(cfg.get("extensions") or {}) == set(enabled), "every defined extension must be enabled"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_component_types_exist_in_the_distribution(path):
    cfg = load(path)
    for kind in KINDS:
        for cid in cfg.get(kind) or {}:
            t = ctype(cid)
            assert t in CONTRIB_V0_159_TYPES[kind], f"{path.name}: {kind[:-1]} type {t!r} is not in otelcol-contrib v0.159.0"
            assert t not in DEPRECATED_ALIASES, f"{path.name}: {t!r} is a deprecated alias in v0.159.0"


def referenced_extensions(node) -> set[str]:
    """`storage:` and `authenticator:` values anywhere in a component's config."""
    found = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("storage", "authenticator") and isinstance(v, str):
                found.add(v)
            else:
                found |= referenced_extensions(v)
    elif isinstance(node, list):
        for v in node:
            found |= referenced_extensions(v)
    return found


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_referenced_extensions_are_enabled(path):
    cfg = load(path)
    enabled = set(cfg["service"].get("extensions", []))
    for kind in ("receivers", "processors", "exporters"):
        for cid, conf in (cfg.get(kind) or {}).items():
            missing = referenced_extensions(conf) - enabled
            assert not missing, f"{path.name}: {cid} references extensions not enabled: {missing}"


def test_agent_pipeline_order_and_attribution():
    cfg = load(CONFIG_DIR / "agent.yaml")
    expected = ["memory_limiter", "groupbyattrs", "k8s_attributes", "batch"]
    for name in ("logs", "metrics"):
        assert cfg["service"]["pipelines"][name]["processors"] == expected
    assert set(cfg["processors"]["groupbyattrs"]["keys"]) == {"k8s.pod.uid", "container.id"}
    k8s = cfg["processors"]["k8s_attributes"]
    assert k8s["pod_association"] == [{"sources": [{"from": "resource_attribute", "name": "k8s.pod.uid"}]}]
    assert {"k8s.namespace.name", "k8s.pod.name", "k8s.container.name"} <= set(k8s["extract"]["metadata"])
    assert k8s["filter"]["node_from_env_var"] == "K8S_NODE_NAME"


def test_agent_exports_logs_to_loki_durably():
    cfg = load(CONFIG_DIR / "agent.yaml")
    (exp,) = cfg["service"]["pipelines"]["logs"]["exporters"]
    assert ctype(exp) == "otlp_http"
    loki = cfg["exporters"][exp]
    assert loki["endpoint"] == "http://loki:3100/otlp"
    q = loki["sending_queue"]
    assert q["enabled"] is True and ctype(q["storage"]) == "file_storage"
    assert q["storage"] in cfg["service"]["extensions"]
    assert loki["retry_on_failure"]["max_elapsed_time"] in ("0s", 0)
    (mexp,) = cfg["service"]["pipelines"]["metrics"]["exporters"]
    assert ctype(mexp) == "prometheus_remote_write"
    assert cfg["exporters"][mexp]["resource_to_telemetry_conversion"]["enabled"] is True


def test_debug_config_is_detailed():
    cfg = load(CONFIG_DIR / "debug.yaml")
    assert cfg["exporters"]["debug"]["verbosity"] == "detailed"
    assert set(cfg["service"]["pipelines"]) == {"logs", "metrics"}


def test_clickhouse_config_keeps_history():
    cfg = load(CONFIG_DIR / "clickhouse.yaml")
    ch = cfg["exporters"]["clickhouse"]
    assert ch["endpoint"].startswith("tcp://") and ch["create_schema"] is True and ch["ttl"]
    assert cfg["service"]["pipelines"]["logs"]["exporters"] == ["clickhouse"]


def test_collector_manifest_matches_the_agent_config():
    """deploy/collector.yaml must give agent.yaml what it assumes: the env var, the ports, the dirs."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "collector.yaml").read_text()) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["K8S_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    ports = {p["containerPort"]: p for p in c["ports"]}
    assert ports[4317]["hostPort"] == 4317
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    cfg = load(CONFIG_DIR / "agent.yaml")
    storage_dir = cfg["extensions"]["file_storage/queue"]["directory"]
    assert any(storage_dir.startswith(m) for m in mounts), storage_dir
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    resources = {r for rule in rules for r in rule["resources"]}
    assert {"pods", "namespaces", "replicasets"} <= resources
    verbs = {v for rule in rules for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
