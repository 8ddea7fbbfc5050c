"""Which clusters the reconciler knows, which it may write to, and an API client for each.

Two ways to name clusters:
- flags: `--cluster NAME=KUBECONFIG[,context=CTX][,namespace=NS]` (repeatable) and `--manage NAME`;
- in a pod with no `--cluster`: the local cluster `local` (in-cluster config, managed) plus one
  peer per Secret in the pod's namespace labelled `dlm-guard.io/peer`, read again on every pass,
  so Secrets added or removed later are picked up without a restart.

A peer Secret: data key `kubeconfig` (a self-contained kubeconfig: certificates inline, no file
paths), optional key `kubevirt-namespace`. Its cluster name is the label value, or the Secret's name
when the label value is `true`; the value `false` disables it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from dlm_guard.domain import LABEL_PEER, Obj, get_path, labels_of, name_of
from reconciler.settings import LOCAL_CLUSTER, ClusterSpec, Settings, valid_cluster_name

log = logging.getLogger(__name__)

PEER_SECRET_SELECTOR = f"{LABEL_PEER},{LABEL_PEER}!=false"
KUBECONFIG_KEY = "kubeconfig"
NAMESPACE_KEY = "kubevirt-namespace"


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach one cluster; `source` says where it came from (for logs)."""

    name: str
    kubevirt_namespace: str
    managed: bool
    source: str  # "flag:<path>", "in-cluster" or "secret/<name>"
    # Identity of the connection details: a changed Secret gets a fresh client.
    digest: str = ""


@dataclass(frozen=True)
class Cluster:
    config: ClusterConfig
    api: k8s.ApiClient

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def namespace(self) -> str:
        return self.config.kubevirt_namespace

    @property
    def managed(self) -> bool:
        return self.config.managed


@dataclass(frozen=True)
class PeerSecret:
    config: ClusterConfig
    kubeconfig: Mapping[str, Any]


def flag_configs(settings: Settings) -> list[ClusterConfig]:
    managed = settings.managed_clusters()
    return [ClusterConfig(name=spec.name,
                          kubevirt_namespace=spec.kubevirt_namespace or settings.kubevirt_namespace,
                          managed=spec.name in managed, source=f"flag:{spec.kubeconfig}",
                          digest=spec.model_dump_json())
            for spec in settings.clusters]


def local_config(settings: Settings) -> ClusterConfig:
    return ClusterConfig(name=LOCAL_CLUSTER, kubevirt_namespace=settings.kubevirt_namespace,
                         managed=LOCAL_CLUSTER in settings.managed_clusters(), source="in-cluster")


def peer_from_secret(secret: Obj, settings: Settings) -> PeerSecret:
    """Pure: one labelled Secret -> a peer; ValueError says what is wrong with it."""
    label = str(labels_of(secret).get(LABEL_PEER, "true"))
    name = name_of(secret) if label.lower() == "true" else label
    if not valid_cluster_name(name) or name == LOCAL_CLUSTER:
        raise ValueError(f"cluster name {name!r} is not a DNS label or is reserved")
    data = get_path(secret, "data") or {}
    kubeconfig = yaml.safe_load(_decode(data, KUBECONFIG_KEY) or "")
    if not isinstance(kubeconfig, Mapping) or not kubeconfig.get("clusters"):
        raise ValueError(f"data key {KUBECONFIG_KEY!r} missing or not a kubeconfig")
    namespace = _decode(data, NAMESPACE_KEY) or settings.kubevirt_namespace
    digest = hashlib.sha256(json.dumps(kubeconfig, sort_keys=True, default=str).encode())
    config = ClusterConfig(name=name, kubevirt_namespace=namespace.strip(),
                           managed=name in settings.managed_clusters(),
                           source=f"secret/{name_of(secret)}", digest=digest.hexdigest())
    return PeerSecret(config, kubeconfig)


def peers_from_secrets(secrets: Iterable[Obj], settings: Settings,
                       ) -> tuple[list[PeerSecret], list[str]]:
    """Pure: every usable peer (first Secret wins a name, by Secret name) and the problems."""
    peers: dict[str, PeerSecret] = {}
    problems: list[str] = []
    for secret in sorted(secrets, key=name_of):
        try:
            peer = peer_from_secret(secret, settings)
        except (ValueError, yaml.YAMLError) as err:
            problems.append(f"secret {name_of(secret)}: {err}")
            continue
        if peer.config.name in peers:
            problems.append(f"secret {name_of(secret)}: cluster {peer.config.name!r} "
                            f"already named by {peers[peer.config.name].config.source}")
            continue
        peers[peer.config.name] = peer
    return list(peers.values()), problems


def _decode(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ValueError(f"data key {key!r} is not base64 text") from err


# --- API clients (I/O) ----------------------------------------------------------------------
def decode(response: Any) -> Any:
    """The JSON body of a call made with `_preload_content=False`: plain dicts, so the store
    and the decisions see objects exactly as the API serves them."""
    return json.loads(response.data)


def client_for_spec(spec: ClusterSpec) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(spec.kubeconfig),
                                             context=spec.context, persist_config=False)


def _client_or_error(spec: ClusterSpec) -> k8s.ApiClient:
    try:
        return client_for_spec(spec)
    except Exception as err:  # the kubernetes config loader raises several types
        raise ValueError(f"cluster {spec.name}: kubeconfig {spec.kubeconfig}: {err}") from err


def client_for_kubeconfig(kubeconfig: Mapping[str, Any]) -> k8s.ApiClient:
    return k8s_config.new_client_from_config_dict(dict(kubeconfig), persist_config=False)


def in_cluster_client() -> k8s.ApiClient:
    configuration = k8s.Configuration()
    k8s_config.load_incluster_config(client_configuration=configuration)
    return k8s.ApiClient(configuration)


SecretLister = Callable[[k8s.ApiClient], Iterable[Obj]]


class Registry:
    """The current set of clusters with their clients; `refresh()` once per pass."""

    def __init__(self, settings: Settings,
                 local_client: Callable[[], k8s.ApiClient] = in_cluster_client,
                 list_secrets: SecretLister | None = None) -> None:
        self._settings = settings
        self._local_client = local_client
        self._list_secrets = list_secrets or self._list_peer_secrets
        self._clusters: dict[str, Cluster] = {}
        if not settings.in_pod:
            self._clusters = {spec.name: Cluster(cfg, _client_or_error(spec))
                              for spec, cfg in zip(settings.clusters, flag_configs(settings),
                                                   strict=True)}

    @property
    def clusters(self) -> list[Cluster]:
        return list(self._clusters.values())

    def get(self, name: str) -> Cluster | None:
        return self._clusters.get(name)

    def refresh(self) -> list[Cluster]:
        """Re-read peer Secrets (in a pod). Keeps the previous peers when they cannot be read:
        a failed list is not evidence that a peer is gone."""
        if not self._settings.in_pod:
            return self.clusters
        local = self._clusters.get(LOCAL_CLUSTER)
        if local is None:
            local = Cluster(local_config(self._settings), self._local_client())
        try:
            secrets = self._list_secrets(local.api)
        except Exception as err:  # any transport error: keep what we had
            log.warning("cannot list peer secrets, keeping the known peers",
                        extra={"error": str(err)})
            self._clusters[LOCAL_CLUSTER] = local
            return self.clusters
        peers, problems = peers_from_secrets(secrets, self._settings)
        for problem in problems:
            log.warning("ignoring peer secret", extra={"problem": problem})
        self._swap({LOCAL_CLUSTER: local} | {p.config.name: self._peer_cluster(p) for p in peers})
        return self.clusters

    def _peer_cluster(self, peer: PeerSecret) -> Cluster:
        known = self._clusters.get(peer.config.name)
        if known is not None and known.config == peer.config:
            return known
        log.info("peer cluster configured", extra={"cluster": peer.config.name,
                                                    "source": peer.config.source})
        return Cluster(peer.config, client_for_kubeconfig(peer.kubeconfig))

    def _swap(self, fresh: dict[str, Cluster]) -> None:
        for name, old in self._clusters.items():
            if fresh.get(name) is not old:
                if name not in fresh:
                    log.info("peer cluster removed", extra={"cluster": name})
                old.api.close()
        self._clusters = fresh

    def _list_peer_secrets(self, api: k8s.ApiClient) -> list[Obj]:
        response = k8s.CoreV1Api(api).list_namespaced_secret(
            self._settings.own_namespace, label_selector=PEER_SECRET_SELECTOR,
            _preload_content=False,
            _request_timeout=self._settings.api_timeout.total_seconds())
        items = decode(response).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.api.close()
        self._clusters = {}
