"""`dlm-guard check` on hostile and broken inputs: exit 2 with one line naming the file, in
bounded time and memory, and the other inputs still checked (dlm_guard.safeload's limits)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from factories import vm

from dlm_guard.safeload import MAX_DEPTH, MAX_DOCUMENT_BYTES
from webhook.check import main

Capture = pytest.CaptureFixture[str]

# Nine levels of nine aliases: 9**9 (387 M) strings once expanded, 1 KB of YAML.
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
    for i in range(8))


def good_file(folder: Path) -> Path:
    path = folder / "good.yaml"
    path.write_text(yaml.safe_dump(vm(name="good")))
    return path


def errors_of(err: str) -> list[str]:
    """The one-line reasons, without the summary line every run prints."""
    return [line for line in err.splitlines() if "object(s) checked" not in line]


HOSTILE: dict[str, tuple[str | bytes, str]] = {
    "bomb.yaml": (ALIAS_BOMB, "alias"),
    "deep.yaml": ("x: " + "[" * 500 + "]" * 500 + "\n", f"deeper than {MAX_DEPTH}"),
    "deep.json": ("[" * 10_000 + "]" * 10_000, f"deeper than {MAX_DEPTH}"),
    "bigint.yaml": ("x: " + "9" * 5000 + "\n", "more than 4300 digits"),
    "bigint.json": ('{"x": ' + "9" * 5000 + "}", "more than 4300 digits"),
    "latin1.yaml": (b"name: caf\xe9\n", "not UTF-8"),
    "dupe.yaml": ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' at line 3 (first at line 1)"),
    "huge.yaml": ("x: '" + "y" * (MAX_DOCUMENT_BYTES + 10) + "'\n", "byte limit"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_one_line_exit_2_and_the_rest_is_checked(
        name: str, tmp_path: Path, capsys: Capture) -> None:
    content, words = HOSTILE[name]
    bad = tmp_path / name
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    code = main([str(bad), str(good_file(tmp_path)), "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 2
    (line,) = errors_of(err)
    assert line.startswith(f"dlm-guard check: {bad}: ") and words in line
    assert [r["name"] for r in json.loads(out)] == ["good"]


def run_limited(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`dlm-guard check` in a child limited to 1 GiB of address space: a runaway read or
    expansion dies there (or times out) instead of taking the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    return subprocess.run([sys.executable, "-m", "dlm_guard", "check", *argv],
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit, check=False)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "bomb"])
def test_inputs_that_never_end_are_refused_in_bounded_time(kind: str, tmp_path: Path) -> None:
    if kind == "fifo":
        target = tmp_path / "pipe.yaml"
        os.mkfifo(target)  # no writer: opening it blocking would wait forever
        words = "named pipe"
    elif kind == "dev-zero":
        target, words = Path("/dev/zero"), "character device"
    else:
        target, words = tmp_path / "bomb.yaml", "alias bomb"
        target.write_text(ALIAS_BOMB)
    done = run_limited(str(target), str(good_file(tmp_path)))
    assert done.returncode == 2, done.stderr
    (line,) = errors_of(done.stderr)
    assert line.startswith(f"dlm-guard check: {target}: ") and words in line
    assert done.stdout.startswith("ALLOW VirtualMachine")


def test_a_symlink_loop_and_an_unreadable_entry_do_not_stop_the_walk(
        tmp_path: Path, capsys: Capture) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a-loop.yaml").symlink_to(tree / "a-loop.yaml")
    (tree / "b-dangling.yaml").symlink_to(tree / "missing.yaml")
    (tree / "sub" / "c-fifo.yaml").parent.mkdir(exist_ok=True)
    os.mkfifo(tree / "sub" / "c-fifo.yaml")
    (tree / "z.yaml").write_text(yaml.safe_dump(vm(name="last")))
    code = main([str(tree), "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert [r["name"] for r in json.loads(out)] == ["last"]
    lines = errors_of(err)
    assert len(lines) == 3
    assert "a-loop.yaml: cannot read: Too many levels of symbolic links" in lines[0]
    assert "b-dangling.yaml: cannot read: No such file or directory" in lines[1]
    assert "c-fifo.yaml: not a regular file (a named pipe)" in lines[2]


def test_a_3_mib_vm_is_checked_with_bounded_findings(tmp_path: Path, capsys: Capture) -> None:
    """The API server's ceiling: the biggest VM it would store, every disk a finding."""
    obj = vm(name="wide")
    disks = obj["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    one = {"name": "d", "shareable": True, "disk": {"bus": "virtio"}}
    count = (MAX_DOCUMENT_BYTES - 4096) // (len(json.dumps({**one, "name": "d999999"})) + 2)
    disks[:] = [{**one, "name": f"d{i}"} for i in range(count)]
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(obj))
    assert path.stat().st_size < MAX_DOCUMENT_BYTES
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    shareable = [line for line in out.splitlines() if "[shareable-disk]" in line]
    assert len(shareable) == 21  # MAX_FINDINGS_PER_RULE, then the "and N more" line
    assert f"and {count - 20} more like the above" in shareable[-1]
