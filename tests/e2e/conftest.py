"""End-to-end tests get `binaries` and `clusters` from controlplane.pytest_plugin (root conftest)."""
