"""The one retry delay of both services: exponential with jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Callable

BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0


def backoff_delay(failures: int, rand: Callable[[], float] = random.random) -> float:
    """~0.5 s, 1 s, 2 s ... capped at 30 s, each between half and all of that: the jitter
    keeps replicas (and the watches of one process) from retrying in lockstep."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(max(failures, 0), 16))
    return delay * (0.5 + rand() / 2)
