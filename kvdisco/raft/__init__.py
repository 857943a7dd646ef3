"""kvdisco's Raft library: a sans-I/O consensus core, a durable log, a TCP transport and an asyncio driver.

It imports nothing from the rest of kvdisco and can be used on its own: give
:class:`Node` a :class:`StateMachine` and it replicates that machine's
commands across 1, 3 or 5 processes. See docs/raft.md.
"""

from ._core import ConfChangeError, Config
from ._messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    SnapshotMeta,
    SoftState,
    StateRole,
)
from ._rawnode import RawNode
from .errors import (
    CorruptLogError,
    InvariantViolation,
    MessageTooLarge,
    NotLeader,
    ProposalDropped,
    ProtocolError,
    RaftError,
    StorageError,
)
from .node import MemberInfo, Node, NodeConfig, StateMachine, member_id
from .storage import DiskStorage
from .transport import PeerTransport

__all__ = [
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Config",
    "CorruptLogError",
    "Entry",
    "EntryType",
    "HardState",
    "DiskStorage",
    "InvariantViolation",
    "MemberInfo",
    "Message",
    "MessageTooLarge",
    "MessageType",
    "Node",
    "NodeConfig",
    "NotLeader",
    "PeerTransport",
    "ProposalDropped",
    "ProtocolError",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "SnapshotMeta",
    "SoftState",
    "StateMachine",
    "StateRole",
    "StorageError",
    "member_id",
]
