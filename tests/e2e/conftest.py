"""End-to-end tests use `binaries` and `clusters` from controlplane.pytest_plugin (tests/conftest.py)."""
