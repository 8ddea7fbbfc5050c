"""Policy configuration: which rules run in which mode, defaults, exemptions (DESIGN.md)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlm_guard.domain import RESTORABLE_RUN_STRATEGIES


class Mode(StrEnum):
    ENFORCE = "enforce"  # deny
    WARN = "warn"  # allow with an AdmissionReview warning
    OFF = "off"


# slug -> (default mode, needs cluster state). The public contract of DESIGN.md.
RULES: dict[str, tuple[Mode, bool]] = {
    "both-roles": (Mode.ENFORCE, False),
    "vmi-name": (Mode.ENFORCE, False),
    "migration-id": (Mode.ENFORCE, False),
    "connect-url": (Mode.ENFORCE, False),
    "immutable-spec": (Mode.ENFORCE, False),
    "shareable-disk": (Mode.ENFORCE, False),
    "lun-disk": (Mode.ENFORCE, False),
    "filesystem": (Mode.ENFORCE, False),
    "persistent-state": (Mode.WARN, False),
    "restore-run-strategy": (Mode.ENFORCE, False),
    "duplicate-migration-id": (Mode.ENFORCE, True),
    "receiver-vmi": (Mode.ENFORCE, True),
    "source-vmi": (Mode.ENFORCE, True),
    "feature-gate": (Mode.ENFORCE, True),
}
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
    rules: dict[str, Mode] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)  # type: ignore[arg-type]
    exempt_namespaces: frozenset[str] = Field(default=frozenset(), alias="exemptNamespaces")

    @field_validator("rules")
    @classmethod
    def _known_slugs(cls, rules: dict[str, Mode]) -> dict[str, Mode]:
        unknown = sorted(set(rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule slug(s) {', '.join(unknown)}")
        return rules

    def mode(self, slug: str) -> Mode:
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
