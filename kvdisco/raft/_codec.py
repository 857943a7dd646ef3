"""msgpack encoding of Raft data, shared by the WAL and the peer transport.

Records are positional arrays, not maps: they are smaller and faster to pack,
and the layout is versioned by the caller (WAL record kind, frame kind).
Decoding validates every field's type, because the bytes may come from a
misbehaving peer or a damaged disk; a bad record raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from ._messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    SnapshotMeta,
)

__all__ = [
    "decode_conf_change",
    "decode_hard_state",
    "decode_message",
    "decode_snapshot_meta",
    "encode_conf_change",
    "encode_hard_state",
    "encode_message",
    "encode_snapshot_meta",
    "entry_to_obj",
    "msgpack_bin_header",
    "obj_to_entry",
    "pack",
    "read_msgpack_bin_header",
    "unpack",
]

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    return _packer.pack(obj)


def unpack(data: bytes) -> Any:
    """Unpack one msgpack object; raises ValueError on anything malformed."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed msgpack: {exc}") from exc


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"{what}: expected a non-negative integer, got {v!r}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise ValueError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def _list(v: Any, what: str, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise ValueError(f"{what}: expected an array{'' if n is None else f' of {n}'}")
    return v


def entry_to_obj(e: Entry) -> list[Any]:
    return [e.term, e.index, int(e.type), e.data]


_ENTRY_TYPES = {int(t): t for t in EntryType}
_MESSAGE_TYPES = {int(t): t for t in MessageType}


def obj_to_entry(o: Any) -> Entry:
    # One combined check on the fast path; the slow path finds the culprit for the error message.
    if type(o) is list and len(o) == 4:
        t, i, k, d = o
        kind = _ENTRY_TYPES.get(k) if type(k) is int else None
        if type(t) is int and type(i) is int and t >= 0 and i >= 0 and type(d) is bytes and kind is not None:
            return Entry(t, i, d, kind)
    t, i, k, d = _list(o, "entry", 4)
    _int(t, "entry term"), _int(i, "entry index"), _bytes(d, "entry data")
    raise ValueError(f"entry type: unknown {k!r}")


def _conf_state_to_obj(cs: ConfState) -> list[Any]:
    """``[voters, learners]``, plus ``removed`` only when there are any.

    A conf state without removals encodes as before, so snapshots and peers of earlier versions read it.
    """
    if cs.removed:
        return [sorted(cs.voters), sorted(cs.learners), sorted(cs.removed)]
    return [sorted(cs.voters), sorted(cs.learners)]


def _obj_to_conf_state(o: Any) -> ConfState:
    """Reads both layouts: ``[voters, learners]`` (earlier versions, or nothing removed) and with ``removed``."""
    if type(o) is not list or len(o) not in (2, 3):
        raise ValueError("conf state: expected an array of 2 or 3")
    voters = frozenset(_int(x, "voter id") for x in _list(o[0], "voters"))
    learners = frozenset(_int(x, "learner id") for x in _list(o[1], "learners"))
    removed = frozenset(_int(x, "removed id") for x in _list(o[2], "removed")) if len(o) == 3 else frozenset()
    return ConfState(voters, learners, removed)


def _snapshot_meta_to_obj(m: SnapshotMeta) -> list[Any]:
    return [m.index, m.term, _conf_state_to_obj(m.conf_state)]


def _obj_to_snapshot_meta(o: Any) -> SnapshotMeta:
    i, t, cs = _list(o, "snapshot meta", 3)
    return SnapshotMeta(_int(i, "snapshot index"), _int(t, "snapshot term"), _obj_to_conf_state(cs))


def encode_snapshot_meta(m: SnapshotMeta) -> bytes:
    return pack(_snapshot_meta_to_obj(m))


def decode_snapshot_meta(data: bytes) -> SnapshotMeta:
    return _obj_to_snapshot_meta(unpack(data))


def encode_hard_state(hs: HardState) -> bytes:
    return pack([hs.term, hs.vote, hs.commit])


def decode_hard_state(data: bytes) -> HardState:
    t, v, c = _list(unpack(data), "hard state", 3)
    return HardState(_int(t, "term"), _int(v, "vote"), _int(c, "commit"))


def encode_conf_change(cc: ConfChange) -> bytes:
    return pack([int(cc.type), cc.node_id, cc.context])


def decode_conf_change(data: bytes) -> ConfChange:
    k, n, c = _list(unpack(data), "conf change", 3)
    try:
        kind = ConfChangeType(_int(k, "conf change type"))
    except ValueError as exc:
        raise ValueError(f"conf change type: unknown {k!r}") from exc
    node = _int(n, "conf change node id")
    if node == 0:
        raise ValueError("conf change node id must be >= 1")
    return ConfChange(kind, node, _bytes(c, "conf change context"))


def message_to_obj(m: Message) -> list[Any]:
    return [
        int(m.type),
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [entry_to_obj(e) for e in m.entries],
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        None if m.snapshot is None else _snapshot_meta_to_obj(m.snapshot),
    ]


def obj_to_message(o: Any) -> Message:
    (k, to, frm, term, log_term, index, entries, commit, reject, hint, ctx, snap) = _list(o, "message", 12)
    kind = _MESSAGE_TYPES.get(k) if type(k) is int else None
    if kind is None:
        raise ValueError(f"message type: unknown {k!r}")
    for value, what in ((to, "to"), (frm, "from"), (term, "term"), (log_term, "log term"), (index, "index")):
        if type(value) is not int or value < 0:
            _int(value, what)
    if type(commit) is not int or commit < 0 or type(hint) is not int or hint < 0:
        _int(commit, "commit"), _int(hint, "reject hint")
    if type(reject) is not bool:
        raise ValueError("message reject: expected a boolean")
    return Message(
        kind,
        to,
        frm,
        term,
        log_term,
        index,
        [obj_to_entry(e) for e in _list(entries, "entries")] if entries else [],
        commit,
        reject,
        hint,
        _bytes(ctx, "context"),
        None if snap is None else _obj_to_snapshot_meta(snap),
    )


def encode_message(m: Message) -> bytes:
    """Encode a peer message. ``snapshot_data`` is not included: it travels in chunks."""
    return pack(message_to_obj(m))


def decode_message(data: bytes) -> Message:
    return obj_to_message(unpack(data))


def msgpack_bin_header(size: int) -> bytes:
    """The header msgpack writes before ``size`` bytes of bin data (bin 8, 16 or 32, the smallest that
    fits): with it a caller writes a large bin object in pieces, as ``packb`` would write it whole."""
    if size < 0 or size >= 1 << 32:
        raise ValueError(f"msgpack bin data of {size} bytes")
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


#: Bytes of the length after each msgpack bin type byte (bin 8, 16, 32).
_BIN_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def read_msgpack_bin_header(read: Callable[[int], bytes]) -> int:
    """Read a bin object's header through ``read`` (a file's read) and return the object's size: the
    reverse of msgpack_bin_header, so a caller can read a large bin object in pieces as it needs them."""
    kind = read(1)
    if len(kind) != 1 or kind[0] not in _BIN_LENGTH_BYTES:
        raise ValueError(f"no msgpack bin header ({kind!r})")
    width = _BIN_LENGTH_BYTES[kind[0]]
    length = read(width)
    if len(length) != width:
        raise ValueError("msgpack bin header cut short")
    return int.from_bytes(length, "big")
