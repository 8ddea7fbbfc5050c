"""The only Kubernetes API access of `migrate`: get, list, create (also dry-run), delete.

Objects are plain dicts exactly as the API serves them (calls made with
`_preload_content=False`), like the reconciler's. List items get their `kind` and
`apiVersion` back (the API leaves them out of list items). Clients are made through
`api_client()`, the one adapter over the project's kubeconfig loading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from dlm_guard.domain import Obj, get_path
from dlm_guard.kube.config import load_api_client

REQUEST_TIMEOUT_SECONDS = 30
LIST_PAGE = 500


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str  # "v1" or "group/version"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version \
            else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


VM = Resource("VirtualMachine", "kubevirt.io/v1", "virtualmachines")
VMI = Resource("VirtualMachineInstance", "kubevirt.io/v1", "virtualmachineinstances")
VMIM = Resource("VirtualMachineInstanceMigration", "kubevirt.io/v1",
                "virtualmachineinstancemigrations")
KUBEVIRT = Resource("KubeVirt", "kubevirt.io/v1", "kubevirts")
DATA_VOLUME = Resource("DataVolume", "cdi.kubevirt.io/v1beta1", "datavolumes")
PVC = Resource("PersistentVolumeClaim", "v1", "persistentvolumeclaims")
SECRET = Resource("Secret", "v1", "secrets")
CONFIG_MAP = Resource("ConfigMap", "v1", "configmaps")
NAMESPACE = Resource("Namespace", "v1", "namespaces", namespaced=False)
RESOURCES = {r.kind: r for r in (VM, VMI, VMIM, KUBEVIRT, DATA_VOLUME, PVC, SECRET,
                                 CONFIG_MAP, NAMESPACE)}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def resource_for(obj: Obj) -> Resource:
    return RESOURCES[str(obj.get("kind"))]


# --- Which cluster: the one adapter over the project's kubeconfig loading -------------------
def api_client(kubeconfig: str, context: str | None = None) -> ApiClient:
    """An ApiClient for a kubeconfig file (and context); KubeError naming the file if bad."""
    try:
        return load_api_client(kubeconfig, context)
    except Exception as err:  # the kubernetes config loader raises several types
        raise KubeError(f"kubeconfig {kubeconfig}: {err}") from None


# --- Calls ----------------------------------------------------------------------------------
def _status_message(data: bytes | None, fallback: str | None) -> tuple[str, str]:
    """(message, reason) of a Kubernetes Status body."""
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, Mapping) else None
    reason = body.get("reason") if isinstance(body, Mapping) else None
    return str(message or fallback or "error"), str(reason or "")


class Kube:
    """One cluster, by the name the user knows it by (`source`, `target`)."""

    def __init__(self, name: str, client: ApiClient) -> None:
        self.name, self.client = name, client

    def _call(self, method: str, path: str, *, query: list[tuple[str, Any]] | None = None,
              body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            request = self.client.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"])
            response = self.client.call_api(*request, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            response.read()
        except ApiException as err:  # no answer at all (TLS, connection)
            raise KubeError(f"{self.name}: {method} {path}: {err.reason or err}") from None
        except (HTTPError, OSError) as err:
            raise KubeError(f"{self.name}: {method} {path}: {err}") from None
        if not 200 <= response.status <= 299:
            message, reason = _status_message(response.data, response.reason)
            raise KubeError(f"{self.name}: {method} {path}: {message}", response.status, reason)
        return json.loads(response.data) if response.data else {}

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._call("GET", resource.path(namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return found

    def list(self, resource: Resource, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every object (all namespaces when namespace is None), in pages."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("limit", LIST_PAGE)]
            query += [("labelSelector", label_selector)] if label_selector else []
            query += [("continue", token)] if token else []
            page = self._call("GET", resource.path(namespace), query=query)
            items.extend({"apiVersion": resource.api_version, "kind": resource.kind, **item}
                         for item in page.get("items") or [])
            token = get_path(page, "metadata", "continue")
            if not token:
                return items

    def create(self, obj: Obj, *, dry_run: bool = False) -> dict[str, Any]:
        resource = resource_for(obj)
        query = [("dryRun", "All")] if dry_run else []
        created: dict[str, Any] = self._call(
            "POST", resource.path(get_path(obj, "metadata", "namespace")), query=query,
            body=dict(obj))
        return created

    def delete(self, resource: Resource, namespace: str | None, name: str,
               uid: str | None = None) -> bool:
        """True when deleted now, False when it was already gone. With `uid`, only that
        object (a precondition): a same-named newer object is left alone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1",
                                "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", resource.path(namespace, name), body=body)
        except KubeError as err:
            if err.status in (404, 409):  # 409: the uid precondition found a newer object
                return False
            raise
        return True

    def merge_patch(self, resource: Resource, namespace: str | None, name: str,
                    patch: Mapping[str, Any], *, subresource: str = "") -> dict[str, Any]:
        path = resource.path(namespace, name) + (f"/{subresource}" if subresource else "")
        patched: dict[str, Any] = self._call("PATCH", path, body=dict(patch),
                                             content_type="application/merge-patch+json")
        return patched

    def replace(self, obj: Obj) -> dict[str, Any]:
        resource = resource_for(obj)
        path = resource.path(get_path(obj, "metadata", "namespace"),
                             str(get_path(obj, "metadata", "name")))
        replaced: dict[str, Any] = self._call("PUT", path, body=dict(obj))
        return replaced

    def close(self) -> None:
        self.client.close()
