"""With the webhook server stopped, each webhook's failurePolicy decides (real kube-apiserver).

This module registers its own configurations (another name, another namespace label) and
stops its own server, so the shared registration of conftest.py keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_support import (
    RESTORE,
    TARGET_VM,
    VM_NAME,
    Guarded,
    accepted,
    apply_once_settled,
    get,
    new_namespace,
    without_restore_annotation,
)

from controlplane import Cluster
from controlplane.webhooks import register_webhooks, run_webhook_server, unregister_webhooks

pytestmark = pytest.mark.e2e

NAME = "dlm-guard-outage"
LABEL = "dlm-guard-e2e-outage"
SELECTOR = {"matchLabels": {LABEL: "on"}}
CALL_FAILED = 'failed calling webhook "{}.dlm-guard.io"'


@dataclass(frozen=True)
class Stopped:
    """A registration whose server was proven called, then stopped."""

    cluster: Cluster
    url_base: str
    ca_pem: bytes


@pytest.fixture(scope="module")
def stopped(guarded: list[Guarded], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Stopped]:
    cluster = guarded[0].cluster
    probe = new_namespace(cluster, "e2e-outage-probe", {LABEL: "on"})
    try:
        with run_webhook_server(cluster.kubeconfig, tmp_path_factory.mktemp("outage"),
                                name="dlm-guard-outage") as server:
            register_webhooks(cluster, server.url_base, server.ca_pem, name=NAME,
                              namespace_selector=SELECTOR, probe_namespace=probe)
        yield Stopped(cluster, server.url_base, server.ca_pem)
    finally:
        unregister_webhooks(cluster, NAME)


@pytest.mark.parametrize(("validate", "mutate", "failing"), [
    ("Fail", "Ignore", "validate"),  # the default: nothing unchecked gets in
    ("Ignore", "Fail", "mutate"),
    ("Ignore", "Ignore", None),
])
def test_failure_policy_decides_while_the_server_is_down(
        stopped: Stopped, validate: str, mutate: str, failing: str | None) -> None:
    cluster = stopped.cluster
    # Same URL and CA as when it answered: only the failurePolicy changes.
    register_webhooks(cluster, stopped.url_base, stopped.ca_pem, name=NAME,
                      namespace_selector=SELECTOR,
                      failure_policy_validate=validate, failure_policy_mutate=mutate,
                      wait=False)
    ns = new_namespace(cluster, "e2e-outage", {LABEL: "on"})
    vm = without_restore_annotation(TARGET_VM)
    if failing is None:
        result = apply_once_settled(cluster, ns, vm, accepted)
        assert accepted(result), result.stderr
        stored = get(cluster, ns, "vm", VM_NAME)
        assert stored is not None
        assert RESTORE not in (stored["metadata"].get("annotations") or {})  # nothing mutated
    else:
        expected = CALL_FAILED.format(failing)
        result = apply_once_settled(cluster, ns, vm, lambda r: expected in r.stderr)
        assert result.returncode != 0
        assert expected in result.stderr and "connection refused" in result.stderr
        assert get(cluster, ns, "vm", VM_NAME) is None
