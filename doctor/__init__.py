"""`dlm-guard doctor`: a read-only preflight of a cluster pair before the first migration.

gather (one snapshot per cluster, list/get calls only) -> checks (pure, one result per check and
cluster or pair) -> report (text or JSON, exit code as `check`).
"""
