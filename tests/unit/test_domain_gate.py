"""feature_gate_state: on / off / cannot tell, from real KubeVirt version strings.

The version strings are upstream's own: every release and rc tag of the v1.6 to v1.9 lines
(each registers DecentralizedLiveMigration as Alpha, pkg/virt-config/featuregate/active.go at
that tag), `git describe` strings of main and release-branch builds, and virt-operator's
default `latest` (pkg/virt-operator/util/config.go, getConfig).
"""

from __future__ import annotations

from typing import Any

import pytest

from dlm_guard.domain import GateState, feature_gate_state, release_line

GATE = "DecentralizedLiveMigration"

RELEASE_TAGS = [
    "v1.6.0-rc.0", "v1.6.0-rc.1", "v1.6.0", "v1.6.1", "v1.6.2", "v1.6.3", "v1.6.4", "v1.6.5",
    "v1.6.6",
    "v1.7.0-rc.0", "v1.7.0-rc.1", "v1.7.0", "v1.7.1", "v1.7.2", "v1.7.3", "v1.7.4",
    "v1.8.0-rc.0", "v1.8.0-rc.1", "v1.8.0", "v1.8.1", "v1.8.2", "v1.8.3", "v1.8.4",
    "v1.9.0-rc.0", "v1.9.0-rc.1", "v1.9.0-rc.2", "v1.9.0",
    "v1.9.7",  # a future patch of an Alpha line: release branches keep the gate Alpha
]
# Builds whose gate default cannot be read from the version string.
UNKNOWN_VERSIONS = [
    "latest",  # virt-operator's default when KUBEVIRT_VERSION is empty
    "v1.9.0-beta.0-1264-gd923fdb815",  # main d923fdb815: the gate is Beta there
    "v1.9.0-beta.0-908-ga64159ce8e",  # the main commit that made the gate Beta
    "v1.8.0-beta.0-1103-g23b532e8e2",  # an older main build, gate still Alpha
    "v1.9.0-22-g390cf886c3",  # a release-1.9 branch build
    "v1.6.6-43-g118364ea0e",  # a release-1.6 branch build
    "v1.9.0-alpha.0", "v1.9.0-beta.0",  # pre-release tags cut from main
    "v1.10.0", "v1.10.0-rc.0", "v2.0.0",  # lines dlm-guard does not know yet
    "1.7.0", "v1.7", "garbage", " v1.7.0", "v1.7.0 ",
]


def kubevirt(*, gates: Any = (), disabled: Any = (), version: Any = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"spec": {"configuration": {"developerConfiguration": {
        "featureGates": list(gates), "disabledFeatureGates": list(disabled)}}}, "status": {}}
    if version is not None:
        obj["status"]["observedKubeVirtVersion"] = version
    return obj


@pytest.mark.parametrize("version", RELEASE_TAGS)
def test_a_known_alpha_release_without_the_gate_is_off(version: str) -> None:
    reading = feature_gate_state(kubevirt(version=version))
    assert reading.state is GateState.OFF
    assert repr(version) in reading.reason and "Alpha" in reading.reason


@pytest.mark.parametrize("version", RELEASE_TAGS + UNKNOWN_VERSIONS)
def test_listed_in_feature_gates_is_on_whatever_the_version(version: str) -> None:
    reading = feature_gate_state(kubevirt(gates=["Snapshot", GATE], version=version))
    assert reading.state is GateState.ON and "featureGates" in reading.reason


@pytest.mark.parametrize("version", UNKNOWN_VERSIONS)
def test_an_unknown_version_cannot_tell_and_names_the_version(version: str) -> None:
    reading = feature_gate_state(kubevirt(version=version))
    assert reading.state is GateState.UNKNOWN
    assert repr(version) in reading.reason


@pytest.mark.parametrize("version", ["v1.10.0", "latest", "v1.9.0-beta.0-1264-gd923fdb815",
                                     "v1.9.2"])
def test_listed_as_disabled_is_off(version: str) -> None:
    reading = feature_gate_state(kubevirt(disabled=[GATE], version=version))
    assert reading.state is GateState.OFF and "disabledFeatureGates" in reading.reason


def test_explicit_enable_wins_over_disable() -> None:
    # featuregate.IsEnabled: explicit enable > explicit disable > the gate's default.
    assert feature_gate_state(kubevirt(gates=[GATE], disabled=[GATE])).state is GateState.ON


@pytest.mark.parametrize("version", ["v1.5.0", "v1.5.2", "v0.59.0"])
def test_a_release_older_than_the_feature_is_off(version: str) -> None:
    reading = feature_gate_state(kubevirt(version=version))
    assert reading.state is GateState.OFF and "v1.6.0" in reading.reason


@pytest.mark.parametrize("cr", [
    {}, {"spec": None, "status": None}, {"spec": {"configuration": "x"}},
    {"spec": {"configuration": {"developerConfiguration": {"featureGates": GATE}}}},
    kubevirt(version=""), kubevirt(version=17), kubevirt(version=["v1.7.0"]),
])
def test_a_cr_without_a_readable_version_cannot_tell(cr: dict[str, Any]) -> None:
    reading = feature_gate_state(cr)
    assert reading.state is GateState.UNKNOWN and "observedKubeVirtVersion" in reading.reason


def test_a_very_long_version_is_cut_in_the_reason() -> None:
    reading = feature_gate_state(kubevirt(version="v" + "9" * 10_000))
    assert reading.state is GateState.UNKNOWN and len(reading.reason) < 400


@pytest.mark.parametrize(("version", "line"), [
    ("v1.7.2", (1, 7)), ("v1.9.0-rc.2", (1, 9)), ("v1.10.3", (1, 10)),
    ("v1.9.0-beta.0", None), ("v1.9.0-22-g390cf886c3", None), ("latest", None)])
def test_release_line(version: str, line: tuple[int, int] | None) -> None:
    assert release_line(version) == line


@pytest.mark.parametrize(("cr", "path"), [
    (kubevirt(gates=[GATE]), "spec.configuration.developerConfiguration.featureGates"),
    (kubevirt(disabled=[GATE]), "spec.configuration.developerConfiguration.disabledFeatureGates"),
    (kubevirt(version="v1.7.2"), "status.observedKubeVirtVersion"),
    (kubevirt(version="latest"), "status.observedKubeVirtVersion"),
    (kubevirt(), "status.observedKubeVirtVersion"),
])
def test_the_reading_names_the_field_that_decided(cr: dict[str, Any], path: str) -> None:
    assert feature_gate_state(cr).path == path
