"""The etcd v3 JSON gateway codec: request bodies to store requests, results to etcd-shaped JSON.

Why a separate, pure module: every byte a client sends crosses here first, so this is where
remote garbage must become a clean :class:`BadRequest` (gRPC code 3, HTTP 400) and nothing
else, and where kvdisco must answer byte-for-byte in the shape etcd's grpc-gateway does, so
that curl scripts and gateway clients written against etcd work unchanged. No I/O: the aiohttp
handlers call these functions; the tests drive them directly.

What etcd 3.4.23's gateway does (observed with curl), and what kvdisco does:

=============================  ===========================================  ==========================
request input                  etcd 3.4                                     kvdisco
=============================  ===========================================  ==========================
field spellings                snake_case and lowerCamel (``range_end``,    same; lease fields only
                               ``rangeEnd``); lease fields only ``ID``,     ``ID``/``TTL``
                               ``TTL`` (``id``/``ttl`` silently ignored!)
unknown field                  silently ignored                             400 ``unknown field "x"``
same field twice (both         last one wins                                400 ``given twice``
spellings)
``null`` value                 as if absent                                 same
empty body, ``null`` body      as ``{}``                                    same
non-object body (``[1]``)      400 ``json: cannot unmarshal array ...``     400
malformed JSON                 400 ``unexpected EOF``                       400 ``malformed JSON``
trailing data after object     ignored                                      400 (malformed JSON)
bytes                          std base64 with padding; ``\\r\\n`` ignored;  same
                               url-safe/unpadded/spaces: 400 ``illegal
                               base64 data at input byte N``
int64                          JSON integer or decimal string (``"5"``,     same, but a negative
                               ``" 5"``, ``"-1"``); 1.0, 1e0, ``"+1"``,      limit, revision, min/max
                               ``"01"``, true, out of int64: 400            filter, start_revision,
                                                                            watch_id or granted lease
                                                                            ID is 400 (etcd: as 0, or
                                                                            grants lease -7)
bool                           JSON true/false only                         same
enum                           name (case-sensitive) or JSON integer;       same, unknown integers
                               ``"2"`` or unknown name: 400 ``unknown       too (etcd passes them on)
                               value "X" for enum ...``
txn op / watch request         a oneof: several members, the last wins;     exactly one member
                               none: odd server errors                      else 400
compare operand                field must match target, else compared to 0  mismatch: 400; absent: 0
=============================  ===========================================  ==========================

Errors are ``{"error": msg, "message": msg, "code": grpc_code}``. HTTP statuses (grpc-gateway v1
as vendored by etcd 3.4; 3, 5, 9, 11 observed): see :data:`HTTP_STATUS_BY_CODE`. On the
streaming endpoints (watch, keepalive) etcd answers a bad body with code 2 and HTTP 500;
kvdisco uses code 3 / 400 there too.

Responses: snake_case except lease (``ID``, ``TTL``, ``grantedTTL``), status (``dbSize``,
``raftIndex``...) and members (``ID``, ``peerURLs``, ``clientURLs``, ``isLearner``), whose proto
field names are spelled that way. int64/uint64 are decimal strings; every zero-valued field
(0, "", false, empty list, empty message) is left out: no ``"more": false``, no ``"type"`` on a
PUT event, no ``"succeeded"`` on a failed txn, no ``watch_id`` 0, no ``revision`` in the member
list header. Ops inside a txn carry a header holding only ``revision``; a nested txn's header is
``{}``. Streams (watch, keepalive) send one ``{"result": {...}}`` per line; several request
objects may follow each other in one body. A keepalive of an unknown lease answers
``{"result": {"header", "ID"}}`` (TTL 0, left out); timetolive of an unknown lease answers
``"TTL": "-1"`` and no ``grantedTTL``. A watch of an empty range answers ``watch_id "-1"``,
created and canceled with ``cancel_reason``; a watch from a compacted revision answers created,
then canceled with ``compact_revision``; a progress request answers ``watch_id "-1"``.

Whether a well-formed request makes sense (an empty key, a duplicate key in a txn, a lease that
does not exist) is for the store to say, with etcd's messages; only shape is checked here, plus
the txn op limit, so that parsing is bounded.
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from kvdisco.mvcc.commands import RequestCompact
from kvdisco.mvcc.errors import CODE_INVALID_ARGUMENT, InvalidArgumentError, TooManyOpsError
from kvdisco.mvcc.kvstore import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    LeaseGrantResult,
    PutResult,
    RangeResult,
    RequestDeleteRange,
    RequestOp,
    RequestPut,
    RequestRange,
    RequestTxn,
    SortOrder,
    SortTarget,
    TxnResult,
)
from kvdisco.mvcc.lessor import LeaseGrant
from kvdisco.mvcc.limits import TXN_OPS_MAX

__all__ = [
    "HTTP_STATUS_BY_CODE",
    "BadRequest",
    "Member",
    "WatchCancel",
    "WatchCreate",
    "WatchProgress",
    "WatchRequest",
    "compaction_response",
    "delete_range_response",
    "dumps",
    "error_body",
    "event_json",
    "header",
    "kv_json",
    "lease_grant_response",
    "lease_keepalive_response",
    "lease_leases_response",
    "lease_revoke_response",
    "lease_timetolive_response",
    "loads",
    "member_json",
    "member_list_response",
    "parse_compaction",
    "parse_delete_range",
    "parse_empty",
    "parse_lease_grant",
    "parse_lease_id",
    "parse_lease_timetolive",
    "parse_member_list",
    "parse_put",
    "parse_range",
    "parse_txn",
    "parse_watch_request",
    "put_response",
    "range_response",
    "status_response",
    "txn_response",
    "watch_response",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

#: HTTP status per gRPC code, as etcd 3.4's grpc-gateway (v1) maps them; any other code is 500.
HTTP_STATUS_BY_CODE: Mapping[int, int] = {
    0: 200,  # OK
    1: 408,  # Canceled
    2: 500,  # Unknown
    3: 400,  # InvalidArgument (observed)
    4: 504,  # DeadlineExceeded
    5: 404,  # NotFound (observed: lease not found)
    6: 409,  # AlreadyExists
    7: 403,  # PermissionDenied
    8: 429,  # ResourceExhausted
    9: 412,  # FailedPrecondition (observed: lease already exists)
    10: 409,  # Aborted
    11: 400,  # OutOfRange (observed: compacted / future revision)
    12: 501,  # Unimplemented
    13: 500,  # Internal
    14: 503,  # Unavailable
    15: 500,  # DataLoss
    16: 401,  # Unauthenticated
}

# A decimal int64 as etcd takes it inside a JSON string: optional minus, no leading zeros,
# JSON whitespace around it. 20 characters hold every int64, so longer strings are refused
# before int() sees them.
_INT_STRING = re.compile(r"[ \t\n\r]*(-?(?:0|[1-9][0-9]*))[ \t\n\r]*")
_INT_STRING_CHARS_MAX = 64
#: Longest JSON array looked at; longer lists of txn ops are refused by the op limit anyway.
_LIST_ITEMS_MAX = 1 << 20
# Standard base64 with padding, once CR and LF are removed (Go's decoder skips them).
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class BadRequest(Exception):
    """The client sent something that is not a valid request: gRPC InvalidArgument, HTTP 400."""

    code: int = CODE_INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


# --- JSON in and out ------------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, keys in insertion order (the proto field order etcd prints)."""
    return orjson.dumps(obj)


def loads(body: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """One JSON object. An empty or ``null`` body is ``{}`` (etcd's gateway does the same)."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not bytes(body).strip(b" \t\n\r"):
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, got {_kind(value)}")
    return value


def error_body(code: int, message: str) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, body)`` of an error, as etcd's gateway answers it."""
    return HTTP_STATUS_BY_CODE.get(code, 500), {"error": message, "message": message, "code": code}


# --- field access ---------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class _Schema:
    """The field names of one request message: canonical snake_case and their lowerCamel twins."""

    def __init__(self, what: str, names: Iterable[str]) -> None:
        self.what = what
        self.names = tuple(names)
        self.aliases = {spelling: name for name in self.names for spelling in (name, _camel(name))}
        self.folded = {spelling.lower(): spelling for spelling in self.aliases}

    def fields(self, body: object) -> dict[str, Any]:
        """Non-null fields of ``body`` by canonical name; an unknown or repeated field is refused."""
        if not isinstance(body, Mapping):
            raise BadRequest(f"{self.what} must be a JSON object, got {_kind(body)}")
        out: dict[str, Any] = {}
        seen: set[str] = set()
        for spelling, value in body.items():
            name = self.aliases.get(spelling) if isinstance(spelling, str) else None
            if name is None:
                raise BadRequest(f"unknown field {_show(spelling)} in {self.what}{self._hint(spelling)}")
            if name in seen:
                raise BadRequest(f"field {name!r} given twice in {self.what}")
            seen.add(name)
            if value is not None:
                out[name] = value
        return out

    def _hint(self, spelling: object) -> str:
        if isinstance(spelling, str) and spelling.lower() in self.folded:
            return f' (did you mean "{self.folded[spelling.lower()]}"?)'
        return ""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value[:40] + ('..."' if len(value) > 40 else '"')
    return text[:60]


def _bytes(fields: Mapping[str, Any], name: str) -> bytes:
    value = fields.get(name)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise BadRequest(f"{name}: expected a base64 string, got {_kind(value)}")
    text = value.replace("\r", "").replace("\n", "")
    if not _BASE64.fullmatch(text):
        raise BadRequest(f"{name}: illegal base64 data (standard alphabet with padding expected)")
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):  # the pattern admits neither; kept as a guard
        raise BadRequest(f"{name}: illegal base64 data") from None


def _int64(fields: Mapping[str, Any], name: str, *, minimum: int = _INT64_MIN) -> int:
    value = fields.get(name)
    if value is None:
        return 0
    number: int
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest(f"{name}: expected an integer or a decimal string, got {_kind(value)}")
    if isinstance(value, str):
        match = _INT_STRING.fullmatch(value) if len(value) <= _INT_STRING_CHARS_MAX else None
        if match is None:
            raise BadRequest(f"{name}: {_show(value)} is not a decimal integer")
        number = int(match.group(1))
    else:
        number = int(value)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise BadRequest(f"{name}: {number} is out of the int64 range")
    if number < minimum:
        raise BadRequest(f"{name}: must not be below {minimum}, got {number}")
    return number


def _bool(fields: Mapping[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: expected true or false, got {_kind(value)}")
    return value


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(value: object, kind: type[_E], what: str, name: str) -> _E:
    """An enum given by name or by number; anything else, or an unknown one, is refused."""
    if isinstance(value, str) and value in kind.__members__:
        return kind[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in kind._value2member_map_:
        return kind(value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        known = ", ".join(kind.__members__)
        raise BadRequest(f"{name}: unknown value {_show(value)} for enum {what} (known: {known})")
    raise BadRequest(f"{name}: expected an enum name or number, got {_kind(value)}")


def _enum_field(fields: Mapping[str, Any], name: str, kind: type[_E], what: str) -> _E:
    value = fields.get(name)
    return kind(0) if value is None else _enum(value, kind, what, name)


def _list(fields: Mapping[str, Any], name: str, items_max: int) -> list[Any]:
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{name}: expected an array, got {_kind(value)}")
    if len(value) > items_max:
        raise BadRequest(f"{name}: at most {items_max} items, got {len(value)}")
    return list(value)


# --- KV requests ----------------------------------------------------------------------------

_RANGE = _Schema(
    "RangeRequest",
    (
        "key",
        "range_end",
        "limit",
        "revision",
        "sort_order",
        "sort_target",
        "serializable",
        "keys_only",
        "count_only",
        "min_mod_revision",
        "max_mod_revision",
        "min_create_revision",
        "max_create_revision",
    ),
)
_PUT = _Schema("PutRequest", ("key", "value", "lease", "prev_kv", "ignore_value", "ignore_lease"))
_DELETE = _Schema("DeleteRangeRequest", ("key", "range_end", "prev_kv"))
_TXN = _Schema("TxnRequest", ("compare", "success", "failure"))
_COMPARE = _Schema(
    "Compare",
    ("result", "target", "key", "range_end", "version", "create_revision", "mod_revision", "value", "lease"),
)
_OP = _Schema("RequestOp", ("request_range", "request_put", "request_delete_range", "request_txn"))
_COMPACTION = _Schema("CompactionRequest", ("revision", "physical"))

#: The operand field each compare target reads.
_OPERAND_OF = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}


def parse_range(body: Mapping[str, Any]) -> tuple[RequestRange, bool]:
    """``(request, serializable)`` of a ``/v3/kv/range`` body."""
    f = _RANGE.fields(body)
    return _range(f), _bool(f, "serializable")


def _range(f: Mapping[str, Any]) -> RequestRange:
    return RequestRange(
        key=_bytes(f, "key"),
        range_end=_bytes(f, "range_end"),
        limit=_int64(f, "limit", minimum=0),
        revision=_int64(f, "revision", minimum=0),
        sort_order=_enum_field(f, "sort_order", SortOrder, "RangeRequest.SortOrder"),
        sort_target=_enum_field(f, "sort_target", SortTarget, "RangeRequest.SortTarget"),
        keys_only=_bool(f, "keys_only"),
        count_only=_bool(f, "count_only"),
        min_mod_revision=_int64(f, "min_mod_revision", minimum=0),
        max_mod_revision=_int64(f, "max_mod_revision", minimum=0),
        min_create_revision=_int64(f, "min_create_revision", minimum=0),
        max_create_revision=_int64(f, "max_create_revision", minimum=0),
    )


def parse_put(body: Mapping[str, Any]) -> RequestPut:
    f = _PUT.fields(body)
    return RequestPut(
        key=_bytes(f, "key"),
        value=_bytes(f, "value"),
        lease=_int64(f, "lease"),
        prev_kv=_bool(f, "prev_kv"),
        ignore_value=_bool(f, "ignore_value"),
        ignore_lease=_bool(f, "ignore_lease"),
    )


def parse_delete_range(body: Mapping[str, Any]) -> RequestDeleteRange:
    f = _DELETE.fields(body)
    return RequestDeleteRange(key=_bytes(f, "key"), range_end=_bytes(f, "range_end"), prev_kv=_bool(f, "prev_kv"))


def parse_txn(body: Mapping[str, Any]) -> RequestTxn:
    """A ``/v3/kv/txn`` body, nested txns included.

    Bounded as etcd bounds it: each of compare/success/failure holds at most
    :data:`TXN_OPS_MAX` items and a nested txn gets what its parent's longest list left, so
    nesting ends after at most ``TXN_OPS_MAX`` levels. Lengths are checked before items are.
    """
    return _txn(body, TXN_OPS_MAX)


def _txn(body: object, ops_max: int) -> RequestTxn:
    f = _TXN.fields(body)
    compare, success, failure = (_list(f, name, _LIST_ITEMS_MAX) for name in ("compare", "success", "failure"))
    longest = max(len(compare), len(success), len(failure))
    if longest > ops_max:
        raise BadRequest(TooManyOpsError.default_message)
    rest = ops_max - longest
    return RequestTxn(
        compares=tuple(_compare(c) for c in compare),
        success=tuple(_op(o, rest) for o in success),
        failure=tuple(_op(o, rest) for o in failure),
    )


def _compare(body: object) -> Compare:
    f = _COMPARE.fields(body)
    target = _enum_field(f, "target", CompareTarget, "Compare.CompareTarget")
    result = _enum_field(f, "result", CompareResult, "Compare.CompareResult")
    wanted = _OPERAND_OF[target]
    given = [name for name in _OPERAND_OF.values() if name in f]
    if given and given != [wanted]:
        raise BadRequest(f"compare with target {target.name} takes its operand in {wanted!r}, got {given}")
    operand: int | bytes = _bytes(f, wanted) if target == CompareTarget.VALUE else _int64(f, wanted)
    try:
        return Compare(_bytes(f, "key"), target, result, operand, _bytes(f, "range_end"))
    except InvalidArgumentError as exc:  # cannot happen after the checks above; kept as a guard
        raise BadRequest(exc.message) from None


def _op(body: object, ops_max: int) -> RequestOp:
    f = _OP.fields(body)
    if len(f) != 1:
        raise BadRequest(f"RequestOp must hold exactly one of {', '.join(_OP.names)}, got {sorted(f) or 'none'}")
    ((name, inner),) = f.items()
    if name == "request_range":
        return _range(_RANGE.fields(inner))  # serializable is the txn's business; ignored here
    if name == "request_put":
        return parse_put(inner)
    if name == "request_delete_range":
        return parse_delete_range(inner)
    return _txn(inner, ops_max)


def parse_compaction(body: Mapping[str, Any]) -> RequestCompact:
    """``physical`` (wait until the compaction is on disk) is checked and dropped: kvdisco's
    compaction is complete once applied, so every compaction is physical."""
    f = _COMPACTION.fields(body)
    _bool(f, "physical")
    return RequestCompact(_int64(f, "revision", minimum=0))


# --- leases, maintenance, cluster -----------------------------------------------------------

_LEASE_GRANT = _Schema("LeaseGrantRequest", ("TTL", "ID"))
_LEASE_ID = _Schema("LeaseRequest", ("ID",))
_LEASE_TTL = _Schema("LeaseTimeToLiveRequest", ("ID", "keys"))
_MEMBER_LIST = _Schema("MemberListRequest", ("linearizable",))


def parse_lease_grant(body: Mapping[str, Any]) -> LeaseGrant:
    """``{"TTL", "ID"}``; ID 0 or absent lets the server choose. etcd allows a negative ID; kvdisco not."""
    f = _LEASE_GRANT.fields(body)
    return LeaseGrant(id=_int64(f, "ID", minimum=0), ttl=_int64(f, "TTL"))


def parse_lease_id(body: Mapping[str, Any]) -> int:
    """The ``ID`` of a revoke or keepalive body."""
    return _int64(_LEASE_ID.fields(body), "ID")


def parse_lease_timetolive(body: Mapping[str, Any]) -> tuple[int, bool]:
    """``(lease id, keys)``."""
    f = _LEASE_TTL.fields(body)
    return _int64(f, "ID"), _bool(f, "keys")


def parse_empty(body: Mapping[str, Any], what: str) -> None:
    """A body that takes no field (lease leases, maintenance status): ``{}``, empty or null."""
    _Schema(what, ()).fields(body)


def parse_member_list(body: Mapping[str, Any]) -> bool:
    """``linearizable`` of a member list body (etcd 3.5's field; 3.4 has none)."""
    return _bool(_MEMBER_LIST.fields(body), "linearizable")


# --- watch ----------------------------------------------------------------------------------


class _FilterType(enum.IntEnum):
    NOPUT = 0
    NODELETE = 1


@dataclass(frozen=True, slots=True)
class WatchCreate:
    key: bytes
    range_end: bytes = b""
    #: First revision to send, inclusive; 0: the current revision + 1.
    start_revision: int = 0
    prev_kv: bool = False
    progress_notify: bool = False
    #: Event types to leave out: "NOPUT", "NODELETE".
    filters: frozenset[str] = frozenset()
    #: 0: the server picks the id.
    watch_id: int = 0
    fragment: bool = False


@dataclass(frozen=True, slots=True)
class WatchCancel:
    watch_id: int


@dataclass(frozen=True, slots=True)
class WatchProgress:
    pass


WatchRequest = WatchCreate | WatchCancel | WatchProgress

#: etcd lets a filter repeat; a few repeats are fine, a long list is garbage.
_FILTERS_MAX = 16

_WATCH = _Schema("WatchRequest", ("create_request", "cancel_request", "progress_request"))
_WATCH_CREATE = _Schema(
    "WatchCreateRequest",
    ("key", "range_end", "start_revision", "progress_notify", "filters", "prev_kv", "watch_id", "fragment"),
)
_WATCH_CANCEL = _Schema("WatchCancelRequest", ("watch_id",))
_WATCH_PROGRESS = _Schema("WatchProgressRequest", ())


def parse_watch_request(body: Mapping[str, Any]) -> WatchRequest:
    """One request object of the ``/v3/watch`` stream; it must hold exactly one of its three kinds."""
    f = _WATCH.fields(body)
    if len(f) != 1:
        raise BadRequest(f"WatchRequest must hold exactly one of {', '.join(_WATCH.names)}, got {sorted(f) or 'none'}")
    ((name, inner),) = f.items()
    if name == "create_request":
        c = _WATCH_CREATE.fields(inner)
        filters = _list(c, "filters", _FILTERS_MAX)
        return WatchCreate(
            key=_bytes(c, "key"),
            range_end=_bytes(c, "range_end"),
            start_revision=_int64(c, "start_revision", minimum=0),
            prev_kv=_bool(c, "prev_kv"),
            progress_notify=_bool(c, "progress_notify"),
            filters=frozenset(_enum(v, _FilterType, "WatchCreateRequest.FilterType", "filters").name for v in filters),
            watch_id=_int64(c, "watch_id", minimum=0),
            fragment=_bool(c, "fragment"),
        )
    if name == "cancel_request":
        return WatchCancel(_int64(_WATCH_CANCEL.fields(inner), "watch_id", minimum=0))
    _WATCH_PROGRESS.fields(inner)
    return WatchProgress()


# --- responses ------------------------------------------------------------------------------


def _put_int(out: dict[str, Any], name: str, value: int) -> None:
    if value:
        out[name] = str(value)


def header(cluster_id: int, member_id: int, revision: int, raft_term: int) -> dict[str, Any]:
    """etcd's ResponseHeader; uint64 ids and int64 numbers as decimal strings, zeros left out."""
    if not (0 <= cluster_id <= _UINT64_MAX and 0 <= member_id <= _UINT64_MAX and 0 <= raft_term <= _UINT64_MAX):
        raise ValueError(f"header ids and term must be uint64: {cluster_id}, {member_id}, {raft_term}")
    out: dict[str, Any] = {}
    _put_int(out, "cluster_id", cluster_id)
    _put_int(out, "member_id", member_id)
    _put_int(out, "revision", revision)
    _put_int(out, "raft_term", raft_term)
    return out


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def kv_json(kv: KeyValue) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kv.key:
        out["key"] = _b64(kv.key)
    _put_int(out, "create_revision", kv.create_revision)
    _put_int(out, "mod_revision", kv.mod_revision)
    _put_int(out, "version", kv.version)
    if kv.value:
        out["value"] = _b64(kv.value)
    _put_int(out, "lease", kv.lease)
    return out


def event_json(ev: Event, prev_kv: bool) -> dict[str, Any]:
    """One watch event; ``prev_kv`` says whether the watcher asked for previous values."""
    out: dict[str, Any] = {}
    if ev.type != EventType.PUT:
        out["type"] = ev.type.name
    out["kv"] = kv_json(ev.kv)
    if prev_kv and ev.prev_kv is not None:
        out["prev_kv"] = kv_json(ev.prev_kv)
    return out


def _range_body(hdr: dict[str, Any], res: RangeResult) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    if res.kvs:
        out["kvs"] = [kv_json(kv) for kv in res.kvs]
    if res.more:
        out["more"] = True
    _put_int(out, "count", res.count)
    return out


def _put_body(hdr: dict[str, Any], res: PutResult) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    if res.prev_kv is not None:
        out["prev_kv"] = kv_json(res.prev_kv)
    return out


def _delete_body(hdr: dict[str, Any], res: DeleteResult) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    _put_int(out, "deleted", res.deleted)
    if res.prev_kvs:
        out["prev_kvs"] = [kv_json(kv) for kv in res.prev_kvs]
    return out


def _txn_body(hdr: dict[str, Any], res: TxnResult) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    if res.succeeded:
        out["succeeded"] = True
    if res.responses:
        out["responses"] = [_op_response(r) for r in res.responses]
    return out


def _op_response(res: RangeResult | PutResult | DeleteResult | TxnResult) -> dict[str, Any]:
    """A ResponseOp: ops in a txn carry a header with only their revision; a nested txn ``{}``."""
    sub: dict[str, Any] = {}
    if isinstance(res, TxnResult):
        return {"response_txn": _txn_body(sub, res)}
    _put_int(sub, "revision", res.revision)
    if isinstance(res, RangeResult):
        return {"response_range": _range_body(sub, res)}
    if isinstance(res, PutResult):
        return {"response_put": _put_body(sub, res)}
    return {"response_delete_range": _delete_body(sub, res)}


def range_response(hdr: dict[str, Any], res: RangeResult) -> dict[str, Any]:
    return _range_body(hdr, res)


def put_response(hdr: dict[str, Any], res: PutResult) -> dict[str, Any]:
    return _put_body(hdr, res)


def delete_range_response(hdr: dict[str, Any], res: DeleteResult) -> dict[str, Any]:
    return _delete_body(hdr, res)


def txn_response(hdr: dict[str, Any], res: TxnResult) -> dict[str, Any]:
    return _txn_body(hdr, res)


def compaction_response(hdr: dict[str, Any]) -> dict[str, Any]:
    return {"header": hdr}


def lease_grant_response(hdr: dict[str, Any], res: LeaseGrantResult) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    _put_int(out, "ID", res.id)
    _put_int(out, "TTL", res.ttl)
    return out


def lease_revoke_response(hdr: dict[str, Any]) -> dict[str, Any]:
    return {"header": hdr}


def lease_keepalive_response(hdr: dict[str, Any], lease_id: int, ttl: int) -> dict[str, Any]:
    """One line of the keepalive stream; ``ttl`` 0 (left out) says the lease does not exist."""
    out: dict[str, Any] = {"header": hdr}
    _put_int(out, "ID", lease_id)
    _put_int(out, "TTL", ttl)
    return {"result": out}


def lease_timetolive_response(
    hdr: dict[str, Any], lease_id: int, ttl: int, granted_ttl: int, keys: Sequence[bytes] | None
) -> dict[str, Any]:
    """``ttl`` -1 and ``granted_ttl`` 0 for an unknown lease, as etcd answers."""
    out: dict[str, Any] = {"header": hdr}
    _put_int(out, "ID", lease_id)
    _put_int(out, "TTL", ttl)
    _put_int(out, "grantedTTL", granted_ttl)
    if keys:
        out["keys"] = [_b64(k) for k in keys]
    return out


def lease_leases_response(hdr: dict[str, Any], ids: Iterable[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    leases = [{"ID": str(i)} for i in ids]
    if leases:
        out["leases"] = leases
    return out


def watch_response(
    hdr: dict[str, Any],
    watch_id: int,
    events: Sequence[Event] = (),
    *,
    prev_kv: bool = False,
    created: bool = False,
    canceled: bool = False,
    compact_revision: int = 0,
    cancel_reason: str = "",
    fragment: bool = False,
    encode_event: Callable[[Event, bool], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One line of the watch stream. A progress notification is ``watch_id`` -1 and no events.

    ``encode_event`` replaces :func:`event_json`, e.g. with a cache shared by the watchers of a member.

    A compaction cancel (``compact_revision`` set) is sent as etcd 3.4 sends it: no
    ``cancel_reason`` and no ``revision`` in the header (etcd's watch response for it carries
    revision 0), whatever the caller passes.
    """
    if compact_revision:
        hdr = {k: v for k, v in hdr.items() if k != "revision"}
        cancel_reason = ""
    out: dict[str, Any] = {"header": hdr}
    _put_int(out, "watch_id", watch_id)
    if created:
        out["created"] = True
    if canceled:
        out["canceled"] = True
    _put_int(out, "compact_revision", compact_revision)
    if cancel_reason:
        out["cancel_reason"] = cancel_reason
    if fragment:
        out["fragment"] = True
    if events:
        encode = encode_event or event_json
        out["events"] = [encode(ev, prev_kv) for ev in events]
    return {"result": out}


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False


def member_json(m: Member) -> dict[str, Any]:
    """One member as etcd lists it; empty fields left out (an added member not yet started has no name)."""
    item: dict[str, Any] = {}
    _put_int(item, "ID", m.id)
    if m.name:
        item["name"] = m.name
    if m.peer_urls:
        item["peerURLs"] = list(m.peer_urls)
    if m.client_urls:
        item["clientURLs"] = list(m.client_urls)
    if m.is_learner:
        item["isLearner"] = True
    return item


def member_list_response(hdr: dict[str, Any], members: Iterable[Member]) -> dict[str, Any]:
    """etcd leaves ``revision`` out of this header: pass revision 0 to :func:`header`."""
    out: dict[str, Any] = {"header": hdr}
    listed = [member_json(m) for m in members]
    if listed:
        out["members"] = listed
    return out


def status_response(
    hdr: dict[str, Any],
    *,
    version: str,
    db_size: int,
    leader: int,
    raft_index: int,
    raft_term: int,
    raft_applied_index: int,
    db_size_in_use: int,
    errors: Sequence[str] = (),
    is_learner: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {"header": hdr}
    if version:
        out["version"] = version
    _put_int(out, "dbSize", db_size)
    _put_int(out, "leader", leader)
    _put_int(out, "raftIndex", raft_index)
    _put_int(out, "raftTerm", raft_term)
    _put_int(out, "raftAppliedIndex", raft_applied_index)
    if errors:
        out["errors"] = list(errors)
    _put_int(out, "dbSizeInUse", db_size_in_use)
    if is_learner:
        out["isLearner"] = True
    return out
