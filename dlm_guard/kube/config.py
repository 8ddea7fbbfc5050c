"""Which cluster, and an API client for it: the one kubeconfig loader of both services.

kubectl's order: an explicit file, $KUBECONFIG, ~/.kube/config, then the pod's service account.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config


class ClusterConfigError(Exception):
    """No usable Kubernetes configuration; the message says what to pass instead."""


IN_CLUSTER = "in-cluster"
NO_CONFIG_MESSAGE = ("no Kubernetes configuration found (no --kubeconfig, no $KUBECONFIG, no "
                     "~/.kube/config, not running in a pod): pass --kubeconfig PATH, or "
                     "--offline to serve without cluster state")


def resolve_kube_config(flag: str | None, environ: Mapping[str, str], home: Path) -> str:
    """Which configuration to use: a path (list) or IN_CLUSTER; ClusterConfigError if none."""
    if flag:
        return flag
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"]
    default = home / ".kube" / "config"
    if default.is_file():
        return str(default)
    if environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT"):
        return IN_CLUSTER
    raise ClusterConfigError(NO_CONFIG_MESSAGE)


def load_api_client(config: str, context: str | None = None) -> client.ApiClient:
    """An API client for what resolve_kube_config chose (IN_CLUSTER or a kubeconfig path),
    optionally for one context of it; ClusterConfigError naming the problem if unusable."""
    try:
        if config == IN_CLUSTER:
            return in_cluster_client()
        return kube_config.new_client_from_config(config_file=config, context=context,
                                                  persist_config=False)
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError) as err:
        raise ClusterConfigError(f"cannot use Kubernetes configuration {config}: "
                                 f"{one_line(err)}") from None


def client_from_kubeconfig(kubeconfig: Mapping[str, Any]) -> client.ApiClient:
    """An API client for a kubeconfig given as data (a peer Secret's, certificates inline)."""
    try:
        return kube_config.new_client_from_config_dict(dict(kubeconfig), persist_config=False)
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError) as err:
        raise ClusterConfigError(f"unusable kubeconfig: {one_line(err)}") from None


def in_cluster_client() -> client.ApiClient:
    configuration = client.Configuration()
    kube_config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]
