"""`dlm-guard check`: reading manifests, verdicts, output formats and exit codes."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import EXAMPLES, FORKLIFT_MIGRATION_ID, context, domain, source_vmim, target_vmim, vm
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.check import (
    Document,
    check_documents,
    format_json,
    format_text,
    main,
    register_check,
)

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    folder = tmp_path / "examples"
    folder.mkdir()
    for name, text in EXAMPLES.items():
        (folder / name).write_text(text)
    return folder


def write(tmp_path: Path, name: str, *objects: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(objects))
    return path


def run_json(capsys: Capture, *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main([*argv, "--output", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_documented_examples_are_all_allowed(examples: Path, capsys: Capture) -> None:
    code = main([str(examples)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == [
        "ALLOW VirtualMachine -/example-decentralized-lm-vm",
        "ALLOW VirtualMachineInstanceMigration -/example-source-migration",
        "ALLOW VirtualMachine -/example-decentralized-lm-vm",
        "ALLOW VirtualMachineInstanceMigration -/example-target-migration",
    ]
    assert "4 KubeVirt object(s) checked, 2 other object(s) skipped" in err


def test_json_output_carries_findings_modes_and_patch(tmp_path: Path, capsys: Capture) -> None:
    bad = vm(name="bad", restore=None, dom=domain(tpm={"persistent": True},
                                                  disks=[{"name": "d", "lun": {}}]))
    code, results = run_json(capsys, str(write(tmp_path, "vm.yaml", bad)))
    assert code == 1
    [result] = results
    assert {k: result[k] for k in ("kind", "namespace", "name", "verdict", "document")} == {
        "kind": "VirtualMachine", "namespace": "vms", "name": "bad", "verdict": "DENY",
        "document": 1}
    assert [(f["rule"], f["mode"]) for f in result["findings"]] == [
        ("lun-disk", "enforce"), ("persistent-state", "warn")]
    assert result["findings"][0]["path"] == "spec.template.spec.domain.devices.disks[0].lun"
    # Validation ran on the mutated object: the injected annotation is not a finding.
    assert result["patch"] == [{"op": "add", "path": "/metadata/annotations",
                                "value": {"kubevirt.io/restore-run-strategy": "Always"}}]


def test_text_output_indents_findings_under_the_object(tmp_path: Path, capsys: Capture) -> None:
    path = write(tmp_path, "m.yaml", source_vmim(name="s", connect_url="https://x:1"),
                 vm(name="w", dom=domain(tpm={"persistent": True})))
    assert main([str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "DENY VirtualMachineInstanceMigration vms/s"
    assert lines[1].startswith("  enforce: [connect-url] spec.sendTo.connectURL: 'https://x:1'")
    assert lines[2] == "WARN VirtualMachine vms/w"
    assert lines[3].startswith("  warn: [persistent-state] spec.template.spec.domain.devices.tpm")


def test_warnings_alone_exit_zero(tmp_path: Path, capsys: Capture) -> None:
    path = write(tmp_path, "w.yaml", vm(dom=domain(tpm={"persistent": True})))
    assert main([str(path)]) == 0


def test_an_advisory_finding_warns_under_enforce_and_a_forklift_id_passes(
        tmp_path: Path, capsys: Capture) -> None:
    no_port = source_vmim(name="s", connect_url="sync.example.com",
                          migration_id=FORKLIFT_MIGRATION_ID)
    path = write(tmp_path, "s.yaml", no_port)
    assert main([str(path), "--output", "text"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "WARN VirtualMachineInstanceMigration vms/s"
    assert "warn: [connect-url] spec.sendTo.connectURL: 'sync.example.com': no port" in out
    assert "[migration-id]" not in out


def test_generated_migration_id_shows_in_the_patch(tmp_path: Path, capsys: Capture) -> None:
    code, [result] = run_json(capsys, str(write(tmp_path, "t.yaml",
                                                target_vmim(migration_id=""))))
    assert code == 0 and result["verdict"] == "ALLOW"
    [spec_op] = [op for op in result["patch"] if op["path"] == "/spec/receive/migrationID"]
    assert re.fullmatch(r"db-1-[0-9a-f]{12}", spec_op["value"])


def test_config_changes_modes(tmp_path: Path, capsys: Capture) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  connect-url: warn\n")
    path = write(tmp_path, "s.yaml", source_vmim(connect_url="https://x:1"))
    assert main([str(path)]) == 1
    assert main([str(path), "--config", str(policy)]) == 0
    assert "WARN VirtualMachineInstanceMigration" in capsys.readouterr().out


def test_bad_policy_names_the_key(tmp_path: Path, capsys: Capture) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  no-such-rule: warn\n")
    assert main([str(write(tmp_path, "v.yaml", vm())), "--config", str(policy)]) == 2
    assert "no-such-rule" in capsys.readouterr().err


def test_stdin_multi_document_and_lists(monkeypatch: pytest.MonkeyPatch, capsys: Capture) -> None:
    bundle = {"apiVersion": "v1", "kind": "List",
              "items": [vm(name="a"), {"apiVersion": "v1", "kind": "ConfigMap"}]}
    text = yaml.safe_dump_all([bundle, None, "just text", vm(name="b", restore="bogus")])
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, results = run_json(capsys, "-")
    assert code == 1
    assert [(r["name"], r["verdict"], r["file"], r["document"]) for r in results] == [
        ("a", "ALLOW", "<stdin>", 1), ("b", "DENY", "<stdin>", 4)]


def test_directories_are_searched_recursively(tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    write(tmp_path / "deep" / "er", "a.yml", vm(name="yml"))
    (tmp_path / "deep" / "b.json").write_text(json.dumps(vm(name="json")))
    (tmp_path / "deep" / "notes.txt").write_text("not: [valid")
    (tmp_path / ".hidden" / "c.yaml").write_text("not: [valid")
    code, results = run_json(capsys, str(tmp_path))
    assert code == 0 and sorted(r["name"] for r in results) == ["json", "yml"]


@pytest.mark.parametrize(("name", "content", "says"), [
    ("broken.yaml", "kind: VirtualMachine\nmetadata:\n  name: [unclosed\n", "line 4"),
    ("broken.json", '{"kind":\n  "VirtualMachine",\n  oops}', "invalid JSON at line 3"),
    ("binary.yaml", b"\xff\xfe\x00bad", "not UTF-8"),
    ("tagged.yaml", "a: !!python/object:os.system x\n", "line 1"),
])
def test_unreadable_input_exits_2_naming_file_and_line(
        tmp_path: Path, capsys: Capture, name: str, content: str | bytes, says: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    good = write(tmp_path, "good.yaml", vm(restore="bogus"))
    assert main([str(path), str(good)]) == 2  # bad input wins over a denial
    out, err = capsys.readouterr()
    assert f"{path}: " in err and says in err
    assert out.startswith("DENY VirtualMachine")  # what could be read is still checked


def test_missing_file_exits_2(tmp_path: Path, capsys: Capture) -> None:
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_register_check_wires_a_subcommand(examples: Path, capsys: Capture) -> None:
    parser = argparse.ArgumentParser(prog="dlm-guard")
    register_check(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["check", str(examples), "-o", "json"])
    assert args.func(args) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


# --- any object in a manifest gets a verdict ------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=15)
kubevirt_objects = st.fixed_dictionaries(
    {"apiVersion": st.just("kubevirt.io/v1"),
     "kind": st.sampled_from(["VirtualMachine", "VirtualMachineInstanceMigration"])},
    optional={"metadata": json_values, "spec": json_values | st.fixed_dictionaries(
        {}, optional={"runStrategy": st.just("WaitAsReceiver"), "sendTo": json_values,
                      "receive": json_values, "template": json_values})})


@settings(max_examples=100, deadline=None)
@given(objects=st.lists(kubevirt_objects, min_size=1, max_size=3))
def test_any_kubevirt_object_gets_a_verdict(objects: list[dict[str, Any]]) -> None:
    documents = [Document("f.yaml", i, obj) for i, obj in enumerate(objects, 1)]
    results, skipped = check_documents(documents, context())
    assert skipped == 0 and len(results) == len(objects)
    assert {r["verdict"] for r in json.loads(format_json(results))} <= {"ALLOW", "WARN", "DENY"}
    assert len(format_text(results).splitlines()) >= len(objects)
