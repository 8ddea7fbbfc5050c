"""helm lint and helm template: default values, each TLS mode, the fully loaded values file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import FULL_VALUES, NAMESPACE, lint, of_kind, one, render
from tls_material import ca_pem

TLS_MODES: dict[str, dict[str, Any]] = {
    "helm": {},
    "certManager": {"webhook": {"tls": {"mode": "certManager"}}},
    "existingSecret": {"webhook": {"tls": {"mode": "existingSecret", "existingSecret": {
        "name": "my-webhook-tls", "caBundle": ca_pem()}}}},
}


def values_file(tmp_path: Path, values: dict, name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def test_lint_default(helm: Path) -> None:
    result = lint(helm)
    assert "0 chart(s) failed" in result.stdout


def test_lint_full(helm: Path) -> None:
    result = lint(helm, [FULL_VALUES])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("mode", TLS_MODES)
def test_lint_each_tls_mode(helm: Path, tmp_path: Path, mode: str) -> None:
    lint(helm, [values_file(tmp_path, TLS_MODES[mode])])


def test_default_renders_both_services(default_docs: list[dict]) -> None:
    kinds = sorted({d["kind"] for d in default_docs})
    assert kinds == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
        "MutatingWebhookConfiguration", "PodDisruptionBudget", "Role", "RoleBinding", "Secret",
        "Service", "ServiceAccount", "ValidatingWebhookConfiguration"])
    assert len(of_kind(default_docs, "Deployment")) == 2
    # Off by default: they need CRDs or site knowledge the chart cannot guess.
    for kind in ("NetworkPolicy", "ServiceMonitor", "PrometheusRule", "Issuer", "Certificate"):
        assert not of_kind(default_docs, kind)


def test_every_namespaced_object_is_in_the_release_namespace_or_kubevirt(
        full_docs: list[dict]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                      "ValidatingWebhookConfiguration"}
    for doc in full_docs:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_scoped:
            assert namespace is None, doc["metadata"]["name"]
        else:
            assert namespace in (NAMESPACE, "openshift-cnv"), (doc["kind"], namespace)


def test_full_values_render_every_optional_object(full_docs: list[dict]) -> None:
    for kind, count in {"NetworkPolicy": 2, "ServiceMonitor": 2, "PrometheusRule": 1,
                        "Certificate": 1, "PodDisruptionBudget": 2}.items():
        assert len(of_kind(full_docs, kind)) == count, kind
    # An issuerRef is given: the chart creates no Issuer of its own.
    assert not of_kind(full_docs, "Issuer")


def test_names_fit_kubernetes_limits(helm: Path) -> None:
    long_release = "a-really-long-release-name-that-goes-on-and-on-and-on"
    docs = render(helm, release=long_release[:53])  # helm's own release-name limit is 53
    for doc in docs:
        name = doc["metadata"]["name"]
        limit = 63 if doc["kind"] in ("Service", "Deployment") else 253
        assert len(name) <= limit, name


@pytest.mark.parametrize("mode", TLS_MODES)
def test_each_tls_mode_renders(helm: Path, tmp_path: Path, mode: str) -> None:
    docs = render(helm, [values_file(tmp_path, TLS_MODES[mode])])
    deployment = one(docs, "Deployment", "-webhook")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    generated = "guard-dlm-guard-webhook-tls"
    expected_secret = "my-webhook-tls" if mode == "existingSecret" else generated
    assert volumes["tls"]["secret"]["secretName"] == expected_secret


@pytest.mark.parametrize(("switch", "absent"), [
    ("webhook.enabled=false", {"webhook"}),
    ("reconciler.enabled=false", {"reconciler"}),
])
def test_each_component_can_be_installed_alone(helm: Path, switch: str, absent: set[str]) -> None:
    sets = [switch, "networkPolicy.enabled=true", "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true"]
    docs = render(helm, sets=sets)
    components = {d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                  for d in docs}
    assert not components & absent
    assert len(of_kind(docs, "Deployment")) == 1
    if "webhook" in absent:
        assert not of_kind(docs, "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
