"""kvdisco's Python client: async, typed, and explicit about failures.

It speaks the etcd v3 JSON gateway over HTTP, so it works against kvdisco and against etcd 3.4+.
It imports only aiohttp and the standard library, never kvdisco's server packages, so an
application can depend on it without the server.

    async with Client(endpoints=["http://127.0.0.1:2379"]) as c:
        await c.put("k", "v")
        (await c.get("k")).kvs[0].value  # b"v"

See ``Client`` for which calls are retried, ``Lease`` for how a lost lease is reported, ``Watch``
for resumption, and ``recipes`` for locks and elections (with fencing tokens).
"""

from ._client import DEFAULT_ENDPOINT, Client
from ._errors import (
    AlreadyExistsError,
    CompactedError,
    ConnectionFailedError,
    DeadlineExceededError,
    FailedPreconditionError,
    FutureRevisionError,
    IndeterminateError,
    InvalidArgumentError,
    KvdiscoError,
    LeaseLostError,
    LeaseNotFoundError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    WatchCanceledError,
)
from ._lease import Lease, LeaseGuard
from ._txn import Compare, CompareTarget, Op, SortOrder, SortTarget, Txn, delete, get, put
from ._types import (
    DeleteResult,
    Event,
    EventType,
    GetResult,
    Header,
    Key,
    KeyValue,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseTimeToLive,
    Member,
    MemberAddResult,
    PutResult,
    Status,
    TxnResult,
    WatchBatch,
    prefix_end,
)
from ._watch import Watch

__all__ = [
    "DEFAULT_ENDPOINT",
    "AlreadyExistsError",
    "Client",
    "CompactedError",
    "Compare",
    "CompareTarget",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "DeleteResult",
    "Event",
    "EventType",
    "FailedPreconditionError",
    "FutureRevisionError",
    "GetResult",
    "Header",
    "IndeterminateError",
    "InvalidArgumentError",
    "Key",
    "KeyValue",
    "KvdiscoError",
    "Lease",
    "LeaseGrant",
    "LeaseGuard",
    "LeaseKeepAlive",
    "LeaseLostError",
    "LeaseNotFoundError",
    "LeaseTimeToLive",
    "Member",
    "MemberAddResult",
    "NotFoundError",
    "Op",
    "OutOfRangeError",
    "PermissionDeniedError",
    "PutResult",
    "ResourceExhaustedError",
    "SortOrder",
    "SortTarget",
    "Status",
    "Txn",
    "TxnResult",
    "UnauthenticatedError",
    "UnavailableError",
    "Watch",
    "WatchBatch",
    "WatchCanceledError",
    "delete",
    "get",
    "prefix_end",
    "put",
]
