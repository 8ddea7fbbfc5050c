"""What `migrate run` shows while it works: steps, both VMIMs' phases, elapsed time.

On a terminal one status line is redrawn with a progress bar; otherwise (a pipe, CI logs) a
plain line is printed only when something changes, so logs stay short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

# Phases in upstream order (VirtualMachineInstanceMigrationPhase in
# staging/src/kubevirt.io/api/core/v1/types.go, walked by processMigrationPhase in
# pkg/virt-controller/watch/migration/migration.go). The bar counts how far the slower side is.
TARGET_PHASES = ("", "WaitingForSync", "Pending", "Scheduling", "Scheduled",
                 "PreparingTarget", "TargetReady", "Running", "Succeeded")
SOURCE_PHASES = ("", "Synchronizing", "Pending", "Scheduling", "Scheduled",
                 "PreparingTarget", "TargetReady", "Running", "Succeeded")
BAR_WIDTH = 24


def fraction_done(target_phase: str, source_phase: str) -> float:
    """0..1: how far the less advanced VMIM is (unknown phases count as the start)."""
    def position(phases: tuple[str, ...], phase: str) -> float:
        return phases.index(phase) / (len(phases) - 1) if phase in phases else 0.0
    return min(position(TARGET_PHASES, target_phase), position(SOURCE_PHASES, source_phase))


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def phases_text(target_phase: str, source_phase: str) -> str:
    return f"target VMIM {target_phase or '-'}, source VMIM {source_phase or '-'}"


@dataclass
class Progress:
    out: TextIO
    tty: bool
    _last: str = ""
    _drawn: bool = False

    def say(self, text: str) -> None:
        self._end_line()
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, elapsed: float, text: str) -> None:
        self.say(f"[{elapsed:6.1f}s] {text}")

    def phases(self, elapsed: float, target_phase: str, source_phase: str) -> None:
        text = phases_text(target_phase, source_phase)
        if self.tty:
            fraction = fraction_done(target_phase, source_phase)
            self.out.write(f"\r{bar(fraction)} {text}  {elapsed:6.1f}s\x1b[K")
            self.out.flush()
            self._drawn = True
        elif text != self._last:
            self.step(elapsed, text)
        self._last = text

    def _end_line(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self._drawn = False
