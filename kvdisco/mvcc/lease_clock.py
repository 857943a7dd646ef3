"""The leader's half of leases: counting each lease down in wall-clock time.

The replicated half (:mod:`lessor`) knows which leases exist and their TTLs, but has no clock:
``apply`` must be deterministic. Only the leader keeps time. It expires a lease by proposing
``LeaseRevoke`` through Raft, and from time to time proposes ``LeaseCheckpoint`` with the
remaining TTLs, so that a new leader resumes each countdown where the old one left it instead
of granting every lease its full TTL again (etcd issue #9395).

This class decides; it does not propose. The node calls :meth:`promote` when it becomes leader
and :meth:`demote` when it stops being one, and on a timer asks :meth:`expired` and
:meth:`checkpoints_due` what to propose. The clock is injected, so tests drive time by hand.

Rules (etcd's):

* On promotion every lease gets its checkpointed remaining TTL, or its full TTL, plus
  ``extend_s`` (the election timeout): a lease must not expire because leadership moved.
* A lease granted during leadership counts down from when this clock first sees it: the apply
  loop calls :meth:`observe` after each grant.
* A keepalive restarts the countdown from the full TTL. A keepalive of a lease whose deadline has
  passed fails with "lease not found", as in etcd: its revoke is on its way.
* An expired lease is handed out by :meth:`expired` once; if it still exists ``retry_s`` later
  (the revoke was lost in a leader change), it is handed out again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from kvdisco.mvcc.errors import LeaseNotFoundError
from kvdisco.mvcc.lessor import LeaseCheckpoint, Lessor, keepalive

__all__ = ["CHECKPOINT_BATCH_MAX", "LeaseClock", "NotLeaseLeaderError"]

#: Leases per LeaseCheckpoint command, as etcd's maxLeaseCheckpointBatchSize.
CHECKPOINT_BATCH_MAX = 1000


class NotLeaseLeaderError(Exception):
    """Asked for a countdown on a node that is not keeping time (not the leader)."""


class LeaseClock:
    """Deadlines of every lease, kept only while this node leads."""

    def __init__(
        self,
        lessor: Lessor,
        *,
        extend_s: float,
        checkpoint_interval_s: float = 5.0,
        retry_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lessor = lessor
        self._extend_s = extend_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._retry_s = retry_s
        self._clock = clock
        self._active = False
        #: Lease id -> monotonic deadline. Holds exactly the lessor's ids after each reconcile.
        self._deadlines: dict[int, float] = {}
        #: Lease id -> when its revoke may be handed out again.
        self._revoking: dict[int, float] = {}
        self._next_checkpoint = 0.0

    @property
    def active(self) -> bool:
        return self._active

    def promote(self) -> None:
        now = self._clock()
        self._active = True
        self._deadlines.clear()
        self._revoking.clear()
        for lease_id in self._lessor.ids():
            lease = self._lessor.lookup(lease_id)
            left = lease.remaining_ttl if lease.remaining_ttl is not None else lease.ttl
            self._deadlines[lease_id] = now + left + self._extend_s
        self._next_checkpoint = now + self._checkpoint_interval_s

    def demote(self) -> None:
        self._active = False
        self._deadlines.clear()
        self._revoking.clear()

    def renew(self, lease_id: int) -> tuple[int, LeaseCheckpoint | None]:
        """A keepalive: the TTL to answer with, and a checkpoint to propose, if one must be cleared."""
        now, deadline = self._deadline(lease_id)
        if deadline <= now:
            raise LeaseNotFoundError()
        ttl, clear = keepalive(self._lessor, lease_id)
        self._deadlines[lease_id] = now + ttl
        self._revoking.pop(lease_id, None)
        return ttl, clear

    def remaining(self, lease_id: int) -> int:
        """Whole seconds left (rounded up, as etcd), 0 once expired; LeaseNotFoundError if unknown."""
        now, deadline = self._deadline(lease_id)
        return max(0, math.ceil(deadline - now))

    def _deadline(self, lease_id: int) -> tuple[float, float]:
        """``(now, deadline)`` of a lease that exists; LeaseNotFoundError otherwise.

        A keepalive is frequent, so the full reconcile (O(leases)) runs only for a lease granted since
        the last one; a revoked lease is told apart by the lessor, whose lookup is O(1).
        """
        self._lessor.lookup(lease_id)
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            now = self._reconcile()
            deadline = self._deadlines[lease_id]
        else:
            if not self._active:
                raise NotLeaseLeaderError("this member does not keep lease time: it is not the leader")
            now = self._clock()
        return now, deadline

    def expired(self, limit: int = 1000) -> list[int]:
        """Leases to revoke now, each handed out again only after ``retry_s``."""
        now = self._reconcile()
        out: list[int] = []
        for lease_id, deadline in self._deadlines.items():
            if deadline > now:
                continue
            if self._revoking.get(lease_id, 0.0) > now:
                continue
            self._revoking[lease_id] = now + self._retry_s
            out.append(lease_id)
            if len(out) >= limit:
                break
        return out

    def checkpoints_due(self) -> list[LeaseCheckpoint]:
        """Remaining TTLs to record, once per checkpoint interval, in batches of CHECKPOINT_BATCH_MAX."""
        now = self._reconcile()
        if now < self._next_checkpoint:
            return []
        self._next_checkpoint = now + self._checkpoint_interval_s
        pairs: list[tuple[int, int]] = []
        for lease_id, deadline in sorted(self._deadlines.items()):
            left = math.ceil(deadline - now)
            lease = self._lessor.lookup(lease_id)
            if 0 < left < lease.ttl:
                pairs.append((lease_id, left))
        return [
            LeaseCheckpoint(tuple(pairs[i : i + CHECKPOINT_BATCH_MAX]))
            for i in range(0, len(pairs), CHECKPOINT_BATCH_MAX)
        ]

    def observe(self) -> None:
        """Start counting down leases granted since the last call; the apply loop calls it after a grant."""
        if self._active:
            self._reconcile()

    def _reconcile(self) -> float:
        """Follow grants and revokes applied since the last call; returns now."""
        if not self._active:
            raise NotLeaseLeaderError("this member does not keep lease time: it is not the leader")
        now = self._clock()
        live = self._lessor.live_ids()
        deadlines = self._deadlines
        if live != deadlines.keys():
            for gone in deadlines.keys() - live:
                del deadlines[gone]
                self._revoking.pop(gone, None)
            for new in live - deadlines.keys():
                deadlines[new] = now + self._lessor.lookup(new).ttl
        return now
