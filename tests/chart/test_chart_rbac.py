"""RBAC is least privilege: no wildcards, no cluster-wide Secret access, writes only by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_support import FULL_VALUES, NAMESPACE, Manifest, of_kind, render

VARIANTS = {
    "default": ([], []),
    "full": ([FULL_VALUES], []),
    "offline": ([], ["webhook.offline=true"]),
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@pytest.fixture(scope="module", params=list(VARIANTS))
def docs(request: pytest.FixtureRequest, helm: Path) -> list[Manifest]:
    files, sets = VARIANTS[request.param]
    return render(helm, files, sets)


def rules_of(docs: list[Manifest], kind: str) -> list[tuple[Manifest, dict]]:
    return [(role, rule) for role in of_kind(docs, kind) for rule in role.get("rules", [])]


def test_no_wildcards_anywhere(docs: list[Manifest]) -> None:
    for _, rule in rules_of(docs, "ClusterRole") + rules_of(docs, "Role"):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert "*" not in rule.get(field, []), rule
            assert not any("*" in item for item in rule.get(field, []) if item), rule


def test_no_cluster_wide_secret_access(docs: list[Manifest]) -> None:
    for role, rule in rules_of(docs, "ClusterRole"):
        assert "secrets" not in rule["resources"], role["metadata"]["name"]
    # ...and no RoleBinding lends a ClusterRole either.
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"


def test_secrets_are_read_in_the_release_namespace_only(docs: list[Manifest]) -> None:
    for role, rule in rules_of(docs, "Role"):
        if "secrets" in rule["resources"]:
            assert role["metadata"]["namespace"] == NAMESPACE
            assert set(rule["verbs"]) == {"get", "list", "watch"}


def test_no_escalation_verbs_or_rbac_objects(docs: list[Manifest]) -> None:
    for _, rule in rules_of(docs, "ClusterRole") + rules_of(docs, "Role"):
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert "rbac.authorization.k8s.io" not in rule["apiGroups"], rule


def test_configmap_writes_are_limited_to_the_external_ca_inbox(docs: list[Manifest]) -> None:
    for role, rule in rules_of(docs, "Role") + rules_of(docs, "ClusterRole"):
        if "configmaps" not in rule["resources"]:
            continue
        assert role["kind"] == "Role", "ConfigMap access must be namespaced"
        writes = set(rule["verbs"]) & WRITE_VERBS
        if writes - {"create"}:
            assert rule["resourceNames"] == ["kubevirt-external-ca"], rule
        if "create" in writes:
            # RBAC cannot limit create by name: it must be alone in its rule (a switch).
            assert rule["verbs"] == ["create"] and "resourceNames" not in rule
        reads = set(rule["verbs"]) - WRITE_VERBS
        if reads and "resourceNames" in rule:
            assert set(rule["resourceNames"]) <= {"kubevirt-ca", "kubevirt-external-ca"}


def test_default_configmap_reads_are_by_name(default_docs: list[Manifest]) -> None:
    for _, rule in rules_of(default_docs, "Role"):
        if "configmaps" in rule["resources"] and {"list", "watch"} & set(rule["verbs"]):
            assert rule["resourceNames"] == ["kubevirt-ca", "kubevirt-external-ca"]


def test_webhook_reads_kubevirt_objects_only(default_docs: list[Manifest]) -> None:
    role = next(r for r in of_kind(default_docs, "ClusterRole")
                if r["metadata"]["name"].endswith("-webhook"))
    assert role["rules"] == [{
        "apiGroups": ["kubevirt.io"],
        "resources": ["virtualmachineinstances", "virtualmachines",
                      "virtualmachineinstancemigrations", "kubevirts"],
        "verbs": ["get", "list", "watch"]}]


def test_offline_webhook_has_no_rbac(helm: Path) -> None:
    docs = render(helm, sets=["webhook.offline=true"])
    names = [r["metadata"]["name"] for r in of_kind(docs, "ClusterRole", "ClusterRoleBinding")]
    assert not [n for n in names if n.endswith("-webhook")]


def test_reconciler_cluster_role(default_docs: list[Manifest]) -> None:
    role = next(r for r in of_kind(default_docs, "ClusterRole")
                if r["metadata"]["name"].endswith("-reconciler"))
    by_resource: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for res in rule["resources"]:
            by_resource.setdefault(res, set()).update(rule["verbs"])
    assert by_resource["virtualmachineinstancemigrations"] == {"get", "list", "watch", "delete",
                                                               "patch"}
    assert by_resource["virtualmachines"] == {"get", "list", "watch", "delete"}
    assert by_resource["virtualmachineinstances"] == {"get", "list", "watch"}
    assert by_resource["events"] == {"create"}
    groups = {g for rule in role["rules"] if "events" in rule["resources"]
              for g in rule["apiGroups"]}
    assert groups == {"", "events.k8s.io"}


def test_lease_access_is_by_name_except_create(default_docs: list[Manifest]) -> None:
    lease_rules = [rule for _, rule in rules_of(default_docs, "Role")
                   if "leases" in rule["resources"]]
    assert {tuple(r["verbs"]) for r in lease_rules} == {("create",), ("get", "update", "patch")}
    for rule in lease_rules:
        if rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == ["dlm-guard-reconciler"]


def test_bindings_point_at_the_chart_service_accounts(docs: list[Manifest]) -> None:
    accounts = {(sa["metadata"]["namespace"], sa["metadata"]["name"])
                for sa in of_kind(docs, "ServiceAccount")}
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
             for r in of_kind(docs, "Role", "ClusterRole")}
    for binding in of_kind(docs, "RoleBinding", "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], namespace, ref["name"]) in roles
