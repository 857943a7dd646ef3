"""Plain data that the Raft core exchanges with its driver and its peers.

Everything here is a small slotted dataclass with no behaviour beyond
validation, so the core, the WAL, the codec and the simulator can share it
without importing each other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Ready",
    "SnapshotMeta",
    "SoftState",
    "StateRole",
]

#: Node id 0 means "nobody" (no vote, no known leader). Real ids are >= 1.
NONE = 0


class StateRole(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class EntryType(enum.IntEnum):
    NORMAL = 0
    #: ``data`` is an encoded :class:`ConfChange`.
    CONF_CHANGE = 1


class MessageType(enum.IntEnum):
    """Message kinds, numbered as on the wire (never renumber)."""

    # Local messages: stepped into a node by its own driver, never sent.
    HUP = 0  # start an election now
    BEAT = 1  # leader: send heartbeats now
    PROP = 2  # propose entries (local only: followers reject, see NotLeader)
    # Peer messages.
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10  # local: transport reports a peer unreachable
    SNAP_STATUS = 11  # local: transport reports a snapshot sent or failed
    CHECK_QUORUM = 12  # local: leader checks it heard from a quorum
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


#: Messages that never cross the network.
LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.PROP,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)


@dataclass(slots=True)
class Entry:
    """One log entry. ``index`` >= 1, ``term`` >= 1 for real entries."""

    term: int
    index: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be durable before any message that depends on it is sent.

    Invariant: ``commit`` never decreases across saves for one ``term``-line
    of history, and ``vote`` is only meaningful for ``term``.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class ConfState:
    """The membership in force at some log index.

    ``removed`` holds every id a committed REMOVE_NODE took out (as etcd records removed members): such
    an id may never be added again, because a member that came back under it would have forgotten its
    votes and its log, and its messages are dropped. It rides along wherever the membership is stored
    (snapshot metadata, SNAP messages), so it survives compaction and restarts and every member agrees.
    Equality compares the membership in force (voters and learners); ``removed`` is its history.

    Invariant: ``voters``, ``learners`` and ``removed`` are pairwise disjoint.
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    removed: frozenset[int] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(f"a node cannot be both voter and learner: {sorted(self.voters & self.learners)}")
        back = self.removed & (self.voters | self.learners)
        if back:
            raise ValueError(f"a removed node cannot be a member: {sorted(back)}")


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """Where a snapshot sits in the log and the membership at that point.

    The snapshot's bytes travel beside this (in a WAL snapshot file, or in
    ``Message.snapshot_data``); the core never holds them.
    """

    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # also promotes a learner
    REMOVE_NODE = 1
    ADD_LEARNER = 2  # also demotes a voter


@dataclass(slots=True, frozen=True)
class ConfChange:
    """A single-server membership change carried in a CONF_CHANGE entry.

    ``context`` is opaque to the core; drivers put the peer's address there.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""


@dataclass(slots=True)
class Message:
    """A Raft message, between peers or from the driver into the core.

    Field meanings follow etcd-io/raft: ``log_term``/``index`` locate the
    entry before ``entries`` (APP) or the candidate's last entry (VOTE);
    ``reject_hint`` is the follower's hint for fast backtracking.
    """

    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    #: Opaque bytes: the request context of READ_INDEX, or the campaign kind
    #: (b"transfer") for VOTE/PRE_VOTE during a leader transfer.
    context: bytes = b""
    #: Set on SNAP only.
    snapshot: SnapshotMeta | None = None
    #: The snapshot's bytes. The core neither reads nor fills this; the
    #: driver attaches them to outgoing SNAP messages and reads them from
    #: incoming ones.
    snapshot_data: bytes | None = None


@dataclass(slots=True, frozen=True)
class ReadState:
    """A ReadIndex answer: once ``applied >= index`` the read with ``context`` may be served."""

    index: int
    context: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    """Volatile state that need not be persisted, reported when it changes."""

    leader_id: int
    role: StateRole


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver.

    The contract, in this order:

    1. Persist ``snapshot`` (if any), then ``entries`` (truncating the WAL
       at ``entries[0].index`` first), then ``hard_state`` (if any), with
       one fsync for the lot.  ``messages_before_persist`` may be sent at
       any time, even before that fsync (they only carry the leader's own
       entries outward, Raft thesis 10.2.1).
    2. Send ``messages`` (only after step 1 is durable).
    3. Restore ``snapshot`` into the state machine (if any), then apply
       ``committed_entries`` in order.
    4. Call ``advance(ready)`` on the core.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages_before_persist: list[Message] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    #: The hard state's term or vote changed (not only its commit index).
    term_or_vote_changed: bool = False
    #: ``committed_entries`` hold a conf change whose commit may not be durable yet (see :meth:`must_sync`).
    commits_conf_change: bool = False

    def must_sync(self) -> bool:
        """Whether step 1 needs an fsync before anything in ``messages`` may be sent.

        A change of commit index alone need not be durable (a restarted node
        learns it again from the leader), so it may be written with the
        next synced batch instead (etcd's MustSync). Except when a conf change
        is about to be applied: a node that forgot it committed one could,
        after a restart, wait for a vote from a member that no longer counts
        itself a voter, and neither would ever campaign.
        """
        return bool(self.entries) or self.snapshot is not None or self.term_or_vote_changed or self.commits_conf_change
