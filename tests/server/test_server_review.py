"""Decoding an AdmissionReview body: what passes, and the status and reason of what does not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from server_support import TARGET_VMIM, review

from webhook.engine import parse_request
from webhook.review import (
    MAX_BODY_BYTES,
    ReviewError,
    check_content_type,
    check_declared_length,
    decode_review,
)


def _body(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_valid_review_is_decoded_into_the_engines_request() -> None:
    sent = review(TARGET_VMIM, uid="u-1")
    decoded = decode_review(_body(sent))
    assert (decoded.api_version, decoded.uid) == ("admission.k8s.io/v1", "u-1")
    assert decoded.request == parse_request(sent["request"])
    assert (decoded.object_kind, decoded.operation, decoded.namespace, decoded.name) == (
        "VirtualMachineInstanceMigration", "CREATE", "vms", "example-target-migration")


def test_v1beta1_is_accepted_and_remembered() -> None:
    sent = review(TARGET_VMIM) | {"apiVersion": "admission.k8s.io/v1beta1"}
    assert decode_review(_body(sent)).api_version == "admission.k8s.io/v1beta1"


def test_minimal_request_decodes() -> None:
    minimal = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "x"}}
    decoded = decode_review(_body(minimal))
    assert (decoded.uid, decoded.object_kind, decoded.operation) == ("x", "", "")


def _with_request(**changes: Any) -> Any:
    sent = review(TARGET_VMIM)
    sent["request"].update(changes)
    return sent


def _without(key: str) -> Any:
    sent = review(TARGET_VMIM)
    del sent["request"][key]
    return sent


BAD_BODIES = [
    # (id, body, words the one-line reason must contain)
    ("not-json", b"{not json", ["not valid JSON"]),
    ("empty", b"", ["not valid JSON"]),
    ("not-utf8", b"\xff\xfe\x00{", ["not valid JSON"]),
    ("nan", b'{"apiVersion": NaN}', ["not valid JSON", "NaN"]),
    ("deep", b"[" * 100_000, ["nested deeper than 100 levels"]),
    ("array", b"[1, 2]", ["JSON array", "not an AdmissionReview"]),
    ("string", b'"AdmissionReview"', ["JSON string"]),
    ("null", b"null", ["JSON null"]),
    ("number", b"42", ["JSON number"]),
    ("no-request", _body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
     ["request", "required"]),
    ("request-not-object", _body({"apiVersion": "admission.k8s.io/v1",
                                  "kind": "AdmissionReview", "request": "x"}), ["request"]),
    ("missing-uid", _body(_without("uid")), ["request.uid", "required"]),
    ("empty-uid", _body(_with_request(uid="")), ["request.uid"]),
    ("uid-not-string", _body(_with_request(uid=7)), ["request.uid", "string"]),
    ("object-not-object", _body(_with_request(object=[1])), ["request.object"]),
    ("old-object-not-object", _body(_with_request(oldObject="x")), ["request.oldObject"]),
    ("kind-not-object", _body(_with_request(kind="VirtualMachine")), ["request.kind"]),
    ("operation-not-string", _body(_with_request(operation=1)), ["request.operation"]),
    ("wrong-kind", _body(review(TARGET_VMIM) | {"kind": "TokenReview"}), ["kind"]),
    ("wrong-api-version", _body(review(TARGET_VMIM) | {"apiVersion": "v1"}), ["apiVersion"]),
]


@pytest.mark.parametrize(("body", "words"), [(b, w) for _, b, w in BAD_BODIES],
                         ids=[i for i, _, _ in BAD_BODIES])
def test_bad_bodies_are_400_with_a_one_line_reason(body: bytes, words: list[str]) -> None:
    with pytest.raises(ReviewError) as caught:
        decode_review(body)
    assert caught.value.status == 400
    reason = caught.value.reason
    assert "\n" not in reason and len(reason) <= 200
    for word in words:
        assert word in reason


@pytest.mark.parametrize("media_type", ["application/json", "Application/JSON"])
def test_json_content_type_passes(media_type: str) -> None:
    check_content_type(media_type)


@pytest.mark.parametrize("media_type", ["", "text/plain", "application/x-www-form-urlencoded",
                                        "application/yaml", "application/jsonx"])
def test_other_content_types_are_415(media_type: str) -> None:
    with pytest.raises(ReviewError) as caught:
        check_content_type(media_type)
    assert caught.value.status == 415
    assert "application/json" in caught.value.reason


def test_declared_length_over_the_limit_is_413_before_reading() -> None:
    check_declared_length(None)
    check_declared_length(MAX_BODY_BYTES)
    with pytest.raises(ReviewError) as caught:
        check_declared_length(MAX_BODY_BYTES + 1)
    assert caught.value.status == 413
