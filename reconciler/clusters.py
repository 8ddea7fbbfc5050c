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

from dlm_guard.domain import LABEL_PEER, Obj, get_path, labels_of, name_of
from dlm_guard.kube.config import (
    ClusterConfigError,
    client_from_kubeconfig,
    in_cluster_client,
    load_api_client,
)
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
def _client_or_error(spec: ClusterSpec) -> k8s.ApiClient:
    try:
        return load_api_client(str(spec.kubeconfig), spec.context)
    except ClusterConfigError as err:
        raise ValueError(f"cluster {spec.name}: kubeconfig {spec.kubeconfig}: {err}") from err


class Registry:
    """The current set of clusters with their clients; `refresh(secrets)` once per pass."""

    def __init__(self, settings: Settings,
                 local_client: Callable[[], k8s.ApiClient] = in_cluster_client) -> None:
        self._settings = settings
        self._clusters: dict[str, Cluster] = {}
        if settings.in_pod:
            self._clusters = {LOCAL_CLUSTER: Cluster(local_config(settings), local_client())}
        else:
            self._clusters = {spec.name: Cluster(cfg, _client_or_error(spec))
                              for spec, cfg in zip(settings.clusters, flag_configs(settings),
                                                   strict=True)}

    @property
    def clusters(self) -> list[Cluster]:
        return list(self._clusters.values())

    def get(self, name: str) -> Cluster | None:
        return self._clusters.get(name)

    def refresh(self, secrets: Iterable[Obj] | None) -> list[Cluster]:
        """In a pod: the local cluster plus a peer per labelled Secret (from the local
        cache, reconciler/watches.py). `secrets` None (the cache cannot be trusted now) keeps
        the known peers: a failed watch is not evidence that a peer is gone."""
        if not self._settings.in_pod or secrets is None:
            return self.clusters
        peers, problems = peers_from_secrets(secrets, self._settings)
        for problem in problems:
            log.warning("ignoring peer secret", extra={"problem": problem})
        fresh = {LOCAL_CLUSTER: self._clusters[LOCAL_CLUSTER]}
        for peer in peers:
            try:
                fresh[peer.config.name] = self._peer_cluster(peer)
            except ClusterConfigError as err:
                log.warning("ignoring peer secret", extra={"problem": f"{peer.config.source}: "
                                                                      f"{err}"})
        self._swap(fresh)
        return self.clusters

    def _peer_cluster(self, peer: PeerSecret) -> Cluster:
        known = self._clusters.get(peer.config.name)
        if known is not None and known.config == peer.config:
            return known
        log.info("peer cluster configured", extra={"cluster": peer.config.name,
                                                    "source": peer.config.source})
        return Cluster(peer.config, client_from_kubeconfig(peer.kubeconfig))

    def _swap(self, fresh: dict[str, Cluster]) -> None:
        for name, old in self._clusters.items():
            if fresh.get(name) is not old:
                if name not in fresh:
                    log.info("peer cluster removed", extra={"cluster": name})
                old.api.close()
        self._clusters = fresh

    def close(self) -> None:
        for cluster in self._clusters.values():
            cluster.api.close()
        self._clusters = {}
