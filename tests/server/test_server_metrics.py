"""Metric outcomes and labels: the documented result precedence and bounded label values."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from webhook.decision import Decision
from webhook.metrics import AdmissionMetrics, kind_label, operation_label, result_of

PATCH = [{"op": "add", "path": "/metadata/labels", "value": {}}]


@pytest.mark.parametrize(("decision", "result"), [
    (Decision.allow(), "allowed"),
    (Decision.allow(["[persistent-state] x: y"]), "warned"),
    (Decision.patched(PATCH), "patched"),
    (Decision.patched(PATCH, ["w"]), "patched"),
    (Decision.deny(["[lun-disk] x: y"]), "denied"),
    (Decision.deny(["[lun-disk] x: y"], ["w"]), "denied"),
])
def test_result_precedence(decision: Decision, result: str) -> None:
    assert result_of(decision) == result


@pytest.mark.parametrize(("kind", "label"), [
    ("VirtualMachine", "VirtualMachine"),
    ("VirtualMachineInstanceMigration", "VirtualMachineInstanceMigration"),
    ("Pod", "other"), ("x" * 1000, "other"), ("", "unknown"),
])
def test_kind_label_is_bounded(kind: str, label: str) -> None:
    assert kind_label(kind) == label


@pytest.mark.parametrize(("operation", "label"), [
    ("CREATE", "CREATE"), ("DELETE", "DELETE"), ("create", "other"), ("", "unknown"),
])
def test_operation_label_is_bounded(operation: str, label: str) -> None:
    assert operation_label(operation) == label


def test_render_has_both_metrics_with_their_labels() -> None:
    metrics = AdmissionMetrics()
    metrics.observe("validate", "Pod", "PATCH", "allowed", 0.0002)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert families["dlm_guard_admission_requests"].type == "counter"
    [sample] = [s for s in families["dlm_guard_admission_requests"].samples
                if s.name.endswith("_total")]
    assert sample.labels == {"endpoint": "validate", "kind": "other", "operation": "other",
                             "result": "allowed"}
    histogram = families["dlm_guard_admission_duration_seconds"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert (buckets["0.0001"], buckets["0.00025"], buckets["+Inf"]) == (0, 1, 1)
