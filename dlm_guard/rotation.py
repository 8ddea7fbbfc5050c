"""KubeVirt's self-signed CA rotation settings, read the way virt-operator reads them (pure).

virt-operator (pkg/virt-operator/resource/apply/certificates.go, `GetCADuration` and
`GetCARenewBefore`, v1.6.0 to v1.9.0 and main d923fdb815) takes the CA lifetime from the KubeVirt
CR's `spec.certificateRotateStrategy.selfSigned`: the deprecated `caRotateInterval` first, then
`ca.duration`, else 7 days; and renewBefore from the deprecated `caOverlapInterval` first, then
`ca.renewBefore`, else 20 % of the duration. The values are Go `metav1.Duration` strings
(`time.ParseDuration`: "168h", "33h36m0s", "1.5h").

renewBefore is also the overlap `MergeCABundle` uses (pkg/virt-operator/resource/generate/
components/secrets.go): once the local CA is older than it, every merged CA is dropped. The CA is
renewed at age duration - renewBefore, so the local CA outlives the overlap, and merged peer CAs
get dropped, unless renewBefore >= duration / 2 (docs/kubevirt-facts.md, "CA trust that flaps").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from dlm_guard.domain import get_path

DEFAULT_CA_DURATION = timedelta(days=7)  # Duration7d in pkg/virt-operator/resource/apply
DEFAULT_RENEW_FRACTION = 0.2
SETTINGS_PATH = "spec.certificateRotateStrategy.selfSigned.ca"
FIX = "renewBefore >= duration / 2"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> timedelta | None:
    """A Go `time.ParseDuration` string as a timedelta; None when Go would reject it."""
    value = text.strip() if isinstance(text, str) else ""
    sign = -1.0 if value.startswith("-") else 1.0
    if value[:1] in ("+", "-"):
        value = value[1:]
    if value == "0":
        return timedelta(0)
    seconds, position = 0.0, 0
    for match in _PART.finditer(value):
        if match.start() != position:
            return None
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not value or position != len(value):
        return None
    return timedelta(seconds=sign * seconds)


def format_duration(value: timedelta) -> str:
    """Short and exact enough for a message: 7d, 1d9h36m, 48h -> 2d."""
    total = int(value.total_seconds())
    days, rest = divmod(abs(total), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s"))
             if n]
    return ("-" if total < 0 else "") + ("".join(parts) or "0s")


class Source(StrEnum):
    """Where a setting came from."""

    DEFAULT = "default"
    FIELD = "set"  # ca.duration / ca.renewBefore
    DEPRECATED = "deprecated field"  # caRotateInterval / caOverlapInterval


@dataclass(frozen=True)
class CaRotation:
    """The CA lifetime and renewBefore virt-operator uses on one cluster."""

    duration: timedelta
    renew_before: timedelta
    duration_source: Source
    renew_before_source: Source

    @property
    def flaps(self) -> bool:
        """The local CA lives past the overlap, so merged peer CAs get dropped."""
        return self.renew_before * 2 < self.duration

    @property
    def merged_cas_kept(self) -> timedelta:
        """After each local rotation, how long merged CAs survive (the overlap)."""
        return min(self.renew_before, self.duration)

    @property
    def rotation_period(self) -> timedelta:
        return max(self.duration - self.renew_before, timedelta(0))

    def describe(self) -> str:
        return (f"duration={format_duration(self.duration)} ({self.duration_source}), "
                f"renewBefore={format_duration(self.renew_before)} ({self.renew_before_source})")


@dataclass(frozen=True)
class RotationProblem:
    """A setting virt-operator could not use (it fails to decode the CR)."""

    path: str
    value: str

    def __str__(self) -> str:
        return f"{self.path}: {self.value!r} is not a Go duration"


def ca_rotation(kubevirt: Any) -> CaRotation | RotationProblem:
    """The CA rotation settings of a KubeVirt CR, defaults included."""
    self_signed = get_path(kubevirt, "spec", "certificateRotateStrategy", "selfSigned")
    base = "spec.certificateRotateStrategy.selfSigned"
    duration = _first(self_signed, base, ("caRotateInterval",), ("ca", "duration"))
    if isinstance(duration, RotationProblem):
        return duration
    duration_value, duration_source = duration or (DEFAULT_CA_DURATION, Source.DEFAULT)
    renew = _first(self_signed, base, ("caOverlapInterval",), ("ca", "renewBefore"))
    if isinstance(renew, RotationProblem):
        return renew
    renew_value, renew_source = renew or (duration_value * DEFAULT_RENEW_FRACTION,
                                          Source.DEFAULT)
    return CaRotation(duration_value, renew_value, duration_source, renew_source)


def _first(self_signed: Any, base: str, deprecated: tuple[str, ...], current: tuple[str, ...],
           ) -> tuple[timedelta, Source] | RotationProblem | None:
    """The deprecated field wins when set (upstream: "smooth upgrade path"), then the new one."""
    for keys, source in ((deprecated, Source.DEPRECATED), (current, Source.FIELD)):
        raw = get_path(self_signed, *keys)
        if raw is None:
            continue
        parsed = parse_go_duration(raw) if isinstance(raw, str) else None
        if parsed is None:
            return RotationProblem(f"{base}.{'.'.join(keys)}", str(raw))
        return parsed, source
    return None
