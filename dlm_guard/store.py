"""An in-memory copy of the cluster objects the rules and the reconciler read.

The webhook feeds it from watches (the admission path's only API call is webhook/live.py's
live GET of a VMI missing here); the reconciler fills one per cluster per pass; tests build one
by hand. Readers get plain dicts.
"""

from __future__ import annotations

import builtins
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from dlm_guard.domain import (
    KIND_KUBEVIRT,
    KIND_VM,
    KIND_VMI,
    KIND_VMIM,
    Obj,
    Role,
    migration_id,
    migration_role,
    name_of,
    namespace_of,
)

Key = tuple[str, str]  # (namespace, name)
TRACKED_KINDS = (KIND_VM, KIND_VMI, KIND_VMIM, KIND_KUBEVIRT)


class ObjectStore:
    """Objects by kind and (namespace, name), with an index of VMIMs by migrationID.

    Thread-safe: watch threads write while the event loop reads.
    """

    def __init__(self, objects: Iterable[Obj] = ()) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, Obj]] = {kind: {} for kind in TRACKED_KINDS}
        self._by_migration_id: dict[tuple[Role, str], dict[Key, Obj]] = defaultdict(dict)
        for obj in objects:
            self.upsert(obj)

    # --- writes -----------------------------------------------------------------------
    def upsert(self, obj: Obj, kind: str | None = None) -> None:
        kind = kind or str(obj.get("kind") or "")
        key = (namespace_of(obj), name_of(obj))
        with self._lock:
            old = self._objects.setdefault(kind, {}).get(key)
            if kind == KIND_VMIM and old is not None:
                self._unindex(old, key)
            self._objects[kind][key] = obj
            if kind == KIND_VMIM:
                self._index(obj, key)

    def delete(self, obj: Obj, kind: str | None = None) -> None:
        kind = kind or str(obj.get("kind") or "")
        key = (namespace_of(obj), name_of(obj))
        with self._lock:
            old = self._objects.setdefault(kind, {}).pop(key, None)
            if kind == KIND_VMIM and old is not None:
                self._unindex(old, key)

    def replace(self, kind: str, objects: Iterable[Obj]) -> None:
        """Swap in a fresh list of one kind (after a (re)list)."""
        fresh = {(namespace_of(o), name_of(o)): o for o in objects}
        with self._lock:
            self._objects[kind] = fresh
            if kind == KIND_VMIM:
                self._by_migration_id.clear()
                for key, obj in fresh.items():
                    self._index(obj, key)

    def _index(self, vmim: Obj, key: Key) -> None:
        role, mid = migration_role(vmim), migration_id(vmim)
        if role is not None and mid:
            self._by_migration_id[(role, mid)][key] = vmim

    def _unindex(self, vmim: Obj, key: Key) -> None:
        role, mid = migration_role(vmim), migration_id(vmim)
        if role is not None and mid:
            bucket = self._by_migration_id.get((role, mid))
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self._by_migration_id[(role, mid)]

    # --- reads ------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get(kind, {}).get((namespace, name))

    def list(self, kind: str) -> list[Obj]:
        with self._lock:
            return list(self._objects.get(kind, {}).values())

    def vmi(self, namespace: str, name: str) -> Obj | None:
        return self.get(KIND_VMI, namespace, name)

    def vm(self, namespace: str, name: str) -> Obj | None:
        return self.get(KIND_VM, namespace, name)

    def vmims_with_migration_id(self, role: Role, mid: str) -> builtins.list[Obj]:
        """All VMIMs of a role with that migrationID, any namespace, finished ones too."""
        with self._lock:
            return list(self._by_migration_id.get((role, mid), {}).values())

    def kubevirt(self) -> Obj | None:
        """The cluster's KubeVirt CR (one per cluster); the oldest name wins if several."""
        with self._lock:
            items = sorted(self._objects.get(KIND_KUBEVIRT, {}).items())
        return items[0][1] if items else None

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {kind: len(objs) for kind, objs in self._objects.items()}
