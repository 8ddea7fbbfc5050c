"""Benchmarks of dlm-guard: `python -m bench all|smoke|...` (see bench.__main__).

Benchmarks are not timed tests: `smoke` only checks that every part works (CI runs it through
tests/bench/test_smoke.py); `all` produces the figures of the README, with raw JSON in
bench/results/.
"""
