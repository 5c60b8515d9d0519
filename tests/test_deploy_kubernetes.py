"""The Kubernetes manifests (issue 6, issue 11; docs/deploy.md), checked offline.

The manifests in deploy/kubernetes are validated against the Kubernetes JSON
schemas shipped in ``kubernetes_validate`` (strict: no unknown fields), and
checked for what ties them together: the Deployment, its probes and workers,
the Service, HPA and PDB, the ConfigMap agreeing with compose.yaml, and the docs
agreeing with the Deployment. Running the pod's environment on the built image:
tests/test_deploy_docker.py.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import from_env
from tests.deploy_helpers import (
    BACKENDS,
    GATEWAY_DOCKERFILE,
    K8S_DIR,
    K8S_VERSIONS,
    LIVENESS_PATH,
    ROOT,
    _by_kind,
    _compose_env,
    _container,
    _cpus,
    _gateway_env,
    _yaml_docs,
    load_compose,
    load_kustomization,
    load_manifests,
    parse_dockerfile,
)


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return load_kustomization()


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return load_manifests(kustomization)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S_DIR.iterdir() if p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert len(set(kustomization["resources"])) == len(kustomization["resources"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_kubernetes_schemas(version: str, kustomization: dict[str, Any]) -> None:
    for res in kustomization["resources"]:
        for doc in _yaml_docs(K8S_DIR / res):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{res}: {doc['kind']} invalid for Kubernetes {version}: {exc.message}")


def test_kustomize_build_if_available(manifests: dict[str, dict[str, Any]]) -> None:
    """`kubectl kustomize` (what `kubectl apply -k` runs) renders the directory; needs no cluster."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: kustomize rendering not checked (schemas are, above)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = _by_kind([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert set(rendered) == set(manifests)
    for doc in rendered.values():
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gateway"


def test_deployment_runs_the_gateway_safely(
    manifests: dict[str, dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = _container(manifests)
    assert container["image"] in {img["name"] for img in kustomization.get("images", [])}
    http_port = next(p for p in container["ports"] if p["name"] == "http")

    env = _gateway_env(manifests)
    config = from_env(env)  # the gateway accepts the pod's configuration
    assert config.port == http_port["containerPort"] == 8080
    assert "GATEWAY_WORKERS" in env and config.workers >= 1
    assert [r.name for r in config.routes][: len(BACKENDS)] == list(BACKENDS)

    # Readiness on /health (503 while draining); liveness on an endpoint that stays 200 while draining.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8080), probe
    # Termination: a preStop sleep (if any) + the drain + in-flight grace fit in the grace period.
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pre_stop_s = pre_stop.get("sleep", {}).get("seconds", 0)
    drain = pre_stop_s + config.drain_delay_s + config.shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= drain, (pod["terminationGracePeriodSeconds"], drain)
    # Liveness must not kill a pod while it drains (503, then refused until exit).
    live = container["livenessProbe"]
    assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) > drain

    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], kind
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("capabilities", {}).get("add")
    pod_security = pod.get("securityContext", {})
    assert (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) is True
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    assert uid is not None and uid != 0, "numeric non-root UID (runAsNonRoot cannot check a named USER)"
    image_user = parse_dockerfile(GATEWAY_DOCKERFILE).final.last("USER")
    assert image_user is not None and uid == int(image_user.args.split(":")[0]), "the pod runs as the image's user"


def test_workers_match_the_cpu_and_the_hpa_target_fits(manifests: dict[str, dict[str, Any]]) -> None:
    """Issue 11: one answer for sizing. A fixed GATEWAY_WORKERS equals the CPU limit, with requests =
    limits (Guaranteed CPU), or `auto` with a CPU limit it can count. The HPA's CPU target (relative to
    the request) is reachable by those workers and leaves headroom."""
    container = _container(manifests)
    env = _gateway_env(manifests)
    cpu_request = _cpus(str(container["resources"]["requests"]["cpu"]))
    cpu_limit = _cpus(str(container["resources"]["limits"]["cpu"]))
    if env["GATEWAY_WORKERS"] == "auto":
        assert cpu_limit >= 1
    else:
        assert int(env["GATEWAY_WORKERS"]) == cpu_limit == cpu_request, (env["GATEWAY_WORKERS"], cpu_request, cpu_limit)
    hpa = manifests["HorizontalPodAutoscaler"]
    cpu_targets = [m["resource"]["target"] for m in hpa["spec"]["metrics"]
                   if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu_targets and all(t["type"] == "Utilization" for t in cpu_targets)
    for target in cpu_targets:
        # utilization is relative to the request; the workers can use at most the limit
        assert 50 <= target["averageUtilization"] <= 90
        assert target["averageUtilization"] / 100 * cpu_request < cpu_limit


def test_trusted_proxies_cover_the_pod_network_and_prometheus_is_pointed_at_the_metrics(
    manifests: dict[str, dict[str, Any]]
) -> None:
    """Issue 11: GATEWAY_TRUSTED_PROXIES covers the usual pod networks (an in-cluster ingress), and the
    pod template tells Prometheus where to scrape: path /api/gateway/metrics on the container port."""
    import ipaddress

    env = _gateway_env(manifests)
    assert "GATEWAY_TRUSTED_PROXIES" in env
    config = from_env(env)
    for pod_ip in ("10.244.1.7", "10.42.0.9", "192.168.3.4", "172.17.0.3"):  # flannel, k3s, Calico, docker
        assert any(ipaddress.ip_address(pod_ip) in net for net in config.trusted_proxies), pod_ip
    text = (K8S_DIR / "deployment.yaml").read_text()
    assert "pod network" in text and "GATEWAY_ADMIN_ALLOW" in text, "the comments say why"
    admin_allow = getattr(config, "admin_allow", None)  # GATEWAY_ADMIN_ALLOW (issue 10), when present
    if admin_allow is not None:
        assert any(ipaddress.ip_address("10.244.1.7") in net for net in admin_allow)

    annotations = manifests["Deployment"]["spec"]["template"]["metadata"].get("annotations", {})
    container = _container(manifests)
    ports = {str(p["containerPort"]) for p in container["ports"]}
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/path") == "/api/gateway/metrics"
    assert annotations.get("prometheus.io/port") in ports


def test_probe_paths_answer_as_the_probes_expect_while_draining(manifests: dict[str, dict[str, Any]]) -> None:
    """The liveness path stays 200 while the gateway drains (a draining pod is not killed); the readiness
    path turns 503 (the pod leaves the Service)."""
    from tests.conftest import start_gateway
    from tests.integration.helpers import request

    container = _container(manifests)
    live, ready = container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]
    gw, stop = start_gateway({"GATEWAY_SERVICES": "service1"})
    try:
        assert request(gw.port, "GET", live)[0] == 200 and request(gw.port, "GET", ready)[0] == 200

        def drain() -> None:
            gw.server.gw.state = "draining"

        gw.call(drain)
        assert request(gw.port, "GET", live)[0] == 200
        assert request(gw.port, "GET", ready)[0] == 503
    finally:
        stop()


def test_deploy_docs_agree_with_the_deployment(manifests: dict[str, dict[str, Any]]) -> None:
    """docs/deploy.md's Kubernetes section states the pod's workers, CPU and probes as deployment.yaml has them."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    env = _gateway_env(manifests)
    container = _container(manifests)
    assert f"`GATEWAY_WORKERS` ({env['GATEWAY_WORKERS']} in `deployment.yaml`)" in text
    assert f"`{container['livenessProbe']['httpGet']['path']}`" in text.split("**Probes.**", 1)[1].split("\n- ", 1)[0]
    cpu = container["resources"]["limits"]["cpu"]
    resources = text.split("**Resources.**", 1)[1].split("\n- ", 1)[0]
    assert f"{cpu} CPU" in resources, resources


def test_service_hpa_pdb_target_the_deployment(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _container(manifests)
    port_names = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}

    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    hpa = manifests["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":  # utilization is relative to the request
            assert metric["resource"]["name"] in container["resources"]["requests"]

    pdb = manifests["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A node drain can always proceed: the budget allows at least one pod down.
    if "minAvailable" in pdb["spec"]:
        assert int(pdb["spec"]["minAvailable"]) < hpa["spec"]["minReplicas"]
    else:
        assert int(pdb["spec"]["maxUnavailable"]) >= 1


def test_configmap_and_compose_name_the_same_backends(
    manifests: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    data = manifests["ConfigMap"]["data"]
    compose_env = _compose_env(compose["services"]["gateway"])
    assert data["GATEWAY_SERVICES"] == compose_env["GATEWAY_SERVICES"]
    for name in data["GATEWAY_SERVICES"].split(","):
        key = name.upper().replace("-", "_") + "_URL"
        assert data[key] == compose_env[key]


def test_deploy_readme_documents_both() -> None:
    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "deploy.md").read_text()
    needles = ("docker compose up", "kubectl apply -k deploy/kubernetes", "GATEWAY_WORKERS", "HorizontalPodAutoscaler")
    for needle in needles:
        assert needle in text, needle
    assert "could not be run" in text, "the plain note about what was not run on the machine that wrote this"
