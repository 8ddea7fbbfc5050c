"""`python -m controlplane demo`: dlm-guard guarding two real local clusters, narrated.

Two clusters (`source`, `target`) with the KubeVirt CRDs, a KubeVirt CR with the
DecentralizedLiveMigration gate on and a real CA in `kubevirt-ca` in each; one `dlm-guard serve`
per cluster, registered as its admission webhooks. Then the documented decentralized-migration
example is applied with kubectl: one rejection, the mutations, and one `dlm-guard reconcile
--once` pass that puts each cluster's CA into its peer's `kubevirt-external-ca` inbox.

Nothing runs KubeVirt: the demo writes the VMIs and the KubeVirt CR status that KubeVirt would.
Everything stays up until Ctrl-C / SIGTERM (or `--exit-after-setup`), then is torn down.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certs.bundle import fingerprint, parse_bundle
from certs.generate import cert_pem, make_ca
from controlplane.binaries import Binaries
from controlplane.cluster import Cluster, ClusterStartError, start_clusters
from controlplane.crds import crds_dir, install_crds_on
from controlplane.kubectl import KubectlError, kubectl
from controlplane.process import Launcher
from controlplane.webhooks import (
    WebhookError,
    WebhookServer,
    register_webhooks,
    start_webhook_server,
)

SOURCE, TARGET = "source", "target"
KUBEVIRT_NS = "kubevirt"
VM = "example-decentralized-lm-vm"
# What the target's synchronization controller would publish (docs/kubevirt-facts.md, "connectURL":
# pod IP + port 9185).
SYNC_ADDRESS = "10.244.1.17:9185"
ID_LABEL, ROLE_LABEL = "dlm-guard.io/migration-id", "dlm-guard.io/role"
READY_LINE = "demo ready"


class DemoError(RuntimeError):
    """A step did not behave as dlm-guard promises; the demo stops and tears down."""


# ----------------------------------------------------------------------------- manifests

_TEMPLATE = """\
  template:
    spec:
      architecture: amd64
      domain:
        devices:
          autoattachGraphicsDevice: false
          disks:
          - disk:
              bus: virtio
            name: disk0{extra_disk}
          interfaces:
          - masquerade: {{}}
            name: default
        machine:
          type: q35
        resources:
          requests:
            memory: 128Mi
      networks:
      - name: default
        pod: {{}}
      volumes:
      - dataVolume:
          name: example-decentralized-lm-vm-dv
        name: disk0{extra_volume}
"""
_SHARED_DISK = """
          - disk:
              bus: virtio
            name: shared
            shareable: true"""
_SHARED_VOLUME = """
      - persistentVolumeClaim:
          claimName: shared-pvc
        name: shared"""

EXAMPLES: dict[str, str] = {
    "kubevirt.yaml": f"""\
# What installing KubeVirt leaves (both clusters), with the feature gate on.
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata:
  name: kubevirt
  namespace: {KUBEVIRT_NS}
spec:
  configuration:
    developerConfiguration:
      featureGates: [DecentralizedLiveMigration]
""",
    "kubevirt-external-ca.yaml": f"""\
# The inbox each cluster reads peer CAs from; virt-operator merges it into kubevirt-ca.
apiVersion: v1
kind: ConfigMap
metadata:
  name: kubevirt-external-ca
  namespace: {KUBEVIRT_NS}
data:
  ca-bundle: ""
""",
    "target-vm-shareable-disk.yaml": f"""\
# The target VM with a shareable disk: decentralized migration cannot carry it.
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  annotations:
    kubevirt.io/restore-run-strategy: Always
  name: {VM}
spec:
  runStrategy: WaitAsReceiver
""" + _TEMPLATE.format(extra_disk=_SHARED_DISK, extra_volume=_SHARED_VOLUME),
    "target-vm.yaml": f"""\
# The receiving VM (target cluster). kubevirt.io/restore-run-strategy is left out on purpose:
# without it the VM would stay WaitAsReceiver after the migration; dlm-guard fills it in.
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {VM}
spec:
  runStrategy: WaitAsReceiver
""" + _TEMPLATE.format(extra_disk="", extra_volume=""),
    "target-vmi.yaml": f"""\
# Played by the demo: the VMI KubeVirt starts for a WaitAsReceiver VM.
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  annotations:
    kubevirt.io/create-migration-target: "true"
  name: {VM}
spec:
  domain:
    devices: {{}}
status:
  phase: WaitingForSync
""",
    "target-vmim.yaml": f"""\
# Target side of the pair; migrationID left empty: dlm-guard generates one and labels the VMIM.
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: example-target-migration
spec:
  receive:
    migrationID: ""
  vmiName: {VM}
""",
    "source-vm.yaml": f"""\
# The source VM of the documented example (source cluster).
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {VM}
spec:
  runStrategy: Always
""" + _TEMPLATE.format(extra_disk="", extra_volume=""),
    "source-vmi.yaml": f"""\
# Played by the demo: the running VMI of the source VM.
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {VM}
spec:
  domain:
    devices: {{}}
status:
  phase: Running
""",
}


def source_vmim(migration_id: str, connect_url: str) -> str:
    return f"""\
# Source side of the pair: the target's migrationID, and connectURL from the target KubeVirt
# CR's status.synchronizationAddresses (a gRPC host:port, not an https:// URL).
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: example-source-migration
spec:
  sendTo:
    connectURL: "{connect_url}"
    migrationID: {migration_id}
  vmiName: {VM}
"""


def write_examples(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in EXAMPLES}
    for name, path in paths.items():
        path.write_text(EXAMPLES[name])
    return paths


# ----------------------------------------------------------------------------- narration


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n==> {title}")


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())


def run(cluster: Cluster, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Show `kubectl --context NAME ARGS`, run it, show its output; DemoError if unexpected."""
    say(f"$ kubectl --context {cluster.name} {shlex.join(args)}")
    result = kubectl(cluster, *args, check=False)
    output = (result.stdout + result.stderr).strip()
    if output:
        say(_indented(output))
    if (result.returncode == 0) != expect_ok:
        verdict = "failed" if expect_ok else "was accepted, but dlm-guard should reject it"
        raise DemoError(f"kubectl {shlex.join(args)} {verdict}")
    return result


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)
    return found


# ----------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Site:
    """One demo cluster and the dlm-guard server its API server calls."""

    cluster: Cluster
    server: WebhookServer
    ca_file: Path  # this cluster's stand-in for KubeVirt's own CA (in kubevirt-ca)


def _kubevirt_ca(cluster: Cluster, directory: Path) -> tuple[Path, Path]:
    """A real CA standing in for KubeVirt's own, and the kubevirt-ca ConfigMap holding it."""
    now = datetime.now(UTC)
    ca = make_ca(now - timedelta(hours=1), now + timedelta(days=7),
                 common_name=f"kubevirt.io@{cluster.name}")
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, configmap = directory / "kubevirt-ca.crt", directory / "kubevirt-ca.json"
    ca_file.write_bytes(cert_pem(ca.cert))
    configmap.write_text(json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubevirt-ca", "namespace": KUBEVIRT_NS},
        "data": {"ca-bundle": cert_pem(ca.cert).decode()}}))
    return ca_file, configmap


def _kubevirt(cluster: Cluster, examples: dict[str, Path], directory: Path) -> Path:
    """What installing KubeVirt leaves: namespace, KubeVirt CR (gate on, status as
    virt-operator writes it), kubevirt-ca with a real CA and an empty inbox. Returns the CA."""
    ca_file, configmap = _kubevirt_ca(cluster, directory)
    namespace = directory / "kubevirt-namespace.json"
    namespace.write_text(json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUBEVIRT_NS}}))
    files = [namespace, examples["kubevirt.yaml"], configmap, examples["kubevirt-external-ca.yaml"]]
    # One kubectl call (it applies files in order, the namespace first): each call costs a
    # process start and, on a fresh cache, API discovery.
    kubectl(cluster, "apply", *(arg for f in files for arg in ("-f", str(f))))
    status = {"status": {"phase": "Deployed", "observedKubeVirtVersion": "v1.7.0",
                         "synchronizationAddresses": [SYNC_ADDRESS]}}
    kubectl(cluster, "patch", "kubevirt", "kubevirt", "-n", KUBEVIRT_NS, "--subresource=status",
            "--type=merge", "-p", json.dumps(status))
    return ca_file


def _guard_all(clusters: Sequence[Cluster], root: Path, examples: dict[str, Path],
               stack: ExitStack) -> list[Site]:
    """KubeVirt stand-ins and a registered dlm-guard on every cluster, all at once.

    The servers start (a couple of seconds of imports) while KubeVirt's objects are made;
    `stack` stops every server, even one still starting when something fails.
    """
    launcher = Launcher()
    stack.callback(launcher.stop_all)
    with ThreadPoolExecutor(max_workers=2 * len(clusters)) as pool:
        servers = [pool.submit(start_webhook_server, c.kubeconfig, root / "webhook",
                               name=f"dlm-guard-{c.name}", launcher=launcher) for c in clusters]
        cas = [pool.submit(_kubevirt, c, examples, root / c.name) for c in clusters]
        sites = [Site(c, server.result(), ca.result())
                 for c, server, ca in zip(clusters, servers, cas, strict=True)]
        registered = [pool.submit(register_webhooks, site.cluster, site.server.url_base,
                                  site.server.ca_pem) for site in sites]
        for future in registered:
            future.result()
    return sites


# ----------------------------------------------------------------------------- the show


def show_rejection(target: Cluster, examples: dict[str, Path]) -> None:
    step("A target VM with a shareable disk: rejected (decentralized migration cannot move it)")
    run(target, "apply", "-f", str(examples["target-vm-shareable-disk.yaml"]), expect_ok=False)


def show_vm_mutation(target: Cluster, examples: dict[str, Path]) -> None:
    step("The clean target VM, without kubevirt.io/restore-run-strategy: accepted, annotated")
    run(target, "apply", "-f", str(examples["target-vm.yaml"]))
    run(target, "get", "vm", VM, "-o",
        r"jsonpath=restore-run-strategy: {.metadata.annotations.kubevirt\.io/restore-run-strategy}")
    annotations = get_json(target, "vm", VM)["metadata"].get("annotations") or {}
    if "kubevirt.io/restore-run-strategy" not in annotations:
        raise DemoError("the target VM came back without kubevirt.io/restore-run-strategy")


def show_vmim_mutation(target: Cluster, examples: dict[str, Path]) -> str:
    """The target VMIM gets a generated migrationID and labels; returns the ID."""
    step("KubeVirt (played by the demo) starts the receiving VMI")
    run(target, "apply", "-f", str(examples["target-vmi.yaml"]))
    step("A target VMIM with an empty migrationID: dlm-guard generates one and adds labels")
    vmim = examples["target-vmim.yaml"]
    _until_admitted(target, vmim)  # the webhook learns about the VMI from a watch
    run(target, "apply", "-f", str(vmim))
    run(target, "get", "vmim", "example-target-migration", "-o", "jsonpath={.spec}")
    run(target, "get", "vmim", "-L", ID_LABEL, "-L", ROLE_LABEL)
    stored = get_json(target, "vmim", "example-target-migration")
    migration_id = str(stored["spec"]["receive"]["migrationID"])
    if not migration_id or stored["metadata"].get("labels", {}).get(ID_LABEL) != migration_id:
        raise DemoError("the target VMIM has no generated migrationID or pairing labels")
    return migration_id


def _until_admitted(cluster: Cluster, manifest: Path, timeout: float = 10.0) -> None:
    """Server-side dry runs (nothing stored) until the webhook's cache has caught up."""
    deadline = time.monotonic() + timeout
    while kubectl(cluster, "apply", "--dry-run=server", "-f", str(manifest),
                  check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)


def show_source(source: Cluster, target: Cluster, examples: dict[str, Path],
                migration_id: str, root: Path) -> None:
    step("The source side: VM and running VMI, then the source VMIM with the same migrationID")
    run(source, "apply", "-f", str(examples["source-vm.yaml"]))
    run(source, "apply", "-f", str(examples["source-vmi.yaml"]))
    addresses = get_json(target, "kubevirt", "kubevirt", "-n", KUBEVIRT_NS)["status"]
    manifest = root / "examples" / "source-vmim.yaml"
    manifest.write_text(source_vmim(migration_id, addresses["synchronizationAddresses"][0]))
    _until_admitted(source, manifest)
    run(source, "apply", "-f", str(manifest))
    run(source, "get", "vmim", "-L", ID_LABEL, "-L", ROLE_LABEL)


def show_trust(sites: Sequence[Site]) -> None:
    step("dlm-guard reconcile --once: each cluster's inbox gets its peer's KubeVirt CA")
    argv = [sys.executable, "-m", "dlm_guard", "reconcile", "--once", "--metrics-port", "0",
            "--log-level", "warning"]
    for site in sites:
        argv += ["--cluster", f"{site.cluster.name}={site.cluster.kubeconfig}",
                 "--manage", site.cluster.name]
    say("$ dlm-guard " + shlex.join(argv[3:]))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.stdout.strip() or result.stderr.strip():
        say(_indented(result.stdout + result.stderr))
    if result.returncode != 0:
        raise DemoError(f"dlm-guard reconcile --once exited with {result.returncode}")
    for site, peer in zip(sites, [*sites[1:], sites[0]], strict=True):
        _show_inbox(site, peer)


def _show_inbox(site: Site, peer: Site) -> None:
    cm = get_json(site.cluster, "configmap", "kubevirt-external-ca", "-n", KUBEVIRT_NS)
    inbox = parse_bundle((cm.get("data") or {}).get("ca-bundle", "")).certificates
    expected = parse_bundle(peer.ca_file.read_text()).certificates
    names = ", ".join(c.subject.rfc4514_string() for c in inbox) or "nothing"
    say(f"    {site.cluster.name}/kubevirt-external-ca now holds: {names}")
    if [fingerprint(c) for c in inbox] != [fingerprint(c) for c in expected]:
        raise DemoError(f"{site.cluster.name}'s inbox does not hold {peer.cluster.name}'s CA")


def show_access(sites: Sequence[Site], elapsed: float, waiting: bool) -> None:
    step("Try it yourself")
    for site in sites:
        c = site.cluster
        say(f"    {c.name}: {c.server}  kubeconfig {c.kubeconfig}\n"
            f"        dlm-guard {site.server.url_base}  log {site.server.log}")
    say(f"    examples: {sites[0].cluster.workdir.parent / 'examples'}")
    say("export KUBECONFIG=" + ":".join(str(s.cluster.kubeconfig) for s in sites))
    say(f"export KUBECONFIG_SOURCE={sites[0].cluster.kubeconfig}")
    say(f"export KUBECONFIG_TARGET={sites[1].cluster.kubeconfig}")
    say(f"    e.g. kubectl --context {TARGET} apply -f "
        f"{sites[0].cluster.workdir.parent / 'examples' / 'target-vm-shareable-disk.yaml'}")
    tail = "Ctrl-C to stop and tear down" if waiting else "tearing down (--exit-after-setup)"
    say(f"\n{READY_LINE} in {elapsed:.1f}s; {tail}")


# ----------------------------------------------------------------------------- entry point


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path,
                        help="keep logs, kubeconfigs and examples here (default: temp, removed)")
    parser.add_argument("--crds-dir", type=Path,
                        help="CRD YAMLs (default: $DLM_GUARD_CRDS_DIR or ours)")
    parser.add_argument("--exit-after-setup", action="store_true",
                        help="tear down right after the show instead of waiting for Ctrl-C")
    parser.add_argument("--no-build", action="store_true", help="fail instead of running build.sh")


@dataclass(frozen=True)
class Stage:
    sites: list[Site]
    root: Path
    examples: dict[str, Path]


def _stage(args: argparse.Namespace, binaries: Binaries, stack: ExitStack) -> Stage:
    step("Starting two clusters (etcd + kube-apiserver each), CRDs, KubeVirt stand-ins, dlm-guard")
    clusters = stack.enter_context(
        start_clusters(workdir=args.workdir, names=[SOURCE, TARGET], binaries=binaries))
    root = clusters[0].workdir.parent
    install_crds_on(clusters, args.crds_dir or crds_dir())
    examples = write_examples(root / "examples")
    sites = _guard_all(clusters, root, examples, stack)
    for site in sites:
        say(f"    {site.cluster.name}: {site.cluster.server} "
            f"({site.cluster.version()['gitVersion']}), webhooks -> {site.server.url_base}")
    return Stage(sites, root, examples)


def _show(stage: Stage) -> None:
    source, target = (site.cluster for site in stage.sites)
    show_rejection(target, stage.examples)
    show_vm_mutation(target, stage.examples)
    migration_id = show_vmim_mutation(target, stage.examples)
    show_source(source, target, stage.examples, migration_id, stage.root)
    show_trust(stage.sites)


def demo(args: argparse.Namespace, binaries: Binaries) -> int:
    """Run the demo; 0 when it went as promised (and was stopped), 1 otherwise."""
    started = time.monotonic()
    stack = ExitStack()
    try:
        stage = _stage(args, binaries, stack)
        _show(stage)
        show_access(stage.sites, time.monotonic() - started, not args.exit_after_setup)
        while not args.exit_after_setup:
            time.sleep(3600)
        code = 0
    except KeyboardInterrupt:
        say("\nstopping")
        code = 0
    except (DemoError, ClusterStartError, WebhookError, KubectlError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        with _interrupts_ignored():
            stack.close()
    say("clusters and webhook servers torn down")
    return code


@contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Another Ctrl-C or SIGTERM must not cut teardown short: that would leak servers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
