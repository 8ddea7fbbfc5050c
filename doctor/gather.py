"""Gather: read one cluster into a ClusterSnapshot (get and list calls only, nothing written).

A permission or API that is missing becomes Unknown for that part; a cluster that cannot be
reached at all (bad kubeconfig, connection refused, 401) raises Unreachable: doctor then exits 2.
The only traffic besides the API server: one HTTPS GET of /healthz per webhook `url`, verified
with the configuration's own caBundle (the API server's view of reachability).
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from dlm_guard.domain import KUBEVIRT_CA_CONFIGMAP, LABEL_PEER, get_path
from doctor.checks import POLICY_PREFIX, our_entries
from doctor.model import ClusterSnapshot, Obj, PeerSecret, Probe, ServiceState, Unknown

T = TypeVar("T")
NO_OBJECTS: tuple[Obj, ...] = ()
NO_ITEMS: list[Obj] = []
NO_BUNDLE: str | None = None
NO_PEERS: tuple[PeerSecret, ...] = ()


class Unreachable(RuntimeError):
    """The cluster cannot be read at all."""


def client_for(kubeconfig: str, context: str | None) -> k8s.ApiClient:
    try:
        return k8s_config.new_client_from_config(config_file=kubeconfig, context=context,
                                                 persist_config=False)
    except Exception as err:  # missing file, bad YAML, unknown context
        raise Unreachable(f"kubeconfig {kubeconfig}: {err}") from err


def _json(response: Any) -> Any:
    return json.loads(response.data or b"null")


def _read(call: Callable[[], T], absent: T) -> T | Unknown:
    """One API read: `absent` on 404, Unknown on other API errors; transport errors and 401
    mean the cluster itself is unreachable."""
    try:
        return call()
    except ApiException as err:
        if err.status == 404:
            return absent
        if err.status == 401:
            raise Unreachable("HTTP 401 Unauthorized: check the kubeconfig's credentials") \
                from err
        return Unknown(f"HTTP {err.status} {err.reason}".strip())
    except Exception as err:
        raise Unreachable(f"{type(err).__name__}: {str(err)[:200]}") from err


def gather_cluster(name: str, api: k8s.ApiClient, kubevirt_namespace: str,
                   reconciler_namespace: str, timeout: float) -> ClusterSnapshot:
    options: dict[str, Any] = {"_preload_content": False, "_request_timeout": timeout}
    custom, core = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)
    admission = k8s.AdmissionregistrationV1Api(api)
    kubevirts = _read(lambda: _json(custom.list_namespaced_custom_object(
        "kubevirt.io", "v1", kubevirt_namespace, "kubevirts", **options)).get("items") or [],
        NO_ITEMS)
    kubevirt = kubevirts if isinstance(kubevirts, Unknown) else (kubevirts[0] if kubevirts
                                                                 else None)
    ca = _read(lambda: (_json(core.read_namespaced_config_map(
        KUBEVIRT_CA_CONFIGMAP, kubevirt_namespace, **options)).get("data") or {}).get(
        "ca-bundle", ""), NO_BUNDLE)
    mutating = _ours(_read(lambda: _items(admission.list_mutating_webhook_configuration(
        **options)), []))
    validating = _ours(_read(lambda: _items(admission.list_validating_webhook_configuration(
        **options)), []))
    entries = our_entries([*(mutating if isinstance(mutating, tuple) else ()),
                           *(validating if isinstance(validating, tuple) else ())])
    policies = _read(lambda: tuple(p for p in _items(
        admission.list_validating_admission_policy(**options))
        if str(get_path(p, "metadata", "name")).startswith(POLICY_PREFIX)), NO_OBJECTS)
    bindings = _read(lambda: tuple(_items(
        admission.list_validating_admission_policy_binding(**options))), NO_OBJECTS)
    return ClusterSnapshot(
        name=name, server=str(api.configuration.host), kubevirt_namespace=kubevirt_namespace,
        kubevirt=kubevirt, kubevirt_ca=ca, mutating=mutating, validating=validating,
        services={key: _service(api, key, options) for key in _services(entries)},
        probes={url: probe(url, caBundle, timeout) for url, caBundle in _urls(entries).items()},
        policies=policies, policy_bindings=bindings,
        reconciler_namespace=reconciler_namespace,
        peer_secrets=_read(lambda: _peer_secrets(core, reconciler_namespace, options),
                           NO_PEERS))


def _items(response: Any) -> list[Obj]:
    return [i for i in _json(response).get("items") or [] if isinstance(i, dict)]


def _ours(found: list[Obj] | Unknown) -> tuple[Obj, ...] | Unknown:
    if isinstance(found, Unknown):
        return found
    return tuple(conf for conf in found if our_entries([conf]))


def _services(entries: Iterable[Obj]) -> set[tuple[str, str]]:
    found = set()
    for entry in entries:
        service = get_path(entry, "clientConfig", "service")
        if isinstance(service, dict):
            found.add((str(service.get("namespace", "")), str(service.get("name", ""))))
    return found


def _urls(entries: Iterable[Obj]) -> dict[str, str]:
    return {str(url): str(get_path(entry, "clientConfig", "caBundle") or "")
            for entry in entries if (url := get_path(entry, "clientConfig", "url"))}


def _service(api: k8s.ApiClient, key: tuple[str, str], options: dict[str, Any]) -> ServiceState:
    namespace, name = key
    exists = _read(lambda: bool(k8s.CoreV1Api(api).read_namespaced_service(
        name, namespace, **options)), False)
    if exists is not True:
        return ServiceState(exists)
    slices = _read(lambda: _items(k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={name}", **options)), NO_ITEMS)
    if isinstance(slices, Unknown):
        return ServiceState(True, slices)
    # EndpointSlice `conditions.ready` unset means ready (discovery.k8s.io/v1 API docs).
    ready = sum(1 for s in slices for e in s.get("endpoints") or []
                if get_path(e, "conditions", "ready") is not False)
    return ServiceState(True, ready)


def probe(url: str, ca_bundle: str, timeout: float) -> Probe:
    """Can this machine complete TLS with the webhook URL as the API server would (trusting
    only the caBundle) and get any HTTP answer from /healthz?"""
    try:
        context = ssl.create_default_context(cadata=base64.b64decode(ca_bundle).decode()) \
            if ca_bundle else ssl.create_default_context()
    except (ValueError, binascii.Error, ssl.SSLError) as err:
        return Probe(False, f"caBundle unusable: {err}")
    parts = urllib.parse.urlsplit(url)
    health = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/healthz", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout, context=context) as response:
            return Probe(True, f"HTTP {response.status}")
    except urllib.error.HTTPError as err:  # an answer over verified TLS: reachable
        return Probe(True, f"HTTP {err.code}")
    except (urllib.error.URLError, OSError, ssl.SSLError) as err:
        reason = getattr(err, "reason", err)
        return Probe(False, f"unreachable ({reason})")


def _peer_secrets(core: k8s.CoreV1Api, namespace: str,
                  options: dict[str, Any]) -> tuple[PeerSecret, ...]:
    secrets = _items(core.list_namespaced_secret(namespace, label_selector=LABEL_PEER,
                                                 **options))
    return tuple(PeerSecret(str(get_path(s, "metadata", "name")),
                            str((get_path(s, "metadata", "labels") or {}).get(LABEL_PEER, "")),
                            _server_of(s)) for s in secrets)


def _server_of(secret: Obj) -> str:
    """The API server a peer Secret's kubeconfig points at; nothing else of it is kept."""
    raw = get_path(secret, "data", "kubeconfig")
    try:
        config = yaml.safe_load(base64.b64decode(str(raw or "")).decode())
    except (ValueError, binascii.Error, yaml.YAMLError, UnicodeDecodeError):
        return ""
    if not isinstance(config, dict):
        return ""
    contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []
                if isinstance(c, dict)}
    cluster_name = (contexts.get(config.get("current-context")) or {}).get("cluster")
    clusters = [c for c in config.get("clusters") or [] if isinstance(c, dict)]
    chosen = next((c for c in clusters if c.get("name") == cluster_name),
                  clusters[0] if clusters else {})
    return str(get_path(chosen, "cluster", "server") or "")
