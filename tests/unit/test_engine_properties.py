"""Properties: whatever the request looks like, the engine answers with a well-formed Decision,
its patch applies, and mutating the patched object again changes nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
from factories import (
    BUSY_CLUSTER_OBJECTS,
    context,
    request,
    source_vmim,
    target_vmim,
    vm,
    vmim,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_guard.store import ObjectStore
from webhook.decision import Decision
from webhook.engine import Context, mutate, validate

PATCH_OPS = {"add", "remove", "replace", "move", "copy", "test"}
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=12)
           | st.sampled_from(["kubevirt.io", "VirtualMachine", "WaitAsReceiver", "CREATE",
                              "UPDATE", "VirtualMachineInstanceMigration", "true"]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


def contexts() -> st.SearchStrategy[Context]:
    stores = st.sampled_from([None, "empty", "busy"]).map(
        lambda kind: None if kind is None else ObjectStore(
            BUSY_CLUSTER_OBJECTS if kind == "busy" else ()))
    return stores.map(lambda store: context({}, store))


def assert_well_formed(decision: Decision, obj: Any) -> None:
    assert isinstance(decision, Decision) and isinstance(decision.allowed, bool)
    if decision.allowed:
        assert decision.code == 200 and decision.message == ""
    else:
        assert decision.code == 403 and decision.message.startswith("[")
    assert all(isinstance(w, str) and w.startswith("[") for w in decision.warnings)
    assert all(op["op"] in PATCH_OPS and isinstance(op["path"], str) for op in decision.patch)
    json.dumps(decision.review("uid"))
    if decision.patch:
        jsonpatch.apply_patch(obj, decision.patch)


@SETTINGS
@given(raw=json_values, ctx=contexts())
def test_arbitrary_json_never_raises(raw: Any, ctx: Context) -> None:
    for answer in (validate(raw, ctx), mutate(raw, ctx)):
        assert_well_formed(answer, None)
        assert answer.allowed and not answer.patch


request_shaped = st.fixed_dictionaries({}, optional={
    "uid": json_values,
    "kind": st.fixed_dictionaries({}, optional={
        "group": st.sampled_from(["kubevirt.io", "", "example.com"]) | json_values,
        "kind": st.sampled_from(["VirtualMachine", "VirtualMachineInstanceMigration"])
        | json_values}) | json_values,
    "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]) | json_values,
    "namespace": st.sampled_from(["vms", "kube-system"]) | json_values,
    "subResource": json_values,
    "object": json_values,
    "oldObject": json_values,
})


@SETTINGS
@given(raw=request_shaped, ctx=contexts())
def test_request_shaped_garbage_never_raises(raw: dict[str, Any], ctx: Context) -> None:
    assert_well_formed(validate(raw, ctx), raw.get("object"))
    assert_well_formed(mutate(raw, ctx), raw.get("object"))


# --- valid requests, then arbitrarily damaged -----------------------------------------
SEEDS = [vm(), vm(restore=None), source_vmim(), target_vmim(migration_id=""), vmim(),
         vmim(send_to={"migrationID": "a", "connectURL": "x:1"}, receive={})]


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(paths(item, (*at, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(paths(item, (*at, index)))
    return found


def damaged(obj: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(obj)[1:]))
        parent = obj
        for key in where[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(json_values)
        if not paths(obj)[1:]:
            break
    return obj


@SETTINGS
@given(data=st.data(), seed=st.sampled_from(SEEDS),
       operation=st.sampled_from(["CREATE", "UPDATE"]), ctx=contexts())
def test_damaged_requests_get_well_formed_idempotent_answers(
        data: st.DataObject, seed: dict[str, Any], operation: str, ctx: Context) -> None:
    obj = damaged(seed, data)
    before = copy.deepcopy(obj)
    req = request(obj, operation=operation, old=seed)
    req["kind"] = request(seed)["kind"]  # keep the request aimed at our rules
    assert_well_formed(validate(req, ctx), obj)
    first = mutate(req, ctx)
    assert_well_formed(first, obj)
    assert obj == before  # the engine never changes the request in place
    patched = jsonpatch.apply_patch(obj, first.patch)
    assert mutate({**req, "object": patched}, ctx).patch == []
