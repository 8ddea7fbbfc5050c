"""`dlm-guard doctor` against two real local clusters: a healthy pair first (exit 0, every line
OK), then each failing condition staged on its own and undone again.

Nothing runs KubeVirt here: the KubeVirt CR (spec and status) and kubevirt-ca are written as
virt-operator would leave them. The webhook URL points at a real `dlm-guard serve` (offline).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from certs.generate import Issued, cert_pem, key_pem, make_ca
from controlplane import Cluster, install_crds_on, kubeconfig, start_clusters
from controlplane.pki import client_cert
from controlplane.pytest_plugin import binaries  # noqa: F401  (fixture)
from controlplane.virt_operator_standin import pem_in_order
from controlplane.webhooks import WebhookServer, start_webhook_server
from dlm_guard import cli

pytestmark = pytest.mark.e2e

NS = "kubevirt"
GUARD_NS = "dlm-guard-system"
NOW = datetime.now(UTC)
HEALTHY_ROTATION = {"ca": {"duration": "48h0m0s", "renewBefore": "24h0m0s"}}  # HCO's values


@dataclass
class Site:
    cluster: Cluster
    api: k8s.ApiClient

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    @property
    def admission(self) -> k8s.AdmissionregistrationV1Api:
        return k8s.AdmissionregistrationV1Api(self.api)

    def kubevirt(self) -> dict[str, Any]:
        found: Any = self.custom.get_namespaced_custom_object("kubevirt.io", "v1", NS,
                                                              "kubevirts", "kubevirt")
        return dict(found)

    def put_kubevirt(self, spec: dict[str, Any], status: dict[str, Any]) -> None:
        current = self.kubevirt()
        current["spec"] = spec
        self.custom.replace_namespaced_custom_object("kubevirt.io", "v1", NS, "kubevirts",
                                                     "kubevirt", current)
        self.custom.patch_namespaced_custom_object_status(
            "kubevirt.io", "v1", NS, "kubevirts", "kubevirt", {"status": status},
            _content_type="application/merge-patch+json")

    def set_ca_bundle(self, bundle: str) -> None:
        self.core.patch_namespaced_config_map("kubevirt-ca", NS, {"data": {"ca-bundle": bundle}})


def kubevirt_spec(gate: bool = True, rotation: dict[str, Any] | None = HEALTHY_ROTATION,
                  ) -> dict[str, Any]:
    """rotation None: unset, as on a vanilla install (7 d, renewBefore 20 %)."""
    spec: dict[str, Any] = ({"certificateRotateStrategy": {"selfSigned": rotation}}
                            if rotation is not None else {})
    if gate:
        spec["configuration"] = {"developerConfiguration": {
            "featureGates": ["DecentralizedLiveMigration"]}}
    return spec


def kubevirt_status(version: str = "v1.7.0", address: str = "10.0.0.5:9185") -> dict[str, Any]:
    return {"phase": "Deployed", "observedKubeVirtVersion": version,
            "synchronizationAddresses": [address] if address else None}


def webhook_configurations(server: WebhookServer, *, scoped: bool = True,
                           url_base: str | None = None) -> dict[str, dict[str, Any]]:
    """Chart-shaped entries (one per resource, matchConditions) calling `server` by URL."""
    base = url_base or server.url_base
    conditions = {
        "virtualmachineinstancemigrations": "has(object.spec) && (has(object.spec.sendTo) || "
                                            "has(object.spec.receive))",
        "virtualmachines": "has(object.spec) && has(object.spec.runStrategy) && "
                           "object.spec.runStrategy == 'WaitAsReceiver'"}

    def entry(resource: str, verb: str, policy: str) -> dict[str, Any]:
        short = "vmim" if resource.endswith("migrations") else "vm"
        found: dict[str, Any] = {
            "name": f"{short}.{verb}.dlm-guard.io", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": policy, "timeoutSeconds": 5,
            "clientConfig": {"url": f"{base}/{verb}",
                             "caBundle": base64.b64encode(server.ca_pem).decode()},
            "rules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE"], "resources": [resource]}]}
        if scoped:
            found["matchConditions"] = [{"name": "scope", "expression": conditions[resource]}]
        return found

    resources = list(conditions)
    return {
        "MutatingWebhookConfiguration": {
            "metadata": {"name": "dlm-guard"},
            "webhooks": [entry(r, "mutate", "Ignore") for r in resources]},
        "ValidatingWebhookConfiguration": {
            "metadata": {"name": "dlm-guard"},
            "webhooks": [entry(r, "validate", "Fail") for r in resources]}}


def put_webhooks(site: Site, configurations: dict[str, dict[str, Any]]) -> None:
    api = site.admission
    for kind, body in configurations.items():
        name = body["metadata"]["name"]
        mutating = kind.startswith("Mutating")
        try:
            if mutating:
                api.delete_mutating_webhook_configuration(name)
            else:
                api.delete_validating_webhook_configuration(name)
        except k8s.ApiException as err:
            if err.status != 404:
                raise
        if mutating:
            api.create_mutating_webhook_configuration(
                k8s.V1MutatingWebhookConfiguration.model_validate(body))
        else:
            api.create_validating_webhook_configuration(
                k8s.V1ValidatingWebhookConfiguration.model_validate(body))


def peer_secret(site: Site, peer: Site, name: str) -> None:
    data = base64.b64encode(peer.cluster.kubeconfig.read_bytes()).decode()
    site.core.create_namespaced_secret(GUARD_NS, k8s.V1Secret.model_validate({
        "metadata": {"name": name, "labels": {"dlm-guard.io/peer": name}},
        "data": {"kubeconfig": data}}))


@dataclass
class Pair:
    a: Site
    b: Site
    server: WebhookServer
    bundles: dict[str, str]

    def healthy(self) -> None:
        for site, peer in ((self.a, self.b), (self.b, self.a)):
            site.put_kubevirt(kubevirt_spec(), kubevirt_status())
            site.set_ca_bundle(self.bundles[site.cluster.name])
            put_webhooks(site, webhook_configurations(self.server))
            for secret in site.core.list_namespaced_secret(GUARD_NS).items:
                site.core.delete_namespaced_secret(str(secret.metadata and secret.metadata.name),
                                                   GUARD_NS)
            peer_secret(site, peer, peer.cluster.name)
            for policy in site.admission.list_validating_admission_policy().items:
                site.admission.delete_validating_admission_policy(
                    str(policy.metadata and policy.metadata.name))


@pytest.fixture(scope="module")
def pair(binaries, tmp_path_factory) -> Iterator[Pair]:  # noqa: F811
    root = tmp_path_factory.mktemp("doctor-e2e")
    with start_clusters(2, root, names=["a", "b"], binaries=binaries) as started:
        install_crds_on(started)
        server = start_webhook_server(None, root / "webhook")
        try:
            sites = [Site(c, k8s_config.new_client_from_config(config_file=str(c.kubeconfig),
                                                               persist_config=False))
                     for c in started]
            cas = {s.cluster.name: make_ca(NOW - timedelta(hours=1), NOW + timedelta(days=2),
                                           common_name=f"kubevirt.io@{s.cluster.name}").cert
                   for s in sites}
            for site in sites:
                site.core.create_namespace(k8s.V1Namespace.model_validate(
                    {"metadata": {"name": NS}}))
                site.core.create_namespace(k8s.V1Namespace.model_validate(
                    {"metadata": {"name": GUARD_NS}}))
                site.custom.create_namespaced_custom_object("kubevirt.io", "v1", NS, "kubevirts", {
                    "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
                    "metadata": {"name": "kubevirt", "namespace": NS}, "spec": {}})
                site.core.create_namespaced_config_map(NS, k8s.V1ConfigMap.model_validate({
                    "metadata": {"name": "kubevirt-ca", "namespace": NS},
                    "data": {"ca-bundle": ""}}))
            bundles = {"a": pem_in_order([cas["a"], cas["b"]]),
                       "b": pem_in_order([cas["b"], cas["a"]])}
            found = Pair(sites[0], sites[1], server, bundles)
            found.healthy()
            yield found
        finally:
            server.stop()


def doctor(pair: Pair, capsys: pytest.CaptureFixture[str], *extra: str,
           a_spec: str | None = None) -> tuple[int, list[dict[str, str]]]:
    code = cli.main(["doctor", "--cluster", a_spec or f"a={pair.a.cluster.kubeconfig}",
                     "--cluster", f"b={pair.b.cluster.kubeconfig}", "--output", "json",
                     "--timeout", "3", *extra])
    out = capsys.readouterr().out
    return code, (json.loads(out)["results"] if out else [])


def only_problems(results: list[dict[str, str]]) -> set[tuple[str, str, str]]:
    return {(r["check"], r["scope"], r["status"]) for r in results if r["status"] != "OK"}


def test_a_healthy_pair_is_all_ok_and_exits_0(pair, capsys):
    code, results = doctor(pair, capsys)
    assert only_problems(results) == set(), results
    assert code == 0
    checks = {(r["check"], r["scope"]) for r in results}
    for scope in ("a", "b"):
        for check in ("feature-gate", "kubevirt-version", "sync-addresses", "ca-rotation",
                      "webhooks", "webhook-scope", "webhooks-reachable", "admission-policies",
                      "reconciler-peers"):
            assert (check, scope) in checks
    assert ("ca-trust", "a->b") in checks and ("ca-trust", "b->a") in checks


def test_the_dlm_guard_command_exits_0_on_the_healthy_pair(pair):
    done = subprocess.run([sys.executable, "-m", "dlm_guard", "doctor",
                           "--cluster", f"a={pair.a.cluster.kubeconfig}",
                           "--cluster", f"b={pair.b.cluster.kubeconfig}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "20 ok, 0 warn, 0 fail"


def test_text_output_has_one_line_per_check_and_the_fix(pair, capsys):
    pair.b.put_kubevirt(kubevirt_spec(gate=False), kubevirt_status())
    try:
        code = cli.main(["doctor", "--cluster", f"a={pair.a.cluster.kubeconfig}",
                         "--cluster", f"b={pair.b.cluster.kubeconfig}"])
        lines = capsys.readouterr().out.splitlines()
    finally:
        pair.healthy()
    assert code == 1
    gate = next(i for i, line in enumerate(lines) if line.startswith("FAIL b") and
                "feature-gate:" in line)
    assert "fix: add DecentralizedLiveMigration to spec.configuration.developerConfiguration" \
           ".featureGates" in lines[gate + 1]
    assert lines[-1].endswith("1 fail")
    assert sum(1 for line in lines if line.startswith(("OK ", "WARN ", "FAIL "))) == 20


def _gate_unknown(p: Pair) -> None:
    p.b.put_kubevirt(kubevirt_spec(gate=False),
                     kubevirt_status("v1.9.0-beta.0-1264-gd923fdb815"))


def _webhook_without_scope(p: Pair) -> None:
    put_webhooks(p.a, webhook_configurations(p.server, scoped=False))


def _webhook_unreachable(p: Pair) -> None:
    put_webhooks(p.a, webhook_configurations(p.server, url_base="https://127.0.0.1:9"))


def _webhook_by_missing_service(p: Pair) -> None:
    configurations = webhook_configurations(p.server)
    for body in configurations.values():
        for entry in body["webhooks"]:
            entry["clientConfig"] = {"service": {"namespace": GUARD_NS, "name": "dlm-guard",
                                                 "path": "/validate"},
                                     "caBundle": entry["clientConfig"]["caBundle"]}
    put_webhooks(p.a, configurations)


def _no_validating_webhook(p: Pair) -> None:
    p.a.admission.delete_validating_webhook_configuration("dlm-guard")


def _policy_without_binding(p: Pair) -> None:
    p.a.admission.create_validating_admission_policy(k8s.V1ValidatingAdmissionPolicy.model_validate({
        "metadata": {"name": "dlm-guard-migration-id"},
        "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
            "apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["virtualmachineinstancemigrations"]}]},
            "validations": [{"expression": "true"}]}}))


def _no_peer_secret(p: Pair) -> None:
    p.a.core.delete_namespaced_secret("b", GUARD_NS)


def _peer_secret_elsewhere(p: Pair) -> None:
    _no_peer_secret(p)
    peer_secret(p.a, p.a, "self")  # points at a itself, not at b


STAGES: dict[str, tuple[Callable[[Pair], object], set[tuple[str, str, str]]]] = {
    "gate off": (lambda p: p.b.put_kubevirt(kubevirt_spec(gate=False), kubevirt_status()),
                 {("feature-gate", "b", "FAIL")}),
    "gate cannot tell (main build)": (_gate_unknown, {("feature-gate", "b", "WARN"),
                                                      ("kubevirt-version", "b", "WARN")}),
    "gate disabled": (lambda p: p.a.put_kubevirt(
        {**kubevirt_spec(gate=False), "configuration": {"developerConfiguration": {
            "disabledFeatureGates": ["DecentralizedLiveMigration"]}}}, kubevirt_status()),
        {("feature-gate", "a", "FAIL")}),
    "v1.6.1": (lambda p: p.a.put_kubevirt(kubevirt_spec(), kubevirt_status("v1.6.1")),
               {("kubevirt-version", "a", "WARN")}),
    "v1.5.3": (lambda p: p.a.put_kubevirt(kubevirt_spec(), kubevirt_status("v1.5.3")),
               {("kubevirt-version", "a", "FAIL")}),
    "v1.8.2 without the gate listed": (
        lambda p: p.a.put_kubevirt(kubevirt_spec(gate=False), kubevirt_status("v1.8.2")),
        {("feature-gate", "a", "FAIL")}),
    "latest": (lambda p: p.a.put_kubevirt(kubevirt_spec(), kubevirt_status("latest")),
               {("kubevirt-version", "a", "WARN")}),
    "default CA rotation": (lambda p: p.a.put_kubevirt(kubevirt_spec(rotation=None),
                                                       kubevirt_status()),
                            {("ca-rotation", "a", "FAIL"), ("ca-rotation", "b", "FAIL")}),
    "bad CA duration": (lambda p: p.a.put_kubevirt(
        kubevirt_spec(rotation={"ca": {"duration": "2d"}}), kubevirt_status()),
        {("ca-rotation", "a", "FAIL")}),
    "peer CA missing": (lambda p: p.a.set_ca_bundle(p.bundles["a"].split("-----END CERTIFICATE"
                                                                          "-----\n")[0] +
                                                     "-----END CERTIFICATE-----\n"),
                        {("ca-trust", "a->b", "FAIL")}),
    "no kubevirt-ca": (lambda p: p.b.core.delete_namespaced_config_map("kubevirt-ca", NS),
                       {("ca-trust", "a->b", "FAIL"), ("ca-trust", "b->a", "FAIL")}),
    "no sync addresses": (lambda p: p.b.put_kubevirt(kubevirt_spec(),
                                                     kubevirt_status(address="")),
                          {("sync-addresses", "b", "FAIL")}),
    "webhook without matchConditions": (_webhook_without_scope,
                                        {("webhook-scope", "a", "FAIL")}),
    "webhook URL unreachable": (_webhook_unreachable, {("webhooks-reachable", "a", "FAIL")}),
    "webhook Service missing": (_webhook_by_missing_service,
                                {("webhooks-reachable", "a", "FAIL")}),
    "validating webhook missing": (_no_validating_webhook, {("webhooks", "a", "FAIL")}),
    "CEL policy without binding": (_policy_without_binding,
                                   {("admission-policies", "a", "WARN")}),
    "no peer Secret": (_no_peer_secret, {("reconciler-peers", "a", "WARN")}),
    "peer Secret for another cluster": (_peer_secret_elsewhere,
                                        {("reconciler-peers", "a", "WARN")}),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_staged_condition_is_reported(pair, capsys, stage):
    apply, expected = STAGES[stage]
    apply(pair)
    try:
        code, results = doctor(pair, capsys)
    finally:
        if stage == "no kubevirt-ca":
            pair.b.core.create_namespaced_config_map(NS, k8s.V1ConfigMap.model_validate({
                "metadata": {"name": "kubevirt-ca", "namespace": NS}, "data": {}}))
        pair.healthy()
    assert only_problems(results) == expected, [r for r in results if r["status"] != "OK"]
    assert code == (1 if any(status == "FAIL" for _, _, status in expected) else 0)
    for result in results:
        if result["status"] != "OK":
            assert result["message"]


def test_an_unreadable_kubevirt_cr_is_cannot_tell(pair, capsys, tmp_path):
    """A user that may read nothing but kubevirt-ca: doctor says what it cannot tell."""
    kubeconfig = limited_kubeconfig(pair.a, tmp_path)
    code, results = doctor(pair, capsys, a_spec=f"a={kubeconfig}")
    a = {r["check"]: r for r in results if r["scope"] == "a"}
    for check in ("feature-gate", "kubevirt-version", "sync-addresses", "ca-rotation",
                  "webhooks", "reconciler-peers"):
        assert a[check]["status"] == "WARN" and "cannot tell" in a[check]["message"], check
    assert code == 0


def limited_kubeconfig(site: Site, directory: Path) -> Path:
    """A user (client certificate from the cluster's own CA) who may only get kubevirt-ca."""
    pki_dir = site.cluster.workdir / "pki"
    key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = Issued(x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes()), key)
    user = client_cert(ca, "doctor-limited")
    rbac = k8s.RbacAuthorizationV1Api(site.api)
    rbac.create_namespaced_role(NS, k8s.V1Role.model_validate({
        "metadata": {"name": "doctor-limited"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                   "resourceNames": ["kubevirt-ca"], "verbs": ["get"]}]}))
    rbac.create_namespaced_role_binding(NS, k8s.V1RoleBinding.model_validate({
        "metadata": {"name": "doctor-limited"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "doctor-limited"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": "doctor-limited"}]}))
    return kubeconfig.write(directory / "limited.kubeconfig", kubeconfig.render(
        "a", site.cluster.server, cert_pem(ca.cert), cert_pem(user.cert), key_pem(user.key)))


@pytest.mark.parametrize("spec", ["a=/nonexistent/kubeconfig", "a"])
def test_bad_input_or_unreadable_config_exits_2(pair, capsys, spec):
    code = cli.main(["doctor", "--cluster", spec, "--cluster", f"b={pair.b.cluster.kubeconfig}"])
    assert code == 2
    assert "dlm-guard doctor:" in capsys.readouterr().err


def test_an_unreachable_api_server_exits_2(pair, capsys, tmp_path):
    config = yaml.safe_load(pair.a.cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(json.dumps(config))
    code = cli.main(["doctor", "--cluster", f"a={dead}", "--cluster",
                     f"b={pair.b.cluster.kubeconfig}", "--timeout", "2"])
    assert code == 2
    assert "cluster a:" in capsys.readouterr().err
