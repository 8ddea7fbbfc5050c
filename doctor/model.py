"""What doctor reads of each cluster, and what its checks say (plain frozen data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Obj = Mapping[str, Any]


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Unknown:
    """Something doctor could not read (no permission, API not served): never a FAIL alone."""

    reason: str


@dataclass(frozen=True)
class CheckResult:
    check: str  # a stable slug, e.g. "feature-gate"
    scope: str  # a cluster name, or "a->b" for a pair
    status: Status
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "scope": self.scope, "status": self.status.value,
                "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class ServiceState:
    """A webhook's Service: does it exist, and how many ready endpoints does it have."""

    exists: bool | Unknown
    ready_endpoints: int | Unknown = 0


@dataclass(frozen=True)
class Probe:
    """An HTTPS GET of a webhook URL's /healthz, verified with the entry's caBundle."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class PeerSecret:
    name: str
    label: str  # the dlm-guard.io/peer label value
    server: str  # the API server its kubeconfig points at ("" when unreadable)


@dataclass(frozen=True)
class ClusterSnapshot:
    name: str
    server: str  # API server URL of the kubeconfig doctor used
    kubevirt_namespace: str
    kubevirt: Obj | Unknown | None  # None: no KubeVirt CR in the namespace
    kubevirt_ca: str | Unknown | None  # the ca-bundle of kubevirt-ca; None: no such ConfigMap
    mutating: tuple[Obj, ...] | Unknown = ()  # configurations with dlm-guard entries only
    validating: tuple[Obj, ...] | Unknown = ()
    services: Mapping[tuple[str, str], ServiceState] = field(default_factory=dict)
    probes: Mapping[str, Probe] = field(default_factory=dict)  # by clientConfig.url
    policies: tuple[Obj, ...] | Unknown = ()  # ValidatingAdmissionPolicies dlm-guard-*
    policy_bindings: tuple[Obj, ...] | Unknown = ()
    reconciler_namespace: str = "dlm-guard-system"
    peer_secrets: tuple[PeerSecret, ...] | Unknown = ()
