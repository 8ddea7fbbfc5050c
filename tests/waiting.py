"""The one way tests wait for something to happen: poll a condition with a bounded wait.

Never sleep for a fixed time and assume a state was reached: under load (2 shared cores in CI)
any fixed sleep is sometimes too short.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")
INTERVAL = 0.05


def eventually(check: Callable[[], T], timeout: float = 10.0,
               message: str = "condition not reached in time") -> T:
    """Call `check` until it returns something truthy (returned); AssertionError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, message
        time.sleep(INTERVAL)
    return result


async def eventually_async(check: Callable[[], object], timeout: float = 10.0,
                           message: str = "condition not reached in time") -> object:
    """`eventually` for a test running on an event loop (sleeps without blocking it); `check`
    may be a coroutine function (an HTTP probe)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await cast(Awaitable[object], result)
        if result:
            return result
        assert time.monotonic() < deadline, message
        await asyncio.sleep(INTERVAL)


def last_attempt(attempt: Callable[[], T], done: Callable[[T], bool],
                 timeout: float = 15.0) -> T:
    """Repeat `attempt` until `done` holds for its result; the last result either way (for
    callers that assert on the result itself, with its output in the failure message)."""
    deadline = time.monotonic() + timeout
    result = attempt()
    while not done(result) and time.monotonic() < deadline:
        time.sleep(INTERVAL)
        result = attempt()
    return result
