"""`dlm-guard policy export`: modes to bindings, exemptions, API versions, output formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlm_guard.cli import main
from webhook.cel.export import MutatingApi, export
from webhook.policy import parse_policy


def exported(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["policy", "export", *args]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]


def names(documents: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for d in documents]


def test_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    documents = exported(capsys)
    assert names(documents) == [
        ("ValidatingAdmissionPolicy", "dlm-guard-vm-enforce"),
        ("ValidatingAdmissionPolicyBinding", "dlm-guard-vm-enforce"),
        ("ValidatingAdmissionPolicy", "dlm-guard-vm-warn"),  # persistent-state
        ("ValidatingAdmissionPolicyBinding", "dlm-guard-vm-warn"),
        ("ValidatingAdmissionPolicy", "dlm-guard-vmim-enforce"),
        ("ValidatingAdmissionPolicyBinding", "dlm-guard-vmim-enforce"),
        ("ValidatingAdmissionPolicy", "dlm-guard-vmim-warn"),  # connect-url advisories
        ("ValidatingAdmissionPolicyBinding", "dlm-guard-vmim-warn"),
        ("MutatingAdmissionPolicy", "dlm-guard-vm-defaults"),
        ("MutatingAdmissionPolicyBinding", "dlm-guard-vm-defaults"),
    ]
    actions = {d["metadata"]["name"]: d["spec"]["validationActions"] for d in documents
               if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert actions["dlm-guard-vm-enforce"] == ["Deny"] and actions["dlm-guard-vm-warn"] == ["Warn"]
    assert all("matchResources" not in d["spec"] for d in documents if "Binding" in d["kind"])


def test_modes_exemptions_and_default(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text(yaml.safe_dump({
        "rules": {"persistent-state": "off", "shareable-disk": "warn", "connect-url": "off"},
        "defaults": {"restoreRunStrategy": "Halted"}, "exemptNamespaces": ["b", "a"]}))
    documents = exported(capsys, "--config", str(config), "--name-prefix", "x")
    policies = {d["metadata"]["name"]: d for d in documents if "Binding" not in d["kind"]}
    warn = policies["x-vm-warn"]["spec"]["validations"][0]["expression"]
    assert warn == "variables.shareableDisk.size() == 0"
    assert "shareableDisk" not in policies["x-vm-enforce"]["spec"]["validations"][0]["expression"]
    assert "x-vmim-warn" not in policies  # connect-url off: its advisories are off too
    binding = next(d for d in documents if d["kind"] == "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["a", "b"]}]
    mutation = policies["x-vm-defaults"]["spec"]["mutations"][0]["jsonPatch"]["expression"]
    assert '"Halted"' in mutation


def test_json_and_beta_api(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "export", "-o", "json", "--api", "v1beta1"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["kind"] == "List"
    versions = {d["kind"]: d["apiVersion"] for d in listing["items"]}
    assert versions["MutatingAdmissionPolicy"] == "admissionregistration.k8s.io/v1beta1"
    assert versions["ValidatingAdmissionPolicy"] == "admissionregistration.k8s.io/v1"
    assert listing["items"] == export(parse_policy({}), mutating_api=MutatingApi.V1BETA1)


def test_a_broken_policy_file_names_the_key(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text("rules: {no-such-rule: enforce}\n")
    assert main(["policy", "export", "--config", str(config)]) == 2
    assert "no-such-rule" in capsys.readouterr().err


def test_every_stateless_rule_has_cel_and_no_cluster_rule_does() -> None:
    from webhook.cel.export import KINDS
    from webhook.policy import CLUSTER_RULES, RULES

    covered = {rule.slug for kind in KINDS for rule in kind.rules}
    assert covered == set(RULES) - set(CLUSTER_RULES)
