"""The rendered chart against a real kube-apiserver with the KubeVirt CRDs installed.

1. Server-side dry-run of every rendered object: the API server validates them all, the CEL
   matchConditions of the webhook configurations included (compiled against 1.36's CEL library).
2. The webhook configurations installed for real, with nothing serving them: every request the
   API server *sends* to dlm-guard then fails with `failed calling webhook "<name>"`, every
   request it keeps away goes through. That observes the scope (namespaceSelector,
   matchConditions, operations) exactly as the API server evaluates it.

The cluster is this module's own, so the fail-closed webhooks never reach other tests. Rendered
with TLS mode helm and monitoring off: there are no cert-manager or Prometheus Operator CRDs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART,
    FULL_VALUES,
    NAMESPACE,
    Manifest,
    of_kind,
    render,
    run_helm,
    template,
)

from controlplane.binaries import Binaries
from controlplane.cluster import Cluster, start_clusters
from controlplane.crds import install_crds
from controlplane.kubectl import kubectl

pytestmark = pytest.mark.e2e

OPT_IN = "dlm-guard-chart-e2e"  # namespace label the scope test's webhooks are limited to
SCOPE_NS, IGNORED_NS, OTHER_NS = "scope", "scope-ignored", "scope-not-opted-in"
CALLED = "failed calling webhook"
# Switch off what needs CRDs the test cluster lacks (Prometheus Operator's, cert-manager's).
NO_MONITORING = {"metrics": {"serviceMonitor": {"enabled": False, "webhookTLSConfig": None},
                             "prometheusRule": {"enabled": False}}}
HELM_TLS = {"webhook": {"tls": {"mode": "helm", "certManager": {"issuerRef": None}}}}


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_clusters(1, tmp_path_factory.mktemp("chart-cluster"), names=["chart"],
                        binaries=binaries) as started:
        install_crds(started[0])
        yield started[0]


def _values_file(tmp_path: Path, values: dict[str, Any], name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _ensure_namespace(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}}}
    kubectl(cluster, "apply", "--server-side", "-f", "-", input=json.dumps(manifest))


# --- 1. every object passes the API server's validation -------------------------------------
def _existing_secret() -> dict[str, Any]:
    from tls_material import ca_pem

    return {"webhook": {"tls": {"mode": "existingSecret",
                                "existingSecret": {"name": "mine", "caBundle": ca_pem()}}}}


DRY_RUN_VARIANTS: dict[str, list[Path | dict[str, Any]]] = {
    "default": [],
    "full": [FULL_VALUES, HELM_TLS],
    "offline": [{"webhook": {"offline": True}}],
    "existing-secret": [_existing_secret()],
}


@pytest.mark.parametrize("variant", DRY_RUN_VARIANTS)
def test_server_side_dry_run_accepts_every_object(
        helm: Path, cluster: Cluster, tmp_path: Path, variant: str) -> None:
    layers = [*DRY_RUN_VARIANTS[variant], NO_MONITORING]
    files = [layer if isinstance(layer, Path) else _values_file(tmp_path, layer, f"{i}.yaml")
             for i, layer in enumerate(layers)]
    rendered = template(helm, files).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for namespace in {d["metadata"].get("namespace") for d in docs} - {None}:
        _ensure_namespace(cluster, namespace)

    result = kubectl(cluster, "apply", "--server-side", "--dry-run=server",
                     "--field-manager=helm", "-o", "name", "-f", "-", input=rendered)

    applied = result.stdout.split()
    assert len(applied) == len(docs), result.stdout
    kinds = {d["kind"] for d in docs}
    assert {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Deployment",
            "PodDisruptionBudget", "ClusterRole", "Role"} <= kinds


def test_api_server_rejects_a_broken_match_condition(
        helm: Path, cluster: Cluster) -> None:
    """Guard the guard: the dry run really compiles CEL (a typo'd condition is refused)."""
    docs = render(helm)
    config = of_kind(docs, "ValidatingWebhookConfiguration")[0]
    config["webhooks"][0]["matchConditions"][0]["expression"] = "object.spec.("
    result = kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-f", "-",
                     input=json.dumps(config), check=False)
    assert result.returncode != 0
    assert "matchConditions" in result.stderr and "compil" in result.stderr.lower()


# --- 2. scope, as the API server evaluates it -------------------------------------------------
def vm(name: str, namespace: str = SCOPE_NS, *, run_strategy: str | None = "WaitAsReceiver",
       annotations: dict[str, str] | None = None, running: bool | None = None) -> Manifest:
    spec: dict[str, Any] = {"template": {"spec": {"domain": {
        "devices": {"disks": [{"name": "disk0", "disk": {"bus": "virtio"}}]},
        "resources": {"requests": {"memory": "128Mi"}}},
        "volumes": [{"name": "disk0", "dataVolume": {"name": f"{name}-dv"}}]}}}
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    if running is not None:
        spec["running"] = running
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}},
            "spec": spec}


def vmim(name: str, namespace: str = SCOPE_NS, *, send: bool = False, receive: bool = False,
         labels: dict[str, str] | None = None) -> Manifest:
    spec: dict[str, Any] = {"vmiName": "vm-1"}
    if send:
        spec["sendTo"] = {"migrationID": "mid-1", "connectURL": "10.0.0.7:9185"}
    if receive:
        spec["receive"] = {"migrationID": "mid-1"}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": spec}


SOURCE_LABELS = {"dlm-guard.io/role": "source", "dlm-guard.io/migration-id": "mid-1"}
RESTORE = {"kubevirt.io/restore-run-strategy": "Always"}


@dataclass(frozen=True)
class Case:
    """One request. `existing` is created before any webhook exists; `create` is the request
    itself, or `patch` (a merge patch) / `delete` on `existing`."""

    name: str
    expect: str | None  # the webhook entry the API server calls, None: not sent to dlm-guard
    create: Manifest | None = None
    existing: Manifest | None = None
    patch: dict[str, Any] = field(default_factory=dict)
    delete: bool = False


VALIDATING_CASES = [
    Case("create ordinary VM", None, create=vm("v-plain", run_strategy="Always")),
    Case("create VM with legacy spec.running", None,
         create=vm("v-running", run_strategy=None, running=True)),
    Case("create WaitAsReceiver VM", "vm.validate.dlm-guard.io",
         create=vm("v-war", annotations=RESTORE)),
    Case("create WaitAsReceiver VM in an ignored namespace", None,
         create=vm("v-war", IGNORED_NS)),
    Case("create WaitAsReceiver VM outside the opted-in namespaces", None,
         create=vm("v-war", OTHER_NS)),
    Case("create ordinary VMIM", None, create=vmim("m-plain")),
    Case("create source VMIM", "vmim.validate.dlm-guard.io", create=vmim("m-src", send=True)),
    Case("create target VMIM", "vmim.validate.dlm-guard.io", create=vmim("m-tgt", receive=True)),
    Case("create both-roles VMIM", "vmim.validate.dlm-guard.io",
         create=vmim("m-both", send=True, receive=True)),
    Case("create target VMIM in an ignored namespace", None,
         create=vmim("m-tgt", IGNORED_NS, receive=True)),
    Case("label a source VMIM", None, existing=vmim("u-src-label", send=True),
         patch={"metadata": {"labels": {"team": "a"}}}),
    Case("add a finalizer to a source VMIM", None, existing=vmim("u-src-fin", send=True),
         patch={"metadata": {"finalizers": ["kubevirt.io/migrationJobFinalize"]}}),
    Case("change a source VMIM's spec", "vmim.validate.dlm-guard.io",
         existing=vmim("u-src-spec", send=True),
         patch={"spec": {"sendTo": {"connectURL": "10.0.0.8:9185"}}}),
    Case("strip sendTo from a source VMIM", "vmim.validate.dlm-guard.io",
         existing=vmim("u-src-strip", send=True), patch={"spec": {"sendTo": None}}),
    Case("change an ordinary VMIM's spec", None, existing=vmim("u-plain"),
         patch={"spec": {"vmiName": "vm-2"}}),
    Case("label a WaitAsReceiver VM", None, existing=vm("u-war-label", annotations=RESTORE),
         patch={"metadata": {"labels": {"team": "a"}}}),
    Case("change the restore run strategy", "vm.validate.dlm-guard.io",
         existing=vm("u-war-ann", annotations=RESTORE),
         patch={"metadata": {"annotations": {"kubevirt.io/restore-run-strategy": "Manual"}}}),
    Case("change a WaitAsReceiver VM's template", "vm.validate.dlm-guard.io",
         existing=vm("u-war-spec", annotations=RESTORE),
         patch={"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}}),
    Case("KubeVirt restores the run strategy after a migration", None,
         existing=vm("u-war-done", annotations=RESTORE), patch={"spec": {"runStrategy": "Always"}}),
    Case("change an ordinary VM", None, existing=vm("u-plain-vm", run_strategy="Always"),
         patch={"spec": {"runStrategy": "Halted"}}),
    Case("delete a WaitAsReceiver VM", None, existing=vm("d-war", annotations=RESTORE),
         delete=True),
    Case("delete a target VMIM", None, existing=vmim("d-tgt", receive=True), delete=True),
]

MUTATING_CASES = [
    Case("create WaitAsReceiver VM without restore strategy", "vm.mutate.dlm-guard.io",
         create=vm("mv-war")),
    Case("create WaitAsReceiver VM with restore strategy", None,
         create=vm("mv-war-ann", annotations=RESTORE)),
    Case("create ordinary VM", None, create=vm("mv-plain", run_strategy="Always")),
    Case("create source VMIM", "vmim.mutate.dlm-guard.io", create=vmim("mm-src", send=True)),
    Case("create target VMIM", "vmim.mutate.dlm-guard.io", create=vmim("mm-tgt", receive=True)),
    Case("create both-roles VMIM", None, create=vmim("mm-both", send=True, receive=True)),
    Case("create ordinary VMIM", None, create=vmim("mm-plain")),
    Case("label a source VMIM whose pairing labels are right", None,
         existing=vmim("mu-src-ok", send=True, labels=SOURCE_LABELS),
         patch={"metadata": {"labels": {"team": "a"}}}),
    Case("label a target VMIM without pairing labels", "vmim.mutate.dlm-guard.io",
         existing=vmim("mu-tgt-bare", receive=True), patch={"metadata": {"labels": {"t": "a"}}}),
    Case("make a pairing label stale", "vmim.mutate.dlm-guard.io",
         existing=vmim("mu-src-stale", send=True, labels=SOURCE_LABELS),
         patch={"metadata": {"labels": {"dlm-guard.io/role": "target"}}}),
    Case("label a WaitAsReceiver VM with its restore strategy", None,
         existing=vm("mu-war-ann", annotations=RESTORE),
         patch={"metadata": {"labels": {"team": "a"}}}),
    Case("label a WaitAsReceiver VM without restore strategy", "vm.mutate.dlm-guard.io",
         existing=vm("mu-war-bare"), patch={"metadata": {"labels": {"team": "a"}}}),
]


def _resource(obj: Manifest) -> list[str]:
    kind = {"VirtualMachine": "vm", "VirtualMachineInstanceMigration": "vmim"}[obj["kind"]]
    return [f"{kind}.kubevirt.io", obj["metadata"]["name"], "-n", obj["metadata"]["namespace"]]


def _request(cluster: Cluster, case: Case) -> tuple[int, str]:
    if case.create is not None:
        result = kubectl(cluster, "create", "-f", "-", input=json.dumps(case.create),
                         check=False)
    elif case.delete:
        assert case.existing is not None
        result = kubectl(cluster, "delete", *_resource(case.existing), check=False)
    else:
        assert case.existing is not None
        result = kubectl(cluster, "patch", *_resource(case.existing), "--type=merge",
                         "-p", json.dumps(case.patch), check=False)
    return result.returncode, result.stderr


def _install_only(cluster: Cluster, docs: list[Manifest], kind: str) -> None:
    kubectl(cluster, "delete", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
            "-l", "app.kubernetes.io/part-of=dlm-guard", "--ignore-not-found")
    kubectl(cluster, "apply", "--server-side", "-f", "-",
            input=json.dumps(of_kind(docs, kind)[0]))


def _run_cases(cluster: Cluster, docs: list[Manifest], kind: str, cases: list[Case]) -> None:
    for case in cases:
        if case.existing is not None:
            kubectl(cluster, "create", "-f", "-", input=json.dumps(case.existing))
    _install_only(cluster, docs, kind)
    try:
        outcomes = {case.name: _request(cluster, case) for case in cases}
    finally:
        kubectl(cluster, "delete", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
                "-l", "app.kubernetes.io/part-of=dlm-guard", "--ignore-not-found")
    problems = []
    for case in cases:
        code, stderr = outcomes[case.name]
        if case.expect is None and code != 0:
            problems.append(f"{case.name}: expected to pass untouched, got: {stderr.strip()}")
        elif case.expect is not None and f'{CALLED} "{case.expect}"' not in stderr:
            problems.append(f"{case.name}: expected a call to {case.expect}, got "
                            f"rc={code} {stderr.strip()!r}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def scope_docs(helm: Path, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory,
               ) -> list[Manifest]:
    """Webhooks limited to namespaces labelled OPT_IN, both fail-closed, so that a call is seen."""
    _ensure_namespace(cluster, SCOPE_NS, {OPT_IN: "true"})
    _ensure_namespace(cluster, IGNORED_NS, {OPT_IN: "true", "dlm-guard.io/ignore": "true"})
    _ensure_namespace(cluster, OTHER_NS)
    values = {"webhook": {"mutating": {"failurePolicy": "Fail"},
                          "namespaceSelector": {"matchLabels": {OPT_IN: "true"}}}}
    path = _values_file(tmp_path_factory.mktemp("scope"), values, "scope.yaml")
    return render(helm, [path])


def test_validating_scope(cluster: Cluster, scope_docs: list[Manifest]) -> None:
    _run_cases(cluster, scope_docs, "ValidatingWebhookConfiguration", VALIDATING_CASES)


def test_mutating_scope(cluster: Cluster, scope_docs: list[Manifest]) -> None:
    _run_cases(cluster, scope_docs, "MutatingWebhookConfiguration", MUTATING_CASES)


def test_release_namespace_is_never_sent(cluster: Cluster, scope_docs: list[Manifest]) -> None:
    """Even when labelled for opt-in, the release namespace (and kube-system) stay excluded."""
    _ensure_namespace(cluster, NAMESPACE, {OPT_IN: "true"})
    _ensure_namespace(cluster, "kube-system", {OPT_IN: "true"})
    cases = [Case("WaitAsReceiver VM in the release namespace", None,
                  create=vm("r-war", NAMESPACE, annotations=RESTORE)),
             Case("target VMIM in kube-system", None,
                  create=vmim("r-tgt", "kube-system", receive=True))]
    _run_cases(cluster, scope_docs, "ValidatingWebhookConfiguration", cases)


# --- 3. the chart's webhook configurations and policy, served by the real `dlm-guard serve` ------
SERVED_NS = "served"
SERVED_VALUES = {
    "webhook": {"namespaceSelector": {"matchLabels": {OPT_IN: "true"}}},
    "policy": {
        # The cluster-state rules would deny for lack of VMIs and a KubeVirt CR: off, which also
        # shows that the policy values reach the server through the ConfigMap.
        "rules": {"receiver-vmi": "off", "source-vmi": "off", "feature-gate": "off",
                  "persistent-state": "enforce"},
        "defaults": {"restoreRunStrategy": "Manual"},
    },
}


def _pointed_at(config: Manifest, url_base: str, ca_pem: bytes) -> Manifest:
    """The chart's configuration with its Service reference swapped for the local server's URL
    (a test API server has no kube-proxy to reach a Service); everything else as rendered."""
    import base64
    import copy

    config = copy.deepcopy(config)
    for hook in config["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        hook["clientConfig"] = {"url": f"{url_base}{path}",
                                "caBundle": base64.b64encode(ca_pem).decode()}
    return config


def _create(cluster: Cluster, obj: Manifest) -> tuple[int, str, Manifest | None]:
    result = kubectl(cluster, "create", "-o", "json", "-f", "-", input=json.dumps(obj),
                     check=False)
    return result.returncode, result.stderr, json.loads(result.stdout) if result.stdout else None


def test_chart_configuration_and_policy_with_the_real_server(
        helm: Path, cluster: Cluster, tmp_path: Path) -> None:
    from controlplane.webhooks import run_webhook_server, wait_for_webhooks

    docs = render(helm, [_values_file(tmp_path, SERVED_VALUES, "served.yaml")])
    policy = tmp_path / "policy.yaml"
    policy.write_text(next(d for d in of_kind(docs, "ConfigMap")
                           if d["metadata"]["name"].endswith("-policy"))["data"]["policy.yaml"])
    _ensure_namespace(cluster, SERVED_NS, {OPT_IN: "true"})
    with run_webhook_server(cluster.kubeconfig, tmp_path / "server",
                            extra_args=["--config", str(policy)]) as server:
        configs = [_pointed_at(c, server.url_base, server.ca_pem)
                   for c in of_kind(docs, "MutatingWebhookConfiguration",
                                    "ValidatingWebhookConfiguration")]
        kubectl(cluster, "apply", "--server-side", "-f", "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configs}))
        try:
            wait_for_webhooks(cluster, SERVED_NS)
            _check_served(cluster)
        finally:
            kubectl(cluster, "delete",
                    "mutatingwebhookconfigurations,validatingwebhookconfigurations",
                    "-l", "app.kubernetes.io/part-of=dlm-guard", "--ignore-not-found")


def _check_served(cluster: Cluster) -> None:
    # Mutation with the chart's default restore strategy (policy.defaults from values).
    code, err, stored = _create(cluster, vm("s-war", SERVED_NS))
    assert code == 0, err
    assert stored is not None
    assert stored["metadata"]["annotations"]["kubevirt.io/restore-run-strategy"] == "Manual"

    # A target VMIM without migrationID gets one, and the pairing labels.
    target = vmim("s-tgt", SERVED_NS, receive=True)
    target["spec"]["receive"]["migrationID"] = ""
    code, err, stored = _create(cluster, target)
    assert code == 0, err
    assert stored is not None
    generated = stored["spec"]["receive"]["migrationID"]
    assert generated and stored["metadata"]["labels"] == {
        "dlm-guard.io/role": "target", "dlm-guard.io/migration-id": generated}

    # Denials name their rule; persistent-state is enforced because the values say so.
    unsafe = vm("s-unsafe", SERVED_NS, annotations=RESTORE)
    devices = unsafe["spec"]["template"]["spec"]["domain"]["devices"]
    devices["disks"][0]["shareable"] = True
    devices["tpm"] = {"persistent": True}
    code, err, _ = _create(cluster, unsafe)
    assert code != 0
    assert "[shareable-disk]" in err and "[persistent-state]" in err, err

    source = vmim("s-src", SERVED_NS, send=True)
    source["spec"]["sendTo"]["connectURL"] = "https://10.0.0.7:9185"
    code, err, _ = _create(cluster, source)
    assert code != 0 and "[connect-url]" in err, err


# --- 4. helm install / upgrade: the generated TLS pair survives upgrades (lookup) --------------
UPGRADE_NS, UPGRADE_RELEASE = "dlm-guard-upgrade", "keep"
# Opt-in label no namespace carries: the installed fail-closed webhooks reach nothing.
INERT = {"webhook": {"namespaceSelector": {"matchLabels": {"dlm-guard-chart-e2e-inert": "x"}}}}


def _helm_on(helm: Path, cluster: Cluster, *args: str, check: bool = True,
             ) -> subprocess.CompletedProcess[str]:
    return run_helm(helm, *args, "--namespace", UPGRADE_NS, "--kubeconfig",
                    str(cluster.kubeconfig), check=check)


def _tls_state(cluster: Cluster) -> tuple[dict[str, str], set[str], list[int]]:
    secret = json.loads(kubectl(cluster, "get", "secret", "-n", UPGRADE_NS,
                                f"{UPGRADE_RELEASE}-dlm-guard-webhook-tls", "-o", "json").stdout)
    bundles, timeouts = set(), []
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        config = json.loads(kubectl(cluster, "get", kind, f"{UPGRADE_RELEASE}-dlm-guard",
                                    "-o", "json").stdout)
        bundles |= {h["clientConfig"]["caBundle"] for h in config["webhooks"]}
        timeouts += [h["timeoutSeconds"] for h in config["webhooks"]]
    return secret["data"], bundles, timeouts


def test_install_and_upgrade_keep_the_generated_certificate(
        helm: Path, cluster: Cluster, tmp_path: Path) -> None:
    values = _values_file(tmp_path, INERT, "inert.yaml")
    _ensure_namespace(cluster, UPGRADE_NS)
    _ensure_namespace(cluster, "kubevirt")  # the reconciler's Role lives there
    try:
        installed = _helm_on(helm, cluster, "install", UPGRADE_RELEASE, str(CHART),
                             "--values", str(values))
        assert f"is installed in namespace {UPGRADE_NS}" in installed.stdout  # NOTES.txt
        assert "No peers configured" in installed.stdout
        first, bundles, _ = _tls_state(cluster)
        assert bundles == {first["ca.crt"]}

        _helm_on(helm, cluster, "upgrade", UPGRADE_RELEASE, str(CHART), "--values", str(values),
                 "--set", "webhook.timeoutSeconds=3")
        second, bundles, timeouts = _tls_state(cluster)
        assert second == first  # same CA, certificate and key
        assert bundles == {first["ca.crt"]}
        assert set(timeouts) == {3}  # the upgrade did apply

        # An existing peer Secret the reconciler could not use is refused at upgrade time.
        kubectl(cluster, "create", "secret", "generic", "unlabelled-peer", "-n", UPGRADE_NS,
                "--from-literal=kubeconfig=apiVersion: v1")
        refused = _helm_on(helm, cluster, "upgrade", UPGRADE_RELEASE, str(CHART),
                           "--values", str(values), "--set",
                           "peers.existingSecrets[0]=unlabelled-peer", check=False)
        assert refused.returncode != 0
        assert "lacks the label dlm-guard.io/peer" in refused.stderr, refused.stderr
    finally:
        _helm_on(helm, cluster, "uninstall", UPGRADE_RELEASE, check=False)
