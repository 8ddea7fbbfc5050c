"""Local Kubernetes control planes (etcd + kube-apiserver, no kubelet) for e2e tests and the demo.

with start_clusters(2) as (a, b):
    install_crds(a)
    kubectl(a, "get", "vmim", "-A")
"""

from controlplane.binaries import Binaries, binaries_or_reason, build_binaries, find_binaries
from controlplane.cluster import Cluster, ClusterStartError, start_clusters
from controlplane.crds import crds_dir, install_crds, install_crds_on
from controlplane.kubectl import KubectlError, kubectl

__all__ = [
    "Binaries",
    "Cluster",
    "ClusterStartError",
    "KubectlError",
    "binaries_or_reason",
    "build_binaries",
    "crds_dir",
    "find_binaries",
    "install_crds",
    "install_crds_on",
    "kubectl",
    "start_clusters",
]
