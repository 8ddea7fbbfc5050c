"""The exported CEL policies decide exactly like the Python engine (real kube-apiserver).

Every object of the corpus (the unit tests' rule tables plus >= 2,000 generated VMs and
VMIMs) is dry-run created on a cluster where only `dlm-guard policy export`'s output is
installed, and run through the engine; verdict, denied and warned (slug, path) pairs and the
mutated annotations must be equal. Any mismatch fails and prints the object.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from cel_cluster import apply_documents, ensure_namespaces, wait_enforced
from cel_corpus import RESTORE, base_vm, base_vmim, generated_corpus, table_corpus
from differential import DryRunner, Obj, Report, Update, compare, compare_updates, decode

from controlplane import Binaries, Cluster, install_crds, kubectl, start_clusters
from webhook.cel.export import export
from webhook.policy import parse_policy

pytestmark = pytest.mark.e2e

GENERATED = 4500  # hypothesis examples; duplicates are dropped, >= 2,000 distinct remain
MIN_DISTINCT = 2000
SHOWN_MISMATCHES = 5
CONTROL, GUARDED, RELAXED = "cel-control", "cel-guarded", "cel-relaxed"
UPDATES = "cel-updates"  # objects stored before the policies, then updated
UPDATES_PER_BASE = 40
DEFAULT_POLICY = parse_policy({"exemptNamespaces": [CONTROL, RELAXED]})
# Every mode in play at once: warn instead of deny, rules off, another default.
RELAXED_POLICY = parse_policy({
    "rules": {"shareable-disk": "warn", "lun-disk": "off", "restore-run-strategy": "warn",
              "persistent-state": "enforce", "connect-url": "warn", "vmi-name": "off",
              "immutable-spec": "warn"},
    "defaults": {"restoreRunStrategy": "Manual"},
    "exemptNamespaces": [CONTROL, GUARDED, UPDATES]})


def probes() -> list[Obj]:
    shareable = base_vm("probe-shareable")
    shareable["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["shareable"] = True
    warned = base_vm("probe-warned")
    warned["metadata"]["annotations"] = {}
    warned["spec"]["template"]["spec"]["domain"]["devices"]["tpm"] = {"persistent": True}
    both = base_vmim("sendTo", "probe-both")
    both["spec"]["receive"] = {"migrationID": "x"}
    return [shareable, warned, both]


def update_bases() -> list[Obj]:
    """Stored before any policy: clean ones, and ones a policy would deny today (an UPDATE is
    denied only for findings they do not already have)."""
    shareable = base_vm("vm-shareable")
    disks = shareable["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    disks[0] |= {"shareable": True, "lun": {}}
    bad_annotation = base_vm("vm-bad-annotation")
    bad_annotation["metadata"]["annotations"] = {RESTORE: "always"}
    bare = base_vm("vm-bare")
    bare["metadata"]["annotations"] = {}
    ordinary = base_vm("vm-ordinary")
    ordinary["spec"]["runStrategy"] = "Always"
    disks = ordinary["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    disks[0]["shareable"] = True
    no_port = base_vmim("sendTo", "vmim-no-port")
    no_port["spec"]["sendTo"]["connectURL"] = "sync.example.com"
    plain = base_vmim("receive", "vmim-ordinary")
    plain["spec"] = {"vmiName": "vm"}
    return [base_vm("vm-clean"), shareable, bad_annotation, bare, ordinary,
            base_vmim("sendTo", "vmim-source"), base_vmim("receive", "vmim-target"), no_port,
            plain]


def stored(cluster: Cluster, namespace: str) -> dict[str, Obj]:
    found: dict[str, Obj] = {}
    for kind in ("vm", "vmim"):
        listing = json.loads(kubectl(cluster, "get", kind, "-n", namespace, "-o", "json").stdout)
        found |= {item["metadata"]["name"]: item for item in listing["items"]}
    return found


@pytest.fixture(scope="module")
def cluster(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cel-cluster")
    with start_clusters(names=["cel"], workdir=workdir, binaries=binaries) as [started]:
        install_crds(started)
        ensure_namespaces(started, CONTROL, GUARDED, RELAXED, UPDATES)
        for namespace in (CONTROL, UPDATES):
            apply_documents(started, [{**b, "metadata": {**b["metadata"], "namespace": namespace}}
                                      for b in update_bases()])
        apply_documents(started, export(DEFAULT_POLICY))
        apply_documents(started, export(RELAXED_POLICY, prefix="relaxed"))
        yield started


@pytest.fixture
async def runner(cluster: Cluster) -> AsyncIterator[DryRunner]:
    async with aiohttp.ClientSession() as session:
        dry = DryRunner(cluster, session)
        await wait_enforced(dry, probes(), GUARDED, CONTROL, DEFAULT_POLICY)
        await wait_enforced(dry, probes(), RELAXED, CONTROL, RELAXED_POLICY)
        yield dry


def distinct(objects: list[Obj]) -> list[Obj]:
    seen: dict[str, Obj] = {}
    for obj in objects:
        seen.setdefault(json.dumps(obj, sort_keys=True), obj)
    return list(seen.values())


def assert_equal(report: Report) -> None:
    shown = "\n\n".join(str(m) for m in report.mismatches[:SHOWN_MISMATCHES])
    assert not report.mismatches, (
        f"{len(report.mismatches)} of {report.compared + report.schema_invalid} objects "
        f"decided differently; the first {SHOWN_MISMATCHES}:\n\n{shown}")


async def test_rule_tables_decide_the_same(runner: DryRunner) -> None:
    corpus = await decode(runner, distinct(table_corpus()), CONTROL)
    report = await compare(runner, corpus, guarded=GUARDED, policy=DEFAULT_POLICY)
    assert_equal(report)
    assert report.verdicts.get("DENY", 0) > 50 and report.verdicts.get("ALLOW", 0) > 5


@pytest.fixture(scope="module")
def generated() -> list[Obj]:
    corpus = distinct(generated_corpus(GENERATED))
    assert len(corpus) >= MIN_DISTINCT
    return corpus


async def test_generated_objects_decide_the_same(runner: DryRunner,
                                                 generated: list[Obj]) -> None:
    """Both policies on the same decoded corpus: the relaxed one on every third object."""
    corpus = await decode(runner, generated, CONTROL)
    report = await compare(runner, corpus, guarded=GUARDED, policy=DEFAULT_POLICY)
    print(f"\ndefault policy: {report.compared} compared {report.verdicts}, "
          f"{report.schema_invalid} rejected by the CRD schema on both sides")
    assert_equal(report)
    # the corpus really exercises every verdict
    assert min(report.verdicts.get(v, 0) for v in ("ALLOW", "WARN", "DENY")) > 100
    relaxed = await compare(runner, corpus[::3], guarded=RELAXED, policy=RELAXED_POLICY)
    assert_equal(relaxed)
    assert relaxed.verdicts.get("WARN", 0) > 30


async def test_modes_off_warn_and_another_default_decide_the_same_on_the_tables(
        runner: DryRunner) -> None:
    corpus = await decode(runner, distinct(table_corpus()), CONTROL)
    report = await compare(runner, corpus, guarded=RELAXED, policy=RELAXED_POLICY)
    assert_equal(report)


async def test_the_default_annotation_is_the_webhooks_patch(runner: DryRunner) -> None:
    """Absent annotations map, an existing one, and a present value that must stay."""
    for given, expected in [(None, {RESTORE: "Always"}),
                            ({"a": "b"}, {"a": "b", RESTORE: "Always"}),
                            ({RESTORE: "Halted"}, {RESTORE: "Halted"})]:
        vm = copy.deepcopy(base_vm("defaults"))
        vm["metadata"]["annotations"] = given
        status, answer, _ = await runner.write(vm, GUARDED)
        assert status == 201 and answer["metadata"]["annotations"] == expected
    await asyncio.sleep(0)


async def test_updates_decide_the_same(runner: DryRunner, cluster: Cluster,
                                       generated: list[Obj]) -> None:
    """Every stored object updated to generated objects of its kind (metadata and spec):
    immutable-spec, the VM rules ratcheted against the old object, the default on UPDATE."""
    control, guarded = stored(cluster, CONTROL), stored(cluster, UPDATES)
    updates = []
    for name, old in control.items():
        same_kind = [obj for obj in generated if obj["kind"] == old["kind"]]
        news = [copy.deepcopy(old), *same_kind[:UPDATES_PER_BASE]]
        news[0]["metadata"]["labels"] = {"only": "metadata"}
        updates += [Update(old, guarded[name], new) for new in news]
    report = await compare_updates(runner, updates, control=CONTROL, guarded=UPDATES,
                                   policy=DEFAULT_POLICY)
    print(f"\nupdates: {report.compared} compared {report.verdicts}, "
          f"{report.schema_invalid} rejected by the CRD schema on both sides")
    assert_equal(report)
    assert report.verdicts.get("DENY", 0) > 30 and report.verdicts.get("ALLOW", 0) > 30
