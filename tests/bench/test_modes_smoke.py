"""`python -m bench smoke --parts modes`: the admission-mode benchmark works (structure only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_smoke import positive, smoke

from bench.modes import PHASES
from controlplane.pytest_plugin import binaries  # noqa: F401  (fixture)


@pytest.mark.e2e
def test_modes_smoke(tmp_path: Path, binaries) -> None:  # noqa: F811
    modes = smoke("modes", tmp_path / "smoke.json")["modes"]
    assert set(modes["phases"]) == set(PHASES)
    for summary in modes["phases"].values():
        assert summary["count"] == 4 and positive(summary["p50_ms"])
    assert all(positive(ratio) for ratio in modes["ratios"].values())
    assert modes["apiserver"].startswith("v1.36")
    inside = modes["admission_ms_per_create_inside_apiserver"]
    assert set(inside) == set(PHASES)
    assert all(positive(ms) for steps in inside.values() for ms in steps.values())
