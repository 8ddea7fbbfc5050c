"""The pure parts of doctor's gather: the server of a peer kubeconfig, a bad caBundle."""

from __future__ import annotations

import base64

import yaml

from doctor.gather import _server_of, probe


def secret(config: object) -> dict[str, object]:
    raw = yaml.safe_dump(config).encode() if not isinstance(config, bytes) else config
    return {"data": {"kubeconfig": base64.b64encode(raw).decode()}}


def test_the_current_contexts_cluster_is_the_server() -> None:
    config = {"clusters": [{"name": "one", "cluster": {"server": "https://one:6443"}},
                           {"name": "two", "cluster": {"server": "https://two:6443"}}],
              "contexts": [{"name": "c", "context": {"cluster": "two", "user": "u"}}],
              "current-context": "c", "users": [{"name": "u", "user": {"token": "secret"}}]}
    assert _server_of(secret(config)) == "https://two:6443"


def test_without_a_context_the_first_cluster_and_garbage_gives_nothing() -> None:
    assert _server_of(secret({"clusters": [{"name": "x", "cluster": {
        "server": "https://x:6443"}}]})) == "https://x:6443"
    assert _server_of(secret(b"\xff\xfe not yaml")) == ""
    assert _server_of({"data": {"kubeconfig": "%%%"}}) == ""
    assert _server_of({"data": {}}) == ""
    assert _server_of(secret(["a", "list"])) == ""


def test_an_unusable_ca_bundle_is_said_so_without_dialling() -> None:
    result = probe("https://127.0.0.1:9/validate", base64.b64encode(b"not a pem").decode(), 1.0)
    assert not result.ok and result.detail.startswith("caBundle unusable")
