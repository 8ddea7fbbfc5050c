"""End-to-end fixtures on real local clusters: `binaries` and `clusters` (two, CRDs installed).

They live in controlplane.pytest_plugin; importing them here makes them visible to tests/e2e/.
"""

from controlplane.pytest_plugin import (  # noqa: F401
    binaries,
    clusters,
    pytest_configure,
    pytest_terminal_summary,
)
