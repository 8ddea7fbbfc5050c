"""Child processes that run in their own process group, log to a file and are always reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_SECONDS = 5.0


class StartCancelled(RuntimeError):
    """Start-up was abandoned because a sibling failed or the user interrupted."""


@dataclass
class ManagedProcess:
    """One server process (etcd, kube-apiserver) with its combined stdout/stderr in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], log: Path, cwd: Path) -> ManagedProcess:
        with open(log, "ab") as sink:
            # start_new_session: a process group of its own, so stop() reaches any children and
            # a Ctrl-C aimed at the terminal's foreground group does not kill it before we do.
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        return cls(name=name, popen=popen, log=log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)

    def terminate(self) -> None:
        """Ask the whole process group to exit (SIGTERM); stop() finishes the job."""
        if not self._stopped and self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds, and reap. Idempotent."""
        if self._stopped:
            return
        self.terminate()
        self._stopped = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=max(grace, 0.0))
        # Leftover group members (none expected) die too; then reap our child.
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def log_tail(path: Path, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file, read from its end (logs can be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class Launcher:
    """Spawns processes for all clusters; once cancelled it spawns nothing more and stops all.

    Spawning and cancelling share one lock, so no process can start after teardown began.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._processes: list[tuple[int, ManagedProcess]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def spawn(
        self, name: str, argv: Sequence[str], log: Path, cwd: Path, *, stop_wave: int
    ) -> ManagedProcess:
        """Start a process; stop_all() stops wave 0 (API servers) before wave 1 (etcd)."""
        with self._lock:
            if self._cancelled.is_set():
                raise StartCancelled(name)
            process = ManagedProcess.spawn(name, argv, log, cwd)
            self._processes.append((stop_wave, process))
            return process

    def stop_all(self) -> None:
        with self._lock:
            self._cancelled.set()
            processes = list(self._processes)
        for wave in sorted({w for w, _ in processes}):
            _stop_together([p for w, p in processes if w == wave])


def _stop_together(processes: list[ManagedProcess]) -> None:
    """SIGTERM all at once, then reap each within one shared grace period.

    Callers stop API servers before etcd: a kube-apiserver whose etcd is gone hangs in its
    shutdown until killed (about 1 s with etcd up, the whole grace period without).
    """
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        process.stop(grace=deadline - time.monotonic())
