"""The chart README agrees with values.yaml, and the Dockerfile keeps its promises."""

from __future__ import annotations

import re

import yaml
from readme_table import CHART, END, START, documented_keys, table

REPO = CHART.parents[1]


def _leaves(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return set().union(*(_leaves(v, f"{prefix}.{k}" if prefix else k)
                             for k, v in node.items()))
    return {prefix}


def test_readme_values_table_is_current() -> None:
    readme = (CHART / "README.md").read_text()
    current = readme.partition(START)[2].partition(END)[0].strip()
    expected = table((CHART / "values.yaml").read_text())
    assert current == expected, (
        "charts/dlm-guard/README.md is stale: run python tests/chart/readme_table.py --write")


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = [key for key, _ in documented_keys(text)]
    assert len(documented) == len(set(documented))
    for leaf in _leaves(yaml.safe_load(text)):
        assert any(leaf == key or leaf.startswith(key + ".") for key in documented), leaf


def _stages(dockerfile: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in dockerfile.splitlines():
        if re.match(r"^FROM\s", line):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    builder, runtime = _stages(text)
    assert "AS builder" in builder[0] and "AS runtime" in runtime[0]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    runtime_text = "\n".join(runtime)
    # Only wheels come over, never the source tree; no compiler is ever installed there.
    assert "COPY . ." not in runtime_text and "--no-index" in runtime_text
    assert not re.search(r"apt-get install|gcc|build-essential", runtime_text)
    assert "pip uninstall --yes pip setuptools wheel" in runtime_text
    user = [line for line in runtime if line.startswith("USER ")]
    assert user == ["USER ${UID}:${GID}"] and "ARG UID=10001" in runtime_text
    assert runtime[-1] == 'CMD ["--help"]' and 'ENTRYPOINT ["dlm-guard"]' in runtime


def test_chart_user_matches_the_image_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = (REPO / "Dockerfile").read_text()
    assert f"ARG UID={values['securityContext']['runAsUser']}" in text
    assert f"ARG GID={values['securityContext']['runAsGroup']}" in text


def test_dockerignore_keeps_the_build_context_small_but_buildable() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    for needed in ("pyproject.toml", "README.md", "dlm_guard", "webhook", "reconciler", "certs"):
        assert needed not in ignored
    for heavy in (".git", ".venv", "tests", "charts"):
        assert heavy in ignored
