"""Locate kube-apiserver, etcd and kubectl: KUBEBUILDER_ASSETS, else the build.sh cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controlplane.process import log_tail

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "tools" / "testbin" / "build.sh"
VERSIONS_FILE = REPO_ROOT / "tools" / "testbin" / "versions.env"
KUBE_BINARIES = ("kube-apiserver", "etcd", "kubectl")


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the control-plane executables, and where they were found."""

    kube_apiserver: Path
    etcd: Path
    kubectl: Path
    source: str

    @classmethod
    def in_dir(cls, directory: Path, source: str) -> Binaries:
        return cls(
            kube_apiserver=directory / "kube-apiserver",
            etcd=directory / "etcd",
            kubectl=directory / "kubectl",
            source=source,
        )


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse the KEY=VALUE pins shared with build.sh (comments and blank lines ignored)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Same rule as build.sh: $DLM_GUARD_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/dlm-guard."""
    if env.get("DLM_GUARD_CACHE_DIR"):
        return Path(env["DLM_GUARD_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlm-guard"


def _missing(directory: Path) -> list[str]:
    return [b for b in KUBE_BINARIES if not os.access(directory / b, os.X_OK)]


def _candidate_dirs(env: Mapping[str, str]) -> list[Path]:
    pins = read_versions() if VERSIONS_FILE.exists() else {}
    versions = [pins.get("K8S_VERSION"), pins.get("K8S_FALLBACK_VERSION")]
    return [cache_dir(env) / "testbin" / v for v in versions if v]


def binaries_or_reason(env: Mapping[str, str] = os.environ) -> Binaries | str:
    """The binaries, or a sentence saying why there are none."""
    assets = env.get("KUBEBUILDER_ASSETS")
    if assets:
        missing = _missing(Path(assets))
        if missing:
            return f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}"
        return Binaries.in_dir(Path(assets).resolve(), "KUBEBUILDER_ASSETS")
    candidates = _candidate_dirs(env)
    for directory in candidates:
        if not _missing(directory):
            return Binaries.in_dir(directory, "cache")
    looked = ", ".join(str(d) for d in candidates) or "(no versions.env found)"
    return f"no kube-apiserver/etcd/kubectl in {looked}; run `bash {BUILD_SCRIPT}`"


def find_binaries(env: Mapping[str, str] = os.environ) -> Binaries | None:
    """The binaries, or None (binaries_or_reason() says why)."""
    found = binaries_or_reason(env)
    return found if isinstance(found, Binaries) else None


def build_binaries(log: Path | None = None) -> Binaries | str:
    """Run build.sh (it builds only what is missing), then look again; the reason on failure.

    Progress goes to `log`, or to our stderr when no log is given.
    """
    if not shutil.which("go"):
        return "Go is not installed, so tools/testbin/build.sh cannot build the binaries"
    argv = ["bash", str(BUILD_SCRIPT), "kube"]
    if log is None:
        result = subprocess.run(argv, stdout=sys.stderr, check=False)
    else:
        with open(log, "ab") as sink:
            result = subprocess.run(argv, stdout=sink, stderr=sink, check=False)
    if result.returncode != 0:
        said = f" (log {log}):\n{log_tail(log, 8)}" if log else ""
        return f"tools/testbin/build.sh failed with exit code {result.returncode}{said}"
    return binaries_or_reason()
