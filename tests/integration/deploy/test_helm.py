"""The Helm chart deploy/helm/otel-oom, with a real helm (`make helm`, v3.22 from the module proxy).

`helm lint --strict` must pass; `helm template` output must be valid Kubernetes objects (the
Kubernetes JSON schemas of `kubernetes-validate`, strict) for the oldest and newest release the
chart supports; with default values the agent's pod must be exactly deploy/daemonset.yaml's; the
Collector's rendered configuration must be collector-config/agent.yaml, which the real Collector
validates. The ServiceMonitor is a custom resource no Kubernetes schema covers: its fields are
checked against the Prometheus Operator's documented ones, and its port against the Service.
"""
from __future__ import annotations

import subprocess
from typing import Optional

import pytest
import yaml
from conftest import require

from testing.agent_process import REPO
from testing.collector_process import collector_binary, collector_env, validate

CHART = REPO / "deploy" / "helm" / "otel-oom"
K8S_VERSIONS = ("1.29.0", "1.37.0")
ALL_ON = ["--set", "collector.enabled=true", "--set", "serviceMonitor.enabled=true", "--set", "events.enabled=true"]
KMSG = ["--set", "agent.backend=kmsg"]


def helm() -> str:
    r = subprocess.run([str(REPO / "tools" / "helm" / "build.sh"), "--check"], capture_output=True, text=True)
    require(r.returncode == 0, "needs helm: make helm")
    return r.stdout.strip().splitlines()[-1]


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=check, timeout=120)


def render(*args: str, kube_version: str = K8S_VERSIONS[-1], release: str = "otel-oom",
           namespace: str = "otel-oom") -> list[dict]:
    out = run_helm("template", release, str(CHART), "--namespace", namespace,
                   "--kube-version", kube_version, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str, name_part: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


def kubernetes_validate():
    try:
        import kubernetes_validate as kv
    except ImportError:
        kv = None
    require(kv is not None, "needs the kubernetes-validate package")
    return kv


@pytest.mark.parametrize("values", [[], ALL_ON, KMSG], ids=["defaults", "collector+servicemonitor+events", "kmsg"])
def test_helm_lint_strict(values):
    r = run_helm("lint", "--strict", str(CHART), *values, check=False)
    assert r.returncode == 0 and "0 chart(s) failed" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("mode", [[], KMSG], ids=["ebpf", "kmsg"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_match_the_kubernetes_schemas(version, mode):
    kv = kubernetes_validate()
    docs = render(*ALL_ON, *mode, "--set", "agent.config.OTEL_OOM_SPOOL_MAX_BYTES=1048576",
                  "--set", "agent.extraCapabilities={SYS_RESOURCE}", kube_version=version)
    kinds = sorted(d["kind"] for d in docs)
    # the Collector's ClusterRole and binding, and the agent's (events.enabled)
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "ConfigMap", "ConfigMap",
                     "DaemonSet", "DaemonSet", "Service", "ServiceAccount", "ServiceAccount", "ServiceMonitor"]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is not a valid Kubernetes {version} object: "
                        f"{e.message} at {list(e.path)}")


def test_the_schema_check_rejects_a_broken_render():
    kv = kubernetes_validate()
    ds = one(render(), "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSIONS[-1], strict=True)


def test_an_unsupported_kubernetes_release_is_refused():
    r = run_helm("template", "x", str(CHART), "--kube-version", "1.28.0", check=False)
    assert r.returncode != 0 and "kubeVersion" in r.stderr, r.stderr


def manifest_pod() -> dict:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "daemonset.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]


def test_default_agent_pod_is_the_manifests_pod():
    """Same security context, mounts, volumes, probes, args, env and scheduling as
    deploy/daemonset.yaml; only names, labels and the config envFrom differ."""
    chart = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    ref = manifest_pod()
    for key in ("hostPID", "automountServiceAccountToken", "priorityClassName", "tolerations",
                "terminationGracePeriodSeconds", "volumes", "nodeSelector"):
        assert chart.get(key) == ref.get(key), key
    (c,), (r,) = chart["containers"], ref["containers"]
    for key in ("securityContext", "volumeMounts", "ports", "livenessProbe", "readinessProbe", "resources",
                "args", "env", "imagePullPolicy"):
        assert c[key] == r[key], key
    assert c["envFrom"] == [{"configMapRef": {"name": "otel-oom"}}]


def test_values_change_what_they_say():
    docs = render("--set", "otlp.endpoint=https://gateway.example:4317", "--set", "agent.port=9555",
                  "--set", "agent.spoolHostPath=/data/otel-oom", "--set", "agent.extraCapabilities={SYS_RESOURCE}",
                  "--set", "agent.config.OTEL_OOM_NOTIFY_WEBHOOK=https://hooks.example/oom",
                  "--set", "image.tag=1.2.3")
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://gateway.example:4317"
    assert "--listen=[$(POD_IP)]:9555" in c["args"] and c["ports"][0]["containerPort"] == 9555
    assert ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9555"
    assert c["securityContext"]["capabilities"]["add"][-1] == "SYS_RESOURCE"
    spool = next(v for v in pod["volumes"] if v["name"] == "spool")
    assert spool["hostPath"]["path"] == "/data/otel-oom"
    assert "--spool-dir=/var/lib/otel-oom/spool" in c["args"]   # the path inside the container
    assert c["image"].endswith(":1.2.3")
    cm = one(docs, "ConfigMap")
    assert cm["data"] == {"OTEL_OOM_NOTIFY_WEBHOOK": "https://hooks.example/oom"}
    # a config change rolls the pods
    before = one(render(), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != before


def test_runtime_socket_access_can_be_turned_off():
    c = one(render("--set", "agent.runtimeSocketAccess=false"), "DaemonSet")["spec"]["template"]["spec"]
    assert "host-run" not in {v["name"] for v in c["volumes"]}
    (container,) = c["containers"]
    assert "/host/run" not in {m["mountPath"] for m in container["volumeMounts"]}
    assert "OTEL_OOM_RUNTIME_ROOT" not in {e["name"] for e in container["env"]}


def test_pod_events_add_the_token_and_a_role_that_only_creates_events_and_gets_pods():
    """events.enabled: the agent's token and a ClusterRole of exactly create events (+ get pods with
    kubeletCheck, the default); off (the default), no token and no role at all."""
    assert [d for d in render() if d["kind"] in ("ClusterRole", "ClusterRoleBinding")] == []
    for check, rules in (("true", [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
                                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
                         ("false", [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}])):
        docs = render("--set", "events.enabled=true", "--set", f"events.kubeletCheck={check}")
        assert one(docs, "ClusterRole")["rules"] == rules
        binding = one(docs, "ClusterRoleBinding")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "otel-oom", "namespace": "otel-oom"}]
        pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is True
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["OTEL_OOM_K8S_EVENTS"] == "true"
        assert env.get("OTEL_OOM_K8S_KUBELET_CHECK") == ("true" if check == "true" else None)
    r = run_helm("template", "x", str(CHART), "--set", "events.enabled=true", "--set", "agent.runtimeSocketAccess=false",
                 check=False)
    assert r.returncode != 0 and "events.enabled needs agent.runtimeSocketAccess" in r.stderr, r.stderr


def test_the_kmsg_backend_runs_with_cap_syslog_alone_and_no_bpf_mounts():
    """agent.backend=kmsg: `--backend=kmsg`, capabilities exactly SYSLOG (+ extraCapabilities), no
    BTF or tracefs, /dev/kmsg read-only; everything else is the default pod's."""
    default = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    pod = one(render(*KMSG), "DaemonSet")["spec"]["template"]["spec"]
    (c,), (d,) = pod["containers"], default["containers"]
    assert c["args"] == [*d["args"], "--backend=kmsg"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYSLOG"]}
    assert {k: v for k, v in sc.items() if k != "capabilities"} == {
        k: v for k, v in d["securityContext"].items() if k != "capabilities"}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    without = {"btf", "tracefs"}
    assert [m for m in c["volumeMounts"] if m["name"] not in without] == c["volumeMounts"]
    assert c["volumeMounts"] == [m for m in d["volumeMounts"] if m["name"] not in without]
    assert pod["volumes"] == [v for v in default["volumes"] if v["name"] not in without]
    assert {"name": "kmsg", "mountPath": "/dev/kmsg", "readOnly": True} in c["volumeMounts"]
    extra = one(render(*KMSG, "--set", "agent.extraCapabilities={DAC_READ_SEARCH}"), "DaemonSet")
    assert extra["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] == [
        "SYSLOG", "DAC_READ_SEARCH"]
    c = one(render("--set", "agent.backend=libbpf"), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][-1] == "--backend=libbpf"
    assert c["securityContext"]["capabilities"]["add"] == ["BPF", "PERFMON", "SYSLOG"]


def test_bad_values_fail_with_a_message():
    """values.schema.json refuses misspelt keys and wrong types; the templates refuse the rest."""
    for args, expected in ((["--set", "colector.enabled=true"], "colector"),
                           (["--set", "agent.port=http"], "/agent/port"),
                           (["--set", "agent.seccompProfile=Localhost"], "/agent/seccompProfile"),
                           (["--set", "agent.backend=ebpf"], "/agent/backend"),
                           (["--set", "agent.backend=bcc"], "/agent/backend"),  # the image has no BCC
                           (["--set", "agent.config.OTEL_EXPORTER_OTLP_HEADERS=a"], "OTEL_EXPORTER_OTLP_HEADERS")):
        r = run_helm("template", "x", str(CHART), *args, check=False)
        assert r.returncode != 0 and expected in r.stderr, (args, r.stderr)
    r = run_helm("template", "x", str(CHART), "--set", "serviceMonitor.enabled=true",
                 "--set", "agent.prometheus=false", check=False)
    assert r.returncode != 0 and "agent.prometheus" in r.stderr, r.stderr


def collector_config(docs: list[dict]) -> str:
    return one(docs, "ConfigMap", "collector")["data"]["config.yaml"]


def test_the_collector_runs_the_shipped_configuration_and_it_validates(tmp_path):
    docs = render(*ALL_ON, "--set", "collector.logsEndpoint=http://victorialogs.monitoring:9428/insert/opentelemetry")
    text = collector_config(docs)
    assert text.strip() == (REPO / "collector-config" / "agent.yaml").read_text().strip()
    ds = one(docs, "DaemonSet", "collector")
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_OOM_LOGS_OTLP_ENDPOINT"] == "http://victorialogs.monitoring:9428/insert/opentelemetry"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    binary: Optional[str] = collector_binary()
    require(binary is not None, "needs the Collector build: make collector")
    r = validate(binary, [str(path)], env=collector_env(**{k: v for k, v in env.items() if v}, K8S_NODE_NAME="n"))
    assert r.returncode == 0, r.stderr


def test_collector_config_overrides_are_merged_and_still_validate(tmp_path):
    docs = render("--set", "collector.enabled=true",
                  "--set", "collector.configOverrides.exporters.otlp_http/logs.retry_on_failure.max_interval=10s")
    cfg = yaml.safe_load(collector_config(docs))
    assert cfg["exporters"]["otlp_http/logs"]["retry_on_failure"]["max_interval"] == "10s"
    assert cfg["exporters"]["otlp_http/logs"]["retry_on_failure"]["max_elapsed_time"] == "0s"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    binary = collector_binary()
    require(binary is not None, "needs the Collector build: make collector")
    r = validate(binary, [str(path)], env=collector_env(K8S_NODE_NAME="n"))  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr


def test_collector_objects_are_deploy_collector_yamls():
    docs = render("--set", "collector.enabled=true")
    chart = one(docs, "DaemonSet", "collector")["spec"]["template"]["spec"]
    ref_docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "collector.yaml").read_text()) if d]
    ref = next(d for d in ref_docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    (c,), (r,) = chart["containers"], ref["containers"]
    for key in ("securityContext", "ports", "volumeMounts", "args", "resources", "image"):
        assert c[key] == r[key], key
    assert [e["name"] for e in c["env"]] == [e["name"] for e in r["env"]]
    assert one(docs, "ClusterRole")["rules"] == next(d for d in ref_docs if d["kind"] == "ClusterRole")["rules"]


# the ServiceMonitor fields this chart uses, as the Prometheus Operator's monitoring.coreos.com/v1
# API documents them (spec.selector, spec.namespaceSelector.matchNames, spec.endpoints[].port/
# path/interval/scrapeTimeout/relabelings[].sourceLabels/targetLabel)
SERVICEMONITOR_FIELDS = {
    "spec": {"selector", "namespaceSelector", "endpoints"},
    "endpoint": {"port", "path", "interval", "scrapeTimeout", "relabelings"},
    "relabeling": {"sourceLabels", "targetLabel"},
}


def test_servicemonitor_selects_the_agents_metrics_service():
    docs = render("--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=kps")
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    ds = one(docs, "DaemonSet")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "kps"
    assert set(sm["spec"]) <= SERVICEMONITOR_FIELDS["spec"]
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= SERVICEMONITOR_FIELDS["endpoint"]
        assert all(set(r) <= SERVICEMONITOR_FIELDS["relabeling"] for r in ep["relabelings"])
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"][0]["targetPort"] == "http-metrics"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["otel-oom"]
