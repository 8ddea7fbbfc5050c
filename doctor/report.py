"""Render the check results (text or JSON) and the exit code, as `dlm-guard check` does:
0 when nothing FAILs, 1 when something does (2, bad input or an unreachable cluster, is the
CLI's)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from doctor.model import CheckResult, Status

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def exit_code(results: Sequence[CheckResult]) -> int:
    return EXIT_FAIL if any(r.status is Status.FAIL for r in results) else EXIT_OK


def text(results: Sequence[CheckResult]) -> str:
    """One line per check (`STATUS scope check: message`), the fix indented below it."""
    width = max((len(r.scope) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.status.value:<4} {r.scope:<{width}} {r.check}: {r.message}")
        if r.fix and r.status is not Status.OK:
            lines.append(f"     {'':<{width}} fix: {r.fix}")
    counts = {s: sum(1 for r in results if r.status is s) for s in Status}
    lines.append(f"{counts[Status.OK]} ok, {counts[Status.WARN]} warn, {counts[Status.FAIL]} fail")
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[CheckResult]) -> str:
    return json.dumps({"results": [r.as_dict() for r in results],
                       "exitCode": exit_code(results)}, indent=2) + "\n"
