"""Pieces of the cluster harness that need no binaries."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from controlplane import kubeconfig
from controlplane.cluster import ClusterStartError, _retry_port_clash, etcd_version
from controlplane.ports import free_ports
from controlplane.process import Launcher, StartCancelled


def test_port_clash_is_retried_other_errors_are_not() -> None:
    calls: list[int] = []

    def clashes_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ClusterStartError("listen tcp 127.0.0.1:1: bind: address already in use")
        return "up"

    assert _retry_port_clash(clashes_once) == "up"
    assert len(calls) == 2

    def broken() -> str:
        raise ClusterStartError("unknown flag")

    with pytest.raises(ClusterStartError, match="unknown flag"):
        _retry_port_clash(broken)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert not set(ports) & set(free_ports(20))


def test_cancelled_launcher_spawns_nothing(tmp_path: Path) -> None:
    launcher = Launcher()
    launcher.stop_all()
    with pytest.raises(StartCancelled):
        launcher.spawn("x", ["true"], tmp_path / "x.log", tmp_path, stop_wave=0)


def test_kubeconfig_embeds_credentials_and_sets_the_context(tmp_path: Path) -> None:
    config = kubeconfig.render("c1", "https://127.0.0.1:6443", b"CA", b"CERT", b"KEY")
    path = kubeconfig.write(tmp_path / "kubeconfig", config)
    loaded = yaml.safe_load(path.read_text())
    assert loaded["current-context"] == "c1"
    assert loaded["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    user = loaded["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == b"KEY"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("said", "expected"),
    [("etcd Version: 3.6.16\nGit SHA: x", (3, 6)), ("etcd Version: 3.4.23", (3, 4)), ("", (0, 0))],
)
def test_etcd_version_decides_on_no_fsync(
    tmp_path: Path, said: str, expected: tuple[int, int]
) -> None:
    fake = tmp_path / "etcd"
    fake.write_text(f"#!/bin/sh\nprintf '{said}\\n'\n")
    fake.chmod(0o755)
    assert etcd_version(fake) == expected
