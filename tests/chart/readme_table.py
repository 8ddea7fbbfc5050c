"""The values table of charts/dlm-guard/README.md, generated from the `# --` comments of
values.yaml (helm-docs conventions).

    python tests/chart/readme_table.py           # print the table
    python tests/chart/readme_table.py --write   # rewrite it in README.md

A key with a `# --` comment (continued by the `#` lines right after it) is one row, whatever is
under it; a key without one is a section whose keys are looked at in turn.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "dlm-guard"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every documented key, in file order."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            found.append((".".join(k for _, k in stack), " ".join(pending)))
            pending = None
    return found


def _lookup(values: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        values = values[key]
    return values


def _type(value: Any) -> str:
    if value is None:
        return "int or string"  # e.g. a PDB bound left unset
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "object"}[type(value)]


def rows(values_text: str) -> list[Row]:
    values = yaml.safe_load(values_text)
    return [Row(key, _type(default := _lookup(values, key)),
                json.dumps(default, separators=(", ", ": ")), description)
            for key, description in documented_keys(values_text)]


def table(values_text: str) -> str:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for row in rows(values_text):
        description = row.description.replace("|", "\\|")
        default = row.default.replace("|", "\\|")
        lines.append(f"| `{row.key}` | {row.type} | `{default}` | {description} |")
    return "\n".join(lines)


def with_table(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    values_text = (CHART / "values.yaml").read_text()
    if argv[1:] == ["--write"]:
        readme = CHART / "README.md"
        readme.write_text(with_table(readme.read_text(), values_text))
    else:
        print(table(values_text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
