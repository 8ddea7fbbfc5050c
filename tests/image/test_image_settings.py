"""The image's settings come from the chart: one uid, one securityContext, checked here.

`make image` builds with the chart's runAsUser/runAsGroup and `make image-test` runs the image
with the chart's rendered securityContext turned into engine flags (tools/image/smoke.py). These
tests pin that translation and the smoke test's own helpers; the image itself is built and run
by `make image && make image-test` (CI runs both after `make test`).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from certs.generate import key_pem, new_key

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "charts" / "dlm-guard" / "values.yaml"
FULL_VALUES = REPO / "tests" / "chart" / "values-full.yaml"


def _load_smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_smoke", REPO / "tools/image/smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


smoke = _load_smoke()


def _chart_ids() -> tuple[int, int]:
    context = yaml.safe_load(VALUES.read_text())["securityContext"]
    return context["runAsUser"], context["runAsGroup"]


def test_build_passes_the_charts_uid_and_gid_to_the_dockerfile() -> None:
    printed = subprocess.run(
        ["bash", str(REPO / "tools/image/build.sh"), "--print-ids"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert tuple(int(n) for n in printed) == _chart_ids()
    build = (REPO / "tools/image/build.sh").read_text()
    assert '--build-arg "UID=${ids% *}" --build-arg "GID=${ids#* }"' in build
    # The Dockerfile's defaults (a plain `docker build`) are the same numbers.
    dockerfile = (REPO / "Dockerfile").read_text()
    uid, gid = _chart_ids()
    assert re.search(rf"^ARG UID={uid}$", dockerfile, re.M)
    assert re.search(rf"^ARG GID={gid}$", dockerfile, re.M)


def _render(*values: Path) -> list[dict[str, Any]]:
    helm = smoke.find_helm()
    docs: list[dict[str, Any]] = smoke.render_chart(helm, values=values)
    return docs


def test_the_rendered_chart_becomes_these_engine_flags() -> None:
    found = smoke.deployment_security(_render())
    uid, gid = _chart_ids()
    expected = smoke.ChartSecurity(
        uid=uid, gid=gid, fs_group=gid, read_only_root=True, drop_all_capabilities=True,
        no_new_privileges=True, scratch=(("/tmp", "64m"),),
    )  # fmt: skip
    assert found == {
        "guard-dlm-guard-webhook": expected,
        "guard-dlm-guard-reconciler": expected,
    }
    assert smoke.Engine("podman", "l=1").security_flags(expected) == [
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,nosuid,nodev,size=64m,mode=1777",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    # docker has no implicit tmpfs under --read-only, hence no flag to turn it off.
    assert "--read-only-tmpfs=false" not in smoke.Engine("docker", "l=1").security_flags(expected)


def test_another_uid_in_the_values_is_what_the_smoke_test_expects() -> None:
    found = smoke.deployment_security(_render(FULL_VALUES))
    full_uid = yaml.safe_load(FULL_VALUES.read_text())["securityContext"]["runAsUser"]
    assert {s.uid for s in found.values()} == {full_uid}


POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
       "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
             "readOnlyRootFilesystem": True, "privileged": False,
             "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("pod", "supplementalGroups", [5], "supplementalGroups"),
        ("pod", "runAsNonRoot", False, "runAsNonRoot"),
        ("container", "capabilities", {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
         "capabilities"),
        ("container", "privileged", True, "privileged"),
        ("container", "seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
        ("container", "procMount", "Unmasked", "procMount"),
    ],
)
def test_a_context_the_smoke_test_cannot_reproduce_is_an_error(
    where: str, key: str, value: Any, message: str
) -> None:
    pod, container = copy.deepcopy(POD), copy.deepcopy(CONTAINER)
    (pod if where == "pod" else container)[key] = value
    with pytest.raises(smoke.ChartSecurityError, match=message):
        smoke.chart_security(pod, container)


def test_scratch_folders_come_from_empty_dir_mounts_only() -> None:
    pod = {"volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "32Mi"}},
                       {"name": "tls", "secret": {"secretName": "x"}}]}
    container = {"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                  {"name": "tls", "mountPath": "/etc/dlm-guard/tls"}]}
    assert smoke.scratch_mounts(pod, container) == (("/tmp", "32m"),)
    pod["volumes"][0]["emptyDir"] = {"medium": "Memory"}
    with pytest.raises(smoke.ChartSecurityError, match="medium"):
        smoke.scratch_mounts(pod, container)


@pytest.mark.parametrize(
    ("path", "pip"),
    [
        ("usr/local/lib/python3.11/site-packages/pip/__init__.py", True),
        ("usr/local/lib/python3.11/site-packages/pip-23.0.1.dist-info/RECORD", True),
        ("usr/local/bin/pip3.11", True),
        ("usr/share/python-wheels/pip-23.0.1-py3-none-any.whl", True),
        ("usr/local/lib/python3.11/ensurepip/_bundled/pip-24.0-py3-none-any.whl", True),
        ("usr/local/lib/python3.11/site-packages/pipdeptree_like/x.py", False),
        ("usr/local/bin/dlm-guard", False),
    ],
)
def test_pip_paths(path: str, pip: bool) -> None:
    assert smoke._is_pip(path) is pip


@pytest.mark.parametrize(
    ("path", "test"),
    [
        ("usr/local/lib/python3.11/site-packages/kubernetes/watch/watch_test.py", True),
        ("usr/local/lib/python3.11/site-packages/aiohttp/test_utils.py", True),
        ("usr/local/lib/python3.11/site-packages/websocket/tests/test_http.py", True),
        ("usr/local/lib/python3.11/site-packages/tests/test_rules.py", True),
        ("usr/local/lib/python3.11/site-packages/controlplane/cluster.py", True),
        ("usr/local/lib/python3.11/site-packages/webhook/rules.py", False),
        ("usr/local/lib/python3.11/site-packages/kubernetes/client/api/core_v1_api.py", False),
    ],
)
def test_test_file_paths(path: str, test: bool) -> None:
    assert smoke._is_test_file(path) is test


def test_private_key_pattern_finds_a_real_key_and_not_the_header_words() -> None:
    assert smoke.PRIVATE_KEY_PEM.search(key_pem(new_key()))
    assert not smoke.PRIVATE_KEY_PEM.search(b'"-----BEGIN PRIVATE KEY-----" is the header')
    assert not smoke.PRIVATE_KEY_PEM.search(b"-----BEGIN CERTIFICATE-----\n" + b"A" * 80)


def test_secret_volume_layout_and_atomic_swap(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    smoke.write_secret_volume(folder, {"tls.crt": b"one", "tls.key": b"k1"}, None)
    first = os.readlink(folder / "..data")
    assert os.readlink(folder / "tls.crt") == "..data/tls.crt"
    assert (folder / "tls.crt").read_bytes() == b"one"
    smoke.write_secret_volume(folder, {"tls.crt": b"two", "tls.key": b"k2"}, None)
    second = os.readlink(folder / "..data")
    assert second != first and not (folder / first).exists()
    assert (folder / "tls.crt").read_bytes() == b"two"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["..data", second, "tls.crt", "tls.key"]
    )
    assert oct((folder / second / "tls.key").stat().st_mode & 0o777) in ("0o440", "0o444")
