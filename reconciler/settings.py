"""The reconciler's one typed settings object, built from flags and passed explicitly."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dlm_guard.domain import DEFAULT_KUBEVIRT_NAMESPACE

# The in-pod default cluster name ("the local cluster is `local`").
LOCAL_CLUSTER = "local"
# Where a pod finds its own namespace (the service-account volume Kubernetes mounts).
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# A cluster name is used as a metric label and in Events: keep it a DNS label.
_CLUSTER_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def parse_duration(text: str) -> timedelta:
    """Go-style durations as used in Kubernetes flags: `30s`, `5m`, `1h30m`, `0`."""
    text = text.strip()
    if text == "0":
        return timedelta(0)
    pos, seconds = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h, 1h30m or 0")
    return timedelta(seconds=seconds)


def valid_cluster_name(name: str) -> bool:
    return bool(_CLUSTER_NAME_RE.match(name))


class ClusterSpec(BaseModel):
    """One `--cluster NAME=KUBECONFIG[,context=CTX][,namespace=NS]` flag."""

    model_config = ConfigDict(frozen=True)
    name: str
    kubeconfig: Path
    context: str | None = None
    kubevirt_namespace: str | None = None  # None: settings.kubevirt_namespace


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    clusters: tuple[ClusterSpec, ...] = ()
    # Empty clusters means "in a pod": `local` via in-cluster config plus peers from Secrets.
    managed: frozenset[str] = frozenset()
    kubevirt_namespace: str = DEFAULT_KUBEVIRT_NAMESPACE
    own_namespace: str = "default"
    resync_period: timedelta = timedelta(minutes=5)
    gc_grace: timedelta = timedelta(minutes=5)
    orphan_ttl: timedelta = timedelta(minutes=15)
    stuck_timeout: timedelta = timedelta(hours=1)
    once: bool = False
    dry_run: bool = False
    leader_elect: bool = False
    leader_election_namespace: str = "default"
    leader_election_cluster: str | None = None  # None: the first managed cluster
    lease_name: str = "dlm-guard-reconciler"
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    api_timeout: timedelta = timedelta(seconds=10)
    max_certificates: int = 50
    # Copy only each peer's current CA, not the CAs it trusts from its own peers
    # (docs/kubevirt-facts.md, "CA bundles").
    trust_own_ca_only: bool = False

    @property
    def in_pod(self) -> bool:
        return not self.clusters

    def managed_clusters(self) -> frozenset[str]:
        """In a pod with no --manage, the local cluster is the one we write to."""
        if self.in_pod and not self.managed:
            return frozenset({LOCAL_CLUSTER})
        return self.managed

    def lease_cluster(self) -> str:
        if self.leader_election_cluster:
            return self.leader_election_cluster
        if self.in_pod:
            return LOCAL_CLUSTER
        managed = [c.name for c in self.clusters if c.name in self.managed]
        return managed[0] if managed else self.clusters[0].name

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [c.name for c in self.clusters]
        bad = [n for n in names if not valid_cluster_name(n)]
        if bad:
            raise ValueError(f"invalid cluster name(s) {', '.join(bad)}: use a DNS label")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"cluster(s) named twice: {', '.join(duplicates)}")
        # With explicit clusters every managed name must be one of them; in a pod, peers come
        # from Secrets later, so names cannot be checked now.
        unknown = sorted(self.managed - set(names))
        if self.clusters and unknown:
            raise ValueError(f"--manage names unknown cluster(s): {', '.join(unknown)}")
        return self


def parse_cluster_flag(value: str) -> ClusterSpec:
    """`NAME=KUBECONFIG[,context=CTX][,namespace=NS]` -> ClusterSpec."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--cluster {value!r}: expected NAME=KUBECONFIG[,namespace=NS]")
    path, *options = rest.split(",")
    extra: dict[str, str] = {}
    for option in options:
        key, sep, val = option.partition("=")
        if key not in ("context", "namespace") or not sep or not val:
            raise ValueError(f"--cluster {value!r}: unknown option {option!r} "
                             "(known: context=CTX, namespace=NS)")
        extra[key] = val
    return ClusterSpec(name=name, kubeconfig=Path(path), context=extra.get("context"),
                       kubevirt_namespace=extra.get("namespace"))


def pod_namespace(path: Path = POD_NAMESPACE_FILE, default: str = "default") -> str:
    try:
        return path.read_text().strip() or default
    except OSError:
        return default
