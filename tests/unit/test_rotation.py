"""KubeVirt CA rotation settings as virt-operator reads them (GetCADuration/GetCARenewBefore)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dlm_guard.rotation import (
    CaRotation,
    RotationProblem,
    Source,
    ca_rotation,
    format_duration,
    parse_go_duration,
)

H = timedelta(hours=1)


@pytest.mark.parametrize(("text", "expected"), [
    ("168h", 168 * H), ("48h0m0s", 48 * H), ("33h36m0s", timedelta(hours=33, minutes=36)),
    ("1.5h", 1.5 * H), (".5h", 0.5 * H), ("1h30m", 1.5 * H), ("0", timedelta(0)),
    ("0s", timedelta(0)), ("300ms", timedelta(milliseconds=300)), ("10us", timedelta(0, 0, 10)),
    ("10µs", timedelta(0, 0, 10)), ("-1h", -H), ("+2h", 2 * H),
])
def test_go_durations(text: str, expected: timedelta) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7d", "1 h", "h", "1", "--1h", "1h-2m", ".h", "24H"])
def test_what_go_rejects(text: str) -> None:
    assert parse_go_duration(text) is None


def kubevirt(self_signed: Any) -> dict[str, Any]:
    return {"spec": {"certificateRotateStrategy": {"selfSigned": self_signed}}}


@pytest.mark.parametrize(("cr", "expected"), [
    ({}, CaRotation(168 * H, 168 * H * 0.2, Source.DEFAULT, Source.DEFAULT)),
    (kubevirt(None), CaRotation(168 * H, 168 * H * 0.2, Source.DEFAULT, Source.DEFAULT)),
    # HCO's values (OpenShift): 48 h CA renewed 24 h before expiry.
    (kubevirt({"ca": {"duration": "48h0m0s", "renewBefore": "24h0m0s"}}),
     CaRotation(48 * H, 24 * H, Source.FIELD, Source.FIELD)),
    # Only the duration: renewBefore defaults to 20 % of *it*.
    (kubevirt({"ca": {"duration": "240h"}}),
     CaRotation(240 * H, 48 * H, Source.FIELD, Source.DEFAULT)),
    # The deprecated fields win over the new ones ("smooth upgrade path").
    (kubevirt({"caRotateInterval": "72h", "caOverlapInterval": "36h",
               "ca": {"duration": "168h", "renewBefore": "1h"}}),
     CaRotation(72 * H, 36 * H, Source.DEPRECATED, Source.DEPRECATED)),
])
def test_settings(cr: dict[str, Any], expected: CaRotation) -> None:
    assert ca_rotation(cr) == expected


@pytest.mark.parametrize(("duration", "renew", "flaps"), [
    ("168h", None, True), ("48h", "24h", False), ("168h", "84h", False), ("168h", "83h", True),
    ("24h", "48h", False),
])
def test_flaps_when_renew_before_is_under_half_the_duration(duration: str, renew: str | None,
                                                            flaps: bool) -> None:
    ca: dict[str, str] = {"duration": duration} | ({"renewBefore": renew} if renew else {})
    settings = ca_rotation(kubevirt({"ca": ca}))
    assert isinstance(settings, CaRotation) and settings.flaps is flaps


def test_vanilla_defaults_keep_merged_cas_1_4_of_every_5_6_days() -> None:
    settings = ca_rotation({})
    assert isinstance(settings, CaRotation)
    assert settings.merged_cas_kept == timedelta(days=1.4)
    assert settings.rotation_period == timedelta(days=5.6)


def test_a_bad_value_names_its_path() -> None:
    problem = ca_rotation(kubevirt({"ca": {"duration": "7d"}}))
    assert problem == RotationProblem("spec.certificateRotateStrategy.selfSigned.ca.duration", "7d")
    assert isinstance(ca_rotation(kubevirt({"caOverlapInterval": 5})), RotationProblem)


@pytest.mark.parametrize(("value", "text"), [
    (timedelta(days=7), "7d"), (timedelta(hours=33, minutes=36), "1d9h36m"),
    (timedelta(0), "0s"), (timedelta(hours=48), "2d"), (-H, "-1h"),
])
def test_format(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
