"""Typed errors of the revisioned store, each with etcd's message text and gRPC code.

A caller's bad request raises a subclass of :class:`MvccError`; the API layer turns it into
``{"error": message, "code": code, "message": message}``. A corrupt snapshot raises
:class:`SnapshotError`. Any other exception out of the store is a bug.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CompactedError",
    "DuplicateKeyError",
    "EmptyKeyError",
    "FutureRevisionError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "LeaseProvidedError",
    "LeaseTTLTooLargeError",
    "MvccError",
    "RequestTooLargeError",
    "SnapshotError",
    "TooManyOpsError",
    "ValueProvidedError",
]

#: gRPC status codes used here.
CODE_INVALID_ARGUMENT = 3
CODE_NOT_FOUND = 5
CODE_FAILED_PRECONDITION = 9
CODE_OUT_OF_RANGE = 11
CODE_INTERNAL = 13


class MvccError(Exception):
    """Base of the errors a caller of the store is expected to handle."""

    code: ClassVar[int] = CODE_INTERNAL
    default_message: ClassVar[str] = "etcdserver: mvcc error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)


class InvalidArgumentError(MvccError):
    code = CODE_INVALID_ARGUMENT
    default_message = "etcdserver: invalid argument"


class EmptyKeyError(InvalidArgumentError):
    default_message = "etcdserver: key is not provided"


class KeyNotFoundError(InvalidArgumentError):
    """``ignore_value`` or ``ignore_lease`` on a key that does not exist."""

    default_message = "etcdserver: key not found"


class ValueProvidedError(InvalidArgumentError):
    default_message = "etcdserver: value is provided"


class LeaseProvidedError(InvalidArgumentError):
    default_message = "etcdserver: lease is provided"


class LeaseNotFoundError(MvccError):
    code = CODE_NOT_FOUND
    default_message = "etcdserver: requested lease not found"


class LeaseExistsError(MvccError):
    code = CODE_FAILED_PRECONDITION
    default_message = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(MvccError):
    code = CODE_OUT_OF_RANGE
    default_message = "etcdserver: too large lease TTL"


class DuplicateKeyError(InvalidArgumentError):
    default_message = "etcdserver: duplicate key given in txn request"


class TooManyOpsError(InvalidArgumentError):
    default_message = "etcdserver: too many operations in txn request"


class RequestTooLargeError(InvalidArgumentError):
    default_message = "etcdserver: request is too large"


class CompactedError(MvccError):
    """The revision asked for is older than the compacted revision ``compact_revision``."""

    code = CODE_OUT_OF_RANGE
    default_message = "etcdserver: mvcc: required revision has been compacted"

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__()


class FutureRevisionError(MvccError):
    code = CODE_OUT_OF_RANGE
    default_message = "etcdserver: mvcc: required revision is a future revision"


class SnapshotError(MvccError):
    """A snapshot handed to ``restore`` is malformed or breaks an invariant of the store."""

    code = CODE_INTERNAL
    default_message = "mvcc: corrupt snapshot"
