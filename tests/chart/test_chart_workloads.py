"""Security and availability properties of every rendered workload, Service and PDB."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from chart_support import (
    FULL_VALUES,
    Manifest,
    containers,
    of_kind,
    one,
    pod_specs,
    render,
)

from dlm_guard.cli import build_parser
from reconciler.settings import Settings

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}

VARIANTS = {
    "default": ([], []),
    "full": ([FULL_VALUES], []),
    "offline": ([], ["webhook.offline=true"]),
    "openshift-uids": ([], ["securityContext.runAsUser=null", "securityContext.runAsGroup=null"]),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def docs(request: pytest.FixtureRequest, helm: Path) -> list[Manifest]:
    files, sets = VARIANTS[request.param]
    return render(helm, files, sets)


def test_every_pod_meets_the_restricted_pod_security_standard(docs: list[Manifest]) -> None:
    specs = pod_specs(docs)
    assert len(specs) == 2
    for name, spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod_sc.get("runAsUser", 1) != 0, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (name, key)
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, (name, volume)
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["privileged"] is False, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (name, c["name"])
            assert not c.get("ports") or all("hostPort" not in p for p in c["ports"])


def test_every_container_has_requests_and_limits(docs: list[Manifest]) -> None:
    for name, spec in pod_specs(docs):
        for c in containers(spec):
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def test_writable_tmp_is_the_only_writable_path(docs: list[Manifest]) -> None:
    # The kubernetes client writes inline kubeconfig certificates to temp files.
    for name, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(spec):
            writable = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            assert [m["mountPath"] for m in writable] == ["/tmp"], name
            assert "emptyDir" in volumes[writable[0]["name"]]


def test_service_account_tokens_are_mounted_only_where_needed(docs: list[Manifest]) -> None:
    for sa in of_kind(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    webhook = one(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]
    reconciler = one(docs, "Deployment", "-reconciler")["spec"]["template"]["spec"]
    offline = "--offline" in webhook["containers"][0]["args"]
    assert webhook["automountServiceAccountToken"] is (not offline)
    assert reconciler["automountServiceAccountToken"] is True


def test_images_are_pinned(docs: list[Manifest]) -> None:
    for name, spec in pod_specs(docs):
        for c in containers(spec):
            image = c["image"]
            assert "@sha256:" in image or (":" in image.rsplit("/", 1)[-1]
                                           and not image.endswith(":latest")), (name, image)


def _args(docs: list[Manifest], suffix: str) -> list[str]:
    return one(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]["args"]


def test_container_args_are_accepted_by_the_real_cli(docs: list[Manifest]) -> None:
    """The chart is built against `dlm-guard serve` / `reconcile` flags: parse them for real."""
    parser = build_parser()
    for suffix in ("-webhook", "-reconciler"):
        args = _args(docs, suffix)
        parsed = parser.parse_args(args)
        assert parsed.command == args[0], shlex.join(args)


def test_webhook_deployment(docs: list[Manifest]) -> None:
    deployment = one(docs, "Deployment", "-webhook")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    port = container["ports"][0]
    assert port["name"] == "https"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "https", "HTTPS")
    args = container["args"]
    assert args[0] == "serve"
    for flag in ("--tls-cert=/etc/dlm-guard/tls/tls.crt", "--tls-key=/etc/dlm-guard/tls/tls.key",
                 "--config=/etc/dlm-guard/policy/policy.yaml", f"--port={port['containerPort']}"):
        assert flag in args
    constraints = pod["topologySpreadConstraints"]
    assert constraints
    labels = spec["template"]["metadata"]["labels"]
    for c in constraints:
        selector = c["labelSelector"]["matchLabels"]
        assert selector.items() <= labels.items()


def test_reconciler_deployment(docs: list[Manifest]) -> None:
    spec = one(docs, "Deployment", "-reconciler")["spec"]
    assert spec["replicas"] >= 2
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "reconcile"
    assert "--leader-elect" in args
    assert not any(a.startswith("--cluster") for a in args)  # in-pod mode: `local` + Secrets
    metrics_port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert f"--metrics-port={metrics_port['containerPort']}" in args
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"


def test_default_ports(default_docs: list[Manifest]) -> None:
    webhook = one(default_docs, "Deployment", "-webhook")["spec"]["template"]["spec"]
    assert webhook["containers"][0]["ports"][0]["containerPort"] == 8443
    reconciler = one(default_docs, "Deployment", "-reconciler")["spec"]["template"]["spec"]
    assert reconciler["containers"][0]["ports"][0]["containerPort"] == 9090
    assert one(default_docs, "Deployment", "-webhook")["spec"]["replicas"] == 2
    assert one(default_docs, "Deployment", "-reconciler")["spec"]["replicas"] == 2


def test_services_select_their_own_pods_only(docs: list[Manifest]) -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in of_kind(docs, "Deployment")}
    webhook_service = one(docs, "Service", "-webhook")
    assert webhook_service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    metrics_service = one(docs, "Service", "-reconciler-metrics")
    for service, owner in ((webhook_service, "-webhook"), (metrics_service, "-reconciler")):
        selector = service["spec"]["selector"]
        matched = [name for name, labels in pods.items() if selector.items() <= labels.items()]
        assert len(matched) == 1 and matched[0].endswith(owner), (service["metadata"]["name"],
                                                                 matched)


def test_pdbs_select_their_workload_and_allow_a_drain(docs: list[Manifest]) -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    pdbs = of_kind(docs, "PodDisruptionBudget")
    assert len(pdbs) == 2
    for pdb in pdbs:
        target = deployments[pdb["metadata"]["name"]]
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        replicas = target["spec"]["replicas"]
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < replicas
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1


def test_policy_configmap_is_what_the_webhook_loads(docs: list[Manifest]) -> None:
    import yaml

    from webhook.policy import parse_policy

    configmap = one(docs, "ConfigMap", "-policy")
    policy = parse_policy(yaml.safe_load(configmap["data"]["policy.yaml"]), "chart")
    assert {"kube-system", "kube-node-lease", "dlm-guard-system"} <= policy.exempt_namespaces


def test_full_policy_values_reach_the_policy(full_docs: list[Manifest]) -> None:
    import yaml

    from dlm_guard.domain import Rule
    from webhook.policy import Mode, parse_policy

    configmap = one(full_docs, "ConfigMap", "-policy")
    policy = parse_policy(yaml.safe_load(configmap["data"]["policy.yaml"]), "chart")
    assert policy.mode(Rule.PERSISTENT_STATE) is Mode.ENFORCE
    assert policy.mode(Rule.FEATURE_GATE) is Mode.WARN
    assert policy.defaults.restore_run_strategy == "Halted"
    assert {"sandbox", "monitoring", "cert-manager"} <= policy.exempt_namespaces


def test_webhook_pods_roll_when_the_policy_changes(helm: Path) -> None:
    def checksum(*sets: str) -> str:
        deployment = one(render(helm, sets=sets), "Deployment", "-webhook")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]

    assert checksum() != checksum("policy.rules.persistent-state=enforce")


def test_lease_rbac_matches_the_reconcilers_lease_name(default_docs: list[Manifest]) -> None:
    role = next(r for r in of_kind(default_docs, "Role")
                if r["metadata"]["namespace"] == "dlm-guard-system"
                and r["metadata"]["name"].endswith("-reconciler"))
    named = [rule for rule in role["rules"] if "leases" in rule["resources"]
             and rule.get("resourceNames")]
    assert named[0]["resourceNames"] == [Settings().lease_name]
