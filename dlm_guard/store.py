"""Immutable views of the cluster objects the rules and the reconciler read.

A `KindTable` holds one kind's objects, projected (dlm_guard/projection.py) and encoded as
compact JSON: a projected VMI costs well under a kilobyte that way, a fraction of what the same
fields cost as Python dicts. Tables never change: a watch builds a new table per change and
swaps it in with one reference assignment, so a reader that took a table (or an `ObjectStore`
of several) sees one consistent state for as long as it holds it, without a lock per lookup.

The webhook's one API call on the admission path is webhook/live.py's GET of a VMI missing
here. Readers get plain dicts, decoded afresh on every read: a caller may change what it got without
touching the store. The webhook takes an `ObjectStore` per review, the reconciler one per
cluster per pass, tests build one from objects by hand (through the same projections).
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from dlm_guard.domain import (
    KIND_KUBEVIRT,
    KIND_VM,
    KIND_VMI,
    KIND_VMIM,
    Obj,
    Role,
    kind_of,
    migration_id,
    migration_role,
    name_of,
    namespace_of,
)
from dlm_guard.projection import project_object

Key = tuple[str, str]  # (namespace, name)
MigrationKey = tuple[Role, str]  # (role, migrationID)


def key_of(obj: Obj) -> Key:
    return (namespace_of(obj), name_of(obj))


def _migration_key(kind: str, obj: Obj) -> MigrationKey | None:
    if kind != KIND_VMIM:
        return None
    role, mid = migration_role(obj), migration_id(obj)
    return (role, mid) if role is not None and mid else None


@dataclass(frozen=True, slots=True)
class KindTable:
    """One kind's objects by (namespace, name); VMIMs also by (role, migrationID)."""

    kind: str
    blobs: Mapping[Key, bytes] = field(default_factory=dict)
    by_migration_id: Mapping[MigrationKey, frozenset[Key]] = field(default_factory=dict)

    @classmethod
    def build(cls, kind: str, objects: Iterable[Obj]) -> KindTable:
        builder = TableBuilder(kind)
        builder.stage(objects)
        builder.settle()
        return builder.table()

    def upserted(self, obj: Obj) -> KindTable:
        """This table with `obj` added or replaced; `self` when its projection is unchanged
        (most VMI status updates touch no field we keep)."""
        projected = project_object(self.kind, obj)
        key, blob = key_of(projected), orjson.dumps(projected)
        old = self.blobs.get(key)
        if old == blob:
            return self
        blobs = dict(self.blobs)
        blobs[key] = blob
        index = self._reindexed(key, old, _migration_key(self.kind, projected))
        return KindTable(self.kind, blobs, index)

    def deleted(self, obj: Obj) -> KindTable:
        key = key_of(obj)
        old = self.blobs.get(key)
        if old is None:
            return self
        blobs = dict(self.blobs)
        del blobs[key]
        return KindTable(self.kind, blobs, self._reindexed(key, old, None))

    def _reindexed(self, key: Key, old: bytes | None,
                   new: MigrationKey | None) -> Mapping[MigrationKey, frozenset[Key]]:
        before = _migration_key(self.kind, orjson.loads(old)) if old is not None else None
        if before == new:
            return self.by_migration_id
        index = dict(self.by_migration_id)
        if before is not None:
            remaining = index.get(before, frozenset()) - {key}
            if remaining:
                index[before] = remaining
            else:
                index.pop(before, None)
        if new is not None:
            index[new] = index.get(new, frozenset()) | {key}
        return index

    def get(self, key: Key) -> dict[str, Any] | None:
        blob = self.blobs.get(key)
        return orjson.loads(blob) if blob is not None else None

    def values(self) -> Iterator[dict[str, Any]]:
        for blob in self.blobs.values():
            yield orjson.loads(blob)

    def with_migration_id(self, mkey: MigrationKey) -> builtins.list[dict[str, Any]]:
        return [obj for key in sorted(self.by_migration_id.get(mkey, ()))
                if (obj := self.get(key)) is not None]

    def __len__(self) -> int:
        return len(self.blobs)


class TableBuilder:
    """Builds a table from list pages so that what is kept is packed together in memory.

    CPython's small-object allocator returns a memory pool only once every object in it is
    free. A key or a small blob made while a page's thousands of decoded objects are alive
    lands among them and keeps their pools (4 KiB each) alive after the page is freed: with
    10,000 VMIs that held ~40 MiB for ~6 MiB of data (bench/cache.py). So `stage` projects a
    page, the caller drops the page, and `settle` then copies what is kept into fresh objects.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._blobs: dict[Key, bytes] = {}
        self._migration_keys: dict[Key, MigrationKey] = {}
        self._staged: list[tuple[str, str, bytes, MigrationKey | None]] = []

    def stage(self, objects: Iterable[Obj]) -> None:
        for obj in objects:
            projected = project_object(self.kind, obj)
            self._staged.append((namespace_of(projected), name_of(projected),
                                 orjson.dumps(projected), _migration_key(self.kind, projected)))

    def settle(self) -> None:
        staged, self._staged = self._staged, []
        for namespace, name, blob, mkey in staged:
            key = (sys.intern(namespace), _fresh(name))
            self._blobs[key] = bytes(memoryview(blob))  # a copy: see the class doc
            # The last object with a key wins, in the index too.
            if mkey is not None:
                self._migration_keys[key] = (mkey[0], _fresh(mkey[1]))
            else:
                self._migration_keys.pop(key, None)

    def table(self) -> KindTable:
        self.settle()
        index: dict[MigrationKey, set[Key]] = {}
        for key, mkey in self._migration_keys.items():
            index.setdefault(mkey, set()).add(key)
        return KindTable(self.kind, self._blobs, {k: frozenset(v) for k, v in index.items()})


def _fresh(text: str) -> str:
    """A new string object equal to `text` (never `text` itself)."""
    return text.encode().decode()


class ObjectStore:
    """A consistent read-only view over one table per kind (a missing kind reads as empty).

    `stale` says why the view should not be relied on (None: current); see webhook/cache.py.
    """

    def __init__(self, objects: Iterable[Obj] = (), *,
                 tables: Mapping[str, KindTable] | None = None, stale: str | None = None,
                 ) -> None:
        self.stale = stale
        if tables is None:
            grouped: dict[str, list[Obj]] = {}
            for obj in objects:
                grouped.setdefault(kind_of(obj), []).append(obj)
            tables = {kind: KindTable.build(kind, items) for kind, items in grouped.items()}
        self._tables = dict(tables)

    def view(self) -> ObjectStore:
        """Itself: a store is already one consistent view (the engine asks each review's
        cluster source for one, and a cache gives a fresh one each time)."""
        return self

    def marked_stale(self, reason: str) -> ObjectStore:
        return ObjectStore(tables=self._tables, stale=reason)

    def table(self, kind: str) -> KindTable:
        return self._tables.get(kind) or KindTable(kind)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.table(kind).get((namespace, name))

    def list(self, kind: str) -> builtins.list[dict[str, Any]]:
        return builtins.list(self.table(kind).values())

    def vmi(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(KIND_VMI, namespace, name)

    def vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(KIND_VM, namespace, name)

    def vmims_with_migration_id(self, role: Role, mid: str) -> builtins.list[dict[str, Any]]:
        """All VMIMs of a role with that migrationID, any namespace, finished ones too."""
        return self.table(KIND_VMIM).with_migration_id((role, mid))

    def kubevirt(self) -> dict[str, Any] | None:
        """The cluster's KubeVirt CR (one per cluster); the first by (namespace, name) if
        several."""
        table = self.table(KIND_KUBEVIRT)
        return table.get(min(table.blobs)) if table.blobs else None

    def counts(self) -> dict[str, int]:
        return {kind: len(table) for kind, table in self._tables.items()}
