"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas never act at once.

Follows client-go's leaderelection: a holder renews every retry period; another candidate takes
the Lease only after it has seen the same record unchanged for a whole lease duration (measured
on its own clock, so clock skew between pods does not matter). A holder that could not renew
for `renew_deadline` (< lease duration) stops acting at once: `is_leader()` turns False before
anybody else may take over.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dlm_guard.domain import Obj, get_path
from dlm_guard.kube.api import describe_error

log = logging.getLogger(__name__)

LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL = "coordination.k8s.io", "v1", "leases"


class LeaderConfigError(ValueError):
    """Leader election cannot be set up as asked."""


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    duration: timedelta = timedelta(seconds=15)
    renew_deadline: timedelta = timedelta(seconds=10)
    retry_period: timedelta = timedelta(seconds=2)


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Step(StrEnum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE = "take"  # free, released, or its holder stopped renewing
    WAIT = "wait"  # somebody else holds it


def holder_of(lease: Obj) -> str:
    return str(get_path(lease, "spec", "holderIdentity") or "")


def record_of(lease: Obj) -> tuple[str, str, str]:
    spec = lease.get("spec") or {}
    return (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""),
            str(spec.get("leaseTransitions") or 0))


def decide_lease(lease: Obj | None, identity: str, now: float, observed_at: float) -> Step:
    """Pure. `observed_at`: when (our monotonic clock) the current record was first seen."""
    if lease is None:
        return Step.CREATE
    holder = holder_of(lease)
    if holder == identity:
        return Step.RENEW
    duration = get_path(lease, "spec", "leaseDurationSeconds")
    seconds = float(duration) if isinstance(duration, int | float) else 15.0
    if not holder or now >= observed_at + seconds:
        return Step.TAKE
    return Step.WAIT


def micro_time(when: datetime) -> str:
    """metav1.MicroTime wants exactly six fractional digits (RFC3339Micro)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(config: LeaseConfig, lease: Obj | None, step: Step, now: datetime) -> dict[str, Any]:
    spec = dict((lease or {}).get("spec") or {})
    transitions = int(spec.get("leaseTransitions") or 0)
    if step in (Step.CREATE, Step.TAKE):
        spec["acquireTime"] = micro_time(now)
        spec["leaseTransitions"] = transitions + (1 if step is Step.TAKE else 0)
    spec.update(holderIdentity=config.identity, renewTime=micro_time(now),
                leaseDurationSeconds=int(config.duration.total_seconds()))
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if lease is not None:  # a conditional update: 409 when somebody else wrote first
        metadata["resourceVersion"] = get_path(lease, "metadata", "resourceVersion")
    return {"apiVersion": f"{LEASE_GROUP}/{LEASE_VERSION}", "kind": "Lease",
            "metadata": metadata, "spec": spec}


class LeaderElector:
    def __init__(self, api: k8s.ApiClient, config: LeaseConfig, timeout: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._api = k8s.CustomObjectsApi(api)
        self._config = config
        self._timeout = timeout
        self._monotonic = monotonic
        self._wall = wall
        self._valid_until = 0.0  # monotonic time until which we may act
        self._observed: tuple[tuple[str, str, str], float] | None = None

    @property
    def identity(self) -> str:
        return self._config.identity

    def is_leader(self) -> bool:
        return self._monotonic() < self._valid_until

    def step(self) -> bool:
        """One acquire-or-renew attempt; returns is_leader() afterwards."""
        now = self._monotonic()
        try:
            lease = self._get()
            step = decide_lease(lease, self.identity, now, self._observe(lease, now))
            if step is not Step.WAIT:
                self._write(lease, step)
                self._set_leader(now)
            elif self.is_leader():
                self._lost(f"held by {holder_of(lease or {})}")
        except ApiException as err:
            if err.status == 409:  # somebody else wrote the Lease first
                self._lost("conflict on the Lease")
            else:
                log.warning("lease renewal failed", extra={"error": describe_error(err)})
        except Exception as err:  # transport: keep acting only until the renew deadline
            log.warning("lease renewal failed", extra={"error": describe_error(err)})
        return self.is_leader()

    def _observe(self, lease: Obj | None, now: float) -> float:
        record = record_of(lease) if lease is not None else ("", "", "")
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        return self._observed[1]

    def _set_leader(self, now: float) -> None:
        if not self.is_leader():
            log.info("became leader", extra={"lease": self._config.name,
                                              "identity": self.identity})
        self._valid_until = now + self._config.renew_deadline.total_seconds()

    def _lost(self, why: str) -> None:
        if self.is_leader():
            log.warning("lost leadership: stopping all writes", extra={"why": why})
        self._valid_until = 0.0

    def _get(self) -> Obj | None:
        try:
            lease = self._api.get_namespaced_custom_object(
                LEASE_GROUP, LEASE_VERSION, self._config.namespace, LEASE_PLURAL,
                self._config.name, _request_timeout=self._timeout)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return lease if isinstance(lease, dict) else None

    def _write(self, lease: Obj | None, step: Step) -> None:
        body = lease_body(self._config, lease, step, self._wall())
        if lease is None:
            self._api.create_namespaced_custom_object(
                LEASE_GROUP, LEASE_VERSION, self._config.namespace, LEASE_PLURAL, body,
                _request_timeout=self._timeout)
        else:
            self._api.replace_namespaced_custom_object(
                LEASE_GROUP, LEASE_VERSION, self._config.namespace, LEASE_PLURAL,
                self._config.name, body, _request_timeout=self._timeout)

    def release(self) -> None:
        """Hand the Lease over at shutdown (client-go ReleaseOnCancel): holder cleared."""
        if not self.is_leader():
            return
        self._valid_until = 0.0
        try:
            lease = self._get()
            if lease is None or holder_of(lease) != self.identity:
                return
            body = lease_body(self._config, lease, Step.RENEW, self._wall())
            body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            self._api.replace_namespaced_custom_object(
                LEASE_GROUP, LEASE_VERSION, self._config.namespace, LEASE_PLURAL,
                self._config.name, body, _request_timeout=self._timeout)
        except Exception as err:
            log.warning("cannot release the lease", extra={"error": describe_error(err)})

    async def run(self, on_change: Callable[[bool], None]) -> None:
        """Acquire/renew every retry period until cancelled; report leadership changes."""
        was = False
        while True:
            now = await asyncio.to_thread(self.step)
            if now != was:
                on_change(now)
                was = now
            await asyncio.sleep(self._config.retry_period.total_seconds())
