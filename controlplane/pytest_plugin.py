"""pytest fixtures for end-to-end tests on real local clusters.

Register with `pytest_plugins = ["controlplane.pytest_plugin"]` in the top-level conftest.py,
or import the fixtures and hooks into a conftest.py.

- `binaries`: kube-apiserver/etcd/kubectl; built by tools/testbin/build.sh when missing and Go
  is there. Skipped loudly only when they cannot be had; DLM_GUARD_E2E_REQUIRED=1 turns that
  skip into a failure (for CI).
- `clusters`: two clusters (session-scoped) with the KubeVirt-shaped CRDs installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from controlplane.binaries import Binaries, binaries_or_reason, build_binaries
from controlplane.cluster import Cluster, start_clusters
from controlplane.crds import install_crds_on

E2E_REQUIRED_ENV = "DLM_GUARD_E2E_REQUIRED"
_skip_reasons: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs real kube-apiserver + etcd (tools/testbin/build.sh builds them)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skip_reasons:
        terminalreporter.write_sep("!", "END-TO-END TESTS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(_skip_reasons[0], red=True)


def _loud(reason: str) -> str:
    return (
        f"NO CONTROL-PLANE BINARIES, E2E TESTS SKIPPED: {reason}. Build them with "
        "`bash tools/testbin/build.sh` (needs Go and the Go module proxy) or set "
        "KUBEBUILDER_ASSETS to a folder with kube-apiserver, etcd and kubectl."
    )


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    found = binaries_or_reason()
    if isinstance(found, str) and not os.environ.get("KUBEBUILDER_ASSETS"):
        log = tmp_path_factory.mktemp("testbin") / "build.log"
        print(f"\n[controlplane] {found}\n[controlplane] building, log: {log}", file=sys.stderr)
        found = build_binaries(log)
    if isinstance(found, str):
        message = _loud(found)
        if os.environ.get(E2E_REQUIRED_ENV, "") not in ("", "0"):
            pytest.fail(message)
        _skip_reasons.append(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def clusters(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Cluster]]:
    """Two clusters (cluster1, cluster2) with CRDs; logs stay under pytest's basetemp."""
    with start_clusters(2, tmp_path_factory.mktemp("clusters"), binaries=binaries) as started:
        install_crds_on(started)
        yield started
