"""`python -m controlplane demo` (what `make demo` runs) as a process, start to teardown."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controlplane import Binaries
from controlplane.binaries import REPO_ROOT
from controlplane.demo import READY_LINE

pytestmark = pytest.mark.e2e

DEMO = [sys.executable, "-m", "controlplane", "demo", "--no-build"]
TIMEOUT = 180.0
GENERATED = r"example-decentralized-lm-vm-[0-9a-f]{12}"


def processes_mentioning(path: Path) -> list[str]:
    """Command lines naming `path`: etcd, kube-apiserver and dlm-guard serve all do."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def assert_the_show_went_as_promised(out: str) -> None:
    # the rejection, as kubectl prints the API server's answer
    assert ('admission webhook "validate.dlm-guard.io" denied the request: [shareable-disk] '
            "spec.template.spec.domain.devices.disks[1].shareable") in out
    # the mutation: restore annotation (a server-side dry-run)
    assert "restore-run-strategy: Always" in out
    # `dlm-guard migrate run`: one generated migrationID on both VMIMs, with pairing labels
    generated = re.findall(rf"example-decentralized-lm-vm-(target|source)-[0-9a-f]{{10}}\s+"
                           rf"Succeeded\s+example-decentralized-lm-vm\s+({GENERATED})\s+"
                           rf"(target|source)", out)
    assert [(side, role) for side, _, role in generated] == [("target", "target"),
                                                             ("source", "source")]
    assert generated[0][1] == generated[1][1]  # one migrationID on both sides
    assert "SUCCEEDED: target VM default/example-decentralized-lm-vm runStrategy Always" in out
    assert "target VM runStrategy: Always" in out and "source VM runStrategy: Halted" in out
    # the reconciler put each cluster's CA into its peer's inbox
    assert "source/kubevirt-external-ca now holds: CN=kubevirt.io@target" in out
    assert "target/kubevirt-external-ca now holds: CN=kubevirt.io@source" in out
    assert re.search(r"^export KUBECONFIG=\S+/source/kubeconfig:\S+/target/kubeconfig$", out,
                     re.MULTILINE)


def test_demo_exit_after_setup_shows_everything_and_leaves_no_process(
        binaries: Binaries, tmp_path: Path) -> None:
    result = subprocess.run([*DEMO, "--exit-after-setup", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_the_show_went_as_promised(result.stdout)
    assert READY_LINE in result.stdout and "torn down" in result.stdout
    assert not processes_mentioning(tmp_path)
    assert (tmp_path / "target" / "kubeconfig").exists()  # a --workdir is kept, for the logs
    assert not (tmp_path / "target" / "etcd-data").exists()


def _lines(stream: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _read_until(lines: queue.Queue[str], marker: str, deadline: float) -> str:
    seen: list[str] = []
    while not seen or marker not in seen[-1]:
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no {marker!r} in time; output:\n{''.join(seen)}") from None
    return "".join(seen)


def test_demo_keeps_running_until_sigterm_then_tears_down(
        binaries: Binaries, tmp_path: Path) -> None:
    with subprocess.Popen([*DEMO, "--workdir", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT) as demo:
        try:
            _run_until_sigterm(demo, binaries, tmp_path)
        finally:
            if demo.poll() is None:
                demo.kill()
    assert not processes_mentioning(tmp_path)


def _run_until_sigterm(demo: subprocess.Popen[str], binaries: Binaries, tmp_path: Path) -> None:
    lines = _lines(demo)
    out = _read_until(lines, READY_LINE, time.monotonic() + TIMEOUT)
    assert_the_show_went_as_promised(out)
    # Still up after the show: the target cluster answers and its webhook still rejects
    # (what a reader does next with the printed kubeconfig).
    kubeconfig = tmp_path / "target" / "kubeconfig"
    still = subprocess.run(
        [str(binaries.kubectl), f"--kubeconfig={kubeconfig}",
         f"--cache-dir={tmp_path / 'kube-cache'}", "apply", "-f",
         str(tmp_path / "examples" / "target-vm-shareable-disk.yaml")],
        capture_output=True, text=True, timeout=30, check=False)
    assert "[shareable-disk]" in still.stderr, still.stderr
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=60) == 0
    assert "torn down" in _read_until(lines, "torn down", time.monotonic() + 5)
