"""One exception hierarchy for every failure the client can report, keyed by gRPC status code.

The gateway answers errors as ``{"error", "code", "message"}`` with the gRPC code of the failure,
so callers catch by meaning (``CompactedError``, ``LeaseNotFoundError``) instead of parsing strings.
Two errors come from the client itself, not the server, and they differ in what they promise:

* ``ConnectionFailedError``: no endpoint could be reached; nothing was sent, nothing was applied.
* ``IndeterminateError``: a write was sent but no answer came back; it may or may not have been
  applied. The client never retries such a write on its own (see ``Client`` for the rules).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "AlreadyExistsError",
    "CompactedError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FutureRevisionError",
    "IndeterminateError",
    "InvalidArgumentError",
    "KvdiscoError",
    "LeaseLostError",
    "LeaseNotFoundError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "WatchCanceledError",
    "error_from_body",
]

# gRPC status codes (google.golang.org/grpc/codes), the only numbers the gateway puts in "code".
CODE_UNKNOWN = 2
CODE_INVALID_ARGUMENT = 3
CODE_DEADLINE_EXCEEDED = 4
CODE_NOT_FOUND = 5
CODE_ALREADY_EXISTS = 6
CODE_PERMISSION_DENIED = 7
CODE_RESOURCE_EXHAUSTED = 8
CODE_FAILED_PRECONDITION = 9
CODE_OUT_OF_RANGE = 11
CODE_UNAVAILABLE = 14
CODE_UNAUTHENTICATED = 16

#: Unavailable (14) messages that etcd and kvdisco return *before* a proposal enters the log, so a
#: write that failed with one of them was certainly not applied and may be sent again ("leader
#: changed" comes from the ReadIndex round that precedes a proposal). Any other code-14 message
#: ("request timed out, possibly due to previous leader failure") may follow an applied write.
NOT_APPLIED_MESSAGES = frozenset(
    {
        "etcdserver: no leader",
        "etcdserver: leader changed",
        "etcdserver: not capable",
        "etcdserver: too many requests",
    }
)


class KvdiscoError(Exception):
    """Base of every client error: ``code`` is the gRPC status code, ``message`` the server's text."""

    default_code = CODE_UNKNOWN

    def __init__(self, code: int | None = None, message: str = "") -> None:
        self.code = self.default_code if code is None else code
        self.message = message
        super().__init__(f"{message} (code {self.code})")


class InvalidArgumentError(KvdiscoError):
    default_code = CODE_INVALID_ARGUMENT


class DeadlineExceededError(KvdiscoError):
    default_code = CODE_DEADLINE_EXCEEDED


class NotFoundError(KvdiscoError):
    default_code = CODE_NOT_FOUND


class LeaseNotFoundError(NotFoundError):
    """The lease does not exist: never granted, revoked, or expired."""


class AlreadyExistsError(KvdiscoError):
    default_code = CODE_ALREADY_EXISTS


class PermissionDeniedError(KvdiscoError):
    default_code = CODE_PERMISSION_DENIED


class ResourceExhaustedError(KvdiscoError):
    default_code = CODE_RESOURCE_EXHAUSTED


class FailedPreconditionError(KvdiscoError):
    default_code = CODE_FAILED_PRECONDITION


class OutOfRangeError(KvdiscoError):
    default_code = CODE_OUT_OF_RANGE


class CompactedError(OutOfRangeError):
    """The requested revision was compacted away: re-list at the current revision, then watch again.

    ``compact_revision`` is the oldest revision still available when the server says so (always for a
    watch; for a range only if the server adds it to the error), else ``None``.
    """

    def __init__(self, code: int | None = None, message: str = "", compact_revision: int | None = None) -> None:
        super().__init__(code, message)
        self.compact_revision = compact_revision


class FutureRevisionError(OutOfRangeError):
    """The requested revision is above the store's current revision."""


class UnavailableError(KvdiscoError):
    """The server could not serve the request now (no leader, timed out, shutting down).

    ``not_applied`` is true when the message proves a write was not applied (see
    ``NOT_APPLIED_MESSAGES``); only then may a non-idempotent call be sent again.
    """

    default_code = CODE_UNAVAILABLE

    @property
    def not_applied(self) -> bool:
        return self.message in NOT_APPLIED_MESSAGES


class ConnectionFailedError(UnavailableError):
    """No endpoint could be reached before the deadline; nothing was sent."""

    @property
    def not_applied(self) -> bool:
        return True


class IndeterminateError(KvdiscoError):
    """A non-idempotent request was sent and no answer came back: it may or may not have been applied."""

    default_code = CODE_UNAVAILABLE


class UnauthenticatedError(KvdiscoError):
    default_code = CODE_UNAUTHENTICATED


class LeaseLostError(KvdiscoError):
    """A lease held through ``Client.lease`` is gone (revoked, expired, or unrenewable past its TTL).

    Anything guarded by the lease (keys, locks, leadership) must be assumed lost too.
    """

    default_code = CODE_NOT_FOUND

    def __init__(self, lease_id: int, message: str) -> None:
        super().__init__(None, message)
        self.lease_id = lease_id


class WatchCanceledError(KvdiscoError):
    """The server canceled a watch for a reason other than compaction."""


_BY_CODE: dict[int, type[KvdiscoError]] = {
    CODE_INVALID_ARGUMENT: InvalidArgumentError,
    CODE_DEADLINE_EXCEEDED: DeadlineExceededError,
    CODE_NOT_FOUND: NotFoundError,
    CODE_ALREADY_EXISTS: AlreadyExistsError,
    CODE_PERMISSION_DENIED: PermissionDeniedError,
    CODE_RESOURCE_EXHAUSTED: ResourceExhaustedError,
    CODE_FAILED_PRECONDITION: FailedPreconditionError,
    CODE_OUT_OF_RANGE: OutOfRangeError,
    CODE_UNAVAILABLE: UnavailableError,
    CODE_UNAUTHENTICATED: UnauthenticatedError,
}

_HTTP_TO_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 412: 9, 429: 8, 503: 14, 504: 4}

_COMPACT_REV_RE = re.compile(r"compact(?:ed)?[ _]revision\D{0,4}(\d+)")


def error_from_code(code: int, message: str, body: dict[str, Any] | None = None) -> KvdiscoError:
    """The most specific exception for a gRPC code and server message."""
    if code == CODE_OUT_OF_RANGE or "revision has been compacted" in message:
        if "compacted" in message:
            rev: int | None = None
            if body is not None and int(body.get("compact_revision") or 0) > 0:
                rev = int(body.get("compact_revision") or 0)
            elif (m := _COMPACT_REV_RE.search(message)) is not None:
                rev = int(m.group(1))
            return CompactedError(code, message, rev)
        if "future revision" in message:
            return FutureRevisionError(code, message)
    if code == CODE_NOT_FOUND and "lease not found" in message:
        return LeaseNotFoundError(code, message)
    return _BY_CODE.get(code, KvdiscoError)(code, message)


def error_from_body(body: Any, http_status: int) -> KvdiscoError:
    """Map a gateway error body (``{"error","code","message"}``, or a stream's ``{"error":{...}}``)."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):  # grpc-gateway's shape for errors inside a stream
            body = inner
            code = int(inner.get("grpc_code") or inner.get("code") or CODE_UNKNOWN)
        else:
            code = int(body.get("code", _HTTP_TO_CODE.get(http_status, CODE_UNKNOWN)))
        message = str(body.get("message") or body.get("error") or f"HTTP {http_status}")
        return error_from_code(code, message, body)
    return error_from_code(_HTTP_TO_CODE.get(http_status, CODE_UNKNOWN), f"HTTP {http_status}: {body!r}"[:500])
