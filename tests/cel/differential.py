"""Run objects through the Python engine and through a real kube-apiserver's admission
policies, and compare what each decided.

The API server side is a server-side dry-run create. The Python side sees exactly what a
webhook would: the object as the API server decoded it (pruned and defaulted by the CRD
schema), taken from a dry-run create in a namespace the bindings exempt. Then, like the API
server in `cel` mode, the VM default is applied first (mutation_patch; VMIMs get no webhook
mutation because no webhook runs) and the result validated.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonpatch

from controlplane import Cluster
from webhook.engine import Context, evaluate, mutation_patch
from webhook.policy import RULES, Mode, Policy

Obj = dict[str, Any]
PLURALS = {"VirtualMachine": "virtualmachines",
           "VirtualMachineInstanceMigration": "virtualmachineinstancemigrations"}
RESTORE = "kubevirt.io/restore-run-strategy"
_SLUGS = "|".join(re.escape(slug) for slug in RULES)
# `[slug] path: ` at the start or after the "; " joining findings (paths hold no spaces)
_FINDING = re.compile(rf"(?:^|; |: )\[({_SLUGS})\] (\S+): ")
_WARNING = re.compile(r"^299 - \"(.*)\"$")
CONCURRENCY = 12

Finding = tuple[str, str]  # (slug, path)


@dataclass(frozen=True)
class Outcome:
    """What one side decided for one object."""

    status: int  # HTTP status of the create (201 allowed, 403 denied, 422 schema-invalid)
    denied: frozenset[Finding] = frozenset()
    warned: frozenset[Finding] = frozenset()
    annotations: Any = None  # of the admitted object

    @property
    def verdict(self) -> str:
        if self.status not in (200, 201):
            return "DENY" if self.status == 403 else f"HTTP {self.status}"
        return "WARN" if self.warned else "ALLOW"


@dataclass
class Mismatch:
    obj: Obj
    engine: Outcome
    apiserver: Outcome
    decoded: Obj | None

    def __str__(self) -> str:
        return (f"engine {self.engine}\napiserver {self.apiserver}\n"
                f"object sent: {json.dumps(self.obj, sort_keys=True)}\n"
                f"object decoded: {json.dumps(self.decoded, sort_keys=True)}")


@dataclass
class Report:
    compared: int = 0
    schema_invalid: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)


def findings_in(text: str) -> frozenset[Finding]:
    return frozenset((m.group(1), m.group(2)) for m in _FINDING.finditer(text))


def _warning_texts(headers: Iterable[str]) -> list[str]:
    texts = []
    for header in headers:
        match = _WARNING.match(header)
        texts.append(match.group(1).replace('\\"', '"') if match else header)
    return texts


# --- The Python engine ----------------------------------------------------------------
def engine_outcome(decoded: Obj, namespace: str, policy: Policy,
                   operation: str = "CREATE", old: Obj | None = None) -> Outcome:
    ctx = Context(policy=policy, cluster=None, new_id=lambda: "000000000000")
    kind = decoded["kind"]
    request = {"uid": "differential", "operation": operation, "namespace": namespace,
               "kind": {"group": "kubevirt.io", "version": "v1", "kind": kind},
               "object": decoded, "oldObject": old}
    obj = decoded
    if kind == "VirtualMachine":
        obj = jsonpatch.apply_patch(decoded, mutation_patch(request, ctx))
    evaluation = evaluate({**request, "object": obj}, ctx)
    denied = frozenset((r.finding.rule, r.finding.path) for r in evaluation.in_mode(Mode.ENFORCE))
    warned = frozenset((r.finding.rule, r.finding.path) for r in evaluation.in_mode(Mode.WARN))
    annotations = obj.get("metadata", {}).get("annotations")
    return Outcome(403 if denied else 201, denied, warned, None if denied else annotations)


# --- The API server -------------------------------------------------------------------
class DryRunner:
    """Concurrent dry-run writes through one aiohttp session (client-certificate auth)."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster, self.session = cluster, session
        self.limit = asyncio.Semaphore(CONCURRENCY)
        self.ssl = cluster.ssl_context()  # one context: the session then reuses connections

    async def write(self, obj: Obj, namespace: str, *, over: Obj | None = None
                    ) -> tuple[int, Obj, list[str]]:
        """A dry-run create, or with `over` (the stored object) a dry-run update of it."""
        plural = PLURALS[obj["kind"]]
        path = f"/apis/kubevirt.io/v1/namespaces/{namespace}/{plural}"
        metadata = {**(obj.get("metadata") or {}), "namespace": namespace}
        if over is not None:  # the stored object's identity, whatever `obj` was copied from
            path += f"/{over['metadata']['name']}"
            metadata |= {key: over["metadata"][key] for key in ("name", "uid", "resourceVersion")}
        body = {**obj, "metadata": metadata}
        update = over is not None
        async with self.limit, self.session.request(
                "PUT" if update else "POST", self.cluster.server + path, json=body,
                params={"dryRun": "All", "fieldValidation": "Ignore"},
                ssl=self.ssl) as response:
            answer = await response.json(content_type=None)
            return response.status, answer, response.headers.getall("Warning", [])


def apiserver_outcome(status: int, answer: Obj, warnings: Sequence[str]) -> Outcome:
    warned = frozenset().union(*(findings_in(t) for t in _warning_texts(warnings)
                                 if "ValidatingAdmissionPolicy" in t))
    if status in (200, 201):
        return Outcome(status, frozenset(), warned, answer["metadata"].get("annotations"))
    message = str(answer.get("message", ""))
    denied = findings_in(message) if "ValidatingAdmissionPolicy" in message else frozenset()
    return Outcome(status, denied, warned)


@dataclass(frozen=True)
class Decoded:
    """An object and what the API server made of it with no policy in the way."""

    obj: Obj
    status: int
    decoded: Obj


async def decode(runner: DryRunner, objects: Sequence[Obj], control: str) -> list[Decoded]:
    """Dry-run creates in the namespace every binding exempts: the CRD schema's verdict and
    the object as decoded (pruned, defaulted), which is what a webhook would receive."""
    async def one(obj: Obj) -> Decoded:
        status, answer, _ = await runner.write(obj, control)
        return Decoded(obj, status, answer)

    return list(await asyncio.gather(*(one(obj) for obj in objects)))


async def compare(runner: DryRunner, corpus: Sequence[Decoded], *, guarded: str,
                  policy: Policy) -> Report:
    """Each decoded object: the engine's outcome vs the API server's in `guarded`."""
    report = Report()

    async def one(item: Decoded) -> None:
        got = apiserver_outcome(*await runner.write(item.obj, guarded))
        if item.status != 201:  # the CRD schema rejects it: must not depend on our policies
            report.schema_invalid += 1
            if got.status != item.status:
                report.mismatches.append(Mismatch(item.obj, Outcome(item.status), got, None))
            return
        want = engine_outcome(item.decoded, guarded, policy)
        report.compared += 1
        report.verdicts[want.verdict] = report.verdicts.get(want.verdict, 0) + 1
        if want != got:
            report.mismatches.append(Mismatch(item.obj, want, got, item.decoded))

    await asyncio.gather(*(one(item) for item in corpus))
    return report


@dataclass(frozen=True)
class Update:
    """A stored object (in the control and the guarded namespace) and its new version."""

    control_old: Obj
    guarded_old: Obj
    new: Obj


async def compare_updates(runner: DryRunner, updates: Sequence[Update], *, control: str,
                          guarded: str, policy: Policy) -> Report:
    """Dry-run updates: engine (UPDATE, the decoded new object, the stored old one) vs API."""
    report = Report()

    async def one(update: Update) -> None:
        status, decoded, _ = await runner.write(update.new, control, over=update.control_old)
        got = apiserver_outcome(*await runner.write(update.new, guarded, over=update.guarded_old))
        if status != 200:
            report.schema_invalid += 1
            if got.status != status:
                report.mismatches.append(Mismatch(update.new, Outcome(status), got, None))
            return
        want = engine_outcome(decoded, guarded, policy, "UPDATE", update.control_old)
        want = Outcome(200 if want.status == 201 else want.status, want.denied, want.warned,
                       want.annotations)
        report.compared += 1
        report.verdicts[want.verdict] = report.verdicts.get(want.verdict, 0) + 1
        if want != got:
            report.mismatches.append(Mismatch(update.new, want, got, decoded))

    await asyncio.gather(*(one(update) for update in updates))
    return report
