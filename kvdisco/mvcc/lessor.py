"""The replicated part of etcd's leases: which leases exist, their TTLs and attached keys.

Pure and deterministic, with no clock. Time is the leader's business: the leader counts a
lease down, proposes ``LeaseRevoke`` through Raft when it expires, and from time to time
proposes ``LeaseCheckpoint`` with the remaining TTLs so that a new leader resumes from them
instead of granting every lease its full TTL again (etcd issue #9395).

Rules (etcd's, unless said otherwise):

* A lease id is a positive int64. Granting id 0 lets the lessor choose: the smallest id above
  every id granted so far (a counter kept in the state), so a chosen id is never reused.
  A negative id is refused (etcd leaves this open; kvdisco refuses it).
* A TTL below ``min_ttl`` is raised to ``min_ttl`` (etcd's minimum-TTL rule; etcd derives the
  minimum from its election timeout, here it is a constructor argument that every replica must
  share). A TTL above :data:`MAX_LEASE_TTL` is refused.
* A checkpoint of an unknown lease is ignored (it may have been revoked since the leader took
  the checkpoint). A remaining TTL of 0 clears the checkpoint, as etcd does after a keepalive.
* Keepalive is not replicated: it only restarts the leader's countdown. :func:`keepalive` is the
  pure part of it, for the leader-side lessor.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView
from dataclasses import dataclass, field

from kvdisco.mvcc.errors import (
    InvalidArgumentError,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
)

__all__ = ["MAX_LEASE_TTL", "Lease", "LeaseCheckpoint", "LeaseGrant", "LeaseRevoke", "Lessor", "keepalive"]

#: etcd's MaxLeaseTTL, in seconds.
MAX_LEASE_TTL = 9_000_000_000

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """Create lease ``id`` (0: let the machine choose) with ``ttl`` seconds."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """Delete lease ``id`` and every key attached to it, in one store revision."""

    id: int


@dataclass(frozen=True, slots=True)
class LeaseCheckpoint:
    """Record ``(lease id, remaining TTL)`` pairs; a remaining TTL of 0 clears the record."""

    checkpoints: tuple[tuple[int, int], ...]


@dataclass(slots=True)
class Lease:
    id: int
    #: TTL in seconds the lease was granted with (after the minimum-TTL rule).
    ttl: int
    #: Remaining TTL as of the last checkpoint, None when there is none.
    remaining_ttl: int | None = None
    keys: set[bytes] = field(default_factory=set)


class Lessor:
    """Leases by id. Not thread-safe; one writer (the Raft apply loop)."""

    def __init__(self, min_ttl: int = 1) -> None:
        if not 1 <= min_ttl <= MAX_LEASE_TTL:
            raise ValueError(f"min_ttl must be in [1, {MAX_LEASE_TTL}], got {min_ttl}")
        self.min_ttl = min_ttl
        self._leases: dict[int, Lease] = {}
        #: Every id granted so far is below this; id 0 grants take it.
        self._next_id = 1

    @property
    def next_id(self) -> int:
        return self._next_id

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def lookup(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        return lease

    def ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._leases))

    def live_ids(self) -> KeysView[int]:
        """A live view of the ids, for cheap set comparisons by the leader's clock."""
        return self._leases.keys()

    def check_grant(self, lease_id: int, ttl: int) -> None:
        """Raise the error :meth:`grant` would raise, changing nothing."""
        if lease_id < 0:
            raise InvalidArgumentError("kvdisco: a lease id must not be negative")
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        if lease_id in self._leases:
            raise LeaseExistsError()
        if lease_id == 0 and self._next_id > _INT64_MAX:
            raise InvalidArgumentError("kvdisco: no lease id left to choose")

    def grant(self, lease_id: int, ttl: int) -> Lease:
        self.check_grant(lease_id, ttl)
        if lease_id == 0:
            lease_id = self._next_id
        lease = Lease(lease_id, max(ttl, self.min_ttl))
        self._leases[lease_id] = lease
        self._next_id = max(self._next_id, lease_id + 1)
        return lease

    def remove(self, lease_id: int) -> Lease:
        """Forget the lease; its keys are the store's to delete first."""
        lease = self.lookup(lease_id)
        del self._leases[lease_id]
        return lease

    def checkpoint(self, checkpoints: Iterable[tuple[int, int]]) -> None:
        pairs = list(checkpoints)
        if any(remaining < 0 for _, remaining in pairs):
            raise InvalidArgumentError("kvdisco: a remaining lease TTL must not be negative")
        for lease_id, remaining in pairs:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.remaining_ttl = remaining if remaining > 0 else None

    def attach(self, lease_id: int, key: bytes) -> None:
        self.lookup(lease_id).keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    # --- snapshot ---------------------------------------------------------------------

    def pack(self) -> list[object]:
        """Deterministic snapshot form: ``[next_id, [[id, ttl, remaining_ttl | None], ...]]``.

        Attachments are not packed: the store rebuilds them from its live keys.
        """
        leases = [[lid, lease.ttl, lease.remaining_ttl] for lid, lease in sorted(self._leases.items())]
        return [self._next_id, leases]

    def load(self, next_id: int, leases: list[Lease]) -> None:
        """Replace the state; the caller has checked it (see the store's restore)."""
        self._next_id = next_id
        self._leases = {lease.id: lease for lease in leases}


def keepalive(lessor: Lessor, lease_id: int) -> tuple[int, LeaseCheckpoint | None]:
    """The replicated side of a keepalive, for the leader-side lessor.

    Returns the TTL to answer with (the granted one: the leader restarts its countdown from it)
    and, when the lease has a checkpointed remaining TTL, the checkpoint to propose that clears
    it, so a later leader does not resume from a stale remaining TTL (etcd's Renew). Raises
    LeaseNotFoundError for an unknown lease. Changes nothing.
    """
    lease = lessor.lookup(lease_id)
    clear = LeaseCheckpoint(((lease_id, 0),)) if lease.remaining_ttl is not None else None
    return lease.ttl, clear
