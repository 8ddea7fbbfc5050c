"""Write the chart's copy of the policy parts: `python -m webhook.cel.chart [--check]`.

The chart cannot run Python, so it reads the mode-independent parts of the policies from
charts/dlm-guard/files/admission-policies.json and assembles them as export() does.
tests/chart checks that the file is current and that the chart renders what export() emits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from webhook.cel.export import chart_parts

PARTS_FILE = (Path(__file__).resolve().parents[2] / "charts" / "dlm-guard" / "files"
              / "admission-policies.json")


def rendered() -> str:
    return json.dumps(chart_parts(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the file is not what webhook/cel generates")
    args = parser.parse_args(argv)
    if args.check:
        current = PARTS_FILE.read_text() if PARTS_FILE.exists() else ""
        if current != rendered():
            print(f"{PARTS_FILE} is stale: run python -m webhook.cel.chart", file=sys.stderr)
            return 1
        return 0
    PARTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    PARTS_FILE.write_text(rendered())
    return 0


if __name__ == "__main__":
    sys.exit(main())
