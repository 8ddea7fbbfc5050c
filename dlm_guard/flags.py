"""argparse types for numeric flags: a value out of range is refused at parse time with an
error naming the flag (argparse adds "argument --port:"), never wrapped, clamped or read as
"never" later (int("70000") binds port 4464 after the kernel's 16-bit wrap; nan compares
false with everything; 1e-9 s turns a poll into a busy loop)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_SECONDS = 86_400.0  # a day: any interval or timeout beyond it is a typo


def port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text}")
    return value


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer {low}-{high}, got {text}")
        return value
    return parse


def seconds(low: float, high: float = MAX_SECONDS, *,
            zero: bool = False) -> Callable[[str], float]:
    """Finite seconds in [low, high]; with `zero`, 0 too (a documented "off")."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text}") from None
        if zero and value == 0:
            return 0.0
        if not (math.isfinite(value) and low <= value <= high):
            also = " or 0" if zero else ""
            raise argparse.ArgumentTypeError(
                f"must be {low:g}-{high:g} seconds{also}, got {text}")
        return value
    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text}") from None
