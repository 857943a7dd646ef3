"""The revisioned store as a Raft state machine: log entries are encoded write commands.

``apply`` never raises for a bad command: a command that does not decode, or that the store
refuses, returns an :class:`ApplyError` and changes nothing. Every replica applies the same
entries in the same order, so every replica's store goes through the same states.

It does raise, :class:`~kvdisco.raft.errors.InvariantViolation`, for an entry out of order: an
index at or below the last one applied would apply a write twice (a second revision, a lease
granted again), so the node must stop instead. See :meth:`KVMachine.apply` for why gaps are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from kvdisco.mvcc.commands import LeaseCheckpoint, LeaseGrant, LeaseRevoke, RequestCompact, decode_command
from kvdisco.mvcc.errors import CODE_INVALID_ARGUMENT, MvccError, SnapshotError
from kvdisco.mvcc.kvstore import (
    CompactResult,
    DeleteResult,
    KVStore,
    LeaseCheckpointResult,
    LeaseGrantResult,
    LeaseRevokeResult,
    PutResult,
    Readable,
    RequestDeleteRange,
    RequestPut,
    TxnResult,
    snapshot_reader,
)
from kvdisco.mvcc.lessor import Lessor
from kvdisco.raft.errors import InvariantViolation

__all__ = ["MACHINE_SNAPSHOT_FORMAT", "ApplyError", "ApplyResult", "KVMachine"]

#: Format tag of :meth:`KVMachine.snapshot`; bump it when the layout changes. Format 2 is a msgpack
#: header ``[2, applied_index]`` followed by the store's snapshot as is (format 1 wrapped it in a
#: msgpack bin, which a restore had to copy whole).
MACHINE_SNAPSHOT_FORMAT = 2


@dataclass(frozen=True, slots=True)
class ApplyError:
    """A command the machine refused; ``code`` is the gRPC status code, as in :mod:`errors`."""

    code: int
    message: str


ApplyResult = (
    PutResult
    | DeleteResult
    | TxnResult
    | CompactResult
    | LeaseGrantResult
    | LeaseRevokeResult
    | LeaseCheckpointResult
    | ApplyError
)


class KVMachine:
    """A :class:`KVStore` driven by committed log entries. Read locally through ``store``."""

    def __init__(self, min_lease_ttl: int = 1) -> None:
        #: Leases of the store; every replica must use the same ``min_lease_ttl``.
        self.lessor = Lessor(min_lease_ttl)
        self.store = KVStore(self.lessor)
        #: Index of the last entry applied (0 before any); restored with a snapshot.
        self.applied_index = 0

    def apply(self, index: int, command: bytes) -> ApplyResult:
        """Apply the command committed at log ``index``; refuse, changing nothing, an index not past the last.

        Indexes must rise but may skip: the Raft node hands the machine only entries that carry a command,
        not a new leader's empty entry nor a membership change, and restoring a snapshot moves
        ``applied_index`` to where the snapshot was taken. So ``index`` need only be above
        ``applied_index``; anything else would apply a command twice, or one older than the state.
        """
        if index <= self.applied_index:
            raise InvariantViolation(
                f"mvcc: entry {index} applied after entry {self.applied_index}: applying it again would "
                "duplicate its write. Was the log replayed over a state that already holds it?"
            )
        self.applied_index = index
        try:
            req = decode_command(command)
        except ValueError as exc:
            return ApplyError(CODE_INVALID_ARGUMENT, f"kvdisco: malformed command: {exc}")
        store = self.store
        try:
            if isinstance(req, RequestPut):
                return store.apply_put(req)
            if isinstance(req, RequestDeleteRange):
                return store.delete_range(req.key, req.range_end, prev_kv=req.prev_kv)
            if isinstance(req, RequestCompact):
                return store.compact(req.revision)
            if isinstance(req, LeaseGrant):
                return store.lease_grant(req.id, req.ttl)
            if isinstance(req, LeaseRevoke):
                return store.lease_revoke(req.id)
            if isinstance(req, LeaseCheckpoint):
                return store.lease_checkpoint(req.checkpoints)
            return store.txn(req.compares, req.success, req.failure)
        except MvccError as exc:
            return ApplyError(exc.code, exc.message)

    def publish(self) -> None:
        """Nothing to tell: a bare machine has no watchers (``WatchedMachine`` in the API has)."""

    def snapshot(self) -> bytes:
        return b"".join(self.snapshot_parts())

    def snapshot_parts(self) -> list[bytes]:
        """:meth:`snapshot` in pieces (see KVStore.snapshot_parts)."""
        header: bytes = msgpack.packb([MACHINE_SNAPSHOT_FORMAT, self.applied_index])
        return [header, *self.store.snapshot_parts()]

    def restore(self, data: bytes | bytearray | memoryview | Readable) -> None:
        """Replace the state with a snapshot's (bytes, or read from ``data`` to its end). A bad snapshot
        raises SnapshotError, changes nothing.

        The header is read a byte at a time and the store's part is left to the store to read as it
        goes: a snapshot is as large as the store, and a restore must not hold it twice (or, from a
        file, at all).
        """
        source = snapshot_reader(data)
        unpacker = msgpack.Unpacker(source, read_size=1, raw=False)
        try:
            fields = unpacker.read_array_header()
            fmt = unpacker.unpack() if fields else None
        except Exception as exc:  # msgpack may raise beyond UnpackException; unpacking wrong shapes too
            raise SnapshotError(f"mvcc: corrupt machine snapshot: {exc!r}") from None
        if type(fmt) is not int or fmt != MACHINE_SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"mvcc: unknown machine snapshot format {fmt!r} (this kvdisco reads format {MACHINE_SNAPSHOT_FORMAT})"
            )
        try:
            applied_index = unpacker.unpack() if fields == 2 else None
        except Exception:
            applied_index = None
        if type(applied_index) is not int or applied_index < 0:
            raise SnapshotError("mvcc: corrupt machine snapshot: bad applied index")
        self.store.restore(source)
        self.applied_index = applied_index
