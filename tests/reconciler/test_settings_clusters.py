"""Flags, settings and the cluster registry (peer Secrets), without a cluster."""

from __future__ import annotations

import argparse
import base64
import logging
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from reconciler import cli
from reconciler.clusters import PeerSecret, Registry, peers_from_secrets
from reconciler.settings import ClusterSpec, Settings, parse_cluster_flag, parse_duration


@pytest.mark.parametrize(("text", "expected"), [
    ("0", timedelta(0)), ("30s", timedelta(seconds=30)), ("5m", timedelta(minutes=5)),
    ("1h", timedelta(hours=1)), ("1h30m", timedelta(minutes=90)), ("2d", timedelta(days=2)),
    ("1.5s", timedelta(seconds=1.5)), ("250ms", timedelta(milliseconds=250)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "-5m", "5m garbage", "1y", "five"])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_cluster_flag_with_options():
    spec = parse_cluster_flag("east=/k/east.yaml,context=admin,namespace=kv")
    assert spec == ClusterSpec(name="east", kubeconfig=Path("/k/east.yaml"), context="admin",
                               kubevirt_namespace="kv")


@pytest.mark.parametrize("value", ["east", "=/k", "east=", "east=/k,zone=x", "east=/k,namespace"])
def test_bad_cluster_flags(value):
    with pytest.raises(ValueError, match="--cluster"):
        parse_cluster_flag(value)


def test_settings_reject_unknown_managed_and_duplicate_clusters():
    a = ClusterSpec(name="a", kubeconfig=Path("/a"))
    with pytest.raises(ValidationError, match="unknown cluster"):
        Settings(clusters=(a,), managed=frozenset({"b"}))
    with pytest.raises(ValidationError, match="named twice"):
        Settings(clusters=(a, a))
    with pytest.raises(ValidationError, match="DNS label"):
        Settings(clusters=(ClusterSpec(name="A_b", kubeconfig=Path("/x")),))


def test_in_pod_defaults_manage_local_and_hold_the_lease_there():
    settings = Settings()
    assert settings.in_pod and settings.managed_clusters() == {"local"}
    assert settings.lease_cluster() == "local"
    explicit = Settings(clusters=(ClusterSpec(name="a", kubeconfig=Path("/a")),
                                  ClusterSpec(name="b", kubeconfig=Path("/b"))),
                        managed=frozenset({"b"}))
    assert explicit.managed_clusters() == {"b"} and explicit.lease_cluster() == "b"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser.parse_args(["reconcile", *argv])


def test_cli_defaults_match_the_issue():
    settings = cli.settings_from_args(parse("--namespace", "dlm"))
    assert (settings.resync_period, settings.gc_grace, settings.orphan_ttl,
            settings.stuck_timeout) == (timedelta(minutes=5), timedelta(minutes=5),
                                        timedelta(minutes=15), timedelta(hours=1))
    assert settings.kubevirt_namespace == "kubevirt" and settings.metrics_port == 9090
    assert settings.leader_election_namespace == "dlm"
    assert not (settings.once or settings.dry_run or settings.leader_elect)
    assert not settings.trust_own_ca_only  # every valid CA of a peer, as before
    assert cli.settings_from_args(parse("--trust-own-ca-only")).trust_own_ca_only


def test_cli_rejects_a_bad_duration(capsys):
    with pytest.raises(SystemExit):
        parse("--gc-grace", "soon")
    assert "invalid duration" in capsys.readouterr().err


def test_cli_exits_2_on_a_missing_kubeconfig(tmp_path):
    args = parse("--cluster", f"a={tmp_path / 'missing'}", "--once", "--log-level", "error")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert cli.main(args) == 2
    finally:
        root.handlers[:], root.level = handlers, level


def test_building_the_cli_imports_neither_the_kubernetes_client_nor_aiohttp():
    # Every `dlm-guard` command (check, --help) builds the whole parser: keep it light.
    code = ("import sys; from dlm_guard.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'aiohttp'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


# --- peer Secrets ------------------------------------------------------------------------------
KUBECONFIG = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}


def secret(name: str, label: str = "true", kubeconfig: Any = KUBECONFIG,
           namespace: str | None = None) -> dict[str, Any]:
    data = {}
    if kubeconfig is not None:
        data["kubeconfig"] = base64.b64encode(yaml.safe_dump(kubeconfig).encode()).decode()
    if namespace:
        data["kubevirt-namespace"] = base64.b64encode(namespace.encode()).decode()
    return {"metadata": {"name": name, "labels": {"dlm-guard.io/peer": label}}, "data": data}


def test_peer_names_come_from_the_label_value_or_the_secret_name():
    peers, problems = peers_from_secrets(
        [secret("west-kubeconfig", "west", namespace="kv"), secret("north")], Settings())
    assert problems == []
    assert [(p.config.name, p.config.kubevirt_namespace, p.config.managed) for p in peers] == \
        [("north", "kubevirt", False), ("west", "kv", False)]


def test_bad_peer_secrets_are_reported_and_skipped_not_fatal():
    peers, problems = peers_from_secrets([
        secret("no-kubeconfig", kubeconfig=None), secret("junk", kubeconfig="not a config"),
        secret("bad-name", "Not_A_Label"), secret("reserved", "local"),
        secret("a-first", "dup"), secret("b-second", "dup"), secret("good")], Settings())
    assert [p.config.name for p in peers] == ["dup", "good"]
    assert len(problems) == 5
    assert any("already named by secret/a-first" in p for p in problems)


def test_a_peer_named_in_manage_is_writable():
    peers, _ = peers_from_secrets([secret("west")], Settings(managed=frozenset({"local",
                                                                                "west"})))
    assert peers[0].config.managed


class FakeApi:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_registry_picks_up_added_and_removed_secrets_and_keeps_peers_when_unknown(
        monkeypatch):
    made: list[FakeApi] = []

    def fake_client(kubeconfig: Any) -> FakeApi:
        made.append(FakeApi())
        return made[-1]

    monkeypatch.setattr("reconciler.clusters.client_from_kubeconfig", fake_client)
    registry = Registry(Settings(), local_client=FakeApi)  # type: ignore[arg-type]
    assert [c.name for c in registry.clusters] == ["local"]
    assert sorted(c.name for c in registry.refresh([secret("west")])) == ["local", "west"]
    west = registry.get("west")
    assert registry.refresh([secret("west")]) and registry.get("west") is west  # same client
    # The local cache cannot be trusted now (None): keep the known peers.
    assert sorted(c.name for c in registry.refresh(None)) == ["local", "west"]
    assert sorted(c.name for c in registry.refresh([secret("west"), secret("north")])) == \
        ["local", "north", "west"]
    assert sorted(c.name for c in registry.refresh([secret("north")])) == ["local", "north"]
    assert made[0].closed  # the removed peer's client is closed
    local = registry.get("local")
    assert local is not None and local.managed


def test_a_changed_peer_secret_gets_a_new_client(monkeypatch):
    monkeypatch.setattr("reconciler.clusters.client_from_kubeconfig", lambda _: FakeApi())
    other = dict(KUBECONFIG, clusters=[{"name": "c", "cluster": {"server": "https://x:2"}}])
    registry = Registry(Settings(), local_client=FakeApi)  # type: ignore[arg-type]
    registry.refresh([secret("west")])
    first = registry.get("west")
    registry.refresh([secret("west", kubeconfig=other)])
    assert registry.get("west") is not first
    assert first is not None and isinstance(first.api, FakeApi) and first.api.closed


def test_peer_secret_is_a_pure_function_of_its_content():
    one, _ = peers_from_secrets([secret("west")], Settings())
    two, _ = peers_from_secrets([secret("west")], Settings())
    assert isinstance(one[0], PeerSecret) and one[0].config == two[0].config
