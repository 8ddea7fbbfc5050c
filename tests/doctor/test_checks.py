"""doctor's checks: pure tables over hand-built snapshots (real certificates, upstream formats:
release tags, git-describe strings of main builds, Go durations, chart-shaped webhooks)."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509

from certs.generate import make_ca
from controlplane.virt_operator_standin import pem_in_order
from doctor.checks import (
    check_ca_rotation,
    check_ca_trust,
    check_feature_gate,
    check_peers,
    check_policies,
    check_sync_addresses,
    check_version,
    check_webhook_scope,
    check_webhooks_reachable,
    check_webhooks_registered,
    release,
    run_checks,
)
from doctor.model import ClusterSnapshot, PeerSecret, Probe, ServiceState, Status, Unknown
from doctor.report import as_json, exit_code, text

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GATE = "DecentralizedLiveMigration"
VMIM_SCOPE = "has(object.spec.sendTo) || has(object.spec.receive)"
VM_SCOPE = "object.spec.runStrategy == 'WaitAsReceiver'"


@cache
def ca(name: str, start: int = -1, end: int = 6) -> x509.Certificate:
    return make_ca(NOW + timedelta(days=start), NOW + timedelta(days=end),
                   common_name=f"kubevirt.io@{name}").cert


def kubevirt(version: str = "v1.7.0", gates: list[str] | None = None,
             disabled: list[str] | None = None, rotation: dict[str, Any] | None = None,
             addresses: list[str] | None = None) -> dict[str, Any]:
    dev: dict[str, Any] = {"featureGates": [GATE] if gates is None else gates}
    if disabled:
        dev["disabledFeatureGates"] = disabled
    spec: dict[str, Any] = {"configuration": {"developerConfiguration": dev}}
    spec["certificateRotateStrategy"] = {"selfSigned": rotation if rotation is not None else {
        "ca": {"duration": "48h0m0s", "renewBefore": "24h0m0s"}}}
    return {"spec": spec, "status": {
        "observedKubeVirtVersion": version,
        "synchronizationAddresses": ["10.1.2.3:9185"] if addresses is None else addresses}}


def entry(name: str, resource: str, condition: str | None, policy: str = "Fail",
          client: dict[str, Any] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name, "failurePolicy": policy,
        "clientConfig": client if client is not None else {
            "service": {"namespace": "dlm-guard-system", "name": "dlm-guard-webhook"}},
        "rules": [{"apiGroups": ["kubevirt.io"], "resources": [resource]}]}
    if condition is not None:
        found["matchConditions"] = [{"name": "scope", "expression": condition}]
    return found


def chart_webhooks() -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    def conf(verb: str, policy: str) -> dict[str, Any]:
        return {"metadata": {"name": "dlm-guard"}, "webhooks": [
            entry(f"vmim.{verb}.dlm-guard.io", "virtualmachineinstancemigrations", VMIM_SCOPE,
                  policy),
            entry(f"vm.{verb}.dlm-guard.io", "virtualmachines", VM_SCOPE, policy)]}
    return (conf("mutate", "Ignore"),), (conf("validate", "Fail"),)


def snap(name: str, **changes: Any) -> ClusterSnapshot:
    mutating, validating = chart_webhooks()
    base = ClusterSnapshot(
        name=name, server=f"https://{name}.example:6443", kubevirt_namespace="kubevirt",
        kubevirt=kubevirt(), kubevirt_ca=pem_in_order([ca(name), ca("b" if name == "a" else "a")]),
        mutating=mutating, validating=validating,
        services={("dlm-guard-system", "dlm-guard-webhook"): ServiceState(True, 2)},
        peer_secrets=(PeerSecret("peer", "b" if name == "a" else "a",
                                 f"https://{'b' if name == 'a' else 'a'}.example:6443"),))
    return replace(base, **changes)


# --- feature gate: three outcomes --------------------------------------------------------------
@pytest.mark.parametrize(("cr", "status"), [
    (kubevirt(), Status.OK),
    (kubevirt(version="v1.9.0-beta.0-1264-gd923fdb815"), Status.OK),  # listed: on
    (kubevirt(gates=[], disabled=[GATE]), Status.FAIL),
    (kubevirt(gates=[], version="v1.8.2"), Status.FAIL),  # Alpha release, not listed
    (kubevirt(gates=[], version="v1.9.0-rc.1"), Status.FAIL),
    (kubevirt(gates=[], version="v1.9.0-beta.0-1264-gd923fdb815"), Status.WARN),
    (kubevirt(gates=[], version="latest"), Status.WARN),
    (kubevirt(gates=[], version=""), Status.WARN),
])
def test_feature_gate(cr: dict[str, Any], status: Status) -> None:
    result = check_feature_gate(snap("a", kubevirt=cr))
    assert result.status is status, result
    assert (result.fix != "") is (status is not Status.OK)


def test_a_cannot_tell_gate_names_the_version() -> None:
    result = check_feature_gate(snap("a", kubevirt=kubevirt(gates=[], version="latest")))
    assert "'latest'" in result.message


# --- version -------------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "status", "words"), [
    ("v1.5.3", Status.FAIL, "arrived in v1.6.0"),
    ("v1.6.0", Status.WARN, "does not cancel its peer"),
    ("v1.6.1", Status.WARN, "does not cancel its peer"),
    ("v1.6.2", Status.WARN, "without status.migrationState.failed"),
    ("v1.6.6", Status.WARN, "without status.migrationState.failed"),
    ("v1.7.0-rc.1", Status.OK, "failed flag"),
    ("v1.7.0", Status.OK, "failed flag"),
    ("v1.9.0", Status.OK, "failed flag"),
    ("v1.9.0-beta.0-1264-gd923fdb815", Status.WARN, "cannot tell"),
    ("v1.8.0-alpha.0", Status.WARN, "cannot tell"),
    ("latest", Status.WARN, "cannot tell"),
    ("", Status.WARN, "cannot tell"),
])
def test_version(version: str, status: Status, words: str) -> None:
    result = check_version(snap("a", kubevirt=kubevirt(version=version)))
    assert result.status is status and words in result.message, result


def test_release_parsing() -> None:
    assert release("v1.6.2") == (1, 6, 2)
    assert release("v1.10.0-rc.0") == (1, 10, 0)
    assert release("1.7.0") is None and release("v1.7") is None


# --- missing or unreadable KubeVirt CR ---------------------------------------------------------
@pytest.mark.parametrize("check", [check_feature_gate, check_version, check_sync_addresses,
                                   lambda s: check_ca_rotation(s, [])])
def test_no_kubevirt_cr_fails_and_an_unreadable_one_cannot_tell(check: Any) -> None:
    assert check(snap("a", kubevirt=None)).status is Status.FAIL
    unknown = check(snap("a", kubevirt=Unknown("HTTP 403 Forbidden")))
    assert unknown.status is Status.WARN and "HTTP 403 Forbidden" in unknown.message


def test_sync_addresses() -> None:
    assert check_sync_addresses(snap("a")).status is Status.OK
    assert check_sync_addresses(snap("a", kubevirt=kubevirt(addresses=[]))).status is Status.FAIL


# --- CA rotation ---------------------------------------------------------------------------
@pytest.mark.parametrize(("rotation", "status"), [
    ({"ca": {"duration": "48h0m0s", "renewBefore": "24h0m0s"}}, Status.OK),  # HCO
    ({"ca": {"duration": "168h", "renewBefore": "84h"}}, Status.OK),
    ({}, Status.FAIL),  # vanilla defaults: 7 d, 20 %
    ({"ca": {"duration": "168h"}}, Status.FAIL),
    ({"ca": {"duration": "168h", "renewBefore": "83h"}}, Status.FAIL),
    ({"caRotateInterval": "48h", "caOverlapInterval": "24h", "ca": {"renewBefore": "1h"}},
     Status.OK),  # the deprecated fields win
    ({"ca": {"duration": "7d"}}, Status.FAIL),  # not a Go duration
])
def test_ca_rotation(rotation: dict[str, Any], status: Status) -> None:
    result = check_ca_rotation(snap("a", kubevirt=kubevirt(rotation=rotation)), [])
    assert result.status is status, result
    if status is Status.FAIL:
        assert "renewBefore >= duration / 2" in result.fix


def test_vanilla_rotation_message_names_the_values_and_the_share() -> None:
    result = check_ca_rotation(snap("a", kubevirt=kubevirt(rotation={})), [])
    assert "duration=7d (default), renewBefore=1d9h36m (default)" in result.message
    assert "4d4h48m of every 5d14h24m" in result.message


def test_a_peer_whose_ca_outlives_our_overlap_fails_us_too() -> None:
    ours = snap("a", kubevirt=kubevirt(rotation={"ca": {"duration": "48h",
                                                        "renewBefore": "24h"}}))
    peer = snap("b", kubevirt=kubevirt(rotation={}))
    result = check_ca_rotation(ours, [peer])
    assert result.status is Status.FAIL and "b renews its CA only at age 5d14h24m" in \
        result.message


# --- CA trust ------------------------------------------------------------------------------
def test_ca_trust_table() -> None:
    a, b = snap("a"), snap("b")
    assert check_ca_trust(a, b, NOW).status is Status.OK
    lacking = replace(a, kubevirt_ca=pem_in_order([ca("a")]))
    result = check_ca_trust(lacking, b, NOW)
    assert result.status is Status.FAIL and result.scope == "a->b"
    assert "kubevirt-external-ca" in result.fix
    # Only b's *current* CA (the first of its bundle) counts: an old one of b is not enough.
    b_rotated = replace(b, kubevirt_ca=pem_in_order([ca("b-new"), ca("b"), ca("a")]))
    assert check_ca_trust(a, b_rotated, NOW).status is Status.FAIL
    assert check_ca_trust(a, replace(b, kubevirt_ca=None), NOW).status is Status.FAIL
    assert check_ca_trust(a, replace(b, kubevirt_ca=""), NOW).status is Status.FAIL
    assert check_ca_trust(a, replace(b, kubevirt_ca=Unknown("HTTP 403")), NOW).status \
        is Status.WARN
    expired = replace(b, kubevirt_ca=pem_in_order([ca("b-old", -9, -2), ca("a")]))
    assert "not valid now" in check_ca_trust(a, expired, NOW).message


# --- webhooks ------------------------------------------------------------------------------
def test_webhooks_registered() -> None:
    assert check_webhooks_registered(snap("a")).status is Status.OK
    result = check_webhooks_registered(snap("a", validating=()))
    assert result.status is Status.FAIL and "ValidatingWebhookConfiguration" in result.message
    foreign = ({"metadata": {"name": "other"}, "webhooks": [
        entry("validate.example.com", "virtualmachines", None)]},)
    assert check_webhooks_registered(snap("a", validating=foreign)).status is Status.FAIL
    assert check_webhooks_registered(snap("a", mutating=Unknown("HTTP 403"))).status \
        is Status.WARN
    cel_only = check_webhooks_registered(snap("a", mutating=(), validating=(), policies=(
        {"metadata": {"name": "dlm-guard-migration-id"}},)))
    assert cel_only.status is Status.WARN and "only the CEL policies" in cel_only.message


@pytest.mark.parametrize(("entries", "status"), [
    ([entry("vmim.validate.dlm-guard.io", "virtualmachineinstancemigrations", VMIM_SCOPE)],
     Status.OK),
    ([entry("vmim.validate.dlm-guard.io", "virtualmachineinstancemigrations", None)],
     Status.FAIL),
    ([entry("vmim.mutate.dlm-guard.io", "virtualmachineinstancemigrations", None, "Ignore")],
     Status.WARN),
    ([entry("vm.validate.dlm-guard.io", "virtualmachines", VMIM_SCOPE)], Status.FAIL),
    # The harness's single entry for both resources with no matchConditions.
    ([{**entry("validate.dlm-guard.io", "virtualmachines", None),
       "rules": [{"resources": ["virtualmachines", "virtualmachineinstancemigrations"]}]}],
     Status.FAIL),
])
def test_webhook_scope(entries: list[dict[str, Any]], status: Status) -> None:
    configuration = ({"metadata": {"name": "x"}, "webhooks": entries},)
    assert check_webhook_scope(snap("a", mutating=(), validating=configuration)).status \
        is status


def _with_client(client: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return ({"metadata": {"name": "x"}, "webhooks": [
        entry("vm.validate.dlm-guard.io", "virtualmachines", VM_SCOPE, client=client)]},)


URL = {"url": "https://127.0.0.1:8443/validate", "caBundle": base64.b64encode(b"x").decode()}
SERVICE = {"service": {"namespace": "dlm-guard-system", "name": "dlm-guard-webhook"}}


@pytest.mark.parametrize(("client", "services", "probes", "status"), [
    (SERVICE, {("dlm-guard-system", "dlm-guard-webhook"): ServiceState(True, 2)}, {},
     Status.OK),
    (SERVICE, {("dlm-guard-system", "dlm-guard-webhook"): ServiceState(True, 0)}, {},
     Status.FAIL),
    (SERVICE, {("dlm-guard-system", "dlm-guard-webhook"): ServiceState(False)}, {},
     Status.FAIL),
    (SERVICE, {("dlm-guard-system", "dlm-guard-webhook"): ServiceState(Unknown("HTTP 403"))},
     {}, Status.WARN),
    (SERVICE, {("dlm-guard-system", "dlm-guard-webhook"):
               ServiceState(True, Unknown("HTTP 403"))}, {}, Status.WARN),
    (URL, {}, {URL["url"]: Probe(True, "HTTP 200")}, Status.OK),
    (URL, {}, {URL["url"]: Probe(False, "unreachable (connection refused)")}, Status.FAIL),
    ({}, {}, {}, Status.FAIL),
])
def test_webhooks_reachable(client: dict[str, Any], services: Any, probes: Any,
                            status: Status) -> None:
    result = check_webhooks_reachable(snap("a", mutating=(), validating=_with_client(client),
                                           services=services, probes=probes))
    assert result.status is status, result


# --- CEL policies and peers ------------------------------------------------------------------
def test_policies() -> None:
    assert check_policies(snap("a")).status is Status.OK
    policy = {"metadata": {"name": "dlm-guard-migration-id"}}
    binding = {"spec": {"policyName": "dlm-guard-migration-id"}}
    assert check_policies(snap("a", policies=(policy,), policy_bindings=(binding,))).status \
        is Status.OK
    unbound = check_policies(snap("a", policies=(policy,), policy_bindings=()))
    assert unbound.status is Status.WARN and "dlm-guard-migration-id" in unbound.message
    assert check_policies(snap("a", policies=Unknown("HTTP 404"))).status is Status.WARN


def test_peers() -> None:
    a, b = snap("a"), snap("b")
    assert check_peers(a, [b]).status is Status.OK
    trailing = replace(a, peer_secrets=(PeerSecret("p", "b", "https://B.example:6443/"),))
    assert check_peers(trailing, [b]).status is Status.OK
    elsewhere = replace(a, peer_secrets=(PeerSecret("p", "c", "https://c.example:6443"),))
    assert check_peers(elsewhere, [b]).status is Status.WARN
    assert check_peers(replace(a, peer_secrets=()), [b]).status is Status.WARN
    unknown = check_peers(replace(a, peer_secrets=Unknown("HTTP 403 Forbidden")), [b])
    assert unknown.status is Status.WARN and "cannot tell without access" in unknown.message


# --- all together: lines, JSON, exit code ------------------------------------------------------
def test_a_healthy_pair_is_all_ok_and_exit_0() -> None:
    results = run_checks([snap("a"), snap("b")], NOW)
    assert [r for r in results if r.status is not Status.OK] == []
    assert len(results) == 20 and exit_code(results) == 0
    assert text(results).splitlines()[-1] == "20 ok, 0 warn, 0 fail"


def test_one_fail_is_exit_1_and_warnings_alone_are_0() -> None:
    warn_only = run_checks([snap("a", kubevirt=kubevirt(version="latest")), snap("b")], NOW)
    assert exit_code(warn_only) == 0
    failing = run_checks([snap("a", kubevirt=kubevirt(gates=[], disabled=[GATE])), snap("b")],
                         NOW)
    assert exit_code(failing) == 1
    lines = text(failing).splitlines()
    index = next(i for i, line in enumerate(lines)
                 if line.split()[:3] == ["FAIL", "a", "feature-gate:"])
    assert lines[index + 1].strip().startswith("fix: add DecentralizedLiveMigration")
    assert '"exitCode": 1' in as_json(failing)
