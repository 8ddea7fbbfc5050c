"""The optional objects: NetworkPolicies, ServiceMonitors, PrometheusRule, peers, peer access."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml
from chart_support import NAMESPACE, Manifest, of_kind, one, render

METRIC_NAMES = {
    "DlmGuardWebhookSlow": "dlm_guard_admission_duration_seconds_bucket",
    "DlmGuardServingCertificateExpiring": "dlm_guard_certificate_expiry_timestamp_seconds",
    "DlmGuardPeerCAExpiring": "dlm_guard_peer_ca_latest_expiry_timestamp_seconds",
    "DlmGuardGCErrors": "dlm_guard_gc_errors_total",
}


def _alerts(docs: list[Manifest]) -> dict[str, dict]:
    rule = one(docs, "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_prometheus_rule_alerts(full_docs: list[Manifest]) -> None:
    alerts = _alerts(full_docs)
    for alert, metric in METRIC_NAMES.items():
        assert metric in alerts[alert]["expr"], alert
        # Scoped to this release's namespace, so two installs never alert for each other.
        assert f'namespace="{NAMESPACE}"' in alerts[alert]["expr"], alert
        assert alerts[alert]["labels"]["team"] == "platform"
        assert alerts[alert]["labels"]["severity"] in ("warning", "critical")
    slow = alerts["DlmGuardWebhookSlow"]
    assert "histogram_quantile(0.99" in slow["expr"] and slow["expr"].strip().endswith("> 0.5")
    assert slow["for"] == "5m"
    for alert in ("DlmGuardServingCertificateExpiring", "DlmGuardPeerCAExpiring"):
        assert alerts[alert]["expr"].strip().endswith("< 43200"), alert
    # The earliest expiry dips below a day in every rotation overlap: never alert on it.
    peer_ca = alerts["DlmGuardPeerCAExpiring"]
    assert "dlm_guard_peer_ca_expiry_timestamp_seconds" not in peer_ca["expr"]
    assert peer_ca["for"] == "15m"


def test_default_thresholds(helm: Path) -> None:
    alerts = _alerts(render(helm, sets=["metrics.prometheusRule.enabled=true"]))
    assert alerts["DlmGuardWebhookSlow"]["expr"].strip().endswith("> 1")
    assert alerts["DlmGuardPeerCAExpiring"]["expr"].strip().endswith("< 86400")
    assert alerts["DlmGuardServingCertificateExpiring"]["expr"].strip().endswith("< 86400")


def test_service_monitors(full_docs: list[Manifest]) -> None:
    monitors = {m["metadata"]["name"]: m for m in of_kind(full_docs, "ServiceMonitor")}
    webhook = monitors["dlm-guard-full-webhook"]["spec"]["endpoints"][0]
    assert (webhook["port"], webhook["scheme"], webhook["path"]) == ("https", "https", "/metrics")
    reconciler = monitors["dlm-guard-full-reconciler"]["spec"]["endpoints"][0]
    assert (reconciler["port"], reconciler["scheme"]) == ("metrics", "http")
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_webhook_scrape_verifies_with_the_generated_ca(helm: Path) -> None:
    docs = render(helm, sets=["metrics.serviceMonitor.enabled=true"])
    monitor = next(m for m in of_kind(docs, "ServiceMonitor")
                   if m["metadata"]["name"].endswith("-webhook"))
    tls = monitor["spec"]["endpoints"][0]["tlsConfig"]
    assert tls["ca"]["secret"] == {"name": "guard-dlm-guard-webhook-tls", "key": "ca.crt"}
    assert tls["serverName"] == f"guard-dlm-guard-webhook.{NAMESPACE}.svc"
    assert "insecureSkipVerify" not in tls


def test_network_policies(full_docs: list[Manifest]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(full_docs, "NetworkPolicy")}
    webhook = policies["dlm-guard-full-webhook"]
    assert webhook["policyTypes"] == ["Ingress", "Egress"]
    assert webhook["ingress"][0]["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert webhook["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    for spec in policies.values():
        dns, api = spec["egress"]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert {p["port"] for p in api["ports"]} == {443, 6443}
        assert [t["ipBlock"]["cidr"] for t in api["to"]] == ["10.0.0.1/32", "192.0.2.0/24"]
    reconciler = policies["dlm-guard-full-reconciler"]
    assert reconciler["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_offline_webhook_gets_no_api_egress(helm: Path) -> None:
    docs = render(helm, sets=["networkPolicy.enabled=true", "webhook.offline=true"])
    webhook = next(p for p in of_kind(docs, "NetworkPolicy")
                   if p["metadata"]["name"].endswith("-webhook"))
    ports = {p["port"] for rule in webhook["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53}


def test_peer_secrets_follow_the_reconcilers_format(full_docs: list[Manifest]) -> None:
    """reconciler/clusters.py: label dlm-guard.io/peer = cluster name, key `kubeconfig`,
    optional `kubevirt-namespace`."""
    from reconciler.clusters import peer_from_secret
    from reconciler.settings import Settings

    secrets = {s["metadata"]["name"]: s for s in of_kind(full_docs, "Secret")
               if "dlm-guard.io/peer" in s["metadata"]["labels"]}
    assert set(secrets) == {"dlm-guard-full-peer-east", "dlm-guard-full-peer-west"}
    east = peer_from_secret(secrets["dlm-guard-full-peer-east"], Settings())
    assert (east.config.name, east.config.kubevirt_namespace) == ("east", "kubevirt")
    assert east.kubeconfig["current-context"] == "east"
    west = peer_from_secret(secrets["dlm-guard-full-peer-west"],
                            Settings(kubevirt_namespace="openshift-cnv"))
    assert (west.config.name, west.config.kubevirt_namespace) == ("west", "openshift-cnv")
    kubeconfig = yaml.safe_load(base64.b64decode(secrets["dlm-guard-full-peer-west"]["data"]
                                                 ["kubeconfig"]))
    assert kubeconfig["clusters"][0]["name"] == "west"


def test_peer_access_is_read_only(full_docs: list[Manifest]) -> None:
    roles = [r for r in of_kind(full_docs, "ClusterRole", "Role")
             if r["metadata"]["name"].endswith("-peer-reader")]
    assert len(roles) == 2
    for role in roles:
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
            assert "secrets" not in rule["resources"]
    token = one(full_docs, "Secret", "-peer-reader-token")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == (
        "dlm-guard-full-peer-reader")


def test_ca_trust_flapping_alert(full_docs: list[Manifest]) -> None:
    flapping = _alerts(full_docs)["DlmGuardCATrustFlapping"]
    assert "increase(dlm_guard_ca_readded_total{" in flapping["expr"]
    assert f'namespace="{NAMESPACE}"' in flapping["expr"]
    assert "sum by (cluster, peer)" in flapping["expr"]
    assert flapping["expr"].strip().endswith("> 0")
    # One re-add already means virt-operator dropped a merged CA: no `for` to sit out.
    assert "for" not in flapping
    assert flapping["labels"] == {"severity": "warning", "team": "platform"}
    description = flapping["annotations"]["description"]
    assert "renewBefore >= duration / 2" in description
    assert "spec.certificateRotateStrategy.selfSigned.ca" in description


def test_the_reconciler_reads_kubevirt_crs_in_the_kubevirt_namespace_only(
        default_docs: list[Manifest]) -> None:
    kubevirt_rules = [(role["kind"], role["metadata"].get("namespace"), rule)
                      for role in of_kind(default_docs, "Role", "ClusterRole")
                      if role["metadata"]["name"].endswith("-reconciler")
                      for rule in role["rules"] if "kubevirts" in rule["resources"]]
    assert kubevirt_rules == [("Role", "kubevirt", {
        "apiGroups": ["kubevirt.io"], "resources": ["kubevirts"], "verbs": ["get", "list"]})]
