"""What the leader knows about each follower's log, and flow control.

Follows etcd-io/raft's tracker: a follower is probed until its log position
is found, then replicated to optimistically with a bounded window of
messages in flight, or sent a snapshot when it is too far behind.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.IntEnum):
    PROBE = 0  # one APP at a time until the follower's match is known
    REPLICATE = 1  # stream APPs, bounded by Inflights
    SNAPSHOT = 2  # a snapshot is on its way; send nothing else


class Inflights:
    """A window of APP messages sent but not acknowledged, bounded in count and bytes."""

    __slots__ = ("_items", "bytes", "bytes_max", "msgs_max")

    def __init__(self, msgs_max: int, bytes_max: int) -> None:
        if msgs_max < 1 or bytes_max < 1:
            raise ValueError("inflight limits must be positive")
        self.msgs_max = msgs_max
        self.bytes_max = bytes_max
        self._items: deque[tuple[int, int]] = deque()  # (last index of message, payload bytes)
        self.bytes = 0

    def add(self, index: int, size: int) -> None:
        self._items.append((index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Release every message whose last index is <= ``index`` (they were acknowledged)."""
        items = self._items
        while items and items[0][0] <= index:
            self.bytes -= items.popleft()[1]

    def free_first_one(self) -> None:
        if self._items:
            self.bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.msgs_max or self.bytes >= self.bytes_max

    def count(self) -> int:
        return len(self._items)

    def reset(self) -> None:
        self._items.clear()
        self.bytes = 0


class Progress:
    """The leader's view of one peer.

    Invariant: ``match < next``. ``match`` is the highest index known to be
    durable on the peer; ``next`` is the next index to send.
    """

    __slots__ = ("inflights", "is_learner", "match", "next", "paused", "pending_snapshot", "recent_active", "state")

    def __init__(self, next_index: int, inflights: Inflights, *, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        #: In PROBE: an APP is out and unanswered, so send no more until a reply or heartbeat reply.
        self.paused = False
        #: In SNAPSHOT: the index of the snapshot being sent.
        self.pending_snapshot = 0
        #: Heard from since the last CheckQuorum round.
        self.recent_active = False
        self.is_learner = is_learner
        self.inflights = inflights

    def _reset_state(self, state: ProgressState) -> None:
        self.paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """The peer acknowledged up to ``n``. Returns whether ``match`` moved."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.paused = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected an APP at ``rejected``. Returns False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.paused
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (
            f"Progress(state={self.state.name}, match={self.match}, next={self.next}, "
            f"paused={self.paused}, inflight={self.inflights.count()}, learner={self.is_learner})"
        )
