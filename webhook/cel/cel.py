"""Small builders for CEL source text and the policy parts they make up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dlm_guard.domain import Rule

Manifest = dict[str, Any]


def lit(text: str) -> str:
    """A CEL string literal for text (CEL's escapes are JSON's, \\uXXXX included)."""
    return json.dumps(text)


def str_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(lit(item) for item in items) + "]"


def finding(slug: str, path: str, message: str) -> str:
    """CEL for the webhook's `[slug] path: message` (Finding.__str__); path and message are
    CEL expressions of type string."""
    return f"{lit(f'[{slug}] ')} + {path} + {lit(': ')} + {message}"


def path_segment(key: str) -> str:
    """CEL for webhook.rules.field_path's rendering of one map key `key` (a CEL string)."""
    return (f"({key}.matches('^[A-Za-z_][A-Za-z0-9_]*$') ? '.' + {key} "
            f": '[\"' + {key} + '\"]')")


# Unicode control characters (category Cc). kube-apiserver drops a warning whose text has one
# (k8s.io/apimachinery pkg/util/net/http.go NewWarningHeader, v0.36.3), and CEL cannot escape
# them the way Python's repr() does: such a value is described instead of shown.
CONTROL_CHARACTERS = r"[\x{0}-\x{1f}\x{7f}-\x{9f}]"


def shown(value: str) -> str:
    """CEL for webhook.rules.shown() of a string: quoted, cut to 80 characters."""
    quoted = f"(\"'\" + {value} + \"'\")"
    return (f"({value}.matches({lit(CONTROL_CHARACTERS)}) ? 'a value with control characters' "
            f": {quoted}.size() <= 80 ? {quoted} : {quoted}.substring(0, 77) + '...')")


@dataclass(frozen=True)
class RuleCel:
    """One rule slug and the CEL variables holding its findings (lists of strings).

    `advisory` holds findings of Severity.ADVISORY: they warn under `enforce` and `warn`
    (webhook.engine.mode_for), so they always go into the warn policy."""

    slug: Rule
    variable: str
    advisory: str | None = None


@dataclass(frozen=True)
class PolicyKind:
    """Everything about one resource's policy that does not depend on the policy file."""

    name: str  # "vm" or "vmim": part of the policy names
    resource: str  # plural, kubevirt.io/v1
    operations: tuple[str, ...]
    match_conditions: tuple[Manifest, ...]
    variables: tuple[Manifest, ...]
    rules: tuple[RuleCel, ...] = field(default=())

    def parts(self) -> Manifest:
        """The mode-independent parts, as the chart reads them (files/admission-policies.json)."""
        return {"name": self.name, "resource": self.resource,
                "operations": list(self.operations),
                "matchConditions": [dict(c) for c in self.match_conditions],
                "variables": [dict(v) for v in self.variables],
                "rules": [{"slug": r.slug.value, "variable": r.variable,
                           "advisory": r.advisory or ""} for r in self.rules]}


def variable(name: str, expression: str) -> Manifest:
    return {"name": name, "expression": expression}


def condition(name: str, expression: str) -> Manifest:
    return {"name": name, "expression": expression}
