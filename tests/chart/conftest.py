"""Fixtures of the chart tests: `helm` (a hard failure when missing) and rendered manifests.

`binaries` comes from the control-plane plugin (root conftest.py). The end-to-end test starts a
cluster of its own, so the webhook configurations it installs (failurePolicy Fail) never reach
other tests' clusters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_support import FULL_VALUES, HelmNotFound, Manifest, find_helm, render


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return find_helm()
    except HelmNotFound as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def default_docs(helm: Path) -> list[Manifest]:
    return render(helm)


@pytest.fixture(scope="session")
def full_docs(helm: Path) -> list[Manifest]:
    return render(helm, [FULL_VALUES])
