"""CA trust sync decisions: pure tables with a fixed clock and real CA certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs.bundle import ProblemKind, fingerprint, parse_bundle, to_pem, valid_at
from certs.generate import Issued, make_ca, make_leaf
from dlm_guard.domain import EXTERNAL_CA_CONFIGMAP, KUBEVIRT_CA_CONFIGMAP
from reconciler.gather import CaSnapshot, ConfigMapState
from reconciler.trust import Outcome, decide_trust

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@cache
def ca(name: str, start: int = -1, end: int = 6) -> x509.Certificate:
    """A real self-signed CA valid from NOW+start days to NOW+end days (cached per args)."""
    return make_ca(NOW + start * DAY, NOW + end * DAY, common_name=name).cert


@cache
def _issuer() -> Issued:
    return make_ca(NOW - DAY, NOW + 5 * DAY, common_name="issuer")


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def cm(name: str, bundle: str | None, rv: str = "7", terminating: bool = False,
       ) -> ConfigMapState | None:
    if bundle is None:
        return None
    return ConfigMapState("kubevirt", name, f"uid-{name}", rv, {"ca-bundle": bundle},
                          terminating)


def snap(cluster: str, bundle: str | None, inbox: str | None = None, *, managed: bool = True,
         rv: str = "7", inbox_terminating: bool = False) -> CaSnapshot:
    return CaSnapshot(cluster, "kubevirt", managed, cm(KUBEVIRT_CA_CONFIGMAP, bundle),
                      cm(EXTERNAL_CA_CONFIGMAP, inbox, rv, inbox_terminating))


def prints(*certs: x509.Certificate) -> tuple[str, ...]:
    return tuple(sorted(fingerprint(c) for c in certs))


def decide(*snapshots: CaSnapshot | tuple[str, None], managed: set[str] | None = None,
           own_ca_only: bool = False):
    table = {s[0] if isinstance(s, tuple) else s.cluster: (None if isinstance(s, tuple) else s)
             for s in snapshots}
    return decide_trust(table, frozenset(managed if managed is not None else table), NOW,
                        own_ca_only=own_ca_only)


def by_cluster(plan):
    return {c.cluster: c for c in plan.clusters}


# --- the basic exchange ---------------------------------------------------------------------
def test_each_cluster_gets_exactly_the_other_clusters_ca_and_the_inbox_is_created():
    a, b = ca("a"), ca("b")
    plan = decide(snap("a", pem(a)), snap("b", pem(b)))
    result = by_cluster(plan)
    assert result["a"].outcome is Outcome.WRITE
    assert result["a"].write is not None and result["b"].write is not None
    assert result["a"].write.bundle == to_pem([b])
    assert result["b"].write.bundle == to_pem([a])
    assert result["a"].write.create and result["a"].write.resource_version is None
    assert result["a"].write.peers == ("b",)
    assert (result["a"].write.namespace, result["a"].write.name) == ("kubevirt",
                                                                     EXTERNAL_CA_CONFIGMAP)


def test_existing_inbox_is_updated_conditionally_on_its_resource_version():
    plan = decide(snap("a", pem(ca("a")), inbox="", rv="42"), snap("b", pem(ca("b"))))
    write = by_cluster(plan)["a"].write
    assert write is not None and not write.create and write.resource_version == "42"


@pytest.mark.parametrize(("peer_bundle", "expected"), [
    pytest.param(lambda: [ca("old", -5, 2), ca("new", -1, 6)], lambda: [ca("old", -5, 2),
                 ca("new", -1, 6)], id="rotation-overlap-both-synced"),
    pytest.param(lambda: [ca("expired", -9, -2), ca("b")], lambda: [ca("b")],
                 id="expired-peer-ca-ignored"),
    pytest.param(lambda: [ca("future", 1, 9), ca("b")], lambda: [ca("b")],
                 id="not-yet-valid-ignored"),
    pytest.param(lambda: [make_leaf(_issuer(), NOW - DAY, NOW + DAY, dns=["x.example"]).cert,
                          ca("b")], lambda: [ca("b")], id="leaf-not-ca-ignored"),
    pytest.param(lambda: [ca("b"), ca("b")], lambda: [ca("b")], id="duplicates-once"),
])
def test_only_currently_valid_ca_certificates_of_the_peer_are_wanted(peer_bundle, expected):
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(*peer_bundle())), managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None
    assert write.fingerprints == prints(*expected())
    assert write.bundle == to_pem(expected())


def test_a_broken_peer_bundle_does_not_block_its_good_certs_nor_other_peers():
    key = _issuer().key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
    broken = ("hello, not PEM\n" + key + pem(ca("b")) +
              "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    plan = decide(snap("a", pem(ca("a"))), snap("b", broken), snap("c", pem(ca("c"))),
                  managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None
    assert write.fingerprints == prints(ca("b"), ca("c"))
    assert "PRIVATE KEY" not in write.bundle and "hello" not in write.bundle
    assert not parse_bundle(write.bundle).problems  # nothing that would poison the inbox
    kinds = {p.kind for p in plan.peers["b"].problems}  # reported, never silently dropped
    assert {ProblemKind.PRIVATE_KEY, ProblemKind.GARBAGE, ProblemKind.UNPARSABLE} <= kinds
    assert len(plan.peers["b"].notable_problems) == 3
    assert not plan.peers["c"].problems


def test_expired_and_future_cas_are_routine_not_notable():
    plan = decide(snap("a", pem(ca("a"))),
                  snap("b", pem(ca("expired", -9, -2), ca("future", 1, 9), ca("b"))),
                  managed={"a"})
    assert len(plan.peers["b"].problems) == 2 and plan.peers["b"].notable_problems == ()


def test_a_peer_bundle_of_pure_garbage_gives_nothing_and_others_proceed():
    plan = decide(snap("a", pem(ca("a"))), snap("b", "garbage\x00\n"), snap("c", pem(ca("c"))),
                  managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None and write.fingerprints == prints(ca("c"))
    assert write.peers == ("c",)


def test_sixty_peer_certificates_are_capped_at_fifty_keeping_the_longest_lived():
    many = [ca(f"many-{i}", -1, 2 + i) for i in range(60)]
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(*many)), managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None
    assert len(write.fingerprints) == 50
    assert len(parse_bundle(write.bundle).certificates) == 50
    assert set(write.fingerprints) == {fingerprint(c) for c in many[10:]}


def test_sixty_certificates_over_several_peers_are_capped_too():
    b = [ca(f"b-{i}", -1, 2 + i) for i in range(30)]
    c = [ca(f"c-{i}", -1, 40 + i) for i in range(30)]
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(*b)), snap("c", pem(*c)),
                  managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None and len(write.fingerprints) == 50


# --- no write when nothing is missing ----------------------------------------------------------
def test_already_present_in_kubevirt_ca_means_in_sync_and_no_write():
    a, b = ca("a"), ca("b")
    plan = decide(snap("a", pem(a, b)), snap("b", pem(b, a)))
    assert {c.outcome for c in plan.clusters} == {Outcome.IN_SYNC}
    assert plan.writes == []


def test_steady_state_nothing_missing_ignores_whatever_is_left_in_the_inbox():
    # virt-operator resets the inbox to "" after merging; a leftover is its business.
    a, b = ca("a"), ca("b")
    plan = decide(snap("a", pem(a, b), inbox=pem(b)), snap("b", pem(b, a), inbox=""))
    assert plan.writes == []


def test_inbox_already_holding_exactly_the_missing_set_is_not_rewritten():
    a, b, b2 = ca("a"), ca("b"), ca("b2")
    inbox = pem(b2, b)  # other order and formatting: compared as a set of certificates
    plan = decide(snap("a", pem(a), inbox=inbox), snap("b", pem(b, b2)), managed={"a"})
    assert by_cluster(plan)["a"].outcome is Outcome.PENDING
    assert plan.writes == []


@pytest.mark.parametrize("inbox", [
    pytest.param(lambda: pem(ca("b")), id="holds-a-subset"),
    pytest.param(lambda: pem(ca("b"), ca("b2"), ca("stranger")), id="holds-extra-certs"),
    pytest.param(lambda: pem(ca("b"), ca("b2")) + "junk\n", id="holds-garbage"),
    pytest.param(lambda: "", id="empty"),
])
def test_inbox_with_other_content_is_rewritten_to_exactly_the_missing_set(inbox):
    plan = decide(snap("a", pem(ca("a")), inbox=inbox()), snap("b", pem(ca("b"), ca("b2"))),
                  managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None and write.bundle == to_pem([ca("b"), ca("b2")])


def test_after_virt_operator_merges_the_inbox_the_next_pass_writes_nothing():
    a, b = ca("a"), ca("b")
    first = decide(snap("a", pem(a)), snap("b", pem(b)))
    merged = {c.cluster: c.write.bundle for c in first.clusters if c.write}
    second = decide(snap("a", pem(a) + merged["a"], inbox=""),
                    snap("b", pem(b) + merged["b"], inbox=""))
    assert second.writes == []


def test_a_rotated_peer_ca_is_synced_again():
    a, b_old, b_new = ca("a"), ca("b-old", -5, 2), ca("b-new", 0, 7)
    plan = decide(snap("a", pem(a, b_old), inbox=""), snap("b", pem(b_old, b_new)),
                  managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None and write.fingerprints == prints(b_new)


def test_merged_external_ca_dropped_by_kubevirt_is_pushed_again():
    # docs/kubevirt-facts.md, "CA bundles": MergeCABundle can drop merged external CAs long before
    # they expire.
    plan = decide(snap("a", pem(ca("a")), inbox=""), snap("b", pem(ca("b"))), managed={"a"})
    assert by_cluster(plan)["a"].write is not None


# --- who may be written, and partial knowledge --------------------------------------------------
def test_a_read_only_cluster_never_gets_a_write():
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(ca("b")), managed=False),
                  managed={"a"})
    assert [w.cluster for w in plan.writes] == ["a"]
    assert [c.cluster for c in plan.clusters] == ["a"]


def test_no_managed_cluster_means_no_decision_at_all():
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(ca("b"))), managed=set())
    assert plan.clusters == () and plan.writes == []


def test_an_unreachable_peer_gives_no_decision_for_its_cas_but_others_proceed():
    plan = decide(snap("a", pem(ca("a"))), ("b", None), snap("c", pem(ca("c"))))
    result = by_cluster(plan)
    assert result["b"].outcome is Outcome.SKIPPED and result["b"].write is None
    write = result["a"].write
    assert write is not None and write.fingerprints == prints(ca("c"))
    assert result["a"].unknown_peers == ("b",)
    assert result["c"].write is not None and result["c"].write.fingerprints == prints(ca("a"))


def test_a_managed_cluster_without_kubevirt_ca_is_skipped_but_still_a_peer():
    plan = decide(snap("a", None), snap("b", pem(ca("b"))))
    result = by_cluster(plan)
    assert result["a"].outcome is Outcome.SKIPPED and "kubevirt-ca" in result["a"].detail
    assert result["b"].outcome is Outcome.IN_SYNC  # a offers nothing, so nothing is missing


def test_a_terminating_inbox_is_left_alone():
    plan = decide(snap("a", pem(ca("a")), inbox="", inbox_terminating=True),
                  snap("b", pem(ca("b"))), managed={"a"})
    assert by_cluster(plan)["a"].outcome is Outcome.SKIPPED and plan.writes == []


def test_own_cas_offered_back_by_a_peer_are_never_missing():
    a, b = ca("a"), ca("b")
    plan = decide(snap("a", pem(a)), snap("b", pem(b, a)), managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None and write.fingerprints == prints(b)


def test_output_does_not_depend_on_bundle_order():
    certs = [ca("b"), ca("b2"), ca("b3")]
    one = decide(snap("a", pem(ca("a"))), snap("b", pem(*certs)), managed={"a"})
    two = decide(snap("a", pem(ca("a"))), snap("b", pem(*reversed(certs))), managed={"a"})
    assert one.writes == two.writes


def test_peer_expiry_is_the_earliest_not_after_of_valid_cas_per_managed_cluster():
    plan = decide(snap("a", pem(ca("a"))),
                  snap("b", pem(ca("expired", -9, -2), ca("soon", -1, 2), ca("late", -1, 6))),
                  managed={"a"})
    assert plan.expiry == {("a", "b"): ca("soon", -1, 2).not_valid_after_utc}


def test_latest_expiry_is_the_peers_current_ca_the_first_in_its_bundle():
    # virt-operator writes the CA it signs with first; older ones follow until they expire.
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(ca("new", -1, 6), ca("old", -6, 1))),
                  managed={"a"})
    assert plan.latest_expiry == {("a", "b"): ca("new", -1, 6).not_valid_after_utc}
    assert plan.expiry == {("a", "b"): ca("old", -6, 1).not_valid_after_utc}  # kept as well


def test_latest_expiry_is_not_hidden_by_cas_the_peer_merged_from_others():
    # b failed to rotate; after the sync b's bundle also holds a's fresh CA, which lasts longer.
    stuck, fresh = ca("stuck", -6, 0.5), ca("a", -1, 6)
    plan = decide(snap("a", pem(fresh, stuck)), snap("b", pem(stuck, fresh)))
    assert plan.latest_expiry == {("a", "b"): stuck.not_valid_after_utc,
                                  ("b", "a"): fresh.not_valid_after_utc}


@pytest.mark.parametrize(("bundle", "expected"), [
    pytest.param(lambda: pem(ca("dead", -9, -2), ca("b")), lambda: ca("dead", -9, -2),
                 id="expired-current-reported-so-the-alert-fires"),
    pytest.param(lambda: "junk\n" + pem(make_leaf(_issuer(), NOW - DAY, NOW + DAY,
                                                   dns=["x.example"]).cert, ca("b")),
                 lambda: ca("b"), id="garbage-and-leaf-before-it-skipped"),
    pytest.param(lambda: "", lambda: None, id="empty-bundle-no-series"),
])
def test_latest_expiry_takes_the_first_ca_certificate(bundle, expected):
    plan = decide(snap("a", pem(ca("a"))), snap("b", bundle()), managed={"a"})
    cert = expected()
    assert plan.latest_expiry == ({} if cert is None else {("a", "b"): cert.not_valid_after_utc})


# --- trust scope: only each peer's own current CA -------------------------------------------------
def test_by_default_a_peer_brings_the_cas_it_trusts_from_its_own_peers():
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(ca("b"), ca("unnamed"))), managed={"a"})
    write = by_cluster(plan)["a"].write
    assert write is not None and write.fingerprints == prints(ca("b"), ca("unnamed"))


def test_own_ca_only_copies_each_peers_current_ca_and_no_ca_of_its_peers():
    # b trusts an unnamed cluster's CA (and, after a sync, ours): neither comes from b.
    plan = decide(snap("a", pem(ca("a"))), snap("b", pem(ca("b"), ca("unnamed"), ca("a"))),
                  snap("c", pem(ca("c"), ca("old-c", -6, 1))), managed={"a"}, own_ca_only=True)
    write = by_cluster(plan)["a"].write
    assert write is not None and write.fingerprints == prints(ca("b"), ca("c"))
    assert write.peers == ("b", "c")


def test_own_ca_only_after_a_peer_rotated_wants_its_new_ca_only():
    # Already trusted: b's previous CA, kept by a's virt-operator. b now signs with `b-new`.
    plan = decide(snap("a", pem(ca("a"), ca("b-old", -6, 1))),
                  snap("b", pem(ca("b-new", 0, 7), ca("b-old", -6, 1), ca("a"))),
                  managed={"a"}, own_ca_only=True)
    write = by_cluster(plan)["a"].write
    assert write is not None and write.fingerprints == prints(ca("b-new", 0, 7))


@pytest.mark.parametrize("bundle", [
    pytest.param(lambda: pem(ca("dead", -9, -2), ca("other")), id="current-expired"),
    pytest.param(lambda: pem(ca("future", 1, 9), ca("other")), id="current-not-yet-valid"),
    pytest.param(lambda: "", id="empty"),
])
def test_own_ca_only_never_falls_back_to_other_cas_of_the_peer(bundle):
    plan = decide(snap("a", pem(ca("a"))), snap("b", bundle()), managed={"a"}, own_ca_only=True)
    assert by_cluster(plan)["a"].outcome is Outcome.IN_SYNC


def test_own_ca_only_is_in_sync_once_every_current_ca_is_trusted():
    plan = decide(snap("a", pem(ca("a"), ca("b"))), snap("b", pem(ca("b"), ca("a"), ca("x"))),
                  own_ca_only=True)
    assert plan.writes == []


# --- property: the sync converges and never widens trust ----------------------------------------
POOL = [("p0", -3, 1), ("p1", -1, 6), ("p2", -9, -1), ("p3", 2, 9), ("p4", 0, 3),
        ("p5", -2, 30), ("p6", -1, 2), ("p7", -4, 4)]


def merge_like_virt_operator(own: str, inbox: str) -> str:
    """docs/kubevirt-facts.md, "CA bundles": keep certs valid now, dedupe by SHA-256, merge into
    kubevirt-ca."""
    merged = valid_at(parse_bundle(own + inbox).certificates, NOW)
    return to_pem(merged)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sets(st.sampled_from(range(len(POOL)))), min_size=2, max_size=4),
       st.data())
def test_property_writes_only_valid_peer_cas_and_converge(contents, data):
    names = [f"c{i}" for i in range(len(contents))]
    managed = set(data.draw(st.sets(st.sampled_from(names))))
    bundles = {n: pem(*(ca(*POOL[i]) for i in sorted(idx))) for n, idx in zip(names, contents,
                                                                              strict=True)}
    plan = decide(*(snap(n, bundles[n], inbox="") for n in names), managed=managed)
    for write in plan.writes:
        assert write.cluster in managed
        offered = {fingerprint(c) for n in names if n != write.cluster
                   for c in valid_at(parse_bundle(bundles[n]).certificates, NOW)}
        assert set(write.fingerprints) <= offered
        bundles[write.cluster] = merge_like_virt_operator(bundles[write.cluster], write.bundle)
    again = decide(*(snap(n, bundles[n], inbox="") for n in names), managed=managed)
    assert again.writes == []
