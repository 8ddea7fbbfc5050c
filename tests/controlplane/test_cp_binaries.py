"""Finding kube-apiserver, etcd and kubectl: KUBEBUILDER_ASSETS first, then the build cache."""

from __future__ import annotations

from pathlib import Path

from controlplane.binaries import (
    KUBE_BINARIES,
    Binaries,
    binaries_or_reason,
    cache_dir,
    find_binaries,
    read_versions,
)


def _fake_bins(directory: Path, names: tuple[str, ...] = KUBE_BINARIES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    return directory


def test_pins_name_a_1_36_release() -> None:
    pins = read_versions()
    assert pins["K8S_VERSION"].startswith("v1.36.")
    assert pins["ETCD_VERSION"].startswith("v3.6.")
    assert {"K8S_FALLBACK_VERSION", "HELM_VERSION"} <= pins.keys()


def test_kubebuilder_assets_win(tmp_path: Path) -> None:
    assets = _fake_bins(tmp_path / "assets")
    found = binaries_or_reason({"KUBEBUILDER_ASSETS": str(assets)})
    assert isinstance(found, Binaries)
    assert found.source == "KUBEBUILDER_ASSETS"
    assert found.etcd == assets.resolve() / "etcd"


def test_incomplete_kubebuilder_assets_say_what_is_missing(tmp_path: Path) -> None:
    assets = _fake_bins(tmp_path / "assets", ("kube-apiserver", "kubectl"))
    reason = binaries_or_reason({"KUBEBUILDER_ASSETS": str(assets)})
    assert isinstance(reason, str)
    assert "etcd" in reason
    assert find_binaries({"KUBEBUILDER_ASSETS": str(assets)}) is None


def test_cache_lookup_uses_pinned_then_fallback_version(tmp_path: Path) -> None:
    env = {"DLM_GUARD_CACHE_DIR": str(tmp_path)}
    reason = binaries_or_reason(env)
    assert isinstance(reason, str)
    assert "build.sh" in reason
    _fake_bins(tmp_path / "testbin" / read_versions()["K8S_FALLBACK_VERSION"])
    found = find_binaries(env)
    assert found is not None
    assert found.source == "cache"


def test_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "dlm-guard"
    assert cache_dir({"DLM_GUARD_CACHE_DIR": "/x", "XDG_CACHE_HOME": "/y"}) == Path("/x")
