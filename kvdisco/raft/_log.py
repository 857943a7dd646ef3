"""The in-memory Raft log: one list of entries after a snapshot base.

The whole uncompacted log lives in memory; the driver keeps it bounded by
taking snapshots and calling :meth:`RaftLog.compact`. ``stable`` marks how
much of it the driver has made durable, so the core can tell what still has
to be persisted and the leader counts only durable entries toward commit.
"""

from __future__ import annotations

from ._messages import Entry, SnapshotMeta
from .errors import InvariantViolation

__all__ = ["RaftLog"]


class RaftLog:
    """Entries ``snapshot.index + 1 .. last_index``, with commit and apply cursors.

    Invariants (checked where they can break):
    ``snapshot.index <= applied <= committed <= last_index`` and
    ``snapshot.index <= stable <= last_index``;
    ``entries[k].index == snapshot.index + 1 + k``.
    """

    __slots__ = ("applied", "committed", "entries", "pending_snapshot", "pending_snapshot_data", "snapshot", "stable")

    def __init__(self, snapshot: SnapshotMeta | None = None, entries: list[Entry] | None = None) -> None:
        self.snapshot = snapshot or SnapshotMeta()
        self.entries: list[Entry] = list(entries or [])
        for k, e in enumerate(self.entries):
            if e.index != self.snapshot.index + 1 + k:
                raise InvariantViolation(
                    f"log entries not contiguous after snapshot {self.snapshot.index}: entry {k} has index {e.index}"
                )
        #: Entries up to here are durable (restored logs are durable by definition).
        self.stable = self.last_index()
        self.committed = self.snapshot.index
        self.applied = self.snapshot.index
        #: A snapshot received from the leader that the driver must still persist and restore.
        self.pending_snapshot: SnapshotMeta | None = None
        self.pending_snapshot_data: bytes | None = None

    # -- positions ---------------------------------------------------------------------------------------------------

    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or not yet there."""
        base = self.snapshot.index
        if index == base:
            return self.snapshot.term
        if index < base or index > base + len(self.entries):
            return None
        return self.entries[index - base - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    # -- reading -----------------------------------------------------------------------------------------------------

    def slice(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries [lo, hi), at least one if any, and no more than ``bytes_max`` of data beyond the first."""
        base = self.snapshot.index
        if lo <= base:
            raise InvariantViolation(f"slice from {lo} reaches into the compacted log (snapshot at {base})")
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        ents = self.entries[lo - base - 1 : hi - base - 1]
        size = 0
        for k, e in enumerate(ents):
            size += len(e.data)
            if size > bytes_max and k > 0:
                return ents[:k]
        return ents

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stable - self.snapshot.index :]

    def has_next_committed(self) -> bool:
        return self.committed > self.applied

    def next_committed(self, bytes_max: int) -> list[Entry]:
        if self.committed <= self.applied:
            return []
        return self.slice(self.applied + 1, self.committed + 1, bytes_max)

    def find_conflict(self, ents: list[Entry]) -> int:
        """The index of the first entry in ``ents`` that is new or disagrees with our log, else 0."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term (fast backtracking)."""
        while index > self.snapshot.index:
            t = self.term(index)
            if t is None or t <= term:
                return index, t or 0
            index -= 1
        return index, self.snapshot.term if index == self.snapshot.index else 0

    # -- writing -----------------------------------------------------------------------------------------------------

    def append(self, ents: list[Entry]) -> int:
        """Append, truncating any of our entries at or after ``ents[0].index``. Returns the new last index."""
        if not ents:
            return self.last_index()
        first = ents[0].index
        if first <= self.committed:
            raise InvariantViolation(
                f"append at {first} would overwrite committed entries (committed={self.committed}). "
                "Was the raft log corrupted, truncated, or lost?"
            )
        if first > self.last_index() + 1:
            raise InvariantViolation(f"append at {first} leaves a gap after last index {self.last_index()}")
        keep = first - self.snapshot.index - 1
        if keep < len(self.entries):
            del self.entries[keep:]
        if self.stable >= first:
            self.stable = first - 1
        self.entries.extend(ents)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, committed: int, ents: list[Entry]) -> int | None:
        """Handle an APP: returns the last new index, or None if our log has no match at ``index``."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        conflict = self.find_conflict(ents)
        if conflict:
            if conflict <= self.committed:
                raise InvariantViolation(
                    f"entry {conflict} conflicts with a committed entry (committed={self.committed})"
                )
            self.append(ents[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise InvariantViolation(
                    f"commit {index} is beyond last index {self.last_index()}. "
                    "Was the raft log corrupted, truncated, or lost?"
                )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if it is newer and from ``term`` (Raft Figure 8: count only current-term entries)."""
        if index > self.committed and self.term(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise InvariantViolation(f"applied {index} beyond committed {self.committed}")
        if index > self.applied:
            self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """The driver made entries up to ``index`` durable; ignored if the log changed since."""
        if self.term(index) == term and index > self.stable:
            self.stable = index

    def restore(self, meta: SnapshotMeta, data: bytes | None) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        if meta.index <= self.committed:
            raise InvariantViolation(f"restoring snapshot {meta.index} at or below committed {self.committed}")
        self.entries = []
        self.snapshot = meta
        self.stable = meta.index
        self.committed = meta.index
        self.applied = meta.index
        self.pending_snapshot = meta
        self.pending_snapshot_data = data

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries up to ``meta.index``, which the driver has captured in a durable snapshot."""
        if meta.index <= self.snapshot.index:
            return
        if meta.index > self.applied:
            raise InvariantViolation(f"compacting to {meta.index} beyond applied {self.applied}")
        if self.term(meta.index) != meta.term:
            raise InvariantViolation(f"snapshot term {meta.term} at {meta.index} disagrees with log term")
        del self.entries[: meta.index - self.snapshot.index]
        self.snapshot = meta
