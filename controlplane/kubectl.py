"""Run the harness's kubectl against one cluster."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.cluster import Cluster

KUBECTL_TIMEOUT_SECONDS = 60.0


class KubectlError(RuntimeError):
    """kubectl exited non-zero; `result` has its stdout and stderr."""

    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {' '.join(args)} exited with {result.returncode}:\n{result.stderr.strip()}"
        )
        self.result = result


def kubectl(
    cluster: Cluster,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = KUBECTL_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """`kubectl --kubeconfig <cluster's> ARGS...`; raises KubectlError if check and it fails."""
    # A cache dir per cluster: ports get reused between runs, and a stale discovery cache in
    # ~/.kube/cache could then hide freshly installed CRDs.
    argv = [
        str(cluster.binaries.kubectl),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--cache-dir={cluster.workdir / 'kube-cache'}",
        *args,
    ]
    result = subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise KubectlError(list(args), result)
    return result
