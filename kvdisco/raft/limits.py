"""Every size and time limit of the Raft library, with why it has that value.

Names carry the unit last. The relations between them are checked at import
time, so a bad edit fails loudly instead of producing a cluster that cannot
elect a leader.
"""

from __future__ import annotations

__all__ = [
    "APPLY_BATCH_BYTES_MAX",
    "ELECTION_TICKS",
    "FRAME_BYTES_MAX",
    "HEARTBEAT_TICKS",
    "INFLIGHT_BYTES_MAX",
    "INFLIGHT_MSGS_MAX",
    "LEARNER_CATCHUP_ENTRIES_MAX",
    "MSG_BYTES_MAX",
    "PEER_SEND_QUEUE_MSGS_MAX",
    "PROPOSAL_BYTES_MAX",
    "SNAPSHOT_CHUNK_BYTES",
    "TICK_INTERVAL_S",
    "UNCOMMITTED_BYTES_MAX",
    "WAL_SEGMENT_BYTES",
]

#: Wall time of one logical tick in the node driver. 10 ms ticks with the
#: tick counts below give a 100 ms heartbeat and a 1-2 s election timeout,
#: etcd's defaults.
TICK_INTERVAL_S = 0.01

#: Leader heartbeat interval, in ticks.
HEARTBEAT_TICKS = 10

#: Base election timeout, in ticks. Followers wait a random time in
#: [ELECTION_TICKS, 2 * ELECTION_TICKS) before campaigning.
ELECTION_TICKS = 100

#: Largest single proposal. A proposal is one client request; etcd limits
#: requests to 1.5 MiB, so leave headroom for the envelope.
PROPOSAL_BYTES_MAX = 2 * 1024 * 1024

#: Entries carried by one APP message, in bytes (etcd's MaxSizePerMsg is
#: 1 MiB). One entry larger than this is still sent, alone.
MSG_BYTES_MAX = 1024 * 1024

#: APP messages in flight to one follower before the leader waits for acks.
INFLIGHT_MSGS_MAX = 256

#: Entry bytes in flight to one follower before the leader waits for acks.
INFLIGHT_BYTES_MAX = 32 * 1024 * 1024

#: Bytes of proposed but uncommitted entries the leader accepts before it
#: refuses new proposals (etcd's MaxUncommittedEntriesSize).
UNCOMMITTED_BYTES_MAX = 64 * 1024 * 1024

#: Committed entries handed to the state machine in one Ready.
APPLY_BATCH_BYTES_MAX = 8 * 1024 * 1024

#: Largest frame on a peer connection. A frame holds one message; snapshot
#: bytes are split into chunks well below this.
FRAME_BYTES_MAX = 4 * 1024 * 1024

#: Snapshot bytes per chunk frame on the wire.
SNAPSHOT_CHUNK_BYTES = 1024 * 1024

#: Messages queued for one peer before new ones are dropped (Raft retries
#: everything it needs, so dropping under pressure is safe; growing is not).
PEER_SEND_QUEUE_MSGS_MAX = 4096

#: A learner may be promoted only when it is at most this many entries behind the leader.
LEARNER_CATCHUP_ENTRIES_MAX = 1000

#: A WAL segment is closed and a new one started past this size.
WAL_SEGMENT_BYTES = 64 * 1024 * 1024


def _check() -> None:
    if not HEARTBEAT_TICKS < ELECTION_TICKS:
        raise AssertionError("HEARTBEAT_TICKS must be below ELECTION_TICKS")
    if not MSG_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX:
        raise AssertionError("a full APP message must fit in one frame")
    if not SNAPSHOT_CHUNK_BYTES + 64 * 1024 <= FRAME_BYTES_MAX:
        raise AssertionError("a snapshot chunk must fit in one frame")
    if not PROPOSAL_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX:
        raise AssertionError("the largest proposal must fit in one APP frame")
    if not MSG_BYTES_MAX <= INFLIGHT_BYTES_MAX:
        raise AssertionError("one APP message must fit within the inflight byte budget")


_check()
