"""Webhook scope and safety: what the API server sends to dlm-guard, and how it trusts it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from chart_support import FULL_VALUES, NAMESPACE, Manifest, of_kind, one, render, webhooks
from cryptography import x509
from tls_material import ca_pem

VM, VMIM = "virtualmachines", "virtualmachineinstancemigrations"
MUTATING, VALIDATING = "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"
EXPECTED = {  # name -> (configuration kind, path, resource)
    "vmim.mutate.dlm-guard.io": (MUTATING, "/mutate", VMIM),
    "vm.mutate.dlm-guard.io": (MUTATING, "/mutate", VM),
    "vmim.validate.dlm-guard.io": (VALIDATING, "/validate", VMIM),
    "vm.validate.dlm-guard.io": (VALIDATING, "/validate", VM),
}


@pytest.fixture(scope="module", params=["default", "full"])
def docs(request: pytest.FixtureRequest, helm: Path) -> list[Manifest]:
    return render(helm, [FULL_VALUES] if request.param == "full" else [])


def test_one_entry_per_resource_and_endpoint(docs: list[Manifest]) -> None:
    found = {hook["name"]: (kind, hook["clientConfig"]["service"]["path"],
                            hook["rules"][0]["resources"][0])
             for kind, hook in webhooks(docs)}
    assert found == EXPECTED
    for _, hook in webhooks(docs):
        assert hook["rules"] == [{
            "apiGroups": ["kubevirt.io"], "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"], "resources": hook["rules"][0]["resources"],
            "scope": "Namespaced"}]
        assert len(hook["rules"][0]["resources"]) == 1  # no subresources (status), no others


def test_safety_settings(docs: list[Manifest]) -> None:
    for kind, hook in webhooks(docs):
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert 1 <= hook["timeoutSeconds"] <= 5
        if kind == MUTATING:
            assert hook["reinvocationPolicy"] == "IfNeeded"
        else:
            assert "reinvocationPolicy" not in hook


def test_default_policies_and_timeout(default_docs: list[Manifest]) -> None:
    for kind, hook in webhooks(default_docs):
        assert hook["failurePolicy"] == ("Ignore" if kind == MUTATING else "Fail")
        assert hook["timeoutSeconds"] == 5


def test_values_reach_policies_and_timeout(helm: Path) -> None:
    docs = render(helm, sets=["webhook.timeoutSeconds=2", "webhook.mutating.failurePolicy=Fail",
                              "webhook.validating.failurePolicy=Ignore"])
    for kind, hook in webhooks(docs):
        assert hook["failurePolicy"] == ("Fail" if kind == MUTATING else "Ignore")
        assert hook["timeoutSeconds"] == 2


def test_client_config_points_at_the_webhook_service(docs: list[Manifest]) -> None:
    service = one(docs, "Service", "-webhook")
    for _, hook in webhooks(docs):
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["port"]) == (
            service["metadata"]["name"], NAMESPACE, 443)
        assert "url" not in hook["clientConfig"]


def _expressions(hook: dict) -> dict[str, str]:
    return {c["name"]: c["expression"] for c in hook["matchConditions"]}


def test_namespace_selector_excludes_system_and_release_namespaces(
        default_docs: list[Manifest]) -> None:
    for _, hook in webhooks(default_docs):
        selector = hook["namespaceSelector"]
        assert "matchLabels" not in selector
        by_key = {e["key"]: e for e in selector["matchExpressions"]}
        names = by_key["kubernetes.io/metadata.name"]
        assert names["operator"] == "NotIn"
        assert names["values"] == ["kube-system", "kube-node-lease", NAMESPACE]
        assert by_key["dlm-guard.io/ignore"] == {
            "key": "dlm-guard.io/ignore", "operator": "NotIn", "values": ["true"]}


def test_namespace_selector_values(full_docs: list[Manifest]) -> None:
    for _, hook in webhooks(full_docs):
        selector = hook["namespaceSelector"]
        assert selector["matchLabels"] == {"example.com/vm-tenants": "true"}
        by_key = {e["key"]: e for e in selector["matchExpressions"]}
        assert by_key["kubernetes.io/metadata.name"]["values"] == [
            "kube-system", "kube-node-lease", NAMESPACE, "monitoring", "cert-manager"]
        assert by_key["example.com/no-dlm-guard"]["values"] == ["true"]


def test_match_conditions_scope_every_entry(docs: list[Manifest]) -> None:
    """Only decentralized VMIMs and WaitAsReceiver VMs: the real API server evaluates these in
    tests/chart/test_chart_e2e.py; here, that each entry carries the right guards."""
    for _, hook in webhooks(docs):
        expressions = _expressions(hook)
        assert 1 < len(expressions) <= 64
        joined = " ".join(expressions.values())
        # Null-safe: DELETE has a null object, CREATE a null oldObject.
        assert "object != null" in joined
        if hook["name"].startswith("vmim."):
            assert "has(object.spec.sendTo)" in joined and "has(object.spec.receive)" in joined
        else:
            assert "object.spec.runStrategy == 'WaitAsReceiver'" in joined
        if hook["name"] == "vm.mutate.dlm-guard.io":
            # Narrowed by what it would add, on CREATE and UPDATE alike.
            assert "!('kubevirt.io/restore-run-strategy' in object.metadata.annotations)" in joined
        else:
            assert "request.operation" in joined  # UPDATEs are narrowed further


def test_validating_vmim_also_looks_at_the_old_object(docs: list[Manifest]) -> None:
    hook = next(h for _, h in webhooks(docs) if h["name"] == "vmim.validate.dlm-guard.io")
    decentralized = _expressions(hook)["decentralized-migration"]
    assert "has(oldObject.spec.sendTo)" in decentralized
    assert "oldObject != null" in decentralized


# --- TLS -----------------------------------------------------------------------------------
def test_helm_mode_generates_a_matching_ca_and_serving_certificate(
        default_docs: list[Manifest]) -> None:
    secret = one(default_docs, "Secret", "-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service = one(default_docs, "Service", "-webhook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in sans.get_values_for_type(x509.DNSName)
    for _, hook in webhooks(default_docs):
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == data["ca.crt"]
    for cfg in of_kind(default_docs, MUTATING, VALIDATING):
        assert "cert-manager.io/inject-ca-from" not in (cfg["metadata"].get("annotations") or {})


def test_cert_manager_mode_injects_the_ca(helm: Path) -> None:
    docs = render(helm, sets=["webhook.tls.mode=certManager"])
    certificate = one(docs, "Certificate")
    issuer = one(docs, "Issuer")
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert certificate["spec"]["secretName"].endswith("-webhook-tls")
    service = one(docs, "Service", "-webhook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    for cfg in of_kind(docs, MUTATING, VALIDATING):
        assert cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            f"{NAMESPACE}/{certificate['metadata']['name']}")
    for _, hook in webhooks(docs):
        assert "caBundle" not in hook["clientConfig"]
    assert not of_kind(docs, "Secret")  # cert-manager writes it


def test_existing_secret_mode_uses_the_given_ca(helm: Path, tmp_path: Path) -> None:
    pem = ca_pem()
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"webhook": {"tls": {
        "mode": "existingSecret", "existingSecret": {"name": "mine", "caBundle": pem}}}}))
    docs = render(helm, [values])
    assert not of_kind(docs, "Secret", "Certificate", "Issuer")
    for _, hook in webhooks(docs):
        assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == pem
