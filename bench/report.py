"""The result document (raw JSON) and its printed table."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procstat import machine

RESULTS_DIR = Path(__file__).resolve().parent / "results"
Row = tuple[str, str, str, str]  # what, measured, target, verdict


def document(name: str, command: str, results: dict[str, Any],
             started: datetime) -> dict[str, Any]:
    return {"name": name, "command": command, "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "machine": machine(), "results": results,
            "table": [list(row) for row in rows(results)]}


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False, cwd=RESULTS_DIR.parent)
    except OSError:
        return ""
    return done.stdout.strip()


def save(doc: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{doc['started'][:10]}-{doc['name']}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "MISSED")


def rows(results: dict[str, Any]) -> list[Row]:
    found: list[Row] = []
    if "micro" in results:
        found += _micro_rows(results["micro"])
    if "webhook" in results:
        found += _webhook_rows(results["webhook"])
    if "variants" in results:
        found += _variant_rows(results["variants"])
    if "apiserver" in results:
        found += _apiserver_rows(results["apiserver"])
    if "livelookup" in results:
        found += _livelookup_rows(results["livelookup"])
    if "reconciler" in results:
        found += _reconciler_rows(results["reconciler"])
    if "cache" in results:
        found += _cache_rows(results["cache"])
    if "modes" in results:
        found += _modes_rows(results["modes"])
    return found


def _modes_rows(modes: dict[str, Any]) -> list[Row]:
    """Admission modes side by side (bench/modes.py); targets from the CEL policy work."""
    phases, ratios = modes["phases"], modes["ratios"]
    found: list[Row] = [(f"VM create, {phase}", f"p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms",
                         "", "") for phase, p in phases.items()]
    for label, key, target in (("hybrid / none", "hybrid/none p50", 1.05),
                               ("cel / none", "cel/none p50", 1.05),
                               ("webhook / go-floor", "webhook/go-floor p50", 1.1)):
        found.append((f"{label}, p50", f"{ratios[key]}", f"<= {target}",
                      _verdict(ratios[key] <= target)))
    return found


LIVE_CASES = (("hit", "VMI cached (no API call)"), ("miss_found", "cache miss, GET finds it"),
              ("miss_absent", "cache miss, GET 404: denied"),
              ("miss_unreachable", "cache miss, API unreachable: warning"))


def _livelookup_rows(live: dict[str, Any]) -> list[Row]:
    found: list[Row] = []
    for key, label in LIVE_CASES:
        case = live["cases"][key]
        found.append((f"validate receive VMIM, {label} (n={case['count']})",
                      f"p50 {case['p50_ms']} / p99 {case['p99_ms']} ms", "", ""))
    return found


def _cache_rows(cache: dict[str, Any]) -> list[Row]:
    """bench/cache.py: the watch cache over one big cluster."""
    s, t = cache["settings"], cache["targets"]
    hook, rec = cache["webhook"], cache["reconciler"]
    quiet = hook["loaded"]["latency_quiet"]["latency"]
    stream = hook["loaded"]["latency_with_status_stream"]["latency"]
    size = f"{s['vms']:,} VMs + {s['vmis']:,} VMIs + {s['vmims']:,} VMIMs"
    return [
        (f"webhook start to /readyz, {size}", f"{hook['loaded']['ready_seconds']} s "
         f"(empty: {hook['empty']['ready_seconds']} s)", "< 5 s",
         _verdict(t["webhook_ready_seconds"]["met"])),
        ("webhook steady RSS, loaded (empty)", f"{hook['loaded']['rss_mib']} MiB "
         f"({hook['empty']['rss_mib']} MiB)", "", ""),
        ("webhook RSS per 1,000 VM+VMI pairs above empty",
         f"{hook['rss_mib_per_1000_pairs']} MiB", "< 2 MiB",
         _verdict(t["webhook_rss_mib_per_1000_pairs"]["met"])),
        (f"admission p50/p99 at {s['rate']:g}/s, quiet vs {s['status_rate']:g} VMI status "
         "updates/s", f"{quiet.get('p50_ms')}/{quiet.get('p99_ms')} ms vs "
         f"{stream.get('p50_ms')}/{stream.get('p99_ms')} ms", "p99 unchanged", ""),
        ("reconciler pass from the cache (max in window)",
         f"{rec['loaded']['pass_seconds_max']} s", "< 0.5 s",
         _verdict(t["reconciler_pass_seconds"]["met"])),
        ("reconciler API requests while idle, empty vs loaded (per hour)",
         f"{rec['empty']['requests_per_hour']} vs {rec['loaded']['requests_per_hour']}",
         "flat", _verdict(t["reconciler_requests_per_hour_empty_vs_loaded"]["met"])),
        ("reconciler start-up requests, empty vs loaded",
         f"{rec['empty']['startup_requests_total']} vs "
         f"{rec['loaded']['startup_requests_total']}", "", ""),
        ("reconciler RSS, loaded", f"{rec['loaded']['peak_rss_mib']} MiB", "< 150 MiB",
         _verdict(t["reconciler_rss_mib"]["met"])),
    ]


def _micro_rows(micro: dict[str, Any]) -> list[Row]:
    return [
        ("engine mutate+validate per review (mix)", f"{micro['engine_us_per_review']} us",
         f"< {micro['target_us']:g} us", _verdict(micro["target_met"])),
        ("same, every rule off", f"{micro['engine_us_per_review_rules_off']} us", "", ""),
        ("decode + engine + encode per review (no HTTP)",
         f"{micro['server_path_us_per_review']} us", "", ""),
    ]


def _webhook_rows(web: dict[str, Any]) -> list[Row]:
    found: list[Row] = []
    for name, run in web["saturated"].items():
        lat = run["latency"]
        found.append((f"{name}: saturated req/s (c={web['settings']['concurrency']})",
                      f"{run['requests_per_second']:.0f} req/s, p50 {lat['p50_ms']} ms, "
                      f"p99 {lat['p99_ms']} ms, server CPU {run['server_cpu_percent']}% "
                      f"({run['server_cpu_us_per_request']} us/req), peak RSS "
                      f"{run['peak_rss_mib']} MiB", "", ""))
    for name, ratio in web["ratios_vs_bare"].items():
        target = web["targets"]["throughput_ratio"]
        found.append((f"{name} / bare: throughput (capacity by CPU)",
                      f"{ratio['throughput']:.2f} ({ratio['capacity_by_cpu']:.2f})",
                      f">= {target['target']}" if name == "dlm-guard" else "",
                      _verdict(target["met"]) if name == "dlm-guard" else ""))
    for name, run in web["latency_at_fraction"].items():
        lat = run["latency"]
        is_ours = name == "dlm-guard"
        target = web["targets"]["p99_ms_at_fraction"]
        found.append((f"{name}: open loop at {run['target_rate']:.0f} req/s "
                      f"({web['settings']['latency_fraction']:.0%} of dlm-guard's max)",
                      f"p50 {lat.get('p50_ms')} ms, p90 {lat.get('p90_ms')} ms, "
                      f"p99 {lat.get('p99_ms')} ms, max {lat.get('max_ms')} ms (median-p99 "
                      f"round; p99 of rounds {run.get('rounds_p99_ms')})",
                      f"p99 < {target['target']:g} ms" if is_ours else "",
                      _verdict(target["met"]) if is_ours else ""))
    return found


def _variant_rows(var: dict[str, Any]) -> list[Row]:
    found: list[Row] = []
    cpu = var["server_cpu_us_per_request"]
    for name, saved in var["cpu_saved_vs_unchanged_percent"].items():
        if name == "dlm-guard":
            continue
        found.append((f"variant {name}: server CPU per request",
                      f"{cpu[name]} us (unchanged {cpu['dlm-guard']} us: {saved:+}% saved), "
                      f"capacity vs bare {var['capacity_vs_bare'][name]:.2f}", "", ""))
    return found


def _apiserver_rows(e2e: dict[str, Any]) -> list[Row]:
    found: list[Row] = []
    for key, label in (("python_client", "Python client"), ("kubectl", "kubectl")):
        if key not in e2e["without_webhooks"]:
            continue
        without, with_ = e2e["without_webhooks"][key], e2e["with_webhooks"][key]
        plus = e2e[f"added_{key}_ms"]
        found.append((f"create WaitAsReceiver VM via {label} (n={with_['count']} each)",
                      f"without p50 {without['p50_ms']} / p99 {without['p99_ms']} ms; with "
                      f"p50 {with_['p50_ms']} / p99 {with_['p99_ms']} ms; added p50 "
                      f"{plus['p50_ms']:+} / p99 {plus['p99_ms']:+} ms", "", ""))
    inside = e2e.get("dlm_guard_time_per_call_ms")
    if inside:
        found.append(("of which inside dlm-guard (its histogram, mean per call)",
                      ", ".join(f"{k} {v} ms" for k, v in inside.items()), "", ""))
    return found


def _reconciler_rows(rec: dict[str, Any]) -> list[Row]:
    found: list[Row] = []
    targets = rec["targets"]
    for stage in rec["stages"]:
        for which in ("first_pass", "second_pass"):
            one = stage[which]
            found.append((f"reconcile --once, {stage['vmims']} VMIMs + {stage['vms']} VMs, "
                          f"{which.replace('_', ' ')}",
                          f"{one['seconds']} s, peak RSS {one['peak_rss_mib']} MiB, "
                          f"{one['requests_total']} API requests, CA writes "
                          f"{one['pass'].get('ca_writes')}", "< 10 s, < 200 MiB", ""))
    found.append(("full pass / peak RSS (worst of full stage)",
                  f"{targets['full_pass_seconds']['measured']} s / "
                  f"{targets['peak_rss_mib']['measured']} MiB", "< 10 s / < 200 MiB",
                  _verdict(targets["full_pass_seconds"]["met"]
                           and targets["peak_rss_mib"]["met"])))
    beyond = rec["requests_growth_beyond_paging"]
    found.append(("API requests per pass, small vs full stage",
                  " vs ".join(str(v) for v in rec["requests_small_vs_full"].values())
                  + f" (growth beyond extra list pages of 500: {beyond})",
                  "no growth per object", _verdict(beyond <= 0)))
    service = rec["service"]
    found.append(("peer CA rotation -> both managed inboxes (watches)",
                  "median " + str(service["rotation_median_seconds_to_both"]) + " s ("
                  + ", ".join(str(r["seconds_to_both_inboxes"]) for r in service["rotations"])
                  + ")", "< 2 s", _verdict(targets["ca_rotation_seconds"]["met"])))
    found.append(("target VMIM Failed -> deleted (--gc-grace 0)",
                  "median " + str(service["cleanup_median_seconds"]) + " s", "", ""))
    found.append(("reconcile service peak RSS", f"{service['service_peak_rss_mib']} MiB",
                  "< 200 MiB", _verdict(service["service_peak_rss_mib"] < 200)))
    variant = service.get("variant")
    if variant:
        found.append((f"proposal: debounce {variant['debounce_seconds']} s: CA rotation / "
                      "failed clean-up", f"median {variant['rotation_median_seconds_to_both']} s"
                      f" / {variant['cleanup_median_seconds']} s", "< 2 s",
                      _verdict(variant["rotation_median_seconds_to_both"] < 2)))
    return found


def table(results: dict[str, Any]) -> str:
    found = rows(results)
    if not found:
        return "(no results)"
    header: Row = ("what", "measured", "target", "")
    widths = [max(len(r[i]) for r in [header, *found]) for i in range(4)]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in [header, *found]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    lines = ["| what | measured | target | |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows(results)]
    return "\n".join(lines)
