"""Our compact CRDs: structural, and shaped like upstream's where the tests depend on it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.binaries import REPO_ROOT
from controlplane.crds import BUNDLED_CRDS_DIR, crd_files, crds_dir

UPSTREAM_CRDS = REPO_ROOT.parent / "shared" / "kubevirt-crds"
WITHOUT_STATUS_SUBRESOURCE = {"virtualmachineinstances.kubevirt.io"}


# The upstream files are ~1.8 MB: parse them once, with libyaml when it is there.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _load(directory: Path) -> dict[str, dict[str, Any]]:
    docs = [yaml.load(f.read_text(), Loader=_Loader) for f in crd_files(directory)]
    return {d["metadata"]["name"]: d for d in docs}


def _storage_version(crd: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = next(v for v in crd["spec"]["versions"] if v["storage"])
    return version


def test_bundled_crds_are_the_five_kinds() -> None:
    assert sorted(_load(BUNDLED_CRDS_DIR)) == [
        "datavolumes.cdi.kubevirt.io",
        "kubevirts.kubevirt.io",
        "virtualmachineinstancemigrations.kubevirt.io",
        "virtualmachineinstances.kubevirt.io",
        "virtualmachines.kubevirt.io",
    ]


@pytest.mark.parametrize("name", sorted(_load(BUNDLED_CRDS_DIR)))
def test_status_subresource_everywhere_but_vmi(name: str) -> None:
    version = _storage_version(_load(BUNDLED_CRDS_DIR)[name])
    has_status = "status" in version.get("subresources", {})
    assert has_status == (name not in WITHOUT_STATUS_SUBRESOURCE)


@pytest.mark.parametrize("name", sorted(_load(BUNDLED_CRDS_DIR)))
def test_structural_roots(name: str) -> None:
    crd = _load(BUNDLED_CRDS_DIR)[name]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    schema = _storage_version(crd)["schema"]["openAPIV3Schema"]
    assert schema["type"] == "object"
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert schema["required"] == ["spec"]


def test_crds_dir_honours_the_environment(tmp_path: Path) -> None:
    assert crds_dir({}) == BUNDLED_CRDS_DIR
    assert crds_dir({"DLM_GUARD_CRDS_DIR": str(tmp_path)}) == tmp_path


def test_no_yaml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        crd_files(tmp_path)


def _facts(crd: dict[str, Any]) -> dict[str, Any]:
    version = _storage_version(crd)
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return {
        "group": crd["spec"]["group"],
        "scope": crd["spec"]["scope"],
        "kind": crd["spec"]["names"]["kind"],
        "plural": crd["spec"]["names"]["plural"],
        "shortNames": crd["spec"]["names"].get("shortNames"),
        "storage": version["name"],
        "subresources": version.get("subresources"),
        "columns": [c["name"] for c in version.get("additionalPrinterColumns", [])],
        "spec.required": spec_schema.get("required"),
    }


@pytest.mark.skipif(not UPSTREAM_CRDS.is_dir(), reason=f"no upstream CRDs at {UPSTREAM_CRDS}")
def test_bundled_crds_match_upstream_facts() -> None:
    ours, upstream = _load(BUNDLED_CRDS_DIR), _load(UPSTREAM_CRDS)
    assert ours.keys() == upstream.keys()
    for name, crd in ours.items():
        expected = _facts(upstream[name])
        if name == "virtualmachineinstances.kubevirt.io":
            expected["columns"] = expected["columns"][:5]  # we leave out the priority-1 columns
        assert _facts(crd) == expected, name


@pytest.mark.skipif(not UPSTREAM_CRDS.is_dir(), reason=f"no upstream CRDs at {UPSTREAM_CRDS}")
def test_vmim_role_fields_match_upstream() -> None:
    def roles(crd: dict[str, Any]) -> dict[str, Any]:
        spec = _storage_version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]
        return {r: spec["properties"][r]["required"] for r in ("sendTo", "receive")}

    name = "virtualmachineinstancemigrations.kubevirt.io"
    assert roles(_load(BUNDLED_CRDS_DIR)[name]) == roles(_load(UPSTREAM_CRDS)[name])
