"""A bounded fuzz run (fixed seed) against the real TLS server with the real engine: no 5xx,
no malformed 200, no hang (the generator and checker are bench/fuzz.py's; the full run with
>= 100,000 reviews is `python -m bench.fuzz`)."""

from __future__ import annotations

import ssl

from server_support import listening, offline_context

from bench.fuzz import Case, cases, problem_with, run_cases
from certs.generate import PairPaths
from webhook.server import create_app

SEED, COUNT = 20261204, 2000


def test_the_generator_is_repeatable_and_varied() -> None:
    first, again = list(cases(SEED, 200)), list(cases(SEED, 200))
    assert first == again
    labels = {case.label.split("+")[0] for case in first}
    assert len(labels) > 20 and "clean" in labels


def test_the_checker_catches_what_it_should() -> None:
    case = Case("/validate", b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",'
                             b' "request": {"uid": "u"}}')
    assert problem_with(case, 500, b"oops") == "HTTP 500"
    assert problem_with(case, 200, b'{"kind": "AdmissionReview", "apiVersion": '
                                   b'"admission.k8s.io/v1", "response": {"uid": "other", '
                                   b'"allowed": true}}') == "uid not echoed"
    assert problem_with(case, 400, b"two\nlines") == "error reason not one line"
    assert problem_with(case, 200, b'{"kind": "AdmissionReview", "apiVersion": '
                                   b'"admission.k8s.io/v1", "response": {"uid": "u", '
                                   b'"allowed": true}}') is None


async def test_a_fixed_seed_fuzz_run_meets_the_bar(pki: PairPaths,
                                                   client_ssl: ssl.SSLContext) -> None:
    async with listening(create_app(offline_context()), pki) as server:
        tally = await run_cases(f"https://127.0.0.1:{server.port}", client_ssl,
                                cases(SEED, COUNT))
    summary = tally.summary()
    assert summary["answers"] == COUNT
    assert tally.ok(), summary
    assert set(summary["statuses"]) >= {"200", "400"}
