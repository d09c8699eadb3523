"""The IXFR journal: the condensed diff from any kept serial turns that zone into today's."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd import wire
from dnsd.journal import Journal
from dnsd.zone import ZoneView
from tests.dnszone import ZONE, snapshot, zone_config
from tests.support import fixed_label as challenge_label
from tests.unit.test_dnsd_zone import DOMAINS, LABELS, TXT_AT
from webgateway.model import ChangeSet, Domain, Name

Content = set[tuple[bytes, int, bytes]]


def contents(view: ZoneView) -> dict[bytes, Content]:
    return {z: set(view.contents(z)) for z in view.zones}


change = st.one_of(
    st.tuples(st.just("name"), st.sampled_from(LABELS[:3]), st.booleans()),
    st.tuples(st.just("domain"), st.sampled_from(DOMAINS), st.booleans()),
    st.tuples(st.just("txt"), st.sampled_from(TXT_AT), st.lists(
        st.sampled_from(["v1", "v2"]), max_size=2, unique=True)),
    st.tuples(st.just("bump"), st.just(""), st.just(None)),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(change, min_size=1, max_size=10))
def test_diff_from_every_kept_serial_gives_todays_zone(steps: list[tuple[object, ...]]) -> None:
    view = ZoneView(zone_config())
    journal = Journal(view)
    journal.load(snapshot(serial=1))
    view.sorted_labels()  # from here kept in step by every change
    history = {1: contents(view)}
    serial = 1
    for kind, key, value in steps:
        serial += 1
        cs = ChangeSet(serial, {}, {}, {}, {})
        if kind == "bump":
            journal.bump(serial)
            history[serial] = contents(view)
            continue
        assert isinstance(key, str)
        if kind == "name":
            cs.names[key] = Name(key, 1, ()) if value else None
        elif kind == "domain":
            cs.domains[key] = Domain(key, "alice", 1, challenge_label(key)) if value else None
        else:
            assert isinstance(value, list)
            cs.txt[key] = tuple(value)
        journal.apply(cs)
        history[serial] = contents(view)
        assert view.sorted_labels() == sorted(view.labels)  # the transfer order stays in step
    now = contents(view)
    for old, zones in history.items():
        for zone in set(zones) | set(now):
            diff = journal.since(old, zone)
            assert diff is not None and diff.new == serial
            have = set(zones.get(zone, set()))
            gone = {(o, t, rd) for z, o, t, rd in diff.removed}
            came = {(o, t, rd) for z, o, t, rd in diff.added}
            assert gone <= have, (old, zone)
            assert not came & (have - gone), (old, zone)
            assert (have - gone) | came == now.get(zone, set()), (old, zone, steps)


def test_one_name_is_one_small_diff() -> None:
    view = ZoneView(zone_config())
    journal = Journal(view)
    journal.load(snapshot(serial=1))
    journal.apply(ChangeSet(2, {"carol": Name("carol", 1, ())}, {}, {}, {}))
    diff = journal.since(1, view.apex)
    assert diff is not None and diff.removed == ()
    carol = wire.name_to_wire(f"carol.{ZONE}")
    assert sorted((o, t) for _, o, t, _ in diff.added) == [(carol, wire.A), (carol, wire.AAAA)]
    journal.apply(ChangeSet(3, {"carol": None}, {}, {}, {}))
    diff = journal.since(2, view.apex)
    assert diff is not None and len(diff.removed) == 2 and diff.added == ()
    condensed = journal.since(1, view.apex)
    assert condensed is not None and condensed.removed == condensed.added == ()


def one_name_per_serial(last: int, **bounds: int) -> tuple[ZoneView, Journal]:
    """Serial 1 loaded, then serials 2..last each add one name."""
    view = ZoneView(zone_config())
    journal = Journal(view, **bounds)
    journal.load(snapshot(serial=1))
    for s in range(2, last + 1):
        journal.apply(ChangeSet(s, {f"n{s}": Name(f"n{s}", 1, ())}, {}, {}, {}))
    return view, journal


def test_unknown_serials_and_reloads_mean_a_whole_zone() -> None:
    view, journal = one_name_per_serial(6, max_diffs=3)
    assert journal.since(2, view.apex) is None  # older than the 3 diffs kept
    assert journal.since(3, view.apex) is not None
    assert journal.since(99, view.apex) is None
    journal.load(snapshot(serial=7))
    assert journal.since(6, view.apex) is None and not journal.diffs


def test_the_record_bound_drops_the_oldest() -> None:
    _, journal = one_name_per_serial(5, max_records=5)
    assert journal.records <= 5 and [d.old for d in journal.diffs] == [3, 4]


def test_a_change_that_fails_leaves_no_recording_behind() -> None:
    view = ZoneView(zone_config())
    journal = Journal(view)
    journal.load(snapshot(serial=1))
    bad = ChangeSet(2, {}, {"x.example": object()}, {}, {})  # type: ignore[dict-item]
    with pytest.raises(AttributeError):
        journal.apply(bad)
    assert view.touched is None  # the follower reloads the view next, clearing the journal


@pytest.mark.parametrize("sort_before_change", [True, False])
def test_a_labels_snapshot_serves_the_zone_a_full_one_does(sort_before_change: bool) -> None:
    """dnsd loads the labels alone (in the store's order, here reversed); the zone, its
    transfer order and the changes after it are those of a load of every Name."""
    full = snapshot(serial=1)
    labels = sorted(label.encode() for label in full.names)
    assert len(labels) >= 2
    by_labels = ZoneView(zone_config())
    by_labels.load(replace(full, names={}, labels=labels[::-1]))
    by_names = ZoneView(zone_config())
    by_names.load(full)
    assert contents(by_labels) == contents(by_names) and by_labels.labels == set(labels)
    if sort_before_change:
        assert by_labels.sorted_labels() == labels
    gone = labels[0].decode()
    for view in (by_labels, by_names):
        view.apply(ChangeSet(2, {"zz-new": Name("zz-new", 1, ()), gone: None}, {}, {}, {}))
    assert by_labels.sorted_labels() == sorted({*labels[1:], b"zz-new"})
    assert contents(by_labels) == contents(by_names)
