"""The reconciler service (`dlm-guard reconcile`): CA trust sync and migration clean-up.

gather (list/watch into per-cluster snapshots) -> decide (pure: trust.py, gc.py) -> act (act.py,
the only module that writes). See DESIGN.md "Architecture".
"""
