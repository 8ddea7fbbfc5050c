"""Policy files as operators write them: YAML booleans, duplicates, spellings, odd files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dlm_guard.domain import Rule
from webhook.policy import Mode, PolicyError, load_policy


def policy_file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "policy.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("spelling", ["off", "Off", "no", "false"])
def test_unquoted_off_is_a_yaml_boolean_read_as_off(spelling: str, tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, f"rules:\n  persistent-state: {spelling}\n"))
    assert policy.mode(Rule.PERSISTENT_STATE) is Mode.OFF


def test_true_as_a_mode_says_to_write_a_mode(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"persistent-state: true is a YAML boolean.*"
                                          r"enforce, warn or off"):
        load_policy(policy_file(tmp_path, "rules:\n  persistent-state: on\n"))


@pytest.mark.parametrize(("content", "words"), [
    (b"rules:\n  lun-disk: w\xe4rn\n", "not UTF-8 text (byte 0xe4 at offset 20)"),
    ("rules:\n  lun-disk: warn\nrules:\n  lun-disk: off\n",
     "duplicate key 'rules' at line 3 (first at line 1)"),
    ("rules:\n  lun-disk: warn\n  lun-disk: off\n",
     "duplicate key 'lun-disk' at line 3 (first at line 2)"),
    ("exempt_namespaces: [kube-system]\n", "exempt_namespaces: Extra inputs are not permitted"),
    ("defaults:\n  restore_run_strategy: Halted\n", "restore_run_strategy: Extra inputs"),
    ("rules: {}\n---\nrules: {}\n", "2 YAML documents, expected one"),
])
def test_bad_policy_files_name_the_problem(content: str | bytes, words: str,
                                           tmp_path: Path) -> None:
    path = policy_file(tmp_path, content)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message
    assert "\n" not in message


def test_the_documented_spelling_is_accepted(tmp_path: Path) -> None:
    policy = load_policy(policy_file(
        tmp_path, "exemptNamespaces: [kube-system]\ndefaults:\n  restoreRunStrategy: Halted\n"))
    assert policy.exempt_namespaces == {"kube-system"}
    assert policy.defaults.restore_run_strategy == "Halted"


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    pipe = tmp_path / "policy.yaml"
    os.mkfifo(pipe)
    with pytest.raises(PolicyError, match="not a regular file \\(a named pipe\\)"):
        load_policy(pipe)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not a regular file \\(a directory\\)"):
        load_policy(tmp_path)
