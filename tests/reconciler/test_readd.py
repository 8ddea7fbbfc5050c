"""CA re-add detection (flapping trust): pure, over the trust decisions of successive passes.

Each test plays passes the way the reconciler runs them: a snapshot of both CA ConfigMaps,
decide_trust with the same CaHistory, and record_write after a write succeeded. Between passes
the bundles change as virt-operator would change them (merge, drop, empty the inbox).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509

from certs.bundle import fingerprint
from certs.generate import make_ca
from controlplane.virt_operator_standin import pem_in_order
from dlm_guard.domain import EXTERNAL_CA_CONFIGMAP, KUBEVIRT_CA_CONFIGMAP
from dlm_guard.rotation import CaRotation, RotationProblem, Source
from reconciler.readd import WARN_INTERVAL, CaHistory, Readd, flap_message, record_write
from reconciler.snapshot import CaSnapshot, ConfigMapState
from reconciler.trust import CaWrite, decide_trust

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@cache
def ca(name: str) -> x509.Certificate:
    return make_ca(NOW - DAY, NOW + 6 * DAY, common_name=name).cert


def snap(cluster: str, bundle: list[x509.Certificate], inbox: list[x509.Certificate] | None,
         ) -> CaSnapshot:
    def cm(name: str, certs: list[x509.Certificate]) -> ConfigMapState:
        # In the given order: a peer's current CA is the first of its bundle.
        return ConfigMapState("kubevirt", name, f"uid-{name}", "1",
                              {"ca-bundle": pem_in_order(certs)})
    return CaSnapshot(cluster, "kubevirt", True, cm(KUBEVIRT_CA_CONFIGMAP, bundle),
                      None if inbox is None else cm(EXTERNAL_CA_CONFIGMAP, inbox))


class Passes:
    """Successive passes over east (managed) and west (read-only) with one memory."""

    def __init__(self) -> None:
        self.history = CaHistory()
        self.now = NOW

    def run(self, east_bundle: list[x509.Certificate], east_inbox: list[x509.Certificate] | None,
            west: list[x509.Certificate], *, write_ok: bool = True,
            west_reachable: bool = True) -> CaWrite | None:
        snapshots = {"east": snap("east", east_bundle, east_inbox),
                     "west": snap("west", west, []) if west_reachable else None}
        plan = decide_trust(snapshots, frozenset({"east"}), self.now, history=self.history)
        write = next((w for w in plan.writes), None)
        if write is not None and write_ok:
            record_write(self.history, write.cluster, write.fingerprints, write.readded,
                         self.now)
        self.now += timedelta(seconds=5)
        return write


def test_merged_then_dropped_then_written_again_is_a_readd_of_the_peers_ca():
    e, w = ca("east"), ca("west")
    p = Passes()
    first = p.run([e], [], [w])
    assert first is not None and first.readded == ()  # the first delivery is no re-add
    assert p.run([e], [w], [w]) is None  # pending in the inbox
    assert p.run([e, w], [], [w]) is None  # merged: in sync
    again = p.run([e], [], [w])  # dropped by virt-operator
    assert again is not None
    assert again.readded == (Readd("east", "west", fingerprint(w), warn=True),)


def test_a_merge_and_drop_faster_than_a_pass_is_caught_by_the_drained_inbox():
    e, w = ca("east"), ca("west")
    p = Passes()
    p.run([e], [], [w])
    # virt-operator merged and dropped between two passes: the merged bundle was never seen,
    # but the inbox we filled is empty and the CA is still missing.
    again = p.run([e], [], [w])
    assert again is not None and [r.fingerprint for r in again.readded] == [fingerprint(w)]


def test_every_cycle_counts_once_and_the_warning_repeats_only_hourly():
    e, w = ca("east"), ca("west")
    p = Passes()
    p.run([e], [], [w])
    cycles = [p.run([e], [], [w]) for _ in range(4)]
    assert all(c is not None and len(c.readded) == 1 for c in cycles)
    assert [c.readded[0].warn for c in cycles if c is not None] == [True, False, False, False]
    p.now += WARN_INTERVAL
    later = p.run([e], [], [w])
    assert later is not None and later.readded[0].warn


def test_no_readd_while_the_delivery_waits_in_the_inbox_or_stays_merged():
    e, w = ca("east"), ca("west")
    p = Passes()
    p.run([e], [], [w])
    for _ in range(3):
        assert p.run([e], [w], [w]) is None  # virt-operator has not merged yet
    for _ in range(3):
        assert p.run([e, w], [], [w]) is None  # merged and kept: trust holds


def test_a_failed_write_is_no_delivery_so_the_retry_is_no_readd():
    e, w = ca("east"), ca("west")
    p = Passes()
    assert p.run([e], [], [w], write_ok=False) is not None
    retry = p.run([e], [], [w])
    assert retry is not None and retry.readded == ()


def test_a_ca_seen_merged_before_this_process_wrote_anything_counts_after_a_restart():
    """A fresh process first sees the peer CA in kubevirt-ca (merged by an earlier run)."""
    e, w = ca("east"), ca("west")
    p = Passes()
    assert p.run([e, w], [], [w]) is None
    again = p.run([e], [], [w])
    assert again is not None and len(again.readded) == 1


def test_a_new_ca_of_the_peer_is_no_readd_of_the_old_one():
    e, w1, w2 = ca("east"), ca("west-1"), ca("west-2")
    p = Passes()
    p.run([e], [], [w1])
    p.run([e, w1], [], [w1])
    rotated = p.run([e, w1], [], [w2, w1])  # the peer rotated: only its new CA is missing
    assert rotated is not None and rotated.readded == ()
    assert rotated.fingerprints == (fingerprint(w2),)


def test_evidence_about_cas_nobody_offers_any_more_is_forgotten():
    e, w1, w2 = ca("east"), ca("west-1"), ca("west-2")
    p = Passes()
    p.run([e], [], [w1])
    p.run([e, w1], [], [w1])
    p.run([e, w2], [], [w2])  # the peer dropped w1 and offers w2, which is present
    assert p.history.merged["east"] == {fingerprint(w2)}
    assert p.history.delivered["east"] == set()


def test_the_readd_names_the_peer_whose_current_ca_it_is():
    e, w, x = ca("east"), ca("west"), ca("third")
    p = Passes()
    snapshots: dict[str, CaSnapshot | None] = {
        "east": snap("east", [e], []), "west": snap("west", [w, x], []),
        "third": snap("third", [x, w, e], [])}
    managed = frozenset({"east"})
    first = decide_trust(snapshots, managed, NOW, history=p.history).writes[0]
    record_write(p.history, "east", first.fingerprints, first.readded, NOW)
    again = decide_trust(snapshots, managed, NOW, history=p.history).writes[0]
    assert {(r.peer, r.fingerprint) for r in again.readded} == {
        ("west", fingerprint(w)), ("third", fingerprint(x))}


def test_a_peers_previous_ca_dropped_after_the_overlap_is_re_added_but_not_counted():
    """Upstream drops a peer's previous CA by design; only its current CA matters for trust."""
    e, w_new, w_old = ca("east"), ca("west-new"), ca("west-old")
    p = Passes()
    p.run([e], [], [w_new, w_old])
    p.run([e, w_new, w_old], [], [w_new, w_old])
    again = p.run([e, w_new], [], [w_new, w_old])
    assert again is not None and again.fingerprints == (fingerprint(w_old),)
    assert again.readded == ()


def test_flap_message_names_the_fix_and_the_current_values():
    vanilla = CaRotation(7 * DAY, timedelta(hours=33, minutes=36), Source.DEFAULT, Source.DEFAULT)
    text = flap_message("east", ["west"], vanilla)
    assert "renewBefore >= duration / 2" in text
    assert "spec.certificateRotateStrategy.selfSigned.ca" in text
    assert "duration=7d (default), renewBefore=1d9h36m (default)" in text
    assert "which these values break" in text
    fixed = CaRotation(7 * DAY, 84 * timedelta(hours=1), Source.FIELD, Source.FIELD)
    assert "check the peers' values" in flap_message("east", ["west"], fixed)
    problem = RotationProblem("spec.certificateRotateStrategy.selfSigned.ca.duration", "7 days")
    assert "'7 days' is not a Go duration" in flap_message("east", ["west"], problem)
    unknown = flap_message("east", ["west"], "cannot read the KubeVirt CR (HTTP 403 Forbidden)")
    assert unknown.endswith("current values are unknown: cannot read the KubeVirt CR "
                            "(HTTP 403 Forbidden).")
    assert len(text) <= 1024  # an Event message is cut there
