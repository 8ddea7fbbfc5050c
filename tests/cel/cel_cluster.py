"""Install exported policies on a harness cluster and wait until the API server enforces them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from differential import DryRunner, Obj, apiserver_outcome, engine_outcome

from controlplane import Cluster, kubectl
from webhook.policy import Policy

READY_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.2


def apply_documents(cluster: Cluster, documents: Sequence[Obj]) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": list(documents)}
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", "-",
            input=json.dumps(listing))


def ensure_namespaces(cluster: Cluster, *names: str) -> None:
    apply_documents(cluster, [{"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": name}} for name in names])


async def wait_enforced(runner: DryRunner, probes: Sequence[Obj], namespace: str, control: str,
                        policy: Policy, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Until every probe gets the engine's outcome: policies reach the admission plugin
    through an informer, some time after they are created."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        pending = []
        for probe in probes:
            _, decoded, _ = await runner.write(probe, control)
            got = apiserver_outcome(*await runner.write(probe, namespace))
            want = engine_outcome(decoded, namespace, policy)
            if got != want:
                pending.append(f"{probe['metadata']['name']}: want {want}, got {got}")
        if not pending:
            return
        last = "; ".join(pending)
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"policies not enforced after {timeout:g} s: {last}")
