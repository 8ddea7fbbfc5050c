"""ManagedProcess: own process group, log capture, stop() reaps everything."""

from __future__ import annotations

import os
import time
from pathlib import Path

from controlplane.process import ManagedProcess, log_tail


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_kills_the_whole_group_and_keeps_the_log(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"echo started; sleep 60 & echo $! > {pidfile}; wait"
    process = ManagedProcess.spawn("sh", ["sh", "-c", script], tmp_path / "sh.log", tmp_path)
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    process.stop(grace=2)
    process.stop()  # idempotent
    assert process.exit_code() is not None
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:  # reaped by init, not by us
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert process.tail() == "started"


def test_sigterm_resistant_process_is_killed(tmp_path: Path) -> None:
    process = ManagedProcess.spawn(
        "stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], tmp_path / "s.log", tmp_path
    )
    time.sleep(0.2)
    started = time.monotonic()
    process.stop(grace=0.5)
    assert time.monotonic() - started < 5
    assert process.exit_code() is not None


def test_log_tail_reads_the_end(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert log_tail(log, 2) == "line 998\nline 999"
    assert log_tail(tmp_path / "missing.log").startswith("(no log")
