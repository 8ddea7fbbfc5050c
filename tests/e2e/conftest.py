"""End-to-end tests: `binaries` and `clusters` come from controlplane.pytest_plugin."""
