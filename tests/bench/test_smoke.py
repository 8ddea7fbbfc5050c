"""`python -m bench smoke`: every benchmark works and reports what it should.

Structure and sanity only (requests were made, nothing failed, figures are positive numbers):
never a timing target, which would make CI flaky on a busy machine. The pure micro-benchmark
and a short webhook load run in the fast layer; the parts on harness clusters are e2e.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controlplane.pytest_plugin import binaries  # noqa: F401  (fixture)

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_TIMEOUT_SECONDS = 600


def smoke(parts: str, out: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench", "smoke", "--parts", parts,
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT_SECONDS, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "what" in done.stdout  # the printed table
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["name"] == "smoke" and doc["machine"]["nproc"] >= 1
    assert doc["table"], "no table rows"
    return doc["results"]


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0 and math.isfinite(value)


def check_run(run: dict[str, Any]) -> None:
    assert run["requests"] > 0 and run["errors"] == 0, run
    assert positive(run["requests_per_second"])
    latency = run["latency"]
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert positive(run["server_cpu_us_per_request"]) and positive(run["peak_rss_mib"])


def test_micro_and_webhook_load_smoke(tmp_path: Path) -> None:
    results = smoke("micro,webhook,variants", tmp_path / "smoke.json")

    micro = results["micro"]
    assert micro["reviews_in_mix"] == 40
    assert positive(micro["engine_us_per_review"])
    assert positive(micro["server_path_us_per_review"])
    assert set(micro["engine_us_per_object_mutate_plus_validate"]) >= {"vm-clean",
                                                                       "target-no-id"}

    web = results["webhook"]
    assert set(web["saturated"]) == {"bare-aiohttp", "dlm-guard-rules-off", "dlm-guard"}
    # The servers answered the whole mix correctly before any load (uids, decisions).
    checks = web["answer_checks"]["dlm-guard"]
    assert checks["checked"] == 40 and checks["denied"] > 0 and checks["patched"] > 0
    assert web["answer_checks"]["dlm-guard-rules-off"]["denied"] == 0
    for run in [*web["saturated"].values(), *web["latency_at_fraction"].values()]:
        check_run(run)
    for ratio in web["ratios_vs_bare"].values():
        assert positive(ratio["throughput"]) and positive(ratio["capacity_by_cpu"])
    assert set(web["targets"]) == {"throughput_ratio", "p99_ms_at_fraction"}

    variants = results["variants"]
    assert set(variants["server_cpu_us_per_request"]) == {"bare-aiohttp", "dlm-guard",
                                                          "fastpatch,readall"}
    for runs in variants["rounds"].values():
        for run in runs:
            check_run(run)


@pytest.mark.e2e
def test_apiserver_and_reconciler_smoke(tmp_path: Path, binaries) -> None:  # noqa: F811
    results = smoke("apiserver,reconciler", tmp_path / "smoke.json")

    e2e = results["apiserver"]
    assert e2e["with_webhooks"]["patched"] == 3 and e2e["without_webhooks"]["patched"] == 0
    for phase in ("without_webhooks", "with_webhooks"):
        assert e2e[phase]["python_client"]["count"] == 6
        assert e2e[phase]["kubectl"]["count"] == 1
    assert set(e2e["added_python_client_ms"]) == {"p50_ms", "p90_ms", "p99_ms", "mean_ms"}
    assert set(e2e["dlm_guard_time_per_call_ms"]) == {"mutate", "validate"}

    rec = results["reconciler"]
    assert [s["stage"] for s in rec["stages"]] == ["small", "full"]
    first = rec["stages"][0]["first_pass"]
    assert first["pass"]["ca_writes"] == 2  # both managed inboxes, on the very first pass
    for stage in rec["stages"]:
        for one in (stage["first_pass"], stage["second_pass"]):
            assert one["exit_code"] == 0 and one["pass"]["errors"] == 0, one
            assert one["pass"]["deletions"] == 0  # nothing in the dataset is garbage
            assert positive(one["seconds"]) and positive(one["peak_rss_mib"])
            assert one["requests_total"] > 0
            assert all(key.startswith("LIST ") or key.startswith(("POST", "PATCH"))
                       for counts in one["requests"].values() for key in counts)
    service = rec["service"]
    assert [positive(r["seconds_to_both_inboxes"]) for r in service["rotations"]] == [True]
    assert [positive(t["seconds_to_deleted"]) for t in service["failed_target_cleanup"]] == [True]
    assert positive(service["service_peak_rss_mib"])
    assert rec["requests_growth_beyond_paging"] <= 0  # a count, not a timing
    assert positive(service["variant"]["rotation_median_seconds_to_both"])


@pytest.mark.e2e
def test_livelookup_smoke(tmp_path: Path, binaries) -> None:  # noqa: F811
    live = smoke("livelookup", tmp_path / "smoke.json")["livelookup"]
    assert set(live["cases"]) == {"hit", "miss_found", "miss_absent", "miss_unreachable"}
    for case in live["cases"].values():
        assert case["count"] == 5 and 0 < case["p50_ms"] <= case["max_ms"]
