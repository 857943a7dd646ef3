"""The revisioned key-value store: etcd v3's data model, pure and deterministic.

No I/O, clock or randomness: the same calls in the same order give the same results and the
same snapshot bytes on every replica.

Model (etcd v3):

* The store revision starts at 1. Each write transaction (a put, a delete that deletes
  something, a txn with at least one write) raises it by exactly 1; the writes inside it share
  that revision with sub-revisions 0, 1, 2...
* Each key keeps a history of ``(revision, sub, KeyValue | None)``; ``None`` is a tombstone.
  A read at revision R sees, per key, the newest entry at or before R.
* ``compact(rev)`` drops history older than ``rev`` but keeps, per key, the newest entry at or
  before ``rev`` unless it is a tombstone; reads below ``rev`` then raise :class:`CompactedError`.
* Requests are validated completely before anything is written, so a bad request changes nothing.
* Watch history: :meth:`KVStore.iter_events` / :meth:`KVStore.events_between` rebuild the
  events of a revision interval from the histories, for the watch hub's catch-up. A compact
  write log (main revision, sub revision, key per history entry after the compacted revision,
  in apply order, in two ``array('q')`` and a list sharing the key objects: about 24 bytes per
  entry) lets a range watch over many keys read only the writes of the interval instead of
  scanning every key; it is pruned by ``compact`` and rebuilt by ``restore``. It is not part of
  the snapshot.
* Leases: a store built with a :class:`Lessor` tracks them. A put must then name an existing
  lease (or 0); a put attaches its key to its lease and detaches it from the previous one; a
  deleted key is detached; revoking a lease deletes its keys in one revision. Leases are part
  of the snapshot; attachments are rebuilt from the live keys. A store without a lessor treats
  a lease id as an opaque number and has no leases.
"""

from __future__ import annotations

import enum
import gc
import heapq
import itertools
import operator
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack

from kvdisco.mvcc.errors import (
    CompactedError,
    DuplicateKeyError,
    EmptyKeyError,
    FutureRevisionError,
    InvalidArgumentError,
    KeyNotFoundError,
    LeaseNotFoundError,
    LeaseProvidedError,
    RequestTooLargeError,
    SnapshotError,
    TooManyOpsError,
    ValueProvidedError,
)
from kvdisco.mvcc.lessor import Lease, Lessor
from kvdisco.mvcc.limits import KEY_BYTES_MAX, TXN_OPS_MAX, VALUE_BYTES_MAX

__all__ = [
    "Compare",
    "CompareResult",
    "CompareTarget",
    "CompactResult",
    "DeleteResult",
    "Event",
    "EventType",
    "KVStore",
    "KeyValue",
    "LeaseCheckpointResult",
    "LeaseGrantResult",
    "LeaseRevokeResult",
    "PutResult",
    "RangeResult",
    "Readable",
    "RequestDeleteRange",
    "RequestOp",
    "RequestPut",
    "RequestRange",
    "RequestTxn",
    "SortOrder",
    "SortTarget",
    "TxnResult",
    "snapshot_reader",
]

#: Format tag of :meth:`KVStore.snapshot`; bump it when the layout changes. Format 2 is column
#: oriented (see :meth:`KVStore.snapshot`); format 1 (one msgpack array per history entry) is not read.
SNAPSHOT_FORMAT = 2

#: Keys per snapshot page, and the bytes a page may reach (unless one key's history alone is
#: larger): a restore holds one encoded page beside the state it builds, never the whole snapshot
#: decoded at once.
SNAPSHOT_PAGE_KEYS = 16_384
SNAPSHOT_PAGE_BYTES = 8 * 1024 * 1024

#: Bytes a restore reads from the snapshot buffer at a time.
_SNAPSHOT_READ_BYTES = 1024 * 1024

#: The fields of a format-2 snapshot, in order; "leases" only when the store tracks leases.
_SNAPSHOT_FIELDS = ("format", "rev", "compact_rev", "pages", "leases")


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


class KeyValue(NamedTuple):
    """A key's value at one revision, immutable.

    A named tuple, not a dataclass: a store holds one per live key and history entry, and a tuple
    of bytes and ints is one the garbage collector stops tracking after it survives a collection,
    along with the history entry that holds it. At a million keys that is two million objects fewer
    for every full collection to walk, and a tuple is built several times faster than a frozen
    dataclass, which sets each field through ``object.__setattr__``.
    """

    key: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    #: Lease id, 0 for none.
    lease: int = 0


class Event(NamedTuple):
    """One change for the watch hub. A DELETE's ``kv`` holds only the key and its revision.

    A named tuple, as KeyValue: every write makes one, and a tuple is built the fastest.
    """

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None


class RequestRange(NamedTuple):
    """A range read, alone or inside a txn. Requests are named tuples, as KeyValue: every write
    decodes one from the log, on every replica and again on a restart's replay, and a tuple is built
    three times faster than a frozen dataclass."""

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


class RequestPut(NamedTuple):
    """A put, alone or inside a txn (a named tuple: see RequestRange)."""

    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


class RequestDeleteRange(NamedTuple):
    """A delete of a key or range, alone or inside a txn (a named tuple: see RequestRange)."""

    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds when ``target`` of every key in the range compares to ``operand`` as ``result`` says.

    ``operand`` is bytes for VALUE and an int for the other targets.
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: int | bytes
    range_end: bytes = b""

    def __post_init__(self) -> None:
        if (
            self.target not in CompareTarget.__members__.values()
            or self.result not in CompareResult.__members__.values()
        ):
            raise InvalidArgumentError("etcdserver: invalid compare target or result")
        wants_bytes = self.target == CompareTarget.VALUE
        if wants_bytes != isinstance(self.operand, bytes) or isinstance(self.operand, bool):
            raise InvalidArgumentError("etcdserver: compare operand does not match its target")


@dataclass(frozen=True, slots=True)
class RequestTxn:
    compares: tuple[Compare, ...] = ()
    success: tuple[RequestOp, ...] = ()
    failure: tuple[RequestOp, ...] = ()


RequestOp = RequestRange | RequestPut | RequestDeleteRange | RequestTxn


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range's answer. (Not a named tuple as the write results are: its ``count`` would hide tuple.count.)"""

    kvs: tuple[KeyValue, ...]
    #: Keys in the range at the read revision, before limit and the min/max filters (as etcd).
    count: int
    more: bool
    #: The store revision the read was served at (etcd's header revision).
    revision: int


class PutResult(NamedTuple):
    """A put's answer. Write results are named tuples, as requests: a txn of 128 puts builds 129 of them."""

    revision: int
    prev_kv: KeyValue | None = None
    #: Changes for the watch hub; only on a top-level call, empty inside a txn.
    events: tuple[Event, ...] = ()


class DeleteResult(NamedTuple):
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()
    events: tuple[Event, ...] = ()


class TxnResult(NamedTuple):
    revision: int
    succeeded: bool
    responses: tuple[RangeResult | PutResult | DeleteResult | TxnResult, ...]
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class CompactResult:
    revision: int


@dataclass(frozen=True, slots=True)
class LeaseGrantResult:
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseRevokeResult:
    #: The store revision after the revoke (unchanged when the lease had no keys).
    revision: int
    #: DELETE events of the keys the revoke deleted, for the watch hub.
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseCheckpointResult:
    revision: int


OpResult = RangeResult | PutResult | DeleteResult | TxnResult

#: One history entry: (main revision, sub revision, value or None for a tombstone).
_Entry = tuple[int, int, KeyValue | None]

_ZERO_KV = KeyValue(b"")

#: Above this many keys dropped by one compaction, rebuild the sorted key list in one pass instead
#: of deleting from it one by one (each delete is O(keys)).
_KEYS_REMOVED_ONE_BY_ONE_MAX = 64
_SORT_ORDERS = frozenset(SortOrder)
_SORT_TARGETS = frozenset(SortTarget)

_T = TypeVar("_T")


def _main_of(entry: _Entry) -> int:
    return entry[0]


def _position_of(entry: _Entry) -> tuple[int, int]:
    return entry[0], entry[1]


def _event_at(key: bytes, hist: list[_Entry], i: int) -> Event:
    """The event that wrote ``hist[i]``, with the entry before it as ``prev_kv``."""
    main, _, kv = hist[i]
    prev = hist[i - 1][2] if i else None
    if kv is None:
        return Event(EventType.DELETE, KeyValue(key, mod_revision=main), prev)
    return Event(EventType.PUT, kv, prev)


def _hist_events(key: bytes, hist: list[_Entry], start_rev: int, end_rev: int) -> Iterator[Event]:
    i = bisect_left(hist, start_rev, key=_main_of)
    while i < len(hist) and hist[i][0] <= end_rev:
        yield _event_at(key, hist, i)
        i += 1


@dataclass(slots=True)
class _Batch:
    """The write transaction being applied: every write gets ``rev`` and the next ``sub``."""

    rev: int
    sub: int = 0
    events: list[Event] = field(default_factory=list)

    @property
    def read_rev(self) -> int:
        """Reads inside the batch see its earlier writes (etcd's txn read view)."""
        return self.rev if self.sub else self.rev - 1


# --- request validation that needs no state -----------------------------------------------


def _check_key(key: bytes) -> None:
    if not key:
        raise EmptyKeyError()
    if len(key) > KEY_BYTES_MAX:
        raise RequestTooLargeError()


def _check_put(req: RequestPut) -> None:
    _check_key(req.key)
    if len(req.value) > VALUE_BYTES_MAX:
        raise RequestTooLargeError()
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease:
        raise LeaseProvidedError()


def _check_range(req: RequestRange) -> None:
    _check_key(req.key)
    if req.sort_order not in _SORT_ORDERS or req.sort_target not in _SORT_TARGETS:
        raise InvalidArgumentError("etcdserver: invalid sort option")


def _check_txn_shape(txn: RequestTxn, ops_max: int) -> None:
    """etcd's checkTxnRequest: each list at most ``ops_max``; a nested txn gets the rest."""
    longest = max(len(txn.compares), len(txn.success), len(txn.failure))
    if longest > ops_max:
        raise TooManyOpsError()
    for c in txn.compares:
        _check_key(c.key)
    for op in (*txn.success, *txn.failure):
        if isinstance(op, RequestTxn):
            _check_txn_shape(op, ops_max - longest)
        elif isinstance(op, RequestPut):
            _check_put(op)
        elif isinstance(op, RequestRange):
            _check_range(op)
        else:
            _check_key(op.key)


def _covers(lo: bytes, hi: bytes, key: bytes) -> bool:
    """Whether the delete interval ``[lo, hi)`` (``hi`` empty: the point ``lo``) holds ``key``."""
    if not hi:
        return key == lo
    return lo <= key and (hi == b"\0" or key < hi)


def _check_intervals(ops: Sequence[RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals: a put key may not be put again or fall in a delete of the same txn.

    Then/else branches of a nested txn exclude each other, so the same key put in both is fine.
    """
    dels = [(op.key, op.range_end) for op in ops if isinstance(op, RequestDeleteRange)]
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, RequestTxn):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for k in puts_then:
            if k in puts or any(_covers(lo, hi, k) for lo, hi in dels):
                raise DuplicateKeyError()
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or any(_covers(lo, hi, k) for lo, hi in dels):
                raise DuplicateKeyError()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if not isinstance(op, RequestPut):
            continue
        if op.key in puts or (dels and any(_covers(lo, hi, op.key) for lo, hi in dels)):
            raise DuplicateKeyError()
        puts.add(op.key)
    return puts, dels


def _compare_kv(c: Compare, kv: KeyValue) -> bool:
    actual: int | bytes
    if c.target == CompareTarget.VERSION:
        actual = kv.version
    elif c.target == CompareTarget.CREATE:
        actual = kv.create_revision
    elif c.target == CompareTarget.MOD:
        actual = kv.mod_revision
    elif c.target == CompareTarget.LEASE:
        actual = kv.lease
    else:
        actual = kv.value
    operand: Any = c.operand
    if c.result == CompareResult.EQUAL:
        return bool(actual == operand)
    if c.result == CompareResult.NOT_EQUAL:
        return bool(actual != operand)
    if c.result == CompareResult.GREATER:
        return bool(actual > operand)
    return bool(actual < operand)


_SORT_KEYS: dict[SortTarget, Any] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


class KVStore:
    """The revisioned store. Not thread-safe; one writer (the Raft apply loop)."""

    def __init__(self, lessor: Lessor | None = None) -> None:
        #: Leases of this store, or None when the store does not track leases.
        self._lessor = lessor
        # Invariant: _compact_rev <= _rev, and every history entry's main revision <= _rev.
        self._rev = 1
        self._compact_rev = 0
        # Invariant: _keys is sorted and holds exactly the keys of _history; each history
        # list is non-empty and strictly increasing in (main, sub).
        self._keys: list[bytes] = []
        self._history: dict[bytes, list[_Entry]] = {}
        # The write log: entry i is the history entry (_log_revs[i], _log_subs[i]) of
        # _log_keys[i]. Invariant: exactly the history entries with main > _compact_rev, in
        # (main, sub) order.
        self._log_revs = array("q")
        self._log_subs = array("q")
        self._log_keys: list[bytes] = []
        # _log_visit[i] is 0 when entry i is a put that began its key's history: a compaction has
        # nothing to drop for it unless another entry names the key (then that one is 1). A bulk
        # load writes mostly such entries, and looking each key up again cost 2 us apiece.
        self._log_visit = bytearray()

    @property
    def revision(self) -> int:
        return self._rev

    @property
    def compact_revision(self) -> int:
        return self._compact_rev

    # --- public operations ------------------------------------------------------------

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResult:
        req = RequestRange(
            key,
            range_end,
            limit,
            revision,
            sort_order,
            sort_target,
            keys_only,
            count_only,
            min_mod_revision,
            max_mod_revision,
            min_create_revision,
            max_create_revision,
        )
        _check_range(req)
        self._check_read_rev(req.revision)
        return self._do_range(req, self._rev)

    def put(
        self,
        key: bytes,
        value: bytes = b"",
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult:
        return self.apply_put(RequestPut(key, value, lease, prev_kv, ignore_value, ignore_lease))

    def apply_put(self, req: RequestPut) -> PutResult:
        """:meth:`put` of a request already built (a decoded log entry): the replicated write path."""
        _check_put(req)
        self._check_put_state(req, lease_first=True)
        batch = _Batch(self._rev + 1)
        prev = self._do_put(req, batch)
        self._commit(batch)
        return PutResult(batch.rev, prev if req.prev_kv else None, tuple(batch.events))

    def delete_range(self, key: bytes, range_end: bytes = b"", *, prev_kv: bool = False) -> DeleteResult:
        req = RequestDeleteRange(key, range_end, prev_kv)
        _check_key(req.key)
        batch = _Batch(self._rev + 1)
        res = self._do_delete(req, batch)
        self._commit(batch)
        return DeleteResult(res.revision, res.deleted, res.prev_kvs, tuple(batch.events))

    def txn(
        self,
        compares: Sequence[Compare] = (),
        success_ops: Sequence[RequestOp] = (),
        failure_ops: Sequence[RequestOp] = (),
    ) -> TxnResult:
        req = RequestTxn(tuple(compares), tuple(success_ops), tuple(failure_ops))
        _check_txn_shape(req, TXN_OPS_MAX)
        _check_intervals(req.success)
        _check_intervals(req.failure)
        path: list[bool] = []
        self._compare_path(req, path)
        self._check_path(req, path)
        batch = _Batch(self._rev + 1)
        res = self._do_txn(req, iter(path), batch)
        self._commit(batch)
        return TxnResult(res.revision, res.succeeded, res.responses, tuple(batch.events))

    def compact(self, revision: int) -> CompactResult:
        """Forget history older than ``revision``; reads below it fail from now on."""
        if revision <= self._compact_rev:
            raise CompactedError(self._compact_rev)
        if revision > self._rev:
            raise FutureRevisionError()
        # Only keys written in (old compact revision, revision] can change: every other key's history
        # before the old compact revision is already down to one live entry, which stays. The write
        # log names exactly those keys, so a compaction costs what was written since the last one.
        cut = bisect_right(self._log_revs, revision)
        gone: list[bytes] = []
        history = self._history
        for key in set(itertools.compress(self._log_keys[:cut], self._log_visit[:cut])):
            hist = history[key]
            if len(hist) == 1 and hist[0][2] is not None:
                continue  # one live entry always stays (most keys after a bulk load): nothing to drop
            i = bisect_right(hist, revision, key=_main_of)
            if i and hist[i - 1][2] is not None:
                i -= 1  # the live entry at the revision stays readable there
            if i == len(hist):  # ends in a tombstone at or below the revision: the key is gone
                del history[key]
                gone.append(key)
            elif i:
                history[key] = hist[i:]
        if len(gone) > _KEYS_REMOVED_ONE_BY_ONE_MAX:
            self._keys = [k for k in self._keys if k in self._history]
        else:
            for key in gone:
                del self._keys[bisect_left(self._keys, key)]
        self._compact_rev = revision
        del self._log_revs[:cut], self._log_subs[:cut], self._log_keys[:cut], self._log_visit[:cut]
        return CompactResult(self._rev)

    # --- watch history ----------------------------------------------------------------

    def iter_events(self, key: bytes, range_end: bytes, start_rev: int, end_rev: int) -> Iterator[Event]:
        """The events of revisions ``start_rev..end_rev`` (inclusive) on keys in the range, lazily.

        ``range_end`` as for :meth:`range`. Events come in (revision, sub revision) order, each
        equal to the one the write returned: ``prev_kv`` is the key's previous history entry
        (None after a tombstone or for a new key). ``end_rev`` above the store revision reads to
        the store revision. Events at or below the compacted revision cannot be rebuilt (the
        compaction dropped tombstones and the entries before the kept one), so ``start_rev`` must
        be above it: else :class:`CompactedError`. Consume the iterator before the next write.
        """
        if start_rev <= self._compact_rev:
            raise CompactedError(self._compact_rev)
        start_rev = max(start_rev, 1)
        end_rev = min(end_rev, self._rev)
        if start_rev > end_rev:
            return iter(())
        if not range_end:
            hist = self._history.get(key)
            return iter(()) if hist is None else _hist_events(key, hist, start_rev, end_rev)
        lo = bisect_left(self._keys, key)
        hi = len(self._keys) if range_end == b"\0" else bisect_left(self._keys, range_end)
        a = bisect_left(self._log_revs, start_rev)
        b = bisect_right(self._log_revs, end_rev, lo=a)
        # Merging the histories of the keys in the range costs about a heap push per key; the
        # log costs a step per write of the interval on any key. Take the smaller.
        if (hi - lo) * 4 < b - a:
            return self._merge_events(self._keys[lo:hi], start_rev, end_rev)
        return self._log_events(key, range_end, a, b)

    def events_between(self, key: bytes, range_end: bytes, start_rev: int, end_rev: int, limit: int = 0) -> list[Event]:
        """:meth:`iter_events` as a list. ``limit`` > 0 stops at the first revision boundary at
        or after ``limit`` events: a revision's events are never split, so a list may be longer.
        """
        out: list[Event] = []
        for ev in self.iter_events(key, range_end, start_rev, end_rev):
            if 0 < limit <= len(out) and ev.kv.mod_revision != out[-1].kv.mod_revision:
                break
            out.append(ev)
        return out

    def _merge_events(self, keys: list[bytes], start_rev: int, end_rev: int) -> Iterator[Event]:
        heap: list[tuple[int, int, bytes, int]] = []
        for k in keys:
            hist = self._history[k]
            i = bisect_left(hist, start_rev, key=_main_of)
            if i < len(hist) and hist[i][0] <= end_rev:
                heap.append((hist[i][0], hist[i][1], k, i))
        heapq.heapify(heap)
        while heap:
            _, _, k, i = heap[0]
            hist = self._history[k]
            yield _event_at(k, hist, i)
            if i + 1 < len(hist) and hist[i + 1][0] <= end_rev:
                heapq.heapreplace(heap, (hist[i + 1][0], hist[i + 1][1], k, i + 1))
            else:
                heapq.heappop(heap)

    def _log_events(self, key: bytes, range_end: bytes, a: int, b: int) -> Iterator[Event]:
        revs, subs, keys = self._log_revs, self._log_subs, self._log_keys
        for j in range(a, b):
            k = keys[j]
            if k < key or (range_end != b"\0" and k >= range_end):
                continue
            hist = self._history[k]
            pos = (revs[j], subs[j])
            yield _event_at(k, hist, bisect_left(hist, pos, key=_position_of))

    # --- leases -----------------------------------------------------------------------

    def lease_grant(self, lease_id: int, ttl: int) -> LeaseGrantResult:
        """Create a lease; ``lease_id`` 0 lets the lessor choose. See :mod:`lessor` for the rules."""
        if self._lessor is None:
            raise InvalidArgumentError("kvdisco: this store does not track leases")
        lease = self._lessor.grant(lease_id, ttl)
        return LeaseGrantResult(lease.id, lease.ttl)

    def lease_revoke(self, lease_id: int) -> LeaseRevokeResult:
        """Delete every key attached to the lease in one write transaction, then the lease."""
        if self._lessor is None:
            raise LeaseNotFoundError()
        lease = self._lessor.lookup(lease_id)
        batch = _Batch(self._rev + 1)
        for key in sorted(lease.keys):
            self._do_delete(RequestDeleteRange(key), batch)
        self._commit(batch)
        self._lessor.remove(lease_id)
        return LeaseRevokeResult(self._rev, tuple(batch.events))

    def lease_checkpoint(self, checkpoints: Sequence[tuple[int, int]]) -> LeaseCheckpointResult:
        if self._lessor is not None:
            self._lessor.checkpoint(checkpoints)
        return LeaseCheckpointResult(self._rev)

    def lease_ttl_info(self, lease_id: int) -> tuple[int, int | None, tuple[bytes, ...]]:
        """``(granted TTL, remaining TTL at the last checkpoint or None, sorted attached keys)``."""
        if self._lessor is None:
            raise LeaseNotFoundError()
        lease = self._lessor.lookup(lease_id)
        return lease.ttl, lease.remaining_ttl, tuple(sorted(lease.keys))

    def leases(self) -> tuple[int, ...]:
        """Ids of the existing leases, ascending."""
        return () if self._lessor is None else self._lessor.ids()

    # --- snapshot ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes, the same on every replica that applied the same entries
        (:meth:`snapshot_parts`, joined)."""
        return b"".join(self.snapshot_parts())

    def snapshot_parts(self) -> list[bytes]:
        """:meth:`snapshot` in pieces, in order: a member writes them to its snapshot file one by
        one, never holding a store-sized buffer (a copy of a million keys is 160 MiB more to fault
        in, in the forked child that writes it).

        A msgpack map ``{"format": 2, "rev", "compact_rev", "pages": [page, ...], "leases"?}``.
        A page holds the histories of consecutive keys (in key order) as columns, one msgpack array
        per field: ``[keys, counts, mains, subs, creates, versions, values, leases]``. ``counts[i]``
        is the number of history entries of ``keys[i]``; the other columns have one item per entry,
        key by key, oldest first. A tombstone has the value nil (and 0 in create, version, lease).
        Columns decode in C, a few objects per key, where one array per entry cost ten times more.
        """
        keys = self._keys
        pages: list[bytes] = []
        i = 0
        while i < len(keys):
            j = min(len(keys), i + SNAPSHOT_PAGE_KEYS)
            page = self._pack_page(keys[i:j])
            while len(page) > SNAPSHOT_PAGE_BYTES and j - i > 1:
                j = i + (j - i) // 2
                page = self._pack_page(keys[i:j])
            pages.append(page)
            i = j
        packer = msgpack.Packer(use_bin_type=True)
        parts = [packer.pack_map_header(5 if self._lessor is not None else 4)]
        for name, value in (("format", SNAPSHOT_FORMAT), ("rev", self._rev), ("compact_rev", self._compact_rev)):
            parts += (packer.pack(name), packer.pack(value))
        parts += (packer.pack("pages"), packer.pack_array_header(len(pages)), *pages)
        if self._lessor is not None:
            parts += (packer.pack("leases"), packer.pack(self._lessor.pack()))
        return parts

    def _pack_page(self, keys: list[bytes]) -> bytes:
        hists = list(map(self._history.__getitem__, keys))
        counts = list(map(len, hists))
        entries: list[_Entry] = list(itertools.chain.from_iterable(hists))
        kvs = list(map(_third, entries))
        live = kvs if all(kvs) else [kv or _TOMBSTONE_KV for kv in kvs]
        values: list[bytes | None] = list(map(_value_of, live))
        if live is not kvs:
            values = [None if kv is None else v for kv, v in zip(kvs, values, strict=True)]
        page = [
            keys,
            counts,
            list(map(_first, entries)),
            list(map(_sub_of, entries)),
            list(map(_create_of, live)),
            list(map(_version_of, live)),
            values,
            list(map(_lease_of, live)),
        ]
        data: bytes = msgpack.packb(page, use_bin_type=True)
        return data

    def restore(self, data: bytes | bytearray | memoryview | Readable) -> None:
        """Replace the whole state with a snapshot's (bytes, or read from ``data`` to its end). A bad
        snapshot raises and changes nothing; so does an error raised by ``data.read``.

        The snapshot is read a page at a time (see :meth:`snapshot`), so a restore from a file holds
        one page beside the state it builds, never the whole snapshot. The cyclic garbage collector is paused
        meanwhile: the millions of new objects would otherwise set off full collections over them.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            state = _decode_snapshot(snapshot_reader(data))
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, msgpack.UnpackException) as exc:
            raise SnapshotError(f"mvcc: corrupt snapshot: {exc!r}") from exc
        finally:
            if gc_was_enabled:
                # The restored state lives until the next restore and holds no cycles: keep the
                # collector from walking its millions of objects (the server freezes what it loaded
                # at start for the same reason). Garbage cycles made before now stay uncollected.
                gc.freeze()
                gc.enable()
        if (state.leases is None) != (self._lessor is None):
            raise SnapshotError("mvcc: corrupt snapshot: leases present exactly when the store tracks them")
        if self._lessor is not None and state.leases is not None:
            next_id, lease_list = state.leases
            by_id = {lease.id: lease for lease in lease_list}
            for key, lease_id in state.leased:
                lease = by_id.get(lease_id)
                if lease is None:
                    raise SnapshotError(f"mvcc: corrupt snapshot: {key!r} names lease {lease_id} that does not exist")
                lease.keys.add(key)
            self._lessor.load(next_id, lease_list)
        self._rev, self._compact_rev, self._keys, self._history = (
            state.rev,
            state.compact_rev,
            state.keys,
            state.history,
        )
        self._log_revs, self._log_subs, self._log_keys = state.log_revs, state.log_subs, state.log_keys
        self._log_visit = state.log_visit

    def approximate_bytes(self) -> int:
        """Bytes of keys and values held, history included: etcd's ``dbSize``, roughly. O(history)."""
        total = 0
        for key, hist in self._history.items():
            total += len(key) * len(hist)
            for _, _, kv in hist:
                if kv is not None:
                    total += len(kv.value)
        return total

    # --- internals --------------------------------------------------------------------

    def _commit(self, batch: _Batch) -> None:
        if batch.sub:
            self._rev = batch.rev
        lessor = self._lessor
        if lessor is None:
            return
        for ev in batch.events:
            if ev.prev_kv is not None and ev.prev_kv.lease:
                lessor.detach(ev.prev_kv.lease, ev.kv.key)
            if ev.kv.lease and ev.type == EventType.PUT:  # most keys have no lease: test that first
                lessor.attach(ev.kv.lease, ev.kv.key)

    def _check_read_rev(self, revision: int) -> None:
        if revision > self._rev:
            raise FutureRevisionError()
        if 0 < revision < self._compact_rev:
            raise CompactedError(self._compact_rev)

    def _check_put_state(self, req: RequestPut, *, lease_first: bool = False) -> None:
        """etcd checks a top-level put's lease before its key, and a txn's puts the other way round."""
        lease_missing = self._lessor is not None and req.lease and req.lease not in self._lessor
        if lease_first and lease_missing:
            raise LeaseNotFoundError()
        if (req.ignore_value or req.ignore_lease) and self._get(req.key, self._rev) is None:
            raise KeyNotFoundError()
        if lease_missing:
            raise LeaseNotFoundError()

    def _get(self, key: bytes, rev: int) -> KeyValue | None:
        hist = self._history.get(key)
        if hist is None:
            return None
        last = hist[-1]
        if last[0] <= rev:  # a read at the head, as every write's: no search
            return last[2]
        i = bisect_right(hist, rev, key=_main_of)
        return hist[i - 1][2] if i else None

    def _keys_in(self, key: bytes, range_end: bytes) -> list[bytes]:
        if not range_end:
            return [key] if key in self._history else []
        lo = bisect_left(self._keys, key)
        hi = len(self._keys) if range_end == b"\0" else bisect_left(self._keys, range_end)
        return self._keys[lo:hi]

    def _live(self, key: bytes, range_end: bytes, rev: int) -> list[KeyValue]:
        return [kv for k in self._keys_in(key, range_end) if (kv := self._get(k, rev)) is not None]

    def _append(self, key: bytes, batch: _Batch, kv: KeyValue | None) -> None:
        hist = self._history.get(key)
        if hist is None:
            hist = self._history[key] = []
            keys = self._keys
            if not keys or key > keys[-1]:
                keys.append(key)  # keys loaded in order (a txn's, a bulk load's): no search
            else:
                insort(keys, key)
        if hist and hist[-1][:2] >= (batch.rev, batch.sub):
            raise AssertionError(f"history of {key!r} would go backwards: {hist[-1][:2]} >= {(batch.rev, batch.sub)}")
        self._log_visit.append(1 if hist or kv is None else 0)
        hist.append((batch.rev, batch.sub, kv))
        self._log_revs.append(batch.rev)
        self._log_subs.append(batch.sub)
        self._log_keys.append(key)
        batch.sub += 1

    def _do_range(self, req: RequestRange, read_rev: int) -> RangeResult:
        rev = req.revision if req.revision > 0 else read_rev
        kvs = self._live(req.key, req.range_end, rev)
        count = len(kvs)
        if req.count_only:
            return RangeResult((), count, False, read_rev)
        if req.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
        if req.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
        if req.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
        if req.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
        order = req.sort_order
        if order == SortOrder.NONE and req.sort_target != SortTarget.KEY:
            order = SortOrder.ASCEND  # etcd: a target other than KEY sorts ascending by default
        if order != SortOrder.NONE:
            kvs.sort(key=_SORT_KEYS[req.sort_target], reverse=order == SortOrder.DESCEND)
        more = 0 < req.limit < len(kvs)
        if more:
            kvs = kvs[: req.limit]
        if req.keys_only:
            kvs = [kv._replace(value=b"") for kv in kvs]
        return RangeResult(tuple(kvs), count, more, read_rev)

    def _do_put(self, req: RequestPut, batch: _Batch) -> KeyValue | None:
        """Write ``req`` into ``batch``; the key's previous value, None if it had none."""
        prev = self._get(req.key, batch.read_rev)
        value = prev.value if req.ignore_value and prev is not None else req.value
        lease = prev.lease if req.ignore_lease and prev is not None else req.lease
        if prev is None:
            kv = KeyValue(req.key, batch.rev, batch.rev, 1, value, lease)
        else:
            kv = KeyValue(req.key, prev.create_revision, batch.rev, prev.version + 1, value, lease)
        self._append(req.key, batch, kv)
        batch.events.append(Event(EventType.PUT, kv, prev))
        return prev

    def _do_delete(self, req: RequestDeleteRange, batch: _Batch) -> DeleteResult:
        deleted: list[KeyValue] = []
        for key in self._keys_in(req.key, req.range_end):
            prev = self._get(key, batch.read_rev)
            if prev is None:
                continue
            self._append(key, batch, None)
            batch.events.append(Event(EventType.DELETE, KeyValue(key, mod_revision=batch.rev), prev))
            deleted.append(prev)
        rev = batch.rev if batch.sub else batch.rev - 1
        return DeleteResult(rev, len(deleted), tuple(deleted) if req.prev_kv else ())

    def _compare_path(self, txn: RequestTxn, path: list[bool]) -> None:
        """Decide every branch up front against the state before the txn (etcd's compareToPath)."""
        ok = all(self._compare(c) for c in txn.compares)
        path.append(ok)
        for op in txn.success if ok else txn.failure:
            if isinstance(op, RequestTxn):
                self._compare_path(op, path)

    def _compare(self, c: Compare) -> bool:
        kvs = self._live(c.key, c.range_end, self._rev)
        if not kvs:
            # etcd: a VALUE compare on missing keys always fails; others see a zero KeyValue.
            return c.target != CompareTarget.VALUE and _compare_kv(c, _ZERO_KV)
        return all(_compare_kv(c, kv) for kv in kvs)

    def _check_path(self, txn: RequestTxn, path: list[bool]) -> None:
        """Check the ops that will run against the state before the txn (etcd's checkRequests):
        every put of the whole tree first, then every range, so the same error wins as in etcd."""
        self._check_ops(txn, iter(path), puts=True)
        self._check_ops(txn, iter(path), puts=False)

    def _check_ops(self, txn: RequestTxn, path: Iterator[bool], *, puts: bool) -> None:
        for op in txn.success if next(path) else txn.failure:
            if isinstance(op, RequestTxn):
                self._check_ops(op, path, puts=puts)
            elif puts and isinstance(op, RequestPut):
                self._check_put_state(op)
            elif not puts and isinstance(op, RequestRange):
                self._check_read_rev(op.revision)

    def _do_txn(self, txn: RequestTxn, path: Iterator[bool], batch: _Batch) -> TxnResult:
        ok = next(path)
        responses: list[OpResult] = []
        for op in txn.success if ok else txn.failure:
            if isinstance(op, RequestPut):
                prev = self._do_put(op, batch)
                responses.append(PutResult(batch.rev, prev if op.prev_kv else None))
            elif isinstance(op, RequestRange):
                responses.append(self._do_range(op, batch.read_rev))
            elif isinstance(op, RequestDeleteRange):
                responses.append(self._do_delete(op, batch))
            else:
                responses.append(self._do_txn(op, path, batch))
        return TxnResult(batch.read_rev, ok, tuple(responses))


def _strict(value: Any, kind: type[_T]) -> _T:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


_first = operator.itemgetter(0)
_sub_of = operator.itemgetter(1)
_third = operator.itemgetter(2)
_value_of = operator.attrgetter("value")
_create_of = operator.attrgetter("create_revision")
_version_of = operator.attrgetter("version")
_lease_of = operator.attrgetter("lease")

#: Stands in for a tombstone while a page's columns are gathered (its fields are the zeros written).
_TOMBSTONE_KV = KeyValue(b"")

_INT_ONLY = frozenset({int})
_BYTES_ONLY = frozenset({bytes})
_BYTES_OR_NONE = frozenset({bytes, type(None)})

#: Largest sub revision for which (main, sub) sorts as the single int main << 32 | sub.
_SUB_SORT_MAX = 2**32 - 1


class Readable(Protocol):
    """Snapshot bytes read in order, as from a file: a snapshot file being read, or a buffer."""

    def read(self, n: int, /) -> bytes:
        """Up to ``n`` bytes; fewer only at the end, b"" after it."""
        ...


class _ViewReader:
    """A file-like read() over a buffer, so msgpack's streaming Unpacker copies a chunk at a time."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def read(self, n: int, /) -> bytes:
        chunk = self._view[self._pos : self._pos + n].tobytes()
        self._pos += len(chunk)
        return chunk


class _CountingReader:
    """Counts the bytes read through it, so a restore can tell whether bytes follow the snapshot."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self.count = 0

    def read(self, n: int, /) -> bytes:
        chunk = self._source.read(n)
        self.count += len(chunk)
        return chunk


def snapshot_reader(data: bytes | bytearray | memoryview | Readable) -> Readable:
    """``data`` as something to read a snapshot from in order: itself if it reads, else a reader over it."""
    if isinstance(data, bytes | bytearray | memoryview):
        return _ViewReader(memoryview(data))
    return data


@dataclass(slots=True)
class _Restored:
    """A decoded, checked snapshot, not yet in force."""

    rev: int = 0
    compact_rev: int = 0
    keys: list[bytes] = field(default_factory=list)
    history: dict[bytes, list[_Entry]] = field(default_factory=dict)
    #: (live key, its lease id) for every live key with a lease.
    leased: list[tuple[bytes, int]] = field(default_factory=list)
    log_revs: array[int] = field(default_factory=lambda: array("q"))
    log_subs: array[int] = field(default_factory=lambda: array("q"))
    log_keys: list[bytes] = field(default_factory=list)
    log_visit: bytearray = field(default_factory=bytearray)
    leases: tuple[int, list[Lease]] | None = None


def _ints(column: Any, what: str) -> list[int]:
    """A column that must hold only ints (msgpack gives bool for true/false: refused)."""
    if type(column) is not list or (column and frozenset(map(type, column)) != _INT_ONLY):
        raise ValueError(f"snapshot column {what} must be a list of integers")
    return column


def _decode_snapshot(source: Readable) -> _Restored:
    counted = _CountingReader(source)
    unpacker = msgpack.Unpacker(counted, read_size=_SNAPSHOT_READ_BYTES, raw=False, max_buffer_size=2**31 - 1)
    fields = unpacker.read_map_header()
    names: list[str] = []
    out = _Restored()
    # (main, sub, key) columns of the entries above the compacted revision; see _finish_log.
    log_rows: tuple[list[int], list[int], list[bytes], list[int]] = ([], [], [], [])
    for _ in range(fields):
        name = unpacker.unpack()
        names.append(name)
        if tuple(names) != _SNAPSHOT_FIELDS[: len(names)]:
            raise ValueError(f"snapshot fields {names} are not {list(_SNAPSHOT_FIELDS)}")
        if name == "format":
            fmt = unpacker.unpack()
            if fmt != SNAPSHOT_FORMAT or type(fmt) is not int:
                raise ValueError(f"unknown snapshot format {fmt!r} (this kvdisco reads format {SNAPSHOT_FORMAT})")
        elif name == "rev":
            out.rev = _strict(unpacker.unpack(), int)
        elif name == "compact_rev":
            out.compact_rev = _strict(unpacker.unpack(), int)
            if not 0 <= out.compact_rev <= out.rev or out.rev < 1:
                raise ValueError(f"compact_rev={out.compact_rev} rev={out.rev}")
        elif name == "pages":
            for _ in range(unpacker.read_array_header()):
                _decode_page(unpacker.unpack(), out, log_rows)
        else:
            out.leases = _decode_leases(unpacker.unpack())
    if len(names) < 4:
        raise ValueError(f"snapshot fields {names} are not {list(_SNAPSHOT_FIELDS)}")
    if unpacker.tell() != counted.count or counted.read(1):
        raise ValueError("bytes after the snapshot")
    _finish_log(out, *log_rows)
    return out


def _decode_page(page: Any, out: _Restored, log_rows: tuple[list[int], list[int], list[bytes], list[int]]) -> None:
    """Check one page (see KVStore.snapshot) and add its keys and histories to ``out``."""
    if type(page) is not list or len(page) != 8:
        raise ValueError("a snapshot page must be an array of 8 columns")
    keys, raw_counts, raw_mains, raw_subs, raw_creates, raw_versions, values, raw_leases = page
    counts = _ints(raw_counts, "counts")
    mains, subs = _ints(raw_mains, "mains"), _ints(raw_subs, "subs")
    creates, versions, leases = (
        _ints(raw_creates, "creates"),
        _ints(raw_versions, "versions"),
        _ints(raw_leases, "leases"),
    )
    if type(keys) is not list or not keys or frozenset(map(type, keys)) != _BYTES_ONLY or not all(keys):
        raise ValueError("snapshot keys must be a non-empty list of non-empty byte strings")
    if type(values) is not list or not frozenset(map(type, values)) <= _BYTES_OR_NONE:
        raise ValueError("snapshot values must be byte strings or nil")
    if not all(map(operator.lt, keys, keys[1:])) or (out.keys and out.keys[-1] >= keys[0]):
        raise ValueError("snapshot keys not sorted or duplicated")
    n = len(mains)
    if len(counts) != len(keys) or min(counts) < 1 or sum(counts) != n:
        raise ValueError("snapshot history counts do not match the keys and columns")
    if any(len(col) != n for col in (subs, creates, versions, values, leases)):
        raise ValueError("snapshot columns differ in length")
    if min(mains) < 1 or max(mains) > out.rev or min(subs) < 0:
        raise ValueError(f"snapshot revisions outside [1, {out.rev}] or negative sub revisions")
    if max(subs) > _SUB_SORT_MAX:
        raise ValueError(f"sub revision above {_SUB_SORT_MAX}")
    # Most keys have one history entry (all of them after a bulk load). Each step below is a C loop over
    # the page, and only the keys with more entries (``multi``) take a Python loop: loops per key had
    # taken a third of a restore (1.0 of 3.0 s at a million keys).
    starts = list(itertools.accumulate(counts[:-1], initial=0))  # the index of each key's first entry
    multi = list(itertools.compress(range(len(keys)), map((1).__lt__, counts)))
    entry_keys: list[bytes] = keys if not multi else []
    at = 0
    for k in multi:
        first, count = starts[k], counts[k]
        positions = list(zip(mains[first : first + count], subs[first : first + count], strict=True))
        if not all(map(operator.lt, positions, positions[1:])):
            raise ValueError(f"history of {keys[k]!r} out of order")
        entry_keys += keys[at:k]
        entry_keys += itertools.repeat(keys[k], count)
        at = k + 1
    if multi:
        entry_keys += keys[at:]
    # mod_revision is the entry's main revision and a new key's create_revision too: share the ints.
    creates = [m if c == m else c for c, m in zip(creates, mains, strict=True)]
    kvs: list[KeyValue | None] = _build_kvs(entry_keys, creates, mains, versions, values, leases)
    if None in values:  # tombstones
        kvs = [None if v is None else kv for kv, v in zip(kvs, values, strict=True)]
    entries: list[_Entry] = list(zip(mains, subs, kvs, strict=True))
    hists: list[list[_Entry]] = list(map(list, zip(entries if not multi else map(entries.__getitem__, starts))))
    for k in multi:
        hists[k] = entries[starts[k] : starts[k] + counts[k]]
    out.keys += keys
    out.history.update(zip(keys, hists, strict=True))
    if any(leases):
        for key, hist in zip(keys, hists, strict=True):
            kv = hist[-1][2]
            if kv is not None and kv.lease:
                out.leased.append((key, kv.lease))
    log_mains, log_subs, log_keys, log_visit = log_rows
    # As KVStore._append sets it: 0 for a put that begins its key's history, else 1. (A key whose older
    # entries were compacted away may get 0 where the writer had 1; that only skips a key with nothing
    # to drop, see KVStore.compact.)
    visit = bytearray(map(operator.is_, values, itertools.repeat(None)))
    for k in multi:
        visit[starts[k] + 1 : starts[k] + counts[k]] = b"\x01" * (counts[k] - 1)
    above = list(map(out.compact_rev.__lt__, mains))
    if all(above):
        log_mains += mains
        log_subs += subs
        log_keys += entry_keys
        log_visit += visit
    elif any(above):
        log_mains += itertools.compress(mains, above)
        log_subs += itertools.compress(subs, above)
        log_keys += itertools.compress(entry_keys, above)
        log_visit += itertools.compress(visit, above)


#: KeyValue's fields in order, as _build_kvs takes them.
_KV_FIELDS = ("key", "create_revision", "mod_revision", "version", "value", "lease")
if KeyValue._fields != _KV_FIELDS:
    raise RuntimeError(f"KeyValue's fields changed: update _KV_FIELDS and _build_kvs ({KeyValue._fields})")


def _build_kvs(*columns: list[Any]) -> list[KeyValue | None]:
    """KeyValues from columns (one per field, in _KV_FIELDS order), built in C loops: each row that
    zip makes becomes a KeyValue through tuple.__new__, without a Python call per key."""
    return list(map(tuple.__new__, itertools.repeat(KeyValue), zip(*columns, strict=True)))


def _finish_log(out: _Restored, mains: list[int], subs: list[int], keys: list[bytes], visit: list[int]) -> None:
    """The write log: the entries above the compacted revision in (main, sub) order."""
    positions = list(map(operator.or_, map(operator.lshift, mains, itertools.repeat(32)), subs))
    order = sorted(range(len(positions)), key=positions.__getitem__)
    out.log_revs = array("q", map(mains.__getitem__, order))
    out.log_subs = array("q", map(subs.__getitem__, order))
    out.log_keys = list(map(keys.__getitem__, order))
    out.log_visit = bytearray(map(visit.__getitem__, order))


def _decode_leases(raw: Any) -> tuple[int, list[Lease]]:
    raw_next, raw_leases = raw
    next_id = _strict(raw_next, int)
    leases: list[Lease] = []
    for raw_id, raw_ttl, raw_remaining in raw_leases:
        remaining = None if raw_remaining is None else _strict(raw_remaining, int)
        leases.append(Lease(_strict(raw_id, int), _strict(raw_ttl, int), remaining))
    ids = [lease.id for lease in leases]
    if any(a >= b for a, b in itertools.pairwise(ids)) or any(i <= 0 or i >= next_id for i in ids):
        raise ValueError("lease ids not sorted, not positive or not below the next id")
    if any(lease.ttl <= 0 or (lease.remaining_ttl is not None and lease.remaining_ttl <= 0) for lease in leases):
        raise ValueError("lease TTLs must be positive")
    return next_id, leases
