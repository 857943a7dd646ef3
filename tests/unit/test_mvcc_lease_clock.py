"""The leader's lease countdown: expiry, keepalive, checkpoints, and resuming after a leader change."""

from __future__ import annotations

import pytest

from kvdisco.mvcc.errors import LeaseNotFoundError
from kvdisco.mvcc.lease_clock import CHECKPOINT_BATCH_MAX, LeaseClock, NotLeaseLeaderError
from kvdisco.mvcc.lessor import LeaseCheckpoint, Lessor


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(extend_s: float = 1.0, **kw: float) -> tuple[Lessor, LeaseClock, FakeTime]:
    lessor = Lessor(min_ttl=1)
    t = FakeTime()
    return lessor, LeaseClock(lessor, extend_s=extend_s, clock=t, **kw), t


def test_follower_keeps_no_time() -> None:
    lessor, clock, _ = make()
    lessor.grant(1, 10)
    with pytest.raises(NotLeaseLeaderError):
        clock.expired()
    with pytest.raises(NotLeaseLeaderError):
        clock.renew(1)


def test_lease_granted_while_leading_expires_after_its_ttl() -> None:
    lessor, clock, t = make()
    clock.promote()
    lessor.grant(7, 5)
    assert clock.remaining(7) == 5
    t.now += 4.9
    assert clock.expired() == []
    assert clock.remaining(7) == 1
    t.now += 0.2
    assert clock.expired() == [7]
    assert clock.remaining(7) == 0
    # Handed out once, then again only after the retry delay if the revoke got lost.
    assert clock.expired() == []
    t.now += 3.1
    assert clock.expired() == [7]
    lessor.remove(7)
    t.now += 10
    assert clock.expired() == []
    with pytest.raises(LeaseNotFoundError):
        clock.remaining(7)


def test_promotion_extends_every_lease_by_the_election_timeout() -> None:
    lessor, clock, t = make(extend_s=2.0)
    lessor.grant(1, 5)
    clock.promote()
    t.now += 6.5
    assert clock.expired() == []
    t.now += 0.6
    assert clock.expired() == [1]


def test_keepalive_restarts_the_countdown() -> None:
    lessor, clock, t = make(extend_s=0.0)
    clock.promote()
    lessor.grant(3, 4)
    t.now += 3
    assert clock.renew(3) == (4, None)
    t.now += 3
    assert clock.expired() == []
    assert clock.remaining(3) == 1


def test_keepalive_of_an_expired_lease_fails() -> None:
    lessor, clock, t = make()
    clock.promote()
    lessor.grant(3, 2)
    clock.observe()
    t.now += 2.5
    with pytest.raises(LeaseNotFoundError):
        clock.renew(3)
    with pytest.raises(LeaseNotFoundError):
        clock.renew(99)


def test_keepalive_clears_a_checkpointed_remaining_ttl() -> None:
    lessor, clock, _ = make()
    lessor.grant(3, 30)
    lessor.checkpoint([(3, 12)])
    clock.promote()
    assert clock.renew(3) == (30, LeaseCheckpoint(((3, 0),)))


def test_checkpoints_carry_remaining_ttls_to_the_next_leader() -> None:
    lessor, old, t = make(extend_s=1.0, checkpoint_interval_s=5.0)
    old.promote()
    lessor.grant(1, 60)
    lessor.grant(2, 60)
    old.observe()
    t.now += 4
    assert old.checkpoints_due() == []
    t.now += 16
    (cp,) = old.checkpoints_due()
    assert cp == LeaseCheckpoint(((1, 40), (2, 40)))
    assert old.checkpoints_due() == []  # not again before the next interval
    lessor.checkpoint(cp.checkpoints)  # what applying the proposal does on every replica
    old.demote()

    # A new leader, on another replica (here: the same lessor state), resumes from 40 s, not 60.
    new = LeaseClock(lessor, extend_s=1.0, clock=t)
    new.promote()
    assert new.remaining(1) == 41
    t.now += 41.5
    assert sorted(new.expired()) == [1, 2]


def test_checkpoints_are_batched() -> None:
    lessor, clock, t = make(checkpoint_interval_s=1.0)
    clock.promote()
    for i in range(1, CHECKPOINT_BATCH_MAX + 3):
        lessor.grant(i, 100)
    clock.observe()
    t.now += 2
    batches = clock.checkpoints_due()
    assert [len(b.checkpoints) for b in batches] == [CHECKPOINT_BATCH_MAX, 2]


def test_expired_respects_the_limit() -> None:
    lessor, clock, t = make()
    clock.promote()
    for i in range(1, 11):
        lessor.grant(i, 1)
    clock.observe()
    t.now += 5
    first = clock.expired(limit=4)
    rest = clock.expired()
    assert len(first) == 4 and len(rest) == 6 and not set(first) & set(rest)


def test_demote_forgets_every_deadline() -> None:
    lessor, clock, t = make(extend_s=0.0)
    clock.promote()
    lessor.grant(1, 2)
    clock.demote()
    assert not clock.active
    t.now += 1.5
    clock.promote()  # a fresh countdown from the full TTL (no checkpoint was taken)
    t.now += 1
    assert clock.expired() == []
