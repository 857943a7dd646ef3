"""Typed, immutable results decoded from the gateway's JSON, and the key/value encoding rules.

The gateway writes int64 as strings, bytes as base64 and leaves zero values out; decoding all of
that once, here, lets the rest of the client and its users work with plain ints and bytes.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DeleteResult",
    "Event",
    "EventType",
    "GetResult",
    "Header",
    "Key",
    "KeyValue",
    "LeaseGrant",
    "LeaseKeepAlive",
    "LeaseTimeToLive",
    "Member",
    "MemberAddResult",
    "PutResult",
    "Status",
    "TxnResult",
    "WatchBatch",
    "b64",
    "prefix_end",
    "to_bytes",
]

#: A key or value: ``str`` is encoded as UTF-8.
Key = str | bytes

JSON = dict[str, Any]


def to_bytes(k: Key) -> bytes:
    return k.encode("utf-8") if isinstance(k, str) else bytes(k)


def b64(data: Key) -> str:
    return base64.b64encode(to_bytes(data)).decode("ascii")


def _unb64(s: Any) -> bytes:
    return base64.b64decode(s) if s else b""


def _int(d: JSON, name: str) -> int:
    v = d.get(name)
    return int(v) if v not in (None, "") else 0


def prefix_end(prefix: Key) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    p = bytearray(to_bytes(prefix))
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"  # every byte was 0xff (or the prefix is empty): all keys from `prefix` on


@dataclass(frozen=True, slots=True)
class Header:
    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def from_json(cls, d: JSON | None) -> Header:
        d = d or {}
        return cls(_int(d, "cluster_id"), _int(d, "member_id"), _int(d, "revision"), _int(d, "raft_term"))


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @property
    def key_str(self) -> str:
        return self.key.decode("utf-8", "replace")

    @property
    def value_str(self) -> str:
        return self.value.decode("utf-8", "replace")

    @classmethod
    def from_json(cls, d: JSON) -> KeyValue:
        return cls(
            _unb64(d.get("key")),
            _unb64(d.get("value")),
            _int(d, "create_revision"),
            _int(d, "mod_revision"),
            _int(d, "version"),
            _int(d, "lease"),
        )


def _kv_or_none(d: Any) -> KeyValue | None:
    return KeyValue.from_json(d) if d else None


@dataclass(frozen=True, slots=True)
class GetResult:
    header: Header
    kvs: tuple[KeyValue, ...]
    #: Keys in the range, ignoring ``limit``.
    count: int
    #: True when ``limit`` cut the result.
    more: bool

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_json(cls, d: JSON) -> GetResult:
        kvs = tuple(KeyValue.from_json(kv) for kv in d.get("kvs", ()))
        return cls(Header.from_json(d.get("header")), kvs, _int(d, "count"), bool(d.get("more", False)))


@dataclass(frozen=True, slots=True)
class PutResult:
    header: Header
    prev_kv: KeyValue | None

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_json(cls, d: JSON) -> PutResult:
        return cls(Header.from_json(d.get("header")), _kv_or_none(d.get("prev_kv")))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: Header
    deleted: int
    prev_kvs: tuple[KeyValue, ...]

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_json(cls, d: JSON) -> DeleteResult:
        prev = tuple(KeyValue.from_json(kv) for kv in d.get("prev_kvs", ()))
        return cls(Header.from_json(d.get("header")), _int(d, "deleted"), prev)


@dataclass(frozen=True, slots=True)
class TxnResult:
    header: Header
    succeeded: bool
    #: One result per op of the branch that ran, in order.
    responses: tuple[GetResult | PutResult | DeleteResult | TxnResult, ...]

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_json(cls, d: JSON) -> TxnResult:
        out: list[GetResult | PutResult | DeleteResult | TxnResult] = []
        for r in d.get("responses", ()):
            if "response_range" in r:
                out.append(GetResult.from_json(r["response_range"]))
            elif "response_put" in r:
                out.append(PutResult.from_json(r["response_put"]))
            elif "response_delete_range" in r:
                out.append(DeleteResult.from_json(r["response_delete_range"]))
            elif "response_txn" in r:
                out.append(TxnResult.from_json(r["response_txn"]))
            else:
                raise ValueError(f"unknown txn response {sorted(r)}")
        return cls(Header.from_json(d.get("header")), bool(d.get("succeeded", False)), tuple(out))


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    header: Header
    id: int
    ttl: int

    @classmethod
    def from_json(cls, d: JSON) -> LeaseGrant:
        return cls(Header.from_json(d.get("header")), _int(d, "ID"), _int(d, "TTL"))


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    header: Header
    id: int
    #: The renewed TTL in seconds.
    ttl: int

    @classmethod
    def from_json(cls, d: JSON) -> LeaseKeepAlive:
        return cls(Header.from_json(d.get("header")), _int(d, "ID"), _int(d, "TTL"))


@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    header: Header
    id: int
    #: Seconds left; -1 when the lease has expired or does not exist.
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...]

    @classmethod
    def from_json(cls, d: JSON) -> LeaseTimeToLive:
        keys = tuple(_unb64(k) for k in d.get("keys", ()))
        return cls(Header.from_json(d.get("header")), _int(d, "ID"), _int(d, "TTL"), _int(d, "grantedTTL"), keys)


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @classmethod
    def from_json(cls, d: JSON) -> Member:
        return cls(
            _int(d, "ID"),
            str(d.get("name", "")),
            tuple(d.get("peerURLs", ())),
            tuple(d.get("clientURLs", ())),
            bool(d.get("isLearner", False)),
        )


@dataclass(frozen=True, slots=True)
class MemberAddResult:
    header: Header
    member: Member
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Status:
    #: The endpoint that answered.
    endpoint: str
    header: Header
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    db_size_in_use: int
    is_learner: bool
    errors: tuple[str, ...]

    @classmethod
    def from_json(cls, endpoint: str, d: JSON) -> Status:
        return cls(
            endpoint,
            Header.from_json(d.get("header")),
            str(d.get("version", "")),
            _int(d, "dbSize"),
            _int(d, "leader"),
            _int(d, "raftIndex"),
            _int(d, "raftTerm"),
            _int(d, "raftAppliedIndex"),
            _int(d, "dbSizeInUse"),
            bool(d.get("isLearner", False)),
            tuple(d.get("errors", ())),
        )


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: KeyValue
    #: The key's previous version, when the watch asked for ``prev_kv`` and one existed.
    prev_kv: KeyValue | None

    @classmethod
    def from_json(cls, d: JSON) -> Event:
        return cls(EventType(d.get("type", "PUT")), KeyValue.from_json(d.get("kv", {})), _kv_or_none(d.get("prev_kv")))


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Every event of one revision: all the writes of one txn arrive together."""

    revision: int
    events: tuple[Event, ...]
    #: The header of the server's response that carried these events.
    header: Header | None = None
