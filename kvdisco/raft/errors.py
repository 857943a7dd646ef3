"""Typed errors of the Raft library.

Three kinds of failure are kept apart (see docs/design-decisions.md):

* a caller misusing the API gets a subclass of :class:`RaftError`;
* a peer sending garbage gets :class:`ProtocolError` raised inside the
  transport, which closes that connection and logs it;
* a broken invariant raises :class:`InvariantViolation`, which is never
  caught: the node must stop rather than go on with a corrupt state.
"""

from __future__ import annotations

__all__ = [
    "CorruptLogError",
    "InvariantViolation",
    "MessageTooLarge",
    "NotLeader",
    "ProposalDropped",
    "ProtocolError",
    "RaftError",
    "StorageError",
]


class RaftError(Exception):
    """Base of the errors a caller of the library is expected to handle."""


class NotLeader(RaftError):
    """The request needs the leader and this node is not it.

    ``leader_hint`` is the id of the leader this node knows of, or 0.
    """

    def __init__(self, leader_hint: int, leader_address: str | None = None) -> None:
        self.leader_hint = leader_hint
        self.leader_address = leader_address
        super().__init__(f"not the leader (leader hint: {leader_hint or 'unknown'})")


class ProposalDropped(RaftError):
    """The proposal was not accepted, or its fate is unknown (leadership lost, transfer under way)."""


class MessageTooLarge(RaftError):
    """A message, proposal or frame exceeds a configured size limit."""


class ProtocolError(RaftError):
    """A peer sent bytes that are not a valid frame or message."""


class StorageError(RaftError):
    """The durable log could not be read or written."""


class CorruptLogError(StorageError):
    """A record in the middle of the log failed its checksum: refuse to start.

    ``path`` and ``offset`` name the bad record so an operator can look.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt WAL record in {path} at offset {offset}: {reason}")


class InvariantViolation(AssertionError):
    """A Raft safety invariant was broken. This is a bug or lost storage; never swallow it."""
