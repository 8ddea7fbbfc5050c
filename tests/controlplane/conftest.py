"""The harness tests start their own clusters; they only share the `binaries` fixture."""

from controlplane.pytest_plugin import (  # noqa: F401
    binaries,
    pytest_configure,
    pytest_terminal_summary,
)
