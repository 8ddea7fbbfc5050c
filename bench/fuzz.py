"""Fuzzing the admission endpoints over real TLS: no 5xx, no malformed 200, no hang, no leak.

Cases start from the realistic reviews of bench.mix and are broken in seeded, repeatable ways:
values swapped for other types, huge numbers, long or odd strings (lone surrogates, NUL,
non-ASCII), objects nested up to 1,200 levels, lists of up to 20,000 items, keys removed or
added, envelopes and kinds changed, bodies truncated, bytes flipped, non-UTF-8, NaN, 1e400,
duplicate keys, other content types. Every answer is checked:

- status one of 200, 400, 408, 413, 415 (a 5xx is a failure, as is no answer within 20 s);
- a 200 is an AdmissionReview in the request's apiVersion answering the request's uid, with a
  boolean `allowed`, a Failure status when denied, string warnings, and a base64 JSONPatch
  that applies to the object sent; an error status carries a one-line reason.

    python -m bench.fuzz --reviews 100000          # the full run (to 127.0.0.1 only)

starts `dlm-guard serve --offline`, measures its RSS after a warm-up and again after the run
(and after the same warm-up once more), and prints one JSON report. tests/server runs the same
generator and checker on a few thousand cases against an in-process server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import io
import json
import random
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch

from bench.mix import build_mix

ALLOWED_STATUSES = frozenset({200, 400, 408, 413, 415})
REQUEST_TIMEOUT = 20.0
MAX_ANSWER_BYTES = 1024 * 1024
API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
_DEEP = "@@deep@@"


@dataclass(frozen=True)
class Case:
    path: str
    body: bytes
    content_type: str = "application/json"
    label: str = ""


# --- Generating cases ------------------------------------------------------------------
def _odd_scalar(rng: random.Random, *, small: bool = False) -> Any:
    if not small and rng.random() < 0.05:
        return "x" * rng.randint(1, 70_000)
    choices: list[Any] = [
        None, True, False, 0, -1, 2**63, -(2**64), 10**30, 1e308, -0.0, 3.5, "", " ",
        "x" * 300, "\u0000", "\ud800", "\u202e\u00e9\u4e2d", "😀" * 50,
        "https://10.0.0.1:9185", "[::1]:1", "host:0", "host:65536", "WaitAsReceiver",
        "kubevirt.io/v1", "VirtualMachine", "VirtualMachineInstanceMigration", "CREATE",
        "UPDATE", "DELETE", "CONNECT", "Always", "Halted", [], {}, [None], {"": ""},
    ]
    return rng.choice(choices)


def _odd_value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.55:
        return _odd_scalar(rng)
    if roll < 0.75:
        return f"{_DEEP}{rng.choice([50, 98, 99, 100, 101, 102, 200, 500, 950, 1200])}"
    if roll < 0.9:
        item = _odd_scalar(rng, small=True)
        if isinstance(item, dict | list):  # distinct copies: a later change hits one
            return [copy.deepcopy(item) for _ in range(rng.choice([10, 1000]))]
        return [item] * rng.choice([10, 1000, 20_000])
    return {f"k{i}": _odd_scalar(rng, small=True) for i in range(rng.choice([5, 500, 5000]))}


def _containers(node: Any) -> Iterator[Any]:
    """Every dict and list in `node`, itself included (iterative: it may be deep)."""
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            yield value
            stack.extend(value.values())
        elif isinstance(value, list):
            yield value
            stack.extend(value)


def _mutate_tree(review: dict[str, Any], rng: random.Random) -> str:
    """One structural change somewhere in the review; a label saying which."""
    container = rng.choice(list(_containers(review)))
    if isinstance(container, dict):
        keys = list(container)
        roll = rng.random()
        if not keys or roll < 0.15:
            container[rng.choice(["extra", "spec", "metadata", "kind", "", "x" * 300])] = (
                _odd_value(rng))
            return "add-key"
        key = rng.choice(keys)
        if roll < 0.3:
            del container[key]
            return f"drop-{key}"
        container[key] = _odd_value(rng)
        return f"set-{key}"
    if not container or rng.random() < 0.3:
        container.append(_odd_value(rng))
        return "append"
    container[rng.randrange(len(container))] = _odd_value(rng)
    return "set-item"


def _targeted(review: dict[str, Any], rng: random.Random) -> str:
    """Changes where the rules look: role, kind, operation, volumes, run strategy."""
    request = review.get("request")
    if not isinstance(request, dict):
        return "none"
    obj = request.get("object")
    roll = rng.random()
    if roll < 0.2:
        request["operation"] = rng.choice(["CREATE", "UPDATE", "DELETE", "CONNECT", "", 7])
        if request["operation"] == "UPDATE":
            request["oldObject"] = copy.deepcopy(obj)
        return "operation"
    if roll < 0.35:
        request["kind"] = rng.choice([
            {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
            {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstanceMigration"},
            {"group": "", "version": "v1", "kind": "Pod"}, {}, None])
        return "kind"
    if roll < 0.5:
        request["subResource"] = rng.choice(["status", "", None])
        return "subresource"
    if isinstance(obj, dict):
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            key = rng.choice(["sendTo", "receive", "runStrategy", "vmiName", "template"])
            spec[key] = _odd_value(rng) if rng.random() < 0.7 else {
                "migrationID": _odd_scalar(rng), "connectURL": _odd_scalar(rng)}
            return f"spec-{key}"
    return "none"


def _encode(review: Any) -> bytes:
    """JSON of the review, each deep marker written out as that many nested objects."""
    text = json.dumps(review, ensure_ascii=False)
    while _DEEP in text:
        start = text.index('"' + _DEEP)
        end = text.index('"', start + 1)
        levels = int(text[start + 1 + len(_DEEP):end])
        text = text[:start] + '{"d":' * levels + "1" + "}" * levels + text[end + 1:]
    return text.encode("utf-8", errors="surrogatepass")


def _byte_damage(body: bytes, rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.2:
        return body[: rng.randrange(max(1, len(body)))], "truncated"
    if roll < 0.4:
        damaged = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        return bytes(damaged), "flipped"
    if roll < 0.5:
        return b"\xef\xbb\xbf" + body, "bom"
    if roll < 0.6:
        return body.replace(b'"uid"', b'"uid":"dup","uid"', 1), "duplicate-key"
    if roll < 0.7:
        return body.replace(b"false", b"NaN", 1).replace(b"true", b"1e400", 1), "constants"
    if roll < 0.8:
        return body.replace(b"{", b"{" * 2000, 1), "brackets"
    if roll < 0.9:
        return body.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass"), "utf-16"
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000))), "noise"


def cases(seed: int, count: int) -> Iterator[Case]:
    """`count` cases, the same ones for the same seed."""
    rng = random.Random(seed)
    items = build_mix()
    for _ in range(count):
        item = rng.choice(items)
        review: Any = json.loads(item.body)
        review["apiVersion"] = rng.choice(API_VERSIONS)
        review["request"]["uid"] = f"fuzz-{rng.getrandbits(48):012x}"
        labels = []
        for _ in range(rng.randint(0, 3)):
            labels.append(_targeted(review, rng) if rng.random() < 0.4
                          else _mutate_tree(review, rng))
        body = _encode(review)
        if rng.random() < 0.15:
            body, damage = _byte_damage(body, rng)
            labels.append(damage)
        content_type = "application/json"
        if rng.random() < 0.03:
            content_type = rng.choice(["text/plain", "application/yaml", ""])
            labels.append("content-type")
        yield Case(item.path, body, content_type, "+".join(labels) or "clean")


# --- Checking answers ------------------------------------------------------------------
def problem_with(case: Case, status: int, answer: bytes) -> str | None:
    """Why this answer is wrong, or None."""
    if status not in ALLOWED_STATUSES:
        return f"HTTP {status}"
    if len(answer) > MAX_ANSWER_BYTES:
        return f"answer of {len(answer)} bytes"
    if status != 200:
        text = answer.decode("utf-8", "replace").rstrip("\n")
        return None if text and "\n" not in text else "error reason not one line"
    try:
        sent = json.loads(case.body)
    except ValueError:
        sent = None  # a body only orjson reads; the answer is still checked below
    return _review_problem(sent, json.loads(answer), case.path)


def _review_problem(sent: Any, answer: Any, path: str) -> str | None:
    if not isinstance(answer, dict) or answer.get("kind") != "AdmissionReview":
        return "not an AdmissionReview"
    response = answer.get("response")
    if not isinstance(response, dict) or not isinstance(response.get("allowed"), bool):
        return "no boolean response.allowed"
    if isinstance(sent, dict):
        if answer.get("apiVersion") != sent.get("apiVersion"):
            return "apiVersion not echoed"
        if response.get("uid") != sent["request"]["uid"]:
            return "uid not echoed"
    if not response["allowed"]:
        status = response.get("status")
        if not (isinstance(status, dict) and status.get("status") == "Failure"
                and isinstance(status.get("message"), str) and status.get("code") == 403):
            return "denial without a Failure status"
    warnings = response.get("warnings", [])
    if not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
        return "warnings not a list of strings"
    if "patch" in response:
        return _patch_problem(sent, response, path)
    return None


def _patch_problem(sent: Any, response: dict[str, Any], path: str) -> str | None:
    if path != "/mutate" or response.get("patchType") != "JSONPatch":
        return "patch without patchType JSONPatch, or from /validate"
    try:
        patch = json.loads(base64.b64decode(response["patch"], validate=True))
    except ValueError:
        return "patch not base64 JSON"
    if not isinstance(patch, list) or not patch:
        return "patch not a non-empty list"
    if isinstance(sent, dict):
        try:
            jsonpatch.apply_patch(sent["request"]["object"], patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError,
                TypeError) as err:
            return f"patch does not apply: {err}"
    return None


# --- Running ---------------------------------------------------------------------------
@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    hangs: int = 0
    max_latency: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def malformed_200(self) -> int:
        return sum(n for reason, n in self.problems.items() if not reason.startswith("HTTP"))

    def ok(self) -> bool:
        return not (self.problems or self.hangs)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p99 = ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0
        return {"answers": sum(self.statuses.values()),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "server_errors": self.server_errors, "malformed_answers": self.malformed_200,
                "hangs": self.hangs, "problems": dict(self.problems),
                "examples": self.examples[:10], "max_latency_ms": round(self.max_latency * 1e3, 1),
                "p99_latency_ms": round(p99 * 1e3, 1)}


async def _one(session: aiohttp.ClientSession, base_url: str, case: Case, tally: Tally) -> None:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            async with session.post(base_url + case.path, data=io.BytesIO(case.body),
                                    headers=headers) as resp:
                status, answer = resp.status, await resp.read()
    except TimeoutError:
        tally.hangs += 1
        tally.examples.append({"label": case.label, "problem": "no answer in time"})
        return
    elapsed = time.perf_counter() - started
    tally.max_latency = max(tally.max_latency, elapsed)
    tally.latencies.append(elapsed)
    tally.statuses[status] += 1
    problem = problem_with(case, status, answer)
    if problem is not None:
        tally.problems[problem] += 1
        tally.examples.append({"label": case.label, "problem": problem,
                               "answer": answer[:300].decode("utf-8", "replace")})


async def run_cases(base_url: str, ca: ssl.SSLContext, all_cases: Iterator[Case],
                    concurrency: int = 8, tally: Tally | None = None) -> Tally:
    """Send every case, `concurrency` at a time, over keep-alive connections."""
    if not base_url.startswith(("https://127.0.0.1:", "https://[::1]:", "https://localhost:")):
        raise SystemExit("fuzz traffic goes to 127.0.0.1/::1 only")
    tally = tally or Tally()
    connector = aiohttp.TCPConnector(ssl=ca, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for case in all_cases:  # a shared iterator: each case goes to one worker
                await _one(session, base_url, case, tally)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


# --- The full run ----------------------------------------------------------------------
def _warm_up_cases() -> list[Case]:
    return [Case(item.path, item.body, label="warm-up") for item in build_mix()] * 20


def full_run(reviews: int, seed: int, concurrency: int) -> dict[str, Any]:
    from bench.servers import Server, dlm_guard_spec, tls_pair

    with tempfile.TemporaryDirectory(prefix="dlm-guard-fuzz-") as tmp:
        workdir = Path(tmp)
        pair = tls_pair(workdir / "pki")
        server = Server(dlm_guard_spec("dlm-guard", pair, extra=("--log-level", "warning")),
                        workdir, pair.ca_cert, core=None)
        ca = server.ssl_context()
        try:
            asyncio.run(run_cases(server.base_url, ca, iter(_warm_up_cases()), concurrency))
            before = server.memory()
            started = time.monotonic()
            tally = asyncio.run(run_cases(server.base_url, ca, cases(seed, reviews),
                                          concurrency))
            seconds = time.monotonic() - started
            after_run = server.memory()
            asyncio.run(run_cases(server.base_url, ca, iter(_warm_up_cases()), concurrency))
            after = server.memory()
            exit_code = server.stop()
            log_tail = server.tail(5)
        finally:
            server.stop()
    return {"reviews": reviews, "seed": seed, "concurrency": concurrency,
            "seconds": round(seconds, 1), **tally.summary(),
            "rss_mib": {"before": before["rss_mib"], "after_run": after_run["rss_mib"],
                        "after_warm_up": after["rss_mib"], "peak": after["peak_rss_mib"]},
            "server_exit_code": exit_code, "server_log_tail": log_tail,
            "bar_met": tally.ok() and exit_code == 0
            and after["rss_mib"] <= before["rss_mib"] * 1.1 + 10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = full_run(args.reviews, args.seed, args.concurrency)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["bar_met"] else 1


if __name__ == "__main__":
    sys.exit(main())

