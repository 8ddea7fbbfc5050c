"""admission.mode: which webhooks and CEL admission policies the chart renders, and that its
policies are exactly `dlm-guard policy export`'s for the same policy values."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from chart_support import NAMESPACE, HelmFailed, Manifest, of_kind, render, template

from webhook.cel.chart import PARTS_FILE, rendered
from webhook.cel.export import MutatingApi, export
from webhook.policy import parse_policy

V1 = ["admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
      "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"]
V1BETA1 = ["admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
           "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"]
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding")
ALWAYS_EXCLUDED = ["kube-node-lease", "kube-system", NAMESPACE]


def rendered_with(helm: Path, api_versions: list[str], *sets: str) -> list[Manifest]:
    args = [f"--api-versions={v}" for v in api_versions]
    return render(helm, sets=[*sets, "fullnameOverride=dlm-guard"], extra_args=args)


def entry_names(docs: list[Manifest]) -> list[str]:
    kinds = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    return sorted(w["name"] for d in of_kind(docs, *kinds) for w in d["webhooks"])


def test_the_parts_file_is_generated_from_webhook_cel() -> None:
    assert PARTS_FILE.read_text() == rendered(), "run: python -m webhook.cel.chart"


@pytest.mark.parametrize(("mode", "entries", "policies"), [
    ("webhook", ["vm.mutate.dlm-guard.io", "vm.validate.dlm-guard.io",
                 "vmim.mutate.dlm-guard.io", "vmim.validate.dlm-guard.io"], 0),
    ("hybrid", ["vmim.mutate.dlm-guard.io", "vmim.validate.dlm-guard.io"], 10),
    ("cel", [], 10),
    ("auto", ["vmim.mutate.dlm-guard.io", "vmim.validate.dlm-guard.io"], 10),
])
def test_modes(helm: Path, mode: str, entries: list[str], policies: int) -> None:
    docs = rendered_with(helm, V1, f"admission.mode={mode}")
    assert entry_names(docs) == entries
    assert len(of_kind(docs, *POLICY_KINDS)) == policies


def test_auto_is_webhook_where_the_policy_apis_are_not_served(helm: Path) -> None:
    docs = rendered_with(helm, [])
    assert len(entry_names(docs)) == 4 and not of_kind(docs, *POLICY_KINDS)


@pytest.mark.parametrize("mode", ["hybrid", "cel"])
def test_hybrid_and_cel_fail_clearly_without_the_apis(helm: Path, mode: str) -> None:
    with pytest.raises(HelmFailed) as failed:
        rendered_with(helm, ["admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"],
                      f"admission.mode={mode}")
    assert f"admission.mode={mode} needs admissionregistration.k8s.io/v1" in failed.value.stderr
    assert "MutatingAdmissionPolicy" in failed.value.stderr


def test_the_beta_mutating_api_is_used_where_only_it_is_served(helm: Path) -> None:
    docs = rendered_with(helm, V1BETA1, "admission.mode=hybrid")
    mutating = of_kind(docs, "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding")
    assert {d["apiVersion"] for d in mutating} == {"admissionregistration.k8s.io/v1beta1"}


def test_an_unknown_mode_is_rejected_by_the_schema(helm: Path) -> None:
    result = template(helm, sets=["admission.mode=both"], check=False)
    assert result.returncode != 0 and "admission" in result.stderr


def _comparable(doc: Manifest) -> Manifest:
    """Without the chart's labels and the ignore-label term the webhooks' selector also has."""
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("labels", None)
    selector = doc["spec"].get("matchResources", {}).get("namespaceSelector")
    if selector is not None:
        selector["matchExpressions"] = [e for e in selector["matchExpressions"]
                                        if e["key"] == "kubernetes.io/metadata.name"]
    return doc


POLICY_VALUES: list[dict[str, Any]] = [
    {},
    {"rules": {"shareable-disk": "warn", "lun-disk": "off", "persistent-state": "enforce",
               "connect-url": "warn", "immutable-spec": "off", "restore-run-strategy": "off"},
     "defaults": {"restoreRunStrategy": "Manual"}, "exemptNamespaces": ["legacy", "a-team"]},
    {"rules": {slug: "off" for slug in ("both-roles", "vmi-name", "migration-id",
                                        "connect-url", "immutable-spec")}},
    {"rules": {slug: "warn" for slug in ("shareable-disk", "lun-disk", "filesystem",
                                         "restore-run-strategy")}},
]


@pytest.mark.parametrize("values", POLICY_VALUES)
@pytest.mark.parametrize(("api_versions", "api"), [(V1, MutatingApi.V1),
                                                   (V1BETA1, MutatingApi.V1BETA1)])
def test_the_chart_renders_what_policy_export_emits(
        helm: Path, tmp_path: Path, values: dict[str, Any], api_versions: list[str],
        api: MutatingApi) -> None:
    import yaml

    values_file = tmp_path / "policy.yaml"
    values_file.write_text(yaml.safe_dump({"policy": values, "admission": {"mode": "cel"}}))
    docs = render(helm, [values_file], sets=["fullnameOverride=dlm-guard"],
                  extra_args=[f"--api-versions={v}" for v in api_versions])
    exempt = sorted({*ALWAYS_EXCLUDED, *values.get("exemptNamespaces", [])})
    policy = parse_policy({**values, "exemptNamespaces": exempt})
    def key(doc: Manifest) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    # helm orders documents by kind; export() policy before binding
    assert sorted((_comparable(d) for d in of_kind(docs, *POLICY_KINDS)), key=key) == \
        sorted(export(policy, mutating_api=api), key=key)
