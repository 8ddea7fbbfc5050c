"""Register dlm-guard's admission webhooks on a harness cluster by URL (no Service needed).

The entries mirror the Helm chart's scope (charts/dlm-guard/templates/_webhooks.tpl): CREATE and
UPDATE of VirtualMachines and VMIMs, only WaitAsReceiver VMs and decentralized VMIMs
(matchConditions), failurePolicy Fail. The harness's kube-apiserver calls
`https://127.0.0.1:PORT/...` directly, trusting `ca_pem`.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

NAME = "dlm-guard-bench"
WAIT_AS_RECEIVER = ("object != null && has(object.spec) && has(object.spec.runStrategy) && "
                    "object.spec.runStrategy == 'WaitAsReceiver'")
DECENTRALIZED = ("object != null && has(object.spec) && "
                 "(has(object.spec.sendTo) || has(object.spec.receive))")


def _entry(name: str, url: str, ca_pem: bytes, resource: str, condition: str,
           mutating: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "timeoutSeconds": 10, "failurePolicy": "Fail", "matchPolicy": "Equivalent",
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
        "rules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"],
                   "operations": ["CREATE", "UPDATE"], "resources": [resource],
                   "scope": "Namespaced"}],
        "matchConditions": [{"name": "ours", "expression": condition}],
    }
    if mutating:
        entry["reinvocationPolicy"] = "IfNeeded"
    return entry


def configurations(base_url: str, ca_pem: bytes, resources: tuple[str, ...] = ("vm", "vmim"),
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(MutatingWebhookConfiguration, ValidatingWebhookConfiguration) bodies; `resources`
    ("vm", "vmim") picks the entries (hybrid admission mode: "vmim" only)."""
    def entries(path: str, mutating: bool) -> list[dict[str, Any]]:
        url = base_url + path
        found = {"vm": _entry(f"vm.{path.strip('/')}.dlm-guard.io", url, ca_pem,
                              "virtualmachines", WAIT_AS_RECEIVER, mutating),
                 "vmim": _entry(f"vmim.{path.strip('/')}.dlm-guard.io", url, ca_pem,
                                "virtualmachineinstancemigrations", DECENTRALIZED, mutating)}
        return [found[resource] for resource in resources]
    meta = {"name": NAME}
    return ({"apiVersion": "admissionregistration.k8s.io/v1",
             "kind": "MutatingWebhookConfiguration", "metadata": meta,
             "webhooks": entries("/mutate", True)},
            {"apiVersion": "admissionregistration.k8s.io/v1",
             "kind": "ValidatingWebhookConfiguration", "metadata": meta,
             "webhooks": entries("/validate", False)})


def register(api: k8s.ApiClient, base_url: str, ca_pem: bytes,
             resources: tuple[str, ...] = ("vm", "vmim")) -> None:
    mutating, validating = configurations(base_url, ca_pem, resources)
    admission = k8s.AdmissionregistrationV1Api(api)
    admission.create_mutating_webhook_configuration(
        k8s.V1MutatingWebhookConfiguration.model_validate(mutating))
    admission.create_validating_webhook_configuration(
        k8s.V1ValidatingWebhookConfiguration.model_validate(validating))


def unregister(api: k8s.ApiClient) -> None:
    admission = k8s.AdmissionregistrationV1Api(api)
    for delete in (admission.delete_mutating_webhook_configuration,
                   admission.delete_validating_webhook_configuration):
        with contextlib.suppress(ApiException):
            delete(NAME)


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> float:
    """Poll check() every 100 ms; seconds it took, TimeoutError after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - start
