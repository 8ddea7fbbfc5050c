"""Install KubeVirt-shaped CRDs (ours, or the folder named by DLM_GUARD_CRDS_DIR) and wait."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from controlplane.cluster import Cluster
from controlplane.kubectl import kubectl

BUNDLED_CRDS_DIR = Path(__file__).resolve().parent / "crds"
CRDS_DIR_ENV = "DLM_GUARD_CRDS_DIR"
ESTABLISHED_TIMEOUT = "60s"


def crds_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$DLM_GUARD_CRDS_DIR when set (e.g. the real upstream CRDs in CI), else our compact ones."""
    override = env.get(CRDS_DIR_ENV)
    return Path(override) if override else BUNDLED_CRDS_DIR


def crd_files(directory: Path) -> list[Path]:
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise FileNotFoundError(f"no CRD YAML files in {directory}")
    return files


def install_crds(cluster: Cluster, directory: Path | None = None) -> list[Path]:
    """Server-side apply every CRD file, then wait until all are Established.

    Server-side, not client-side, apply: the real VirtualMachine CRD (~670 KB) is far over the
    256 KiB limit of the last-applied-configuration annotation that client-side apply writes.
    """
    files = crd_files(directory or crds_dir())
    file_args = [arg for f in files for arg in ("-f", str(f))]
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", *file_args)
    kubectl(
        cluster,
        "wait",
        "--for=condition=Established",
        f"--timeout={ESTABLISHED_TIMEOUT}",
        *file_args,
    )
    return files


def install_crds_on(clusters: Sequence[Cluster], directory: Path | None = None) -> None:
    """install_crds() on every cluster at once (each takes a second or two)."""
    with ThreadPoolExecutor(max_workers=max(1, len(clusters))) as pool:
        for future in [pool.submit(install_crds, c, directory) for c in clusters]:
            future.result()
