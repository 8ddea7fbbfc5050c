"""The webhook configurations the harness registers, and the `dlm-guard serve` command line."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from controlplane.webhooks import serve_argv, webhook_configurations

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def entries(**kwargs: object) -> dict[str, dict[str, object]]:
    configs = webhook_configurations("https://127.0.0.1:8443/", CA, **kwargs)  # type: ignore[arg-type]
    return {c["kind"]: c["webhooks"][0] for c in configs}


def test_both_configurations_point_at_the_server_with_its_ca() -> None:
    configs = webhook_configurations("https://127.0.0.1:8443", CA, name="mine")
    assert [(c["kind"], c["metadata"]["name"]) for c in configs] == [
        ("MutatingWebhookConfiguration", "mine"), ("ValidatingWebhookConfiguration", "mine")]
    found = entries()
    mutate = found["MutatingWebhookConfiguration"]
    validate = found["ValidatingWebhookConfiguration"]
    assert mutate["clientConfig"] == {"url": "https://127.0.0.1:8443/mutate",
                                      "caBundle": base64.b64encode(CA).decode()}
    assert validate["clientConfig"]["url"] == "https://127.0.0.1:8443/validate"  # type: ignore[index]
    for entry in (mutate, validate):
        assert entry["sideEffects"] == "None"
        assert entry["admissionReviewVersions"] == ["v1"]
        assert entry["timeoutSeconds"] == 5
        assert entry["rules"] == [{
            "apiGroups": ["kubevirt.io"], "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["virtualmachines", "virtualmachineinstancemigrations"],
            "scope": "Namespaced"}]
        assert "namespaceSelector" not in entry


@pytest.mark.parametrize(("validate", "mutate"), [("Fail", "Ignore"), ("Ignore", "Fail")])
def test_failure_policies_and_namespace_selector(validate: str, mutate: str) -> None:
    selector = {"matchLabels": {"team": "a"}}
    found = entries(failure_policy_validate=validate, failure_policy_mutate=mutate,
                    namespace_selector=selector)
    assert found["ValidatingWebhookConfiguration"]["failurePolicy"] == validate
    assert found["MutatingWebhookConfiguration"]["failurePolicy"] == mutate
    assert all(e["namespaceSelector"] == selector for e in found.values())


def test_defaults_fail_closed_for_validation_only() -> None:
    found = entries()
    assert found["ValidatingWebhookConfiguration"]["failurePolicy"] == "Fail"
    assert found["MutatingWebhookConfiguration"]["failurePolicy"] == "Ignore"


def test_serve_argv_binds_loopback_with_the_pair_and_the_cluster() -> None:
    argv = serve_argv(Path("/k/config"), Path("/c"), 9443)
    assert argv[1:4] == ["-m", "dlm_guard", "serve"]
    joined = " ".join(argv)
    assert "--host 127.0.0.1 --port 9443" in joined
    assert "--tls-cert /c/tls.crt --tls-key /c/tls.key" in joined
    assert "--kubeconfig /k/config" in joined
    assert "--offline" in serve_argv(None, Path("/c"), 9443)
