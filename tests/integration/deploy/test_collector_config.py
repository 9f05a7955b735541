"""Collector configurations in collector-config/, run by a real Collector (`make collector`).

Every file must pass the built Collector's `validate` and start (ready, health check answering,
clean shutdown), with only its listen addresses and queue directories moved by `--config=yaml:`
overrides. The structural checks below (every component used, the processor order, the durable
queue) say what the files promise beyond "the Collector accepts them"; the end-to-end behaviour
is in tests/test_collector_e2e.py.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import yaml
from conftest import require

from testing.agent_process import REPO
from testing.collector_process import (
    CollectorProcess,
    collector_binary,
    collector_env,
    http_ok,
    loopback_overrides,
    validate,
)
from testing.k8s_api_double import KubernetesApiDouble
from testing.otlp_receiver import free_port

CONFIG_DIR = REPO / "collector-config"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
TOOLS = REPO / "tools" / "collector"
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")
# names a current Collector still accepts but logs as deprecated; the files use the new ones
DEPRECATED_ALIASES = {"k8sattributes", "otlp" + "http", "prometheusremotewrite", "deltatocumulative", "loadbalancing"}
# what each file reads from the environment (the deployments set these)
CONFIG_ENV = {
    "agent.yaml": {"K8S_NODE_NAME": "node-a"},
    "clickhouse.yaml": {"CLICKHOUSE_USER": "otel", "CLICKHOUSE_PASSWORD": "secret"},
    "debug.yaml": {},
    "gateway.yaml": {},
    "node-to-gateway.yaml": {"K8S_NODE_NAME": "node-a", "OTEL_OOM_GATEWAY_HOSTNAME": "localhost"},
}
# overlays: run on top of the files named first (the Collector merges --config files in order)
OVERLAYS = {"node-to-gateway.yaml": ["agent.yaml"]}


def files(path: Path) -> list[str]:
    return [str(CONFIG_DIR / base) for base in OVERLAYS.get(path.name, [])] + [str(path)]


def merge(base: dict, over: dict) -> dict:
    """What the Collector makes of two --config files: maps merged key by key, lists replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def effective(path: Path) -> dict:
    cfg: dict = {}
    for f in files(path):
        cfg = merge(cfg, load(Path(f)))
    return cfg


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ctype(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def binary() -> str:
    b = collector_binary()
    require(b is not None, "needs the Collector build: make collector")
    return b  # type: ignore[return-value]


def test_the_expected_configs_exist():
    assert [p.name for p in CONFIGS] == ["agent.yaml", "clickhouse.yaml", "debug.yaml", "gateway.yaml",
                                         "node-to-gateway.yaml"]
    assert set(CONFIG_ENV) == {p.name for p in CONFIGS}


# ---- the real Collector -----------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validate_accepts_every_config(path):
    r = validate(binary(), files(path), env=collector_env(**CONFIG_ENV[path.name]))
    assert r.returncode == 0, r.stdout + r.stderr


def test_validate_really_rejects_mistakes(tmp_path):
    """A misspelt key, an unknown component and a missing environment variable all fail."""
    text = (CONFIG_DIR / "agent.yaml").read_text()
    env = collector_env(**CONFIG_ENV["agent.yaml"])
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("max_elapsed_time: 0s", "max_elapsed_tme: 0s"))
    r = validate(binary(), [str(typo)], env=env)
    assert r.returncode != 0 and "max_elapsed_tme" in r.stderr, r.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(text.replace("  groupbyattrs:\n", "  groupbyattributes:\n").replace(
        "[memory_limiter, groupbyattrs,", "[memory_limiter, groupbyattributes,"))
    r = validate(binary(), [str(unknown)], env=env)
    assert r.returncode != 0 and "groupbyattributes" in r.stderr, r.stderr
    r = validate(binary(), [str(CONFIG_DIR / "agent.yaml")], env=collector_env())
    assert r.returncode != 0 and "K8S_NODE_NAME" in r.stderr, r.stderr


def start_overrides(path: Path, tmp_path: Path) -> dict:
    ov = loopback_overrides(effective(path), tmp_path)
    if "agent.yaml" in {Path(f).name for f in files(path)}:
        # k8s_attributes reads the Kubernetes API test double through a kubeconfig (the caller's)
        ov["processors::k8s_attributes::auth_type"] = "kubeConfig"
    if path.name == "clickhouse.yaml":
        # create_schema connects at start; there is no ClickHouse here (see the test below)
        ov["exporters::clickhouse::create_schema"] = False
        ov["exporters::clickhouse::endpoint"] = f"tcp://127.0.0.1:{free_port()}"
    return ov


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_starts_and_stops_cleanly(path, tmp_path):
    env = collector_env(**CONFIG_ENV[path.name])
    # agent.yaml's k8s_attributes waits for this node's pods before the Collector takes a record
    # (wait_for_metadata): the Kubernetes API test double serves them (none)
    ov = start_overrides(path, tmp_path)
    with KubernetesApiDouble() as api:
        env["KUBECONFIG"] = api.write_kubeconfig(tmp_path)
        with CollectorProcess(binary(), files(path), ov, env) as col:
            for key, value in ov.items():
                if key.startswith("extensions::health_check") and key.endswith("::endpoint"):
                    assert http_ok(f"http://{value}/"), col.log_text()
            for key, value in ov.items():
                if key.endswith("::directory"):
                    assert Path(str(value)).is_dir(), f"file_storage did not create {value}"
            log = col.log_text()
            assert col.stop(signal.SIGTERM) == 0, col.log_text()
    assert "Shutdown complete" in col.log_text()
    # nothing the files configure is deprecated or ignored in this release
    assert not re.search(r"deprecated|will be used to configure", log, re.I), log


def test_clickhouse_exporter_needs_its_server_and_nothing_else(tmp_path):
    """With create_schema (as shipped) the Collector connects at start: with nothing listening
    there, start fails at exactly that step, after everything else was built and started."""
    path = CONFIG_DIR / "clickhouse.yaml"
    ov = loopback_overrides(load(path), tmp_path)
    port = free_port()
    ov["exporters::clickhouse::endpoint"] = f"tcp://127.0.0.1:{port}?dial_timeout=2s"
    col = CollectorProcess(binary(), [str(path)], ov, collector_env(**CONFIG_ENV[path.name]), ready_timeout=30)
    with pytest.raises(RuntimeError) as e:
        col.start()
    assert f'failed to start "clickhouse" exporter: create database: dial tcp 127.0.0.1:{port}' in str(e.value)
    assert "connection refused" in str(e.value)


# ---- the build recipe --------------------------------------------------------------------

def test_manifest_and_generated_package_agree():
    """components.go (generated by ocb from manifest.yaml) lists exactly the manifest's modules."""
    manifest = yaml.safe_load((TOOLS / "manifest.yaml").read_text())
    declared = {m["gomod"] for kind in ("receivers", "processors", "exporters", "connectors", "extensions")
                for m in manifest[kind]}
    generated = set(re.findall(r'\.Type\(\): "([^"]+)"', (TOOLS / "otelcol" / "components.go").read_text()))
    assert generated == declared
    gomod = (TOOLS / "otelcol" / "go.mod").read_text()
    for mod in declared | {m["gomod"] for m in manifest["providers"]}:
        name, version = mod.split()
        assert re.search(rf"^\s+{re.escape(name)} {re.escape(version)}$", gomod, re.M), mod
    for line in manifest.get("replaces", []):
        assert f"replace {line}" in gomod, line


def test_regenerate_fails_when_the_proxy_refuses_a_module(tmp_path):
    """tools/collector/regenerate.sh on a copy of tools/ whose manifest names a module the Go module
    proxy refuses: `go mod tidy -e` drops it and exits 0, leaving a go.mod that cannot build the
    generated components.go. The script must say so, exit non-zero and copy nothing."""
    import shutil
    import subprocess

    go = shutil.which("go") or next((g for g in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(g).exists()), None)
    require(go is not None, "needs Go >= 1.26 (tools/go-env.sh)")
    tools = tmp_path / "tools"
    shutil.copytree(REPO / "tools", tools, ignore=shutil.ignore_patterns("*.tar", "*.tgz"))
    manifest = tools / "collector" / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(
        "exporters:\n", "exporters:\n  - gomod: example.invalid/otel-oom/refusedexporter v0.0.1\n", 1))
    before = {f.name: f.read_bytes() for f in (tools / "collector" / "otelcol").iterdir()}
    r = subprocess.run([str(tools / "collector" / "regenerate.sh")], capture_output=True, text=True, timeout=1500)
    assert r.returncode != 0, r.stderr[-3000:]
    assert "the generated go.mod cannot build the Collector" in r.stderr, r.stderr[-3000:]
    assert "example.invalid/otel-oom/refusedexporter" in r.stderr
    assert {f.name: f.read_bytes() for f in (tools / "collector" / "otelcol").iterdir()} == before


def test_the_build_has_exactly_the_components_the_configs_use():
    """Every component type a config names is in the build, and the build has nothing else but
    the test-only file exporter."""
    used = {(kind, ctype(cid)) for p in CONFIGS for kind in KINDS for cid in (load(p).get(kind) or {})}
    manifest = yaml.safe_load((TOOLS / "manifest.yaml").read_text())
    text = (TOOLS / "manifest.yaml").read_text()
    assert "fileexporter" in text and "tests:" in text
    built = yaml.safe_load(__import__("subprocess").run([binary(), "components"], capture_output=True,
                                                        text=True, check=True).stdout)
    have = {(kind, c["name"]) for kind in KINDS for c in (built.get(kind) or [])}
    assert used <= have, used - have
    assert have - used == {("exporters", "file")}, have - used
    assert len(have) == sum(len(manifest[k]) for k in KINDS)


# ---- what the files promise ----------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_structure(path):
    cfg = effective(path)
    assert set(cfg) <= set(KINDS) | {"service"}, set(cfg) - set(KINDS)
    pipelines = cfg["service"]["pipelines"]
    used: dict[str, set] = {k: set() for k in KINDS}
    for name, p in pipelines.items():
        assert name.split("/", 1)[0] in ("logs", "metrics", "traces", "profiles"), name
        assert p.get("receivers") and p.get("exporters"), f"{name} needs receivers and exporters"
        for kind in ("receivers", "processors", "exporters"):
            for cid in p.get(kind, []):
                defined_in = "connectors" if cid in (cfg.get("connectors") or {}) else kind
                assert cid in (cfg.get(defined_in) or {}), f"{path.name}: pipeline {name} uses undefined {cid}"
                used[defined_in].add(cid)
    for kind in ("receivers", "processors", "exporters", "connectors"):
        unused = set(cfg.get(kind) or {}) - used[kind]
        if path.name in OVERLAYS:  # the base file's exporters that the overlay took out of the pipelines
            unused -= {cid for base in OVERLAYS[path.name] for cid in (load(CONFIG_DIR / base).get(kind) or {})}
        assert not unused, f"{path.name}: defined but in no pipeline: {unused}"
    enabled = cfg["service"].get("extensions", [])
    assert set(cfg.get("extensions") or {}) == set(enabled), "every defined extension must be enabled"
    for kind in KINDS:
        for cid in cfg.get(kind) or {}:
            assert ctype(cid) not in DEPRECATED_ALIASES, f"{path.name}: {cid} uses a deprecated name"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_batch_processor_in_front_of_a_durable_queue(path):
    """The batch processor acknowledges from memory: a Collector killed then would lose records
    the sender already deleted. Durable exporters batch when reading their queue instead."""
    cfg = effective(path)
    for name, p in cfg["service"]["pipelines"].items():
        assert "batch" not in [ctype(x) for x in p.get("processors", [])], f"{path.name}: {name}"


def test_agent_pipeline_order_and_attribution():
    cfg = load(CONFIG_DIR / "agent.yaml")
    expected = ["memory_limiter", "groupbyattrs", "k8s_attributes"]
    for name in ("logs", "metrics"):
        assert cfg["service"]["pipelines"][name]["processors"] == expected
    assert set(cfg["processors"]["groupbyattrs"]["keys"]) == {"k8s.pod.uid", "container.id"}
    k8s = cfg["processors"]["k8s_attributes"]
    assert k8s["auth_type"] == "serviceAccount"
    assert k8s["pod_association"] == [{"sources": [{"from": "resource_attribute", "name": "k8s.pod.uid"}]}]
    assert {"k8s.namespace.name", "k8s.pod.name", "k8s.container.name"} <= set(k8s["extract"]["metadata"])
    assert k8s["filter"]["node_from_env_var"] == "K8S_NODE_NAME"
    # no record taken before this node's pods are listed (else it passes with its UID only)
    assert k8s["wait_for_metadata"] is True and "wait_for_metadata_timeout" not in k8s


def test_agent_exports_logs_durably():
    cfg = load(CONFIG_DIR / "agent.yaml")
    (exp, counter) = cfg["service"]["pipelines"]["logs"]["exporters"]
    assert ctype(exp) == "otlp_http" and ctype(counter) == "count"
    logs = cfg["exporters"][exp]
    assert logs["endpoint"] == "${env:OTEL_OOM_LOGS_OTLP_ENDPOINT:-http://loki:3100/otlp}"
    q = logs["sending_queue"]
    assert q["enabled"] is True and ctype(q["storage"]) == "file_storage"
    assert q["storage"] in cfg["service"]["extensions"]
    assert cfg["extensions"][q["storage"]]["fsync"] is True
    assert not q.get("wait_for_result") and not q.get("block_on_overflow")
    assert logs["retry_on_failure"]["max_elapsed_time"] in ("0s", 0)
    rw = cfg["exporters"]["prometheus_remote_write"]
    assert rw["endpoint"] == "${env:OTEL_OOM_PROMETHEUS_REMOTE_WRITE_URL:-http://prometheus:9090/api/v1/write}"
    assert {"k8s.*", "container.*"} <= set(rw["resource_constant_labels"]["included"])


def test_agent_counts_kill_records_by_container():
    cfg = load(CONFIG_DIR / "agent.yaml")
    pipelines = cfg["service"]["pipelines"]
    assert pipelines["metrics/kill_records"] == {"receivers": ["count/oom_kills"],
                                                 "processors": ["delta_to_cumulative"],
                                                 "exporters": ["prometheus_remote_write"]}
    metric = cfg["connectors"]["count/oom_kills"]["logs"]["oom.kill.records"]
    assert metric["conditions"] == ['log.event_name == "oom.kill"']
    # by the record's resource (container.id lifted by groupbyattrs) and the bounded constraint;
    # every attribute has a default, so a kill outside any container is still counted
    assert metric["attributes"] == [{"key": "oom.constraint", "default_value": "unknown"}]


def test_debug_config_is_detailed():
    cfg = load(CONFIG_DIR / "debug.yaml")
    assert cfg["exporters"]["debug"]["verbosity"] == "detailed"
    assert set(cfg["service"]["pipelines"]) == {"logs", "metrics"}


def test_clickhouse_config_keeps_history():
    cfg = load(CONFIG_DIR / "clickhouse.yaml")
    ch = cfg["exporters"]["clickhouse"]
    assert "tcp://" in ch["endpoint"] and ch["create_schema"] is True and ch["ttl"]
    assert ch["retry_on_failure"]["max_elapsed_time"] in ("0s", 0)
    assert cfg["service"]["pipelines"]["logs"]["exporters"] == ["clickhouse"]


def test_collector_manifest_matches_the_agent_config():
    """deploy/collector.yaml must give agent.yaml what it assumes: the env vars, ports, dirs."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "collector.yaml").read_text()) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["K8S_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    cfg_text = (CONFIG_DIR / "agent.yaml").read_text()
    for var in set(re.findall(r"\$\{env:(\w+)", cfg_text)):
        assert var in env, f"deploy/collector.yaml does not set {var}"
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


# ---- the gateway tier (docs/scale.md; run for real by tests/e2e/test_fleet.py) ------------------

def test_node_overlay_keeps_the_node_processing_and_forwards_durably():
    """agent.yaml + node-to-gateway.yaml: the same processors, every pipeline leaving through
    load_balancing; logs leave the node's disk queue only once a gateway acknowledged them."""
    agent, node = load(CONFIG_DIR / "agent.yaml"), effective(CONFIG_DIR / "node-to-gateway.yaml")
    pipelines = node["service"]["pipelines"]
    for name, p in pipelines.items():
        assert p.get("processors") == agent["service"]["pipelines"][name].get("processors"), name
        assert p["receivers"] == agent["service"]["pipelines"][name]["receivers"], name
    assert pipelines["logs"]["exporters"] == ["load_balancing/logs", "count/oom_kills"]
    assert pipelines["metrics"]["exporters"] == pipelines["metrics/kill_records"]["exporters"] == ["load_balancing/metrics"]
    # what agent.yaml defines and the overlay no longer uses: nothing else is left over
    used = {e for p in pipelines.values() for e in p["exporters"]}
    assert set(node["exporters"]) - used == {"otlp_http/logs", "prometheus_remote_write"}
    for eid in ("load_balancing/logs", "load_balancing/metrics"):
        lb = node["exporters"][eid]
        # one node's records and series to one gateway: by the reporting agent's identity
        assert lb["routing_key"] == "attributes" and lb["routing_attributes"] == ["service.instance.id"]
        # no queue or retry per gateway: a send fails back to the top-level queue, whose retries
        # pick the gateway again from the resolver's current list
        otlp = lb["protocol"]["otlp"]
        assert otlp["sending_queue"]["enabled"] is False and otlp["retry_on_failure"]["enabled"] is False
        assert set(lb["resolver"]) == {"dns"} and lb["resolver"]["dns"]["port"] == "4317"
    logs = node["exporters"]["load_balancing/logs"]
    assert logs["sending_queue"]["storage"] == "file_storage/queue" and logs["sending_queue"]["enabled"] is True
    assert node["extensions"]["file_storage/queue"]["fsync"] is True
    assert logs["retry_on_failure"]["max_elapsed_time"] in ("0s", 0)


def test_gateway_writes_durably_to_the_clustered_backends():
    cfg = load(CONFIG_DIR / "gateway.yaml")
    pipelines = cfg["service"]["pipelines"]
    # every record to two copies (VictoriaLogs does not replicate; docs/scale.md, "Two copies")
    assert pipelines["logs"] == {"receivers": ["otlp"], "processors": ["memory_limiter"],
                                 "exporters": ["otlp_http/logs", "otlp_http/logs_replica"]}
    assert pipelines["metrics"]["exporters"] == ["prometheus_remote_write"]
    assert "grpc" in cfg["receivers"]["otlp"]["protocols"]  # what load_balancing speaks
    copy_a, copy_b = cfg["exporters"]["otlp_http/logs"], cfg["exporters"]["otlp_http/logs_replica"]
    assert copy_a["endpoint"] == "${env:OTEL_OOM_LOGS_OTLP_ENDPOINT:-http://vlinsert-a:9481/insert/opentelemetry}"
    assert copy_b["endpoint"] == ("${env:OTEL_OOM_LOGS_REPLICA_OTLP_ENDPOINT:-"
                                  "http://vlinsert-b:9481/insert/opentelemetry}")
    # the same settings; each its own disk queue (the storage extension keeps one per exporter)
    assert {k: v for k, v in copy_a.items() if k != "endpoint"} == {k: v for k, v in copy_b.items() if k != "endpoint"}
    q = copy_a["sending_queue"]
    assert q["enabled"] is True and q["storage"] == "file_storage/queue" and not q.get("wait_for_result")
    assert cfg["extensions"]["file_storage/queue"]["fsync"] is True
    assert copy_a["retry_on_failure"]["max_elapsed_time"] in ("0s", 0)
    rw = cfg["exporters"]["prometheus_remote_write"]
    agent_rw = load(CONFIG_DIR / "agent.yaml")["exporters"]["prometheus_remote_write"]
    assert {k: v for k, v in rw.items() if k not in ("remote_write_queue", "retry_on_failure")} == {
        k: v for k, v in agent_rw.items() if k not in ("remote_write_queue", "retry_on_failure")}
    assert rw["target_info"] == {"enabled": False}
    # synchronous: a gateway answers a node only once Prometheus took the points, and gives a
    # failure back before the node's own timeout (its queue retries)
    assert rw["remote_write_queue"] == {"enabled": False}
    node = effective(CONFIG_DIR / "node-to-gateway.yaml")["exporters"]["load_balancing/metrics"]
    seconds = lambda d: float(d.removesuffix("s"))  # noqa: E731 - "10s" -> 10.0
    assert seconds(rw["retry_on_failure"]["max_elapsed_time"]) < seconds(node["timeout"])


def test_node_overlay_accepts_a_static_resolver(tmp_path):
    """The fleet simulation swaps the DNS resolver for a static one by an override, as an operator
    without a headless Service would: `dns: null` removes the shipped resolver."""
    path = CONFIG_DIR / "node-to-gateway.yaml"
    static = {"static": {"hostnames": ["127.0.0.2:4317", "127.0.0.3:4317"]}, "dns": None}
    ov = {f"exporters::{e}::resolver": static for e in ("load_balancing/logs", "load_balancing/metrics")}
    r = validate(binary(), files(path), ov, env=collector_env(**CONFIG_ENV[path.name]))
    assert r.returncode == 0, r.stdout + r.stderr
    both = {"static": {"hostnames": ["127.0.0.2:4317"]}}  # dns kept: two resolvers
    ov = {"exporters::load_balancing/logs::resolver": both}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "none", "user": {}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}]}))
    env = collector_env(**CONFIG_ENV[path.name], KUBECONFIG=str(kubeconfig))
    col = CollectorProcess(binary(), files(path), {**start_overrides(path, tmp_path), **ov}, env, ready_timeout=30)
    with pytest.raises(RuntimeError) as e:
        col.start()
    assert "only one resolver should be specified" in str(e.value)
