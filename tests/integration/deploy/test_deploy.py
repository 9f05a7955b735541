"""Deployment artefacts, checked without a cluster or a Docker engine.

The Kubernetes manifests are validated against the real Kubernetes OpenAPI-derived JSON
schemas (the `kubernetes-validate` package ships them per Kubernetes release), in strict mode
so a misspelt field fails; the security posture is asserted field by field. The Dockerfile
is checked statically (stages, nothing to compile with in the final stage, entrypoint), since
no image can be built here.
"""
from __future__ import annotations

import re
import shlex

import pytest
import yaml
from conftest import require

from testing.agent_process import REPO

DEPLOY = REPO / "deploy"
# the oldest Kubernetes minor the manifests promise to work on, and the newest schema shipped
K8S_VERSIONS = ("1.29.0", "1.37.0")
EXPECTED_CAPS = {"BPF", "PERFMON", "SYSLOG"}


def kubernetes_validate():
    try:
        import kubernetes_validate as kv
    except ImportError:
        kv = None
    require(kv is not None, "needs the kubernetes-validate package (pip install kubernetes-validate)")
    return kv


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if DEPLOY / "helm" in path.parents:
            continue  # Helm templates: tests/test_helm.py renders and checks them
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                docs.append((f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def by_kind(kind: str) -> dict:
    """The otel-oom agent's object of that kind (deploy/collector.yaml is the Collector's)."""
    found = [d for n, d in manifests() if d["kind"] == kind and n.startswith("deploy/daemonset.yaml")]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def test_there_are_manifests():
    kinds = sorted(d["kind"] for _, d in manifests())
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "DaemonSet", "Namespace",
                     "ServiceAccount", "ServiceAccount"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    kv = kubernetes_validate()
    for name, doc in manifests():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{name} is not a valid Kubernetes {version} object: {e.message} at {list(e.path)}")


def test_the_schema_check_really_rejects_mistakes():
    kv = kubernetes_validate()
    ds = by_kind("DaemonSet")
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}  # typo
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def pod_spec() -> dict:
    return by_kind("DaemonSet")["spec"]["template"]["spec"]


def container() -> dict:
    containers = pod_spec()["containers"]
    assert len(containers) == 1 and not pod_spec().get("initContainers")
    return containers[0]


def test_host_pid_and_no_other_host_namespaces():
    spec = pod_spec()
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork") and not spec.get("hostIPC")


def test_least_privilege_security_context():
    sc = container()["securityContext"]
    assert sc.get("privileged") is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == EXPECTED_CAPS
    assert len(sc["capabilities"]["add"]) == len(EXPECTED_CAPS)
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_no_api_access_needed():
    sa = by_kind("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec()["automountServiceAccountToken"] is False
    assert pod_spec()["serviceAccountName"] == sa["metadata"]["name"]
    # the only RBAC is the Collector's, bound to the Collector's own ServiceAccount
    for name, d in manifests():
        if d["kind"].endswith("RoleBinding"):
            assert all(s["name"] != sa["metadata"]["name"] for s in d["subjects"]), name
        if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
            assert name.startswith("deploy/collector.yaml"), name


def test_collector_is_not_privileged():
    ds = [d for n, d in manifests() if n.startswith("deploy/collector.yaml") and d["kind"] == "DaemonSet"][0]
    sc = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert not ds["spec"]["template"]["spec"].get("hostPID")


def test_runs_everywhere_and_first():
    spec = pod_spec()
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["priorityClassName"] == "system-node-critical"


def test_mounts_are_read_only_except_spool_and_tmp():
    c = container()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    for path in ("/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing", "/dev/kmsg"):
        assert mounts[path].get("readOnly") is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    spool = volumes[mounts["/var/lib/otel-oom"]["name"]]["hostPath"]
    assert spool == {"path": "/var/lib/otel-oom", "type": "DirectoryOrCreate"}
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"/var/lib/otel-oom", "/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def env() -> dict:
    return {e["name"]: e for e in container()["env"]}


def test_node_identity_and_collector_endpoint():
    e = env()
    assert e["K8S_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert e["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert e["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://$(HOST_IP):4317"
    names = [x["name"] for x in container()["env"]]
    # $(VAR) expands only from variables defined earlier in the list
    assert names.index("HOST_IP") < names.index("OTEL_EXPORTER_OTLP_ENDPOINT")


def test_probes_and_metrics_on_the_listen_port():
    c = container()
    args = c["args"]
    assert args[0] == "run" and "--prometheus" in args
    listen = [a.split("=", 1)[1] for a in args if a.startswith("--listen=")]
    assert listen and listen[0].endswith(":9464")
    port = int(listen[0].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http-metrics"] == port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    ann = by_kind("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(port)


def test_args_are_ones_the_cli_accepts():
    from otel_oom.cli import build_parser

    parsed = build_parser().parse_args(container()["args"])
    assert parsed.command == "run" and parsed.prometheus and parsed.listen == "[$(POD_IP)]:9464"
    # the kubelet substitutes the pod's address: the agent takes it on IPv4 and IPv6 pods alike
    from otel_oom.health import parse_listen

    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container()["env"]}
    assert env["POD_IP"] == "status.podIP"
    for pod_ip in ("10.244.1.7", "fd00:10:244::7"):
        assert parse_listen(parsed.listen.replace("$(POD_IP)", pod_ip)) == (pod_ip, 9464)
    assert parsed.spool_dir.startswith("/var/lib/otel-oom/")


def test_resources():
    r = container()["resources"]
    assert r["requests"] == {"cpu": "10m", "memory": "64Mi"}
    assert r["limits"] == {"cpu": "200m", "memory": "128Mi"}


# ---- Dockerfile ---------------------------------------------------------------------------

def dockerfile_stages() -> list[dict]:
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    stages: list[dict] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"from": m.group(1), "name": m.group(2), "lines": []})
        elif stages:
            stages[-1]["lines"].append((instr, rest.strip()))
    return stages


def test_dockerfile_is_multi_stage_with_a_clean_runtime():
    stages = dockerfile_stages()
    assert [s["name"] for s in stages] == ["build", "runtime"]
    build, runtime = stages
    build_runs = " ".join(r for i, r in build["lines"] if i == "RUN")
    for pkg in ("clang", "llvm", "libbpf-dev", "make"):
        assert re.search(rf"\b{re.escape(pkg)}\b", build_runs), pkg
    assert "pip wheel" in build_runs and "oomkill.x86_64.bpf.o" in build_runs
    runtime_runs = " ".join(r for i, r in runtime["lines"] if i == "RUN")
    installed = set(shlex.split(runtime_runs))
    assert "libbpf1" in installed
    for tool in ("clang", "llvm", "libbpf-dev", "make", "gcc", "build-essential", "bpftool"):
        assert tool not in installed, f"{tool} must not be in the runtime image"
    copies = [r for i, r in runtime["lines"] if i == "COPY"]
    assert copies and all(c.startswith("--from=build ") for c in copies)
    assert "--no-index" in runtime_runs


def test_dockerfile_entrypoint_and_user():
    runtime = dockerfile_stages()[-1]
    instr = dict((i, r) for i, r in runtime["lines"] if i in ("ENTRYPOINT", "CMD", "USER"))
    assert instr["ENTRYPOINT"] == '["otel-oom"]'
    assert instr["CMD"] == '["run"]'
    assert instr.get("USER", "root") in ("root", "0")


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    build = dockerfile_stages()[0]
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert "otel_oom/bpf/*.o" in ignored and ".git" in ignored
    for instr, rest in build["lines"]:
        if instr != "COPY":
            continue
        *sources, _dest = rest.split()
        for src in sources:
            src = src.rstrip("/")
            assert (REPO / src).exists(), src
            assert src not in ignored, f"{src} is excluded by .dockerignore"
    # setuptools needs the readme named in pyproject.toml
    assert "README.md" not in ignored


# ---- Grafana dashboard ----------------------------------------------------------------------

DASHBOARD = DEPLOY / "grafana" / "otel-oom-dashboard.json"
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m", "$namespace": ".*"}


def dashboard() -> dict:
    import json

    return json.loads(DASHBOARD.read_text())


def dashboard_targets(kind: str) -> list[tuple[str, str]]:
    out = []
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            if t["datasource"]["type"] == kind:
                out.append((p["title"], t["expr"]))
    return out


def expand(expr: str) -> str:
    for k in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARS[k])
    assert "$__" not in expr and "$namespace" not in expr, expr
    return expr


def test_dashboard_shape():
    d = dashboard()
    assert d["uid"] == "otel-oom-kills" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] in ("${prometheus}", "${loki}")
    types = {p["type"] for p in d["panels"]}
    assert {"timeseries", "logs", "heatmap", "table", "stat"} <= types
    variables = {v["name"] for v in d["templating"]["list"]}
    assert variables == {"prometheus", "loki", "namespace"}
    prom_exprs = " ".join(e for _, e in dashboard_targets("prometheus"))
    for name in ("oom_kills_total", "oom_victim_rss_bytes_bucket", "otel_oom_events_dropped_total",
                 "otel_oom_export_failures_total", "otel_oom_hooks_attached", "oom_kills_unobserved"):
        assert name in prom_exprs, name
    assert dashboard_targets("loki")


def test_dashboard_loki_queries_are_well_formed():
    for title, expr in dashboard_targets("loki"):
        assert '{service_name="otel-oom"' in expr and '| oom_event_id != ""' in expr, title
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title


def test_dashboard_promql_runs_on_a_real_prometheus():
    """Every PromQL expression (and the variable query) must parse, run and show something on a real
    Prometheus once an agent reported a kill. The agent's metrics are its own code's (`Metrics`, as
    `otel-oom run --listen` serves them), so a panel that joins or filters on a label the agent's
    series do not have comes back empty and fails here. `oom_kill_records_total` is a stand-in for
    what the Collector's count connector remote-writes (tests/e2e/test_collector_e2e.py runs the
    real one): the enriched resource's labels and oom_constraint."""
    import shutil
    import time

    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry

    from otel_oom.health import HealthServer
    from otel_oom.otlp.metrics import Metrics
    from otel_oom.schema.records import OomKill
    from testing.prometheus_server import PrometheusServer, PromQLError

    require(shutil.which("prometheus") is not None, "needs the `prometheus` binary (apt-get install prometheus)")
    agent = Metrics(Resource.create({"service.name": "otel-oom"}), None, prometheus=True,
                    drop_counts=lambda: {"queue_full": 0}, fault_counts=lambda: {},
                    hooks=lambda: [("tp_btf", "victim")], unobserved=lambda: 0)
    agent.record_kill(OomKill(event_id="boot:1:4242", time_unix_nano=time.time_ns(), boot_time_ns=1, hook="tp_btf",
                              context_hook="none", recovered=False, victim_pid=4242, victim_tid=4242, victim_comm="app",
                              anon_rss_bytes=300 << 20, file_rss_bytes=0, shmem_rss_bytes=0, constraint="memcg",
                              container_runtime="containerd", container_id="c1", pod_uid="0f5e6c2a",
                              pod_qos_class="burstable", killed=True))
    reg = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=reg)])
    provider.get_meter("count").create_counter("oom.kill.records").add(1, {
        "k8s.namespace.name": "shop", "k8s.pod.name": "web-7d9f", "k8s.container.name": "app",
        "k8s.pod.uid": "0f5e6c2a", "container.id": "c1", "oom.constraint": "memcg"})
    servers = [HealthServer("127.0.0.1:0", lambda: (True, "ok"), r) for r in (agent.prometheus_registry, reg)]
    try:
        with PrometheusServer([f"127.0.0.1:{srv.port}" for srv in servers]) as prom:
            assert prom.wait_for('oom_kill_records_total{job="otel-oom"}'), prom.log_text()
            assert prom.wait_for('oom_kills_total{job="otel-oom"}'), prom.log_text()
            variable = dashboard()["templating"]["list"][2]["definition"]
            series = re.match(r"label_values\((.*), k8s_namespace_name\)$", variable).group(1)
            assert prom.query(series)[0]["metric"]["k8s_namespace_name"] == "shop"
            time.sleep(3)  # a few scrapes (1 s apart): rate() and increase() need two samples
            results = {}
            for title, expr in dashboard_targets("prometheus"):
                try:
                    results[(title, expr)] = prom.query(expand(expr))
                except PromQLError as e:
                    pytest.fail(f"panel {title!r}: Prometheus refused the query: {e}\n{expr}")
            for (title, expr), rows in results.items():
                assert rows, f"panel {title!r} shows nothing although the agent reported a kill:\n{expr}"
            by_title = {t: r for (t, _), r in results.items()}
            # (the distinct kill counts are Loki panels: tests/integration/deploy/test_alerts.py)
            assert by_title["Kernel hooks attached"][0]["metric"]["oom_hook"] == "tp_btf"
            pods = by_title["OOM kill records by pod (Prometheus)"]
            assert [(r["metric"]["k8s_pod_name"], float(r["value"][1])) for r in pods] == [("web-7d9f", 1.0)]
            fleet = by_title["OOM kills in the time range, whole fleet (agents' counter)"]
            assert float(fleet[0]["value"][1]) == 1.0
    finally:
        for srv in servers:
            srv.close()
        provider.shutdown()
        agent.shutdown()
