"""Unit tests of kvdisco.raft._log.RaftLog: positions, append/truncate, the APP handling helpers, and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdisco.raft import ConfState, Entry, InvariantViolation, SnapshotMeta
from kvdisco.raft._log import RaftLog


def ents(first: int, terms: list[int], data: bytes = b"") -> list[Entry]:
    return [Entry(t, first + k, data) for k, t in enumerate(terms)]


def log_of(terms: list[int], snap: SnapshotMeta | None = None) -> RaftLog:
    base = snap.index if snap else 0
    return RaftLog(snap, ents(base + 1, terms))


def ids(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.term, e.index) for e in log.entries]


# -- positions ---------------------------------------------------------------------------------------------------


def test_empty_log() -> None:
    log = RaftLog()
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert log.term(0) == 0 and log.term(1) is None
    assert log.stable == log.committed == log.applied == 0
    assert log.unstable_entries() == []


def test_positions_after_snapshot() -> None:
    log = log_of([3, 3, 4], SnapshotMeta(10, 3))
    assert (log.first_index(), log.last_index(), log.last_term()) == (11, 13, 4)
    assert log.term(9) is None  # compacted
    assert log.term(10) == 3  # the snapshot's own term
    assert [log.term(i) for i in (11, 12, 13)] == [3, 3, 4]
    assert log.term(14) is None
    assert log.committed == log.applied == 10 and log.stable == 13
    assert RaftLog(SnapshotMeta(5, 2)).last_term() == 2


def test_entries_must_be_contiguous_after_snapshot() -> None:
    with pytest.raises(InvariantViolation):
        RaftLog(SnapshotMeta(5, 1), ents(7, [1]))
    with pytest.raises(InvariantViolation):
        RaftLog(None, [Entry(1, 1), Entry(1, 3)])


def test_is_up_to_date() -> None:
    # Paper §5.4.1: compare the last terms first, then the lengths.
    log = log_of([1, 1, 2])
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(9, 2)
    assert not log.is_up_to_date(2, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(100, 1)


# -- reading -----------------------------------------------------------------------------------------------------


def test_slice_bytes_limit_keeps_at_least_one_entry() -> None:
    log = RaftLog(None, ents(1, [1] * 5, b"x" * 10))
    assert [e.index for e in log.slice(1, 6, 25)] == [1, 2]
    assert [e.index for e in log.slice(1, 6, 1)] == [1]
    assert [e.index for e in log.slice(2, 99, 1 << 30)] == [2, 3, 4, 5]
    assert log.slice(6, 9, 100) == []
    assert log.slice(4, 3, 100) == []


def test_slice_into_compacted_log_is_an_invariant_violation() -> None:
    log = log_of([1, 1], SnapshotMeta(5, 1))
    with pytest.raises(InvariantViolation):
        log.slice(5, 7, 100)


def test_next_committed_respects_applied_and_bytes() -> None:
    log = RaftLog(None, ents(1, [1] * 4, b"abcd"))
    log.commit_to(3)
    assert [e.index for e in log.next_committed(100)] == [1, 2, 3]
    assert [e.index for e in log.next_committed(5)] == [1]
    log.applied_to(2)
    assert [e.index for e in log.next_committed(100)] == [3]
    log.applied_to(3)
    assert log.next_committed(100) == [] and not log.has_next_committed()


def test_find_conflict() -> None:
    log = log_of([1, 2, 3])
    assert log.find_conflict([]) == 0
    assert log.find_conflict(ents(1, [1, 2, 3])) == 0  # all present
    assert log.find_conflict(ents(2, [2, 3])) == 0
    assert log.find_conflict(ents(2, [2, 3, 4, 4])) == 4  # new entries
    assert log.find_conflict(ents(1, [1, 4, 4])) == 2  # a disagreement
    assert log.find_conflict(ents(3, [1])) == 3


def test_find_conflict_by_term() -> None:
    # etcd's findConflictByTerm: the largest index <= index whose term is <= term.
    log = log_of([1, 1, 2, 2, 5, 5, 5])
    assert log.find_conflict_by_term(7, 5) == (7, 5)
    assert log.find_conflict_by_term(7, 4) == (4, 2)
    assert log.find_conflict_by_term(7, 2) == (4, 2)
    assert log.find_conflict_by_term(7, 1) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)
    assert log.find_conflict_by_term(3, 9) == (3, 2)
    assert log.find_conflict_by_term(20, 9) == (20, 0)  # beyond our log: unknown term


def test_find_conflict_by_term_stops_at_compaction() -> None:
    log = log_of([5, 5], SnapshotMeta(10, 3))
    assert log.find_conflict_by_term(12, 4) == (10, 3)
    assert log.find_conflict_by_term(8, 4) == (8, 0)  # compacted: unknown


@settings(max_examples=200, deadline=None)
@given(
    deltas=st.lists(st.integers(0, 2), min_size=1, max_size=30),
    index=st.integers(0, 35),
    term=st.integers(0, 40),
)
def test_find_conflict_by_term_property(deltas: list[int], index: int, term: int) -> None:
    terms = []
    t = 1
    for d in deltas:
        t += d
        terms.append(t)
    log = log_of(terms)
    got_index, got_term = log.find_conflict_by_term(index, term)
    assert got_index <= index
    if index > log.last_index():
        assert (got_index, got_term) == (index, 0)
        return
    assert got_term == log.term(got_index) or got_index == 0
    assert got_term <= term
    for i in range(got_index + 1, index + 1):
        assert (log.term(i) or 0) > term


# -- writing -----------------------------------------------------------------------------------------------------


def test_append_truncates_conflicting_suffix_and_unstable_mark() -> None:
    log = log_of([1, 1, 1, 1])
    log.append(ents(5, [2, 2]))
    assert log.last_index() == 6 and log.stable == 4
    assert [e.index for e in log.unstable_entries()] == [5, 6]
    log.stable_to(6, 2)
    log.append(ents(3, [3]))
    assert ids(log) == [(1, 1), (1, 2), (3, 3)]
    assert log.stable == 2
    assert log.append([]) == 3


def test_append_gap_and_committed_overwrite_are_violations() -> None:
    log = log_of([1, 1, 1])
    with pytest.raises(InvariantViolation):
        log.append(ents(5, [1]))
    log.commit_to(2)
    with pytest.raises(InvariantViolation):
        log.append(ents(2, [2]))
    log.append(ents(3, [2]))  # just past commit is fine


def test_stable_to_ignores_a_log_that_changed_since() -> None:
    log = log_of([1])
    log.append(ents(2, [2, 2]))
    log.append(ents(3, [3]))  # while the Ready with 2/3 was being written, 3 was replaced
    log.stable_to(3, 2)
    assert log.stable == 1
    log.stable_to(3, 3)
    assert log.stable == 3
    log.stable_to(2, 2)  # never backwards
    assert log.stable == 3


def test_maybe_append_mismatch_returns_none() -> None:
    log = log_of([1, 2, 2])
    assert log.maybe_append(3, 3, 3, ents(4, [3])) is None
    assert log.maybe_append(5, 2, 3, []) is None  # beyond our log
    assert log.last_index() == 3 and log.committed == 0


def test_maybe_append_appends_truncates_and_commits() -> None:
    log = log_of([1, 2, 2])
    # Duplicates change nothing.
    assert log.maybe_append(1, 1, 0, ents(2, [2, 2])) == 3
    assert log.last_index() == 3
    # A conflicting suffix is replaced.
    assert log.maybe_append(2, 2, 0, ents(3, [3, 3])) == 4
    assert ids(log) == [(1, 1), (2, 2), (3, 3), (3, 4)]
    # Commit is min(leader commit, last new entry): the rest of our log may still be wrong.
    assert log.maybe_append(2, 2, 9, []) == 2
    assert log.committed == 2
    assert log.maybe_append(4, 3, 9, ents(5, [3])) == 5
    assert log.committed == 5


def test_maybe_append_conflicting_with_committed_is_a_violation() -> None:
    log = log_of([1, 2, 2])
    log.commit_to(3)
    with pytest.raises(InvariantViolation):
        log.maybe_append(1, 1, 3, ents(2, [9]))


def test_commit_and_apply_invariants() -> None:
    log = log_of([1, 1, 2])
    with pytest.raises(InvariantViolation):
        log.commit_to(4)
    log.commit_to(2)
    log.commit_to(1)  # never decreases
    assert log.committed == 2
    with pytest.raises(InvariantViolation):
        log.applied_to(3)
    log.applied_to(2)
    log.applied_to(1)
    assert log.applied == 2


def test_maybe_commit_only_current_term() -> None:
    # Paper §5.4.2: an entry of an earlier term is never committed by counting replicas.
    log = log_of([1, 1, 2, 3])
    assert not log.maybe_commit(3, 3)
    assert log.committed == 0
    assert log.maybe_commit(4, 3)
    assert log.committed == 4
    assert not log.maybe_commit(4, 3)
    assert not log.maybe_commit(2, 1)


def test_compact() -> None:
    log = log_of([1, 1, 2, 2, 3])
    log.commit_to(4)
    log.applied_to(4)
    with pytest.raises(InvariantViolation):
        log.compact(SnapshotMeta(5, 3))  # not applied
    with pytest.raises(InvariantViolation):
        log.compact(SnapshotMeta(3, 1))  # wrong term
    log.compact(SnapshotMeta(3, 2))
    assert log.first_index() == 4 and log.last_index() == 5
    assert ids(log) == [(2, 4), (3, 5)]
    assert log.term(3) == 2 and log.term(2) is None
    log.compact(SnapshotMeta(2, 1))  # older than ours: ignored
    assert log.snapshot.index == 3
    assert log.unstable_entries() == []


def test_restore_replaces_everything() -> None:
    log = log_of([1, 1, 2])
    log.commit_to(2)
    meta = SnapshotMeta(10, 4, ConfState(frozenset({1, 2})))
    with pytest.raises(InvariantViolation):
        log.restore(SnapshotMeta(2, 1), b"")
    log.restore(meta, b"data")
    assert log.entries == []
    assert log.snapshot == meta
    assert (log.last_index(), log.last_term()) == (10, 4)
    assert log.stable == log.committed == log.applied == 10
    assert log.pending_snapshot == meta and log.pending_snapshot_data == b"data"
    log.append(ents(11, [4]))
    assert log.unstable_entries() == ents(11, [4])
