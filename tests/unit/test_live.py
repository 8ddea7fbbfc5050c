"""The cache-miss path: the engine asks for one live GET, the shell performs it, the engine
evaluates again with what it found. The lookups here are in-process stand-ins for the API
server (found / absent / failing / hanging); the real GET runs in tests/e2e."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from factories import (
    NAMESPACE,
    VM_NAME,
    cluster,
    context,
    kubevirt,
    request,
    source_vmim,
    target_vmim,
    vm,
    vmi,
)

from dlm_guard.domain import Obj
from webhook.decision import Decision
from webhook.engine import LiveVmi, evaluate
from webhook.live import confirming_validate, look_up


class Lookup:
    """Answers like the API server would: `found` (None = 404), or raises `error`."""

    def __init__(self, found: Obj | None = None, error: Exception | None = None,
                 delay: float = 0.0) -> None:
        self.found, self.error, self.delay = found, error, delay
        self.calls: list[tuple[str, str]] = []

    async def get_vmi(self, namespace: str, name: str) -> Obj | None:
        self.calls.append((namespace, name))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.found


class Forbidden(Exception):
    status = 403


RECEIVER = vmi(receiver=True, phase="WaitingForSync")
SOURCE = vmi()


async def decide(lookup: Lookup, req: dict[str, Any], store: Any,
                 timeout: float = 2.0) -> Decision:
    answer = confirming_validate(lookup, timeout)(req, context({}, store))
    return answer if isinstance(answer, Decision) else await answer


# --- the pure part ------------------------------------------------------------------------
@pytest.mark.parametrize(("vmim", "role_rule"), [(target_vmim(), "receiver-vmi"),
                                                 (source_vmim(), "source-vmi")])
def test_a_vmi_missing_from_the_cache_is_named_for_confirmation(vmim: dict[str, Any],
                                                                role_rule: str) -> None:
    evaluation = evaluate(request(vmim), context({}, cluster(kubevirt())))
    assert evaluation.vmi_to_confirm == (NAMESPACE, VM_NAME)
    assert role_rule in [r.finding.rule for r in evaluation.findings]


@pytest.mark.parametrize(("req", "store", "policy"), [
    (request(target_vmim()), cluster(kubevirt(), RECEIVER), {}),  # cached: nothing to ask
    (request(source_vmim()), cluster(kubevirt(), SOURCE), {}),
    (request(target_vmim()), cluster(kubevirt()), {"rules": {"receiver-vmi": "off"}}),
    (request(target_vmim(vmi=None)), cluster(kubevirt()), {}),  # vmi-name says it
    (request(target_vmim(), operation="UPDATE", old=target_vmim()), cluster(kubevirt()), {}),
    (request(vm()), cluster(kubevirt()), {}),
])
def test_nothing_to_confirm(req: dict[str, Any], store: Any, policy: dict[str, Any]) -> None:
    assert evaluate(req, context(policy, store)).vmi_to_confirm is None


def test_a_live_vmi_is_laid_over_the_cache_and_every_rule_sees_it() -> None:
    bad = vmi(phase="Scheduling")
    evaluation = evaluate(request(source_vmim()), context({}, cluster(kubevirt())),
                          LiveVmi(NAMESPACE, VM_NAME, obj=bad))
    [rated] = evaluation.findings
    assert rated.finding.rule == "source-vmi" and "'Scheduling'" in rated.finding.message
    assert evaluation.vmi_to_confirm is None


def test_a_failed_lookup_turns_the_missing_vmi_into_a_warning() -> None:
    evaluation = evaluate(request(target_vmim()), context({}, cluster(kubevirt())),
                          LiveVmi(NAMESPACE, VM_NAME, error="no answer within 2 s"))
    decision = evaluation.decision()
    assert decision.allowed and evaluation.vmi_to_confirm is None
    [warning] = decision.warnings
    assert warning.startswith("[receiver-vmi] spec.vmiName: ")
    assert "no answer within 2 s" in warning and "allowed unchecked" in warning


# --- the shell ------------------------------------------------------------------------------
async def test_a_cache_hit_never_calls_the_api() -> None:
    lookup = Lookup(found=RECEIVER)
    answer = confirming_validate(lookup)(request(target_vmim()),
                                         context({}, cluster(kubevirt(), RECEIVER)))
    assert isinstance(answer, Decision) and answer.allowed
    assert lookup.calls == []


@pytest.mark.parametrize(("vmim", "live"), [(target_vmim(), RECEIVER), (source_vmim(), SOURCE)])
async def test_a_vmi_the_cache_lags_behind_is_admitted(vmim: dict[str, Any], live: Obj) -> None:
    lookup = Lookup(found=live)
    decision = await decide(lookup, request(vmim), cluster(kubevirt()))
    assert decision.allowed and not decision.warnings
    assert lookup.calls == [(NAMESPACE, VM_NAME)]  # one GET


async def test_a_vmi_absent_upstream_too_is_denied() -> None:
    lookup = Lookup(found=None)
    decision = await decide(lookup, request(target_vmim()), cluster(kubevirt()))
    assert not decision.allowed and "[receiver-vmi] spec.vmiName: " in decision.message
    assert len(lookup.calls) == 1


@pytest.mark.parametrize(("lookup", "says"), [
    (Lookup(error=Forbidden()), "Forbidden 403"),
    (Lookup(error=ConnectionResetError()), "ConnectionResetError"),
    (Lookup(found=SOURCE, delay=5.0), "no answer within 0.05 s"),
])
async def test_a_failed_or_slow_lookup_allows_with_a_warning(lookup: Lookup, says: str) -> None:
    decision = await decide(lookup, request(source_vmim()), cluster(kubevirt()), timeout=0.05)
    assert decision.allowed
    [warning] = decision.warnings
    assert warning.startswith("[source-vmi] ") and says in warning


async def test_look_up_reports_timeouts_as_answers() -> None:
    live = await look_up(Lookup(delay=5.0), (NAMESPACE, VM_NAME), timeout=0.01)
    assert live.obj is None and live.error == "no answer within 0.01 s"
