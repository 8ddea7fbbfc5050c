"""Property tests, in process (no TLS, fast): no body ever gets a 500 or a malformed answer."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import SOURCE_VMIM, TARGET_VM, TARGET_VMIM, Obj, review

from dlm_guard.store import ObjectStore
from webhook.engine import Context
from webhook.policy import Policy
from webhook.server import create_app

JSON = {"Content-Type": "application/json"}
ENDPOINTS = ("/mutate", "/validate")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

# Cluster state so the rules that read it run too.
CLUSTER = ObjectStore([
    {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
     "metadata": {"name": "example-decentralized-lm-vm", "namespace": "vms",
                  "annotations": {"kubevirt.io/create-migration-target": "true"}},
     "spec": TARGET_VM["spec"]["template"]["spec"], "status": {"phase": "WaitingForSync"}},
    {"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
     "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
     "spec": {"configuration": {"developerConfiguration": {
         "featureGates": ["DecentralizedLiveMigration"]}}},
     "status": {"observedKubeVirtVersion": "v1.7.0"}},
])
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    ctx = Context(policy=Policy(), cluster=CLUSTER, new_id=lambda: "0123456789ab")
    async with TestClient(TestServer(create_app(ctx))) as test_client:
        yield test_client


def assert_well_formed(sent: Any, answer: Any) -> None:
    """What the API server needs from an answer to be usable."""
    request = sent["request"]
    assert answer["apiVersion"] == sent["apiVersion"] and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == request["uid"]
    assert isinstance(response["allowed"], bool)
    if not response["allowed"]:
        assert response["status"]["code"] == 403 and response["status"]["message"]
    assert all(isinstance(w, str) for w in response.get("warnings", []))
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(response["patch"], validate=True))
        assert isinstance(patch, list) and patch
        jsonpatch.apply_patch(request["object"], patch)  # applies to what we were sent


async def _post(client: TestClient[Any, Any], path: str, body: bytes) -> tuple[int, str]:
    async with client.post(path, data=body, headers=JSON) as resp:
        return resp.status, await resp.text()


@PROPERTY_SETTINGS
@given(body=json_values, path=st.sampled_from(ENDPOINTS))
async def test_arbitrary_json_is_answered_or_refused(client: TestClient[Any, Any], body: Any,
                                                     path: str) -> None:
    status, text = await _post(client, path, json.dumps(body).encode())
    assert status in (200, 400), text
    if status == 200:
        assert_well_formed(body, json.loads(text))


@PROPERTY_SETTINGS
@given(body=st.binary(max_size=64), path=st.sampled_from(ENDPOINTS))
async def test_arbitrary_bytes_are_answered_or_refused(client: TestClient[Any, Any],
                                                       body: bytes, path: str) -> None:
    status, _ = await _post(client, path, body)
    assert status in (200, 400)


# --- Mutated AdmissionReviews ---------------------------------------------------------
def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes), the value itself first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(doc: Any, path: tuple[Any, ...], replacement: Any, delete: bool) -> Any:
    if not path:
        return replacement
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return doc


BASE_REVIEWS = [review(TARGET_VM), review(TARGET_VMIM), review(SOURCE_VMIM),
                review(TARGET_VMIM, "UPDATE", old=TARGET_VMIM),
                review(SOURCE_VMIM, "DELETE")]


@st.composite
def mutated_reviews(draw: st.DrawFn) -> Obj:
    doc = copy.deepcopy(draw(st.sampled_from(BASE_REVIEWS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths[1:] if len(paths) > 1 else paths))
        doc = _mutate(doc, path, draw(json_values), delete=draw(st.booleans()))
    return doc


@PROPERTY_SETTINGS
@given(sent=mutated_reviews(), path=st.sampled_from(ENDPOINTS))
async def test_mutated_reviews_never_get_a_500(client: TestClient[Any, Any], sent: Obj,
                                               path: str) -> None:
    status, text = await _post(client, path, json.dumps(sent).encode())
    assert status in (200, 400), text
    if status == 200:
        assert_well_formed(sent, json.loads(text))
