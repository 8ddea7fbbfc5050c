"""The demo's manifests, reviewed offline by `dlm-guard check` (fast: no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controlplane.demo import EXAMPLES, source_vmim, write_examples
from dlm_guard.cli import main as dlm_guard


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    write_examples(tmp_path)
    (tmp_path / "source-vmim.yaml").write_text(source_vmim("vm-0123456789ab", "10.0.0.1:9185"))
    return tmp_path


def test_every_example_is_one_yaml_object() -> None:
    for name, text in EXAMPLES.items():
        docs = list(yaml.safe_load_all(text))
        assert len(docs) == 1 and docs[0]["kind"], name


def test_only_the_shareable_disk_vm_is_denied_and_the_mutations_apply(
        examples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dlm_guard(["check", "-o", "json", str(examples)]) == 1
    reports = json.loads(capsys.readouterr().out)
    verdicts = {(Path(r["file"]).name, r["verdict"]) for r in reports}
    denied = {file for file, verdict in verdicts if verdict == "DENY"}
    assert denied == {"target-vm-shareable-disk.yaml"}
    patched = {Path(r["file"]).name: json.dumps(r.get("patch")) for r in reports}
    assert "kubevirt.io/restore-run-strategy" in patched["target-vm.yaml"]
    assert "/spec/receive/migrationID" in patched["target-vmim.yaml"]
