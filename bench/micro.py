"""Micro-benchmark of the pure admission core: webhook.engine.mutate + validate over the mix.

No HTTP, no JSON: the time a review costs the rules and mutations alone (target < 100 us). Also
times the in-process path the server runs per call (decode_review, the engine, encode_answer),
so what HTTP and TLS add can be told apart from what the rules cost.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

from bench.mix import MUTATE, Item, build_mix
from webhook import engine
from webhook.engine import Context
from webhook.policy import RULES, Policy, parse_policy
from webhook.review import decode_review
from webhook.server import encode_answer

TARGET_US = 100.0


def all_off_policy() -> Policy:
    return parse_policy({"rules": dict.fromkeys(RULES, "off")})


def context(policy: Policy | None = None) -> Context:
    return Context(policy=policy or Policy(), cluster=None, new_id=engine.random_suffix)


def _engine_pass(items: list[Item], ctx: Context) -> Callable[[], None]:
    calls = [(engine.mutate if item.path == MUTATE else engine.validate, item.request)
             for item in items]

    def run() -> None:
        for decide, request in calls:
            decide(request, ctx)
    return run


def _server_path_pass(items: list[Item], ctx: Context) -> Callable[[], None]:
    calls = [(engine.mutate if item.path == MUTATE else engine.validate, item.body)
             for item in items]

    def run() -> None:
        for decide, body in calls:
            review = decode_review(body)
            encode_answer(review, decide(review.request, ctx))
    return run


def per_review_us(run: Callable[[], None], reviews: int, seconds: float) -> float:
    """Best of 5 repeats of one review, in microseconds, spending about `seconds` in all
    (timeit's advice: the minimum is the least disturbed figure)."""
    timer = timeit.Timer(run)
    once = max(timer.timeit(number=1), 1e-7)  # also warms caches up
    loops = max(1, int(seconds / 5 / once))
    return min(timer.repeat(repeat=5, number=loops)) / loops / reviews * 1e6


def breakdown(items: list[Item], ctx: Context, seconds: float) -> dict[str, float]:
    """Per object label: mutate + validate of that object, in microseconds."""
    result: dict[str, float] = {}
    for label in dict.fromkeys(item.name for item in items):
        chosen = [item for item in items if item.name == label][:2]  # its mutate + validate
        result[label] = round(per_review_us(_engine_pass(chosen, ctx), 1, seconds), 2)
    return result


def run(seconds: float = 1.0) -> dict[str, Any]:
    items = build_mix()
    default, off = context(), context(all_off_policy())
    engine_us = per_review_us(_engine_pass(items, default), len(items), seconds)
    return {
        "reviews_in_mix": len(items),
        "mean_body_bytes": round(sum(len(i.body) for i in items) / len(items)),
        "engine_us_per_review": round(engine_us, 2),
        "engine_us_per_review_rules_off": round(
            per_review_us(_engine_pass(items, off), len(items), seconds), 2),
        "server_path_us_per_review": round(
            per_review_us(_server_path_pass(items, default), len(items), seconds), 2),
        "engine_us_per_object_mutate_plus_validate": breakdown(items, default, seconds / 10),
        "target_us": TARGET_US,
        "target_met": engine_us < TARGET_US,
    }
