"""Policy configuration: which rules run in which mode, defaults, exemptions (DESIGN.md)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlm_guard.domain import RESTORABLE_RUN_STRATEGIES, Rule


class Mode(StrEnum):
    ENFORCE = "enforce"  # deny
    WARN = "warn"  # allow with an AdmissionReview warning
    OFF = "off"


# slug -> (default mode, needs cluster state). The public contract of DESIGN.md.
RULES: dict[Rule, tuple[Mode, bool]] = {
    Rule.BOTH_ROLES: (Mode.ENFORCE, False),
    Rule.VMI_NAME: (Mode.ENFORCE, False),
    Rule.MIGRATION_ID: (Mode.ENFORCE, False),
    Rule.CONNECT_URL: (Mode.ENFORCE, False),
    Rule.IMMUTABLE_SPEC: (Mode.ENFORCE, False),
    Rule.SHAREABLE_DISK: (Mode.ENFORCE, False),
    Rule.LUN_DISK: (Mode.ENFORCE, False),
    Rule.FILESYSTEM: (Mode.ENFORCE, False),
    Rule.PERSISTENT_STATE: (Mode.WARN, False),
    Rule.RESTORE_RUN_STRATEGY: (Mode.ENFORCE, False),
    Rule.DUPLICATE_MIGRATION_ID: (Mode.ENFORCE, True),
    Rule.RECEIVER_VMI: (Mode.ENFORCE, True),
    Rule.SOURCE_VMI: (Mode.ENFORCE, True),
    Rule.FEATURE_GATE: (Mode.ENFORCE, True),
    Rule.LEGACY_RUNNING: (Mode.WARN, True),
}
assert set(RULES) == set(Rule), "every Rule needs a default mode"
CLUSTER_RULES = frozenset(slug for slug, (_, needs) in RULES.items() if needs)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the offending key."""


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    restore_run_strategy: str = Field(default="Always", alias="restoreRunStrategy")

    @field_validator("restore_run_strategy")
    @classmethod
    def _restorable(cls, value: str) -> str:
        if value not in RESTORABLE_RUN_STRATEGIES:
            raise ValueError(f"must be one of {', '.join(RESTORABLE_RUN_STRATEGIES)}")
        return value


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    rules: dict[Rule, Mode] = Field(default_factory=dict)  # an unknown slug fails validation
    defaults: Defaults = Field(default_factory=Defaults)  # type: ignore[arg-type]
    exempt_namespaces: frozenset[str] = Field(default=frozenset(), alias="exemptNamespaces")

    def mode(self, slug: Rule) -> Mode:
        return self.rules.get(slug, RULES[slug][0])


def parse_policy(data: Any, source: str = "policy") -> Policy:
    if data is None:
        data = {}
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(_describe(err, source)) from None


def load_policy(path: str | Path | None) -> Policy:
    """The policy in a YAML file, or the defaults when path is None."""
    if path is None:
        return Policy()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PolicyError(f"{path}: cannot read policy: {err}") from None
    return parse_policy(data, str(path))


def _describe(err: ValidationError, source: str) -> str:
    problems = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{key}: {item['msg']}")
    return f"{source}: invalid policy: " + "; ".join(problems)
