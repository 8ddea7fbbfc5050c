"""values.schema.json rejects unknown keys and wrong types; `fail` guards refuse contradictions.

Every case must make `helm template` fail, with a message that names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import CHART, template
from tls_material import ca_pem

SCHEMA_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    # case: (values, text the error must contain)
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "unknown nested key": ({"webhook": {"tls": {"secretName": "x"}}}, "secretName"),
    "typo in a section": ({"reconciler": {"gcGraceTime": "5m"}}, "gcGraceTime"),
    "unknown peer field": ({"peers": {"clusters": [{"name": "b", "kubeconfig": "x",
                                                    "context": "c"}]}}, "context"),
    "replicas as text": ({"webhook": {"replicas": "two"}}, "replicas"),
    "enabled as text": ({"reconciler": {"enabled": "yes"}}, "enabled"),
    "unknown TLS mode": ({"webhook": {"tls": {"mode": "vault"}}}, "mode"),
    "bad failurePolicy": ({"webhook": {"validating": {"failurePolicy": "Deny"}}},
                          "failurePolicy"),
    "timeout over 30s": ({"webhook": {"timeoutSeconds": 31}}, "timeoutSeconds"),
    "unknown rule slug": ({"policy": {"rules": {"no-such-rule": "warn"}}}, "no-such-rule"),
    "bad rule mode": ({"policy": {"rules": {"lun-disk": "deny"}}}, "lun-disk"),
    "unsafe restore strategy": ({"policy": {"defaults": {"restoreRunStrategy":
                                                         "WaitAsReceiver"}}},
                                "restoreRunStrategy"),
    "bad duration": ({"reconciler": {"gcGrace": "five minutes"}}, "gcGrace"),
    "days are not a Go duration": ({"webhook": {"tls": {"certManager": {"duration": "90d"}}}},
                                   "duration"),
    "root user": ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
    "peer named local": ({"peers": {"clusters": [{"name": "local", "kubeconfig": "x"}]}},
                         "name"),
    "peer name not a DNS label": ({"peers": {"clusters": [{"name": "East_1",
                                                           "kubeconfig": "x"}]}}, "name"),
    "bad digest": ({"image": {"digest": "latest"}}, "digest"),
    "bad log format": ({"logFormat": "xml"}, "logFormat"),
    "namespace list as string": ({"policy": {"exemptNamespaces": "sandbox"}},
                                 "exemptNamespaces"),
}

FAIL_GUARDS: dict[str, tuple[dict[str, Any], str]] = {
    "existingSecret without name": (
        {"webhook": {"tls": {"mode": "existingSecret", "existingSecret": {"caBundle": ca_pem()}}}},
        "needs webhook.tls.existingSecret.name"),
    "existingSecret without caBundle": (
        {"webhook": {"tls": {"mode": "existingSecret", "existingSecret": {"name": "x"}}}},
        "needs webhook.tls.existingSecret.caBundle"),
    "existingSecret caBundle that is not PEM": (
        {"webhook": {"tls": {"mode": "existingSecret",
                             "existingSecret": {"name": "x", "caBundle": "LS0tLS1C"}}}},
        "needs webhook.tls.existingSecret.caBundle"),
    "existingSecret set in helm mode": (
        {"webhook": {"tls": {"existingSecret": {"name": "x"}}}},
        "webhook.tls.existingSecret is set but webhook.tls.mode is \"helm\""),
    "issuerRef without certManager": (
        {"webhook": {"tls": {"certManager": {"issuerRef": {"name": "ca", "kind": "Issuer"}}}}},
        "issuerRef is set"),
    "replicas without leader election": (
        {"reconciler": {"leaderElection": {"enabled": False}}},
        "needs reconciler.leaderElection.enabled"),
    "PDB that blocks every drain": (
        {"webhook": {"replicas": 1}}, "must be below webhook.replicas"),
    "PDB with both bounds": (
        {"reconciler": {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}},
        "not both"),
    "PDB percentage and replicas 1 is fine, a count is not": (
        {"webhook": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}},
        "must be below webhook.replicas"),
    "nothing enabled": (
        {"webhook": {"enabled": False}, "reconciler": {"enabled": False}}, "nothing to install"),
    "peers without a reconciler": (
        {"reconciler": {"enabled": False}, "peers": {"existingSecrets": ["p"]}},
        "only the reconciler uses them"),
    "peer listed twice": (
        {"peers": {"clusters": [{"name": "b", "kubeconfig": "x"},
                                {"name": "b", "kubeconfig": "other"}]}}, "listed twice"),
    "webhook TLS config without ServiceMonitor": (
        {"metrics": {"serviceMonitor": {"webhookTLSConfig": {"insecureSkipVerify": True}}}},
        "serviceMonitor.enabled is false"),
}


def _template_with(helm: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = template(helm, [path], check=False)
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


@pytest.mark.parametrize("case", SCHEMA_ERRORS)
def test_schema_rejects(helm: Path, tmp_path: Path, case: str) -> None:
    values, expected = SCHEMA_ERRORS[case]
    stderr = _template_with(helm, tmp_path, values)
    assert "schema" in stderr.lower(), stderr
    assert expected in stderr, stderr


@pytest.mark.parametrize("case", FAIL_GUARDS)
def test_fail_guards_refuse_contradictions(helm: Path, tmp_path: Path, case: str) -> None:
    values, expected = FAIL_GUARDS[case]
    stderr = _template_with(helm, tmp_path, values)
    assert expected in stderr, stderr


def _objects_without_closed_properties(node: Any, path: str = "#") -> list[str]:
    found = []
    if isinstance(node, dict):
        if (node.get("type") == "object" and "properties" in node
                and node.get("additionalProperties") is not False):
            found.append(path)
        for key, value in node.items():
            found += _objects_without_closed_properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects_without_closed_properties(value, f"{path}/{i}")
    return found


def test_every_declared_object_is_closed() -> None:
    """additionalProperties: false wherever the chart declares the keys (free-form maps such as
    labels, affinity or tolerations are declared without `properties`)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = [p for p in _objects_without_closed_properties(schema)
                    # Kubernetes topologySpreadConstraints: any field of the API object.
                    if not p.endswith("topologySpreadConstraints/items")]
    assert open_objects == []


def _leaves(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return set().union(*(_leaves(v, f"{prefix}.{k}" if prefix else k)
                             for k, v in node.items()))
    return {prefix}


def test_schema_declares_every_default_value() -> None:
    """Each key of values.yaml is declared in the schema (a key missing there is a typo trap)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def declared(path: str) -> bool:
        node = schema
        for key in path.split("."):
            while "$ref" in node:
                node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
            props = node.get("properties")
            if props is None:  # a free-form map or list: its content is the user's
                return True
            if key not in props:
                return False
            node = props[key]
        return True

    missing = sorted(p for p in _leaves(values) if not declared(p))
    assert missing == []


def test_policy_schema_matches_the_webhooks_policy() -> None:
    """Rule slugs and restorable run strategies are DESIGN.md contracts: the chart's schema
    must accept exactly what `dlm-guard serve --config` accepts."""
    from dlm_guard.domain import RESTORABLE_RUN_STRATEGIES
    from webhook.policy import RULES, Mode

    schema = json.loads((CHART / "values.schema.json").read_text())
    policy = schema["properties"]["policy"]["properties"]
    assert set(policy["rules"]["properties"]) == set(RULES)
    assert set(schema["definitions"]["ruleMode"]["enum"]) == {m.value for m in Mode}
    strategies = policy["defaults"]["properties"]["restoreRunStrategy"]["enum"]
    assert set(strategies) == set(RESTORABLE_RUN_STRATEGIES)
