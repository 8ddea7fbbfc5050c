"""tools/testbin/build.sh paths that need no Go build (the build itself is exercised by CI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from controlplane.binaries import BUILD_SCRIPT, read_versions

NO_GO_PATH = "/usr/bin:/bin"  # bash, sed, grep, flock; not /usr/local/go/bin


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": NO_GO_PATH, "HOME": str(tmp_path), "DLM_GUARD_CACHE_DIR": str(tmp_path / "c")}
    return subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_kubebuilder_assets_skip_the_build(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in ("kube-apiserver", "etcd", "kubectl"):
        (assets / name).write_text("#!/bin/sh\n")
        (assets / name).chmod(0o755)
    result = _run(tmp_path, "kube", KUBEBUILDER_ASSETS=str(assets))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(assets)


def test_incomplete_kubebuilder_assets_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    result = _run(tmp_path, "kube", KUBEBUILDER_ASSETS=str(tmp_path / "assets"))
    assert result.returncode != 0
    assert "lacks one of: kube-apiserver etcd kubectl" in result.stderr


def test_missing_go_fails_clearly(tmp_path: Path) -> None:
    result = _run(tmp_path, "kube")
    assert result.returncode != 0
    assert "Go is not installed" in result.stderr


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    result = _run(tmp_path, "kubelet")
    assert result.returncode != 0
    assert "unknown target" in result.stderr


def test_without_go_a_cached_fallback_is_used(tmp_path: Path) -> None:
    fallback = tmp_path / "c" / "testbin" / read_versions()["K8S_FALLBACK_VERSION"]
    fallback.mkdir(parents=True)
    for name in ("kube-apiserver", "etcd", "kubectl"):
        (fallback / name).write_text("#!/bin/sh\n")
        (fallback / name).chmod(0o755)
    result = _run(tmp_path, "kube")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(fallback)
