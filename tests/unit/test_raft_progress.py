"""Unit tests of kvdisco.raft._progress: Inflights (flow control window) and Progress (probe/replicate/snapshot)."""

from __future__ import annotations

import pytest

from kvdisco.raft._progress import Inflights, Progress, ProgressState


def pr(match: int = 0, next_index: int = 1, msgs: int = 4, size: int = 1000) -> Progress:
    p = Progress(next_index, Inflights(msgs, size))
    p.match = match
    return p


# -- Inflights ---------------------------------------------------------------------------------------------------


def test_inflights_full_by_count() -> None:
    inf = Inflights(3, 1000)
    for i in (5, 7, 9):
        assert not inf.full()
        inf.add(i, 10)
    assert inf.full() and inf.count() == 3 and inf.bytes == 30


def test_inflights_full_by_bytes() -> None:
    inf = Inflights(100, 25)
    inf.add(1, 10)
    inf.add(2, 10)
    assert not inf.full()
    inf.add(3, 10)
    assert inf.full() and inf.bytes == 30


def test_inflights_free_le_and_first_one() -> None:
    inf = Inflights(10, 1000)
    for i in (3, 6, 9, 12):
        inf.add(i, i)
    inf.free_le(2)
    assert inf.count() == 4
    inf.free_le(7)
    assert inf.count() == 2 and inf.bytes == 21
    inf.free_first_one()
    assert inf.count() == 1 and inf.bytes == 12
    inf.free_le(100)
    assert inf.count() == 0 and inf.bytes == 0
    inf.free_first_one()  # empty: no-op
    inf.add(1, 5)
    inf.reset()
    assert inf.count() == 0 and inf.bytes == 0


def test_inflights_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Inflights(0, 10)
    with pytest.raises(ValueError):
        Inflights(10, 0)


# -- Progress ----------------------------------------------------------------------------------------------------


def test_new_progress_probes_and_is_not_paused() -> None:
    p = pr(next_index=11)
    assert p.state == ProgressState.PROBE and not p.is_paused() and p.match == 0 and p.next == 11


def test_maybe_update() -> None:
    p = pr(match=3, next_index=4)
    p.paused = True
    assert p.maybe_update(5)
    assert (p.match, p.next, p.paused) == (5, 6, False)
    assert not p.maybe_update(4)  # stale ack
    assert (p.match, p.next) == (5, 6)
    p.next = 10  # optimistic next is kept
    assert p.maybe_update(7)
    assert p.next == 10


def test_become_replicate_and_probe() -> None:
    p = pr(match=5, next_index=6)
    p.become_replicate()
    assert p.state == ProgressState.REPLICATE and p.next == 6
    p.next = 20
    p.inflights.add(19, 10)
    p.become_probe()
    assert p.state == ProgressState.PROBE and p.next == 6 and p.inflights.count() == 0


def test_probe_after_snapshot_resumes_past_it() -> None:
    p = pr(match=5, next_index=6)
    p.become_snapshot(50)
    assert p.state == ProgressState.SNAPSHOT and p.pending_snapshot == 50 and p.is_paused()
    p.become_probe()
    assert p.next == 51 and p.pending_snapshot == 0
    # A failed snapshot (pending cleared) probes from match again.
    p.become_snapshot(50)
    p.pending_snapshot = 0
    p.become_probe()
    assert p.next == 6


def test_is_paused_per_state() -> None:
    p = pr(msgs=1)
    assert not p.is_paused()
    p.paused = True
    assert p.is_paused()
    p.become_replicate()
    assert not p.is_paused()
    p.inflights.add(5, 1)
    assert p.is_paused()
    p.become_snapshot(9)
    assert p.is_paused()


def test_maybe_decr_to_replicate() -> None:
    p = pr(match=5, next_index=6)
    p.become_replicate()
    p.next = 12
    assert not p.maybe_decr_to(4, 0)  # rejection of something already matched: stale
    assert not p.maybe_decr_to(5, 0)
    assert p.maybe_decr_to(9, 2)
    assert p.next == 6  # straight back to match + 1


def test_maybe_decr_to_probe_uses_the_hint() -> None:
    p = pr(match=2, next_index=10)
    p.paused = True
    assert not p.maybe_decr_to(5, 3)  # not the probe we sent (next-1 == 9): stale
    assert p.maybe_decr_to(9, 4)
    assert p.next == 5 and not p.paused
    assert p.maybe_decr_to(4, 100)  # a hint past the rejected index does not move next forward
    assert p.next == 4
    assert p.maybe_decr_to(3, 0)  # never below match + 1
    assert p.next == 3
    assert p.match < p.next


def test_repr_names_the_state() -> None:
    assert "PROBE" in repr(pr())
