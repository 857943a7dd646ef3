"""The wire form of the store's write commands, as they travel through the Raft log.

A command is one msgpack array ``[FORMAT, tag, *fields]``; an op nested in a txn is
``[tag, *fields]``. Booleans of a request are packed into one ``flags`` integer, enums are
their integer values, bytes are msgpack ``bin``. The layout per tag:

* ``RANGE`` (only inside a txn): key, range_end, limit, revision, sort_order, sort_target,
  flags (keys_only=1, count_only=2), min_mod, max_mod, min_create, max_create revisions
* ``PUT``: key, value, lease, flags (prev_kv=1, ignore_value=2, ignore_lease=4)
* ``DELETE``: key, range_end, flags (prev_kv=1)
* ``TXN``: compares, success ops, failure ops; a compare is
  ``[key, target, result, operand, range_end]``
* ``COMPACT``: revision
* ``LEASE_GRANT``: id (0: the machine chooses), ttl
* ``LEASE_REVOKE``: id
* ``LEASE_CHECKPOINT``: an array of ``[id, remaining_ttl]`` pairs

The lease commands are top-level only, never inside a txn. They were added without bumping
:data:`COMMAND_FORMAT`: they use new tags, so every older entry decodes as before.

Decoding is strict: anything that is not exactly this shape, with integers in int64 and
enum values known, raises :class:`ValueError` and nothing else. Whether a well-formed request
makes sense (an empty key, a duplicate key in a txn...) is for the store to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from kvdisco.mvcc.kvstore import (
    Compare,
    CompareResult,
    CompareTarget,
    RequestDeleteRange,
    RequestOp,
    RequestPut,
    RequestRange,
    RequestTxn,
    SortOrder,
    SortTarget,
)
from kvdisco.mvcc.lessor import LeaseCheckpoint, LeaseGrant, LeaseRevoke
from kvdisco.mvcc.limits import TXN_OPS_MAX

__all__ = [
    "COMMAND_FORMAT",
    "Command",
    "LeaseCheckpoint",
    "LeaseGrant",
    "LeaseRevoke",
    "RequestCompact",
    "TXN_DEPTH_MAX",
    "decode_command",
    "encode_command",
]

#: Version tag, the first element of every command; bump it when the layout changes.
COMMAND_FORMAT = 1

#: Deepest txn nesting carried. The store gives a nested txn what its parent's longest list
#: left of TXN_OPS_MAX, so no valid request nests deeper than TXN_OPS_MAX + 1 levels.
TXN_DEPTH_MAX = TXN_OPS_MAX + 1

_TAG_RANGE = 0
_TAG_PUT = 1
_TAG_DELETE = 2
_TAG_TXN = 3
_TAG_COMPACT = 4
_TAG_LEASE_GRANT = 5
_TAG_LEASE_REVOKE = 6
_TAG_LEASE_CHECKPOINT = 7

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_RANGE_KEYS_ONLY = 1
_RANGE_COUNT_ONLY = 2
_PUT_PREV_KV = 1
_PUT_IGNORE_VALUE = 2
_PUT_IGNORE_LEASE = 4
_PUT_FLAGS = _PUT_PREV_KV | _PUT_IGNORE_VALUE | _PUT_IGNORE_LEASE
_DELETE_PREV_KV = 1

_SORT_ORDERS = {int(v): v for v in SortOrder}
_SORT_TARGETS = {int(v): v for v in SortTarget}
_COMPARE_TARGETS = {int(v): v for v in CompareTarget}
_COMPARE_RESULTS = {int(v): v for v in CompareResult}


@dataclass(frozen=True, slots=True)
class RequestCompact:
    """Forget the store's history older than ``revision`` (etcd's Compact)."""

    revision: int


Command = RequestPut | RequestDeleteRange | RequestTxn | RequestCompact | LeaseGrant | LeaseRevoke | LeaseCheckpoint


# --- encoding ---------------------------------------------------------------------------


def encode_command(req: Command) -> bytes:
    """The log entry bytes of ``req``. A request that cannot be carried raises ValueError."""
    if isinstance(req, RequestCompact):
        fields: list[Any] = [_TAG_COMPACT, _int_out(req.revision)]
    elif isinstance(req, LeaseGrant):
        fields = [_TAG_LEASE_GRANT, _int_out(req.id), _int_out(req.ttl)]
    elif isinstance(req, LeaseRevoke):
        fields = [_TAG_LEASE_REVOKE, _int_out(req.id)]
    elif isinstance(req, LeaseCheckpoint):
        if not isinstance(req.checkpoints, tuple):
            raise ValueError(f"checkpoints must be a tuple, got {type(req.checkpoints).__name__}")
        pairs = []
        for pair in req.checkpoints:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"a checkpoint is an (id, remaining_ttl) tuple, got {pair!r}")
            pairs.append([_int_out(pair[0]), _int_out(pair[1])])
        fields = [_TAG_LEASE_CHECKPOINT, pairs]
    elif isinstance(req, RequestPut | RequestDeleteRange | RequestTxn):
        fields = _encode_op(req, 1)
    else:
        raise ValueError(f"not a write command: {type(req).__name__}")
    data: bytes = msgpack.packb([COMMAND_FORMAT, *fields], use_bin_type=True)
    return data


def _bytes_out(value: object) -> bytes:
    if type(value) is not bytes:
        raise ValueError(f"expected bytes, got {type(value).__name__}")
    return value


def _int_out(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"expected an int64, got {value!r}")
    return int(value)


def _enum_out(value: object, known: dict[int, Any]) -> int:
    number = _int_out(value)
    if number not in known:
        raise ValueError(f"unknown enum value {value!r}")
    return number


def _flags_out(*bits: tuple[object, int]) -> int:
    flags = 0
    for value, bit in bits:
        if type(value) is not bool:
            raise ValueError(f"expected a bool, got {value!r}")
        if value:
            flags |= bit
    return flags


def _encode_op(op: object, depth: int) -> list[Any]:
    if isinstance(op, RequestRange):
        return [
            _TAG_RANGE,
            _bytes_out(op.key),
            _bytes_out(op.range_end),
            _int_out(op.limit),
            _int_out(op.revision),
            _enum_out(op.sort_order, _SORT_ORDERS),
            _enum_out(op.sort_target, _SORT_TARGETS),
            _flags_out((op.keys_only, _RANGE_KEYS_ONLY), (op.count_only, _RANGE_COUNT_ONLY)),
            _int_out(op.min_mod_revision),
            _int_out(op.max_mod_revision),
            _int_out(op.min_create_revision),
            _int_out(op.max_create_revision),
        ]
    if isinstance(op, RequestPut):
        flags = _flags_out(
            (op.prev_kv, _PUT_PREV_KV), (op.ignore_value, _PUT_IGNORE_VALUE), (op.ignore_lease, _PUT_IGNORE_LEASE)
        )
        return [_TAG_PUT, _bytes_out(op.key), _bytes_out(op.value), _int_out(op.lease), flags]
    if isinstance(op, RequestDeleteRange):
        return [_TAG_DELETE, _bytes_out(op.key), _bytes_out(op.range_end), _flags_out((op.prev_kv, _DELETE_PREV_KV))]
    if isinstance(op, RequestTxn):
        if depth > TXN_DEPTH_MAX:
            raise ValueError(f"txn nested deeper than {TXN_DEPTH_MAX}")
        for part in (op.compares, op.success, op.failure):
            if not isinstance(part, tuple):
                raise ValueError(f"txn parts must be tuples, got {type(part).__name__}")
        return [
            _TAG_TXN,
            [_encode_compare(c) for c in op.compares],
            [_encode_op(o, depth + 1) for o in op.success],
            [_encode_op(o, depth + 1) for o in op.failure],
        ]
    raise ValueError(f"not a txn op: {type(op).__name__}")


def _encode_compare(c: object) -> list[Any]:
    if not isinstance(c, Compare):
        raise ValueError(f"not a Compare: {type(c).__name__}")
    target = _enum_out(c.target, _COMPARE_TARGETS)
    operand = _bytes_out(c.operand) if target == CompareTarget.VALUE else _int_out(c.operand)
    return [_bytes_out(c.key), target, _enum_out(c.result, _COMPARE_RESULTS), operand, _bytes_out(c.range_end)]


# --- decoding ---------------------------------------------------------------------------


def decode_command(data: bytes) -> Command:
    """The request ``data`` encodes. Anything malformed raises ValueError, never another error."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"a command is bytes, not {type(data).__name__}")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack documents that unpacking may raise beyond UnpackException
        raise ValueError(f"command is not msgpack: {exc!r}") from None
    top = _list_in(raw, "command")
    if len(top) < 2:
        raise ValueError("command too short")
    if type(top[0]) is not int or top[0] != COMMAND_FORMAT:
        raise ValueError(f"unknown command format {top[0]!r}")
    if top[1] == _TAG_PUT and type(top[1]) is int and len(top) == 6:  # the most common command, first
        return _decode_put(top[2], top[3], top[4], top[5])
    if type(top[1]) is int and top[1] == _TAG_COMPACT:
        if len(top) != 3:
            raise ValueError("compact takes exactly one field")
        return RequestCompact(_int_in(top[2]))
    if type(top[1]) is int and top[1] == _TAG_LEASE_GRANT:
        lease_id, ttl = _fields(top[1:], 2, "lease grant")
        return LeaseGrant(_int_in(lease_id), _int_in(ttl))
    if type(top[1]) is int and top[1] == _TAG_LEASE_REVOKE:
        (lease_id,) = _fields(top[1:], 1, "lease revoke")
        return LeaseRevoke(_int_in(lease_id))
    if type(top[1]) is int and top[1] == _TAG_LEASE_CHECKPOINT:
        (raw_pairs,) = _fields(top[1:], 1, "lease checkpoint")
        return LeaseCheckpoint(tuple(_decode_checkpoint(p) for p in _list_in(raw_pairs, "checkpoints")))
    op = _decode_op(top[1:], 1)
    if isinstance(op, RequestRange):
        raise ValueError("a range is not a write command; it may only appear inside a txn")
    return op


def _decode_checkpoint(raw: object) -> tuple[int, int]:
    pair = _list_in(raw, "checkpoint")
    if len(pair) != 2:
        raise ValueError(f"a checkpoint takes 2 fields, got {len(pair)}")
    return _int_in(pair[0]), _int_in(pair[1])


def _list_in(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        raise ValueError(f"{what} must be an array, got {type(value).__name__}")
    return value


def _bytes_in(value: object) -> bytes:
    if type(value) is not bytes:
        raise ValueError(f"expected bin, got {type(value).__name__}")
    return value


def _int_in(value: object) -> int:
    if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"expected an int64, got {value!r}")
    return value


def _enum_in(value: object, known: dict[int, Any]) -> Any:
    if type(value) is not int or value not in known:
        raise ValueError(f"unknown enum value {value!r}")
    return known[value]


def _flags_in(value: object, mask: int) -> int:
    if type(value) is not int or value & ~mask or value < 0:
        raise ValueError(f"bad flags {value!r}")
    return value


def _fields(raw: list[Any], count: int, what: str) -> list[Any]:
    if len(raw) != count + 1:
        raise ValueError(f"{what} takes {count} fields, got {len(raw) - 1}")
    return raw[1:]


def _decode_op(raw: list[Any], depth: int) -> RequestOp:
    tag = raw[0] if raw else None
    if type(tag) is not int:
        raise ValueError(f"bad op tag {tag!r}")
    if tag == _TAG_PUT:  # most ops of a txn, first
        if len(raw) != 5:
            raise ValueError(f"put takes 4 fields, got {len(raw) - 1}")
        return _decode_put(raw[1], raw[2], raw[3], raw[4])
    if tag == _TAG_RANGE:
        key, end, limit, rev, order, target, flags, min_mod, max_mod, min_cr, max_cr = _fields(raw, 11, "range")
        bits = _flags_in(flags, _RANGE_KEYS_ONLY | _RANGE_COUNT_ONLY)
        return RequestRange(
            _bytes_in(key),
            _bytes_in(end),
            _int_in(limit),
            _int_in(rev),
            _enum_in(order, _SORT_ORDERS),
            _enum_in(target, _SORT_TARGETS),
            bool(bits & _RANGE_KEYS_ONLY),
            bool(bits & _RANGE_COUNT_ONLY),
            _int_in(min_mod),
            _int_in(max_mod),
            _int_in(min_cr),
            _int_in(max_cr),
        )
    if tag == _TAG_DELETE:
        key, end, flags = _fields(raw, 3, "delete")
        bits = _flags_in(flags, _DELETE_PREV_KV)
        return RequestDeleteRange(_bytes_in(key), _bytes_in(end), bool(bits & _DELETE_PREV_KV))
    if tag == _TAG_TXN:
        if depth > TXN_DEPTH_MAX:
            raise ValueError(f"txn nested deeper than {TXN_DEPTH_MAX}")
        compares, success, failure = _fields(raw, 3, "txn")
        return RequestTxn(
            tuple(_decode_compare(c) for c in _list_in(compares, "compares")),
            tuple(_decode_op(_list_in(o, "op"), depth + 1) for o in _list_in(success, "success")),
            tuple(_decode_op(_list_in(o, "op"), depth + 1) for o in _list_in(failure, "failure")),
        )
    raise ValueError(f"unknown op tag {tag!r}")


def _decode_put(key: object, value: object, lease: object, flags: object) -> RequestPut:
    """A put's fields, checked as _bytes_in, _int_in and _flags_in would, inline: puts are most of the log."""
    if type(key) is not bytes or type(value) is not bytes:
        raise ValueError(f"expected bin, got {type(key if type(key) is not bytes else value).__name__}")
    if type(lease) is not int or not _INT64_MIN <= lease <= _INT64_MAX:
        raise ValueError(f"expected an int64, got {lease!r}")
    if type(flags) is not int or flags & ~_PUT_FLAGS or flags < 0:
        raise ValueError(f"bad flags {flags!r}")
    if not flags:
        return RequestPut(key, value, lease)
    return RequestPut(
        key, value, lease, bool(flags & _PUT_PREV_KV), bool(flags & _PUT_IGNORE_VALUE), bool(flags & _PUT_IGNORE_LEASE)
    )


def _decode_compare(raw: object) -> Compare:
    fields = _list_in(raw, "compare")
    if len(fields) != 5:
        raise ValueError(f"a compare takes 5 fields, got {len(fields)}")
    key, target, result, operand, end = fields
    t = _enum_in(target, _COMPARE_TARGETS)
    op: int | bytes = _bytes_in(operand) if t == CompareTarget.VALUE else _int_in(operand)
    return Compare(_bytes_in(key), t, _enum_in(result, _COMPARE_RESULTS), op, _bytes_in(end))
