"""The IXFR journal: for each serial the zone moved through, the records removed and added.

Kept in memory and filled as the zone view applies the store's change sets, because only
the view knows the *old* records of a change (the store's ``changes`` table records which
keys changed, not their former values, and a name's records also depend on the config).
So the journal starts empty with every process: after a restart, or a reload of the
view, a secondary's first IXFR falls back to a whole zone (RFC 1995 section 4), once.
It is bounded in entries and in records; the oldest go first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dnsd.zone import ZoneView
from webgateway.model import ChangeSet, Snapshot

#: (zone, owner, type, rdata), names in lower-case wire form.
Record = tuple[bytes, bytes, int, bytes]


@dataclass(frozen=True)
class Diff:
    """From serial ``old`` to serial ``new``: what went and what came."""

    old: int
    new: int
    removed: tuple[Record, ...]
    added: tuple[Record, ...]


class Journal:
    """The follower's view: applies changes to the zone view and records their diffs."""

    def __init__(self, view: ZoneView, max_diffs: int = 10_000,
                 max_records: int = 200_000) -> None:
        self.view = view
        self.max_diffs = max_diffs
        self.max_records = max_records
        self.diffs: deque[Diff] = deque()
        self.records = 0

    # ------------------------------------------------------------ the follower's View
    def load(self, snapshot: Snapshot) -> None:
        self.view.load(snapshot)
        self.diffs.clear()  # the old records are unknown: IXFR from before is an AXFR now
        self.records = 0

    def apply(self, changes: ChangeSet) -> None:
        old = self.view.serial
        self.view.touched = {}
        try:
            self.view.apply(changes)
            touched = self.view.touched
        finally:
            self.view.touched = None
        removed: list[Record] = []
        added: list[Record] = []
        for name, (zone_before, before) in touched.items():
            zone_after, after = self.view.records_at(name)
            if zone_before is not None:
                removed += [(zone_before, name, t, rd) for t, rd in before
                            if zone_after != zone_before or (t, rd) not in after]
            if zone_after is not None:
                added += [(zone_after, name, t, rd) for t, rd in after
                          if zone_after != zone_before or (t, rd) not in before]
        self._record(Diff(old, self.view.serial, tuple(removed), tuple(added)))

    def bump(self, serial: int) -> None:
        """A serial with nothing for DNS in it: an empty diff keeps the chain unbroken."""
        old = self.view.serial
        self.view.bump(serial)
        self._record(Diff(old, serial, (), ()))

    def _record(self, diff: Diff) -> None:
        if diff.new == diff.old:
            return
        if self.diffs and self.diffs[-1].new != diff.old:
            self.diffs.clear()
            self.records = 0
        self.diffs.append(diff)
        self.records += len(diff.removed) + len(diff.added)
        while self.diffs and (len(self.diffs) > self.max_diffs
                              or self.records > self.max_records):
            gone = self.diffs.popleft()
            self.records -= len(gone.removed) + len(gone.added)

    # ------------------------------------------------------------ IXFR
    def since(self, serial: int, zone: bytes) -> Diff | None:
        """One condensed diff from ``serial`` to now for ``zone``, or None when the
        journal does not reach back that far (the caller sends the whole zone)."""
        if serial == self.view.serial:
            return Diff(serial, serial, (), ())
        start = next((i for i, d in enumerate(self.diffs) if d.old == serial), None)
        if start is None or self.diffs[-1].new != self.view.serial:
            return None
        removed: dict[Record, None] = {}  # dicts: ordered sets
        added: dict[Record, None] = {}
        for i in range(start, len(self.diffs)):
            d = self.diffs[i]
            _net(d.removed, zone, removed, added)
            _net(d.added, zone, added, removed)
        return Diff(serial, self.view.serial, tuple(removed), tuple(added))


def _net(records: tuple[Record, ...], zone: bytes, into: dict[Record, None],
         undo: dict[Record, None]) -> None:
    """Condense: a record that comes back after going (or goes after coming) is no change."""
    for r in records:
        if r[0] != zone:
            continue
        if r in undo:
            del undo[r]
        else:
            into[r] = None
