"""Finding helm: explicit $HELM, the pinned cached build, any cached build, PATH; else a loud
failure that says how to build it (never a silent skip)."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_support import HelmNotFound, find_helm, pinned_versions


def _fake_helm(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_missing_helm_fails_loudly_with_the_build_command(tmp_path: Path) -> None:
    env = {"DLM_GUARD_CACHE_DIR": str(tmp_path / "cache"), "PATH": str(tmp_path / "bin")}
    with pytest.raises(HelmNotFound) as err:
        find_helm(env)
    assert "HELM NOT FOUND" in str(err.value)
    assert "bash tools/testbin/build.sh helm" in str(err.value)


def test_pinned_cached_build_wins_over_path(tmp_path: Path) -> None:
    version = pinned_versions()["HELM_VERSION"]
    pinned = _fake_helm(tmp_path / "cache" / "testbin" / f"helm-{version}" / "helm")
    _fake_helm(tmp_path / "cache" / "testbin" / "helm-v3.0.0" / "helm")
    _fake_helm(tmp_path / "bin" / "helm")
    env = {"DLM_GUARD_CACHE_DIR": str(tmp_path / "cache"), "PATH": str(tmp_path / "bin")}
    assert find_helm(env) == pinned


def test_any_cached_build_then_path(tmp_path: Path) -> None:
    on_path = _fake_helm(tmp_path / "bin" / "helm")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "PATH": str(tmp_path / "bin")}
    assert find_helm(env) == on_path
    other = _fake_helm(tmp_path / "xdg" / "dlm-guard" / "testbin" / "helm-v3.0.0" / "helm")
    assert find_helm(env) == other


def test_explicit_helm_env(tmp_path: Path) -> None:
    chosen = _fake_helm(tmp_path / "mine" / "helm")
    assert find_helm({"HELM": str(chosen), "PATH": ""}) == chosen
    with pytest.raises(HelmNotFound, match=r"HELM=.* is not an executable"):
        find_helm({"HELM": str(tmp_path / "nope"), "PATH": ""})
