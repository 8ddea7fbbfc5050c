"""Find helm, render the chart, and look things up in the rendered manifests.

helm is built from its Go module by tools/testbin/build.sh (pinned in versions.env, cached like
the control-plane binaries). A missing helm is a test FAILURE, never a skip: the chart tests are
part of CI and CI builds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "dlm-guard"
VERSIONS_ENV = REPO / "tools" / "testbin" / "versions.env"
HERE = Path(__file__).resolve().parent
FULL_VALUES = HERE / "values-full.yaml"

RELEASE = "guard"
NAMESPACE = "dlm-guard-system"
HELM_TIMEOUT_SECONDS = 120.0

Manifest = dict[str, Any]


class HelmNotFound(RuntimeError):
    pass


class HelmFailed(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stderr.strip()}")
        self.stderr = result.stderr


def pinned_versions(path: Path = VERSIONS_ENV) -> dict[str, str]:
    """KEY=VALUE lines of tools/testbin/versions.env."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            pins[key] = value
    return pins


def kube_version() -> str:
    """The test API server's version, for `--kube-version` (helm's default is old)."""
    return pinned_versions().get("K8S_VERSION", "v1.36.3").lstrip("v")


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """The same cache folder as tools/testbin/build.sh."""
    if env.get("DLM_GUARD_CACHE_DIR"):
        return Path(env["DLM_GUARD_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlm-guard"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def helm_candidates(env: Mapping[str, str] = os.environ) -> Iterator[Path]:
    """$HELM, then the pinned cached build, then any cached build (newest name first), then PATH."""
    if env.get("HELM"):
        yield Path(env["HELM"])
    testbin = cache_root(env) / "testbin"
    pinned = pinned_versions().get("HELM_VERSION")
    if pinned:
        yield testbin / f"helm-{pinned}" / "helm"
    yield from (d / "helm" for d in sorted(testbin.glob("helm-*"), reverse=True))
    on_path = shutil.which("helm", path=env.get("PATH"))
    if on_path:
        yield Path(on_path)


def find_helm(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("HELM") and not _executable(Path(env["HELM"])):
        # An explicit choice is never silently replaced by another helm.
        raise HelmNotFound(f"HELM={env['HELM']} is not an executable file")
    for candidate in helm_candidates(env):
        if _executable(candidate):
            return candidate
    raise HelmNotFound(
        "\n" + "!" * 78 + "\n"
        "HELM NOT FOUND: the chart tests need helm and do not skip without it.\n"
        "Build it (pinned in tools/testbin/versions.env, cached in "
        f"{cache_root(env) / 'testbin'}):\n"
        "    bash tools/testbin/build.sh helm\n"
        "or point $HELM at a helm v3 binary.\n" + "!" * 78)


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm), *args], capture_output=True, text=True,
                            timeout=HELM_TIMEOUT_SECONDS, check=False)
    if check and result.returncode != 0:
        raise HelmFailed(args, result)
    return result


def value_args(values_files: Iterable[Path] = (), sets: Iterable[str] = ()) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def template(helm: Path, values_files: Iterable[Path] = (), sets: Iterable[str] = (), *,
             namespace: str = NAMESPACE, release: str = RELEASE, check: bool = True,
             extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`extra_args`: e.g. --api-versions, what a real cluster's discovery would report."""
    return run_helm(helm, "template", release, str(CHART), "--namespace", namespace,
                    "--kube-version", kube_version(), *value_args(values_files, sets),
                    *extra_args, check=check)


def render(helm: Path, values_files: Iterable[Path] = (), sets: Iterable[str] = (), *,
           namespace: str = NAMESPACE, release: str = RELEASE,
           extra_args: Sequence[str] = ()) -> list[Manifest]:
    """The rendered manifests (empty documents dropped)."""
    out = template(helm, values_files, sets, namespace=namespace, release=release,
                   extra_args=extra_args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def lint(helm: Path, values_files: Iterable[Path] = (), sets: Iterable[str] = (),
         ) -> subprocess.CompletedProcess[str]:
    return run_helm(helm, "lint", str(CHART), "--strict", "--namespace", NAMESPACE,
                    "--kube-version", kube_version(), *value_args(values_files, sets))


# --- Looking things up in rendered manifests ------------------------------------------
def of_kind(docs: Iterable[Manifest], *kinds: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") in kinds]


def one(docs: Iterable[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
    return found[0]


def pod_specs(docs: Iterable[Manifest]) -> list[tuple[str, Manifest]]:
    """(workload name, pod spec) of every workload kind the chart could render."""
    workloads = of_kind(docs, "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
    specs = []
    for w in workloads:
        template_spec = w["spec"]["template"]["spec"] if w["kind"] != "CronJob" else \
            w["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        specs.append((f"{w['kind']}/{w['metadata']['name']}", template_spec))
    return specs


def containers(pod_spec: Manifest) -> list[Manifest]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def webhooks(docs: Iterable[Manifest]) -> list[tuple[str, Manifest]]:
    """(configuration kind, webhook entry) for every admission webhook."""
    return [(cfg["kind"], hook)
            for cfg in of_kind(docs, "MutatingWebhookConfiguration",
                               "ValidatingWebhookConfiguration")
            for hook in cfg.get("webhooks", [])]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
