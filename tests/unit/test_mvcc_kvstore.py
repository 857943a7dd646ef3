"""The revisioned store against etcd v3's documented behaviour, then against a naive model."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdisco.mvcc import (
    CompactedError,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteResult,
    DuplicateKeyError,
    EmptyKeyError,
    Event,
    EventType,
    FutureRevisionError,
    InvalidArgumentError,
    KeyNotFoundError,
    KeyValue,
    KVStore,
    LeaseProvidedError,
    MvccError,
    PutResult,
    RangeResult,
    RequestDeleteRange,
    RequestOp,
    RequestPut,
    RequestRange,
    RequestTooLargeError,
    RequestTxn,
    SnapshotError,
    SortOrder,
    SortTarget,
    TooManyOpsError,
    TxnResult,
    ValueProvidedError,
)
from kvdisco.mvcc.limits import KEY_BYTES_MAX, TXN_OPS_MAX, VALUE_BYTES_MAX

EQ, GT, LT, NE = CompareResult.EQUAL, CompareResult.GREATER, CompareResult.LESS, CompareResult.NOT_EQUAL


def keys(res: RangeResult) -> list[bytes]:
    return [kv.key for kv in res.kvs]


def filled(*pairs: tuple[bytes, bytes]) -> KVStore:
    s = KVStore()
    for k, v in pairs:
        s.put(k, v)
    return s


# --- revisions, versions, tombstones ----------------------------------------------------------


def test_fresh_store_is_at_revision_one_and_empty() -> None:
    s = KVStore()
    assert s.revision == 1
    assert s.range(b"\0", b"\0") == RangeResult((), 0, False, 1)


def test_put_delete_put_versions_and_revisions() -> None:
    s = KVStore()
    assert s.put(b"k", b"v1").revision == 2
    assert s.put(b"k", b"v2").revision == 3
    assert s.range(b"k").kvs == (KeyValue(b"k", 2, 3, 2, b"v2"),)
    d = s.delete_range(b"k")
    assert (d.revision, d.deleted) == (4, 1)
    assert s.range(b"k").kvs == ()
    assert s.put(b"k", b"v3").revision == 5
    assert s.range(b"k").kvs == (KeyValue(b"k", 5, 5, 1, b"v3"),)


def test_delete_of_nothing_does_not_raise_revision() -> None:
    s = filled((b"a", b"1"))
    d = s.delete_range(b"zz", b"zzz")
    assert d == DeleteResult(2, 0, (), ())
    assert s.revision == 2
    s.delete_range(b"a")
    assert s.delete_range(b"a").deleted == 0
    assert s.revision == 3


def test_put_prev_kv_and_lease() -> None:
    s = KVStore()
    assert s.put(b"k", b"1", prev_kv=True).prev_kv is None
    r = s.put(b"k", b"2", lease=7, prev_kv=True)
    assert r.prev_kv == KeyValue(b"k", 2, 2, 1, b"1")
    assert s.put(b"k", b"3").prev_kv is None  # only when asked
    assert s.range(b"k", revision=3).kvs[0].lease == 7
    assert s.range(b"k").kvs[0].lease == 0


def test_delete_range_prev_kvs() -> None:
    s = filled((b"a", b"1"), (b"b", b"2"), (b"c", b"3"))
    d = s.delete_range(b"a", b"c", prev_kv=True)
    assert d.deleted == 2
    assert [kv.value for kv in d.prev_kvs] == [b"1", b"2"]
    assert keys(s.range(b"\0", b"\0")) == [b"c"]
    assert s.delete_range(b"c").prev_kvs == ()


def test_ignore_value_and_ignore_lease() -> None:
    s = KVStore()
    with pytest.raises(KeyNotFoundError) as ei:
        s.put(b"k", ignore_value=True)
    assert ei.value.code == 3 and str(ei.value) == "etcdserver: key not found"
    with pytest.raises(KeyNotFoundError):
        s.put(b"k", b"v", ignore_lease=True)
    assert s.revision == 1
    s.put(b"k", b"v", lease=5)
    s.put(b"k", ignore_value=True, lease=6)
    assert s.range(b"k").kvs[0] == KeyValue(b"k", 2, 3, 2, b"v", 6)
    s.put(b"k", b"w", ignore_lease=True)
    assert s.range(b"k").kvs[0] == KeyValue(b"k", 2, 4, 3, b"w", 6)
    with pytest.raises(ValueProvidedError, match="etcdserver: value is provided"):
        s.put(b"k", b"x", ignore_value=True)
    with pytest.raises(LeaseProvidedError, match="etcdserver: lease is provided"):
        s.put(b"k", lease=1, ignore_lease=True)
    s.delete_range(b"k")
    with pytest.raises(KeyNotFoundError):
        s.put(b"k", ignore_value=True)
    assert s.revision == 5


def test_empty_and_oversized_keys_and_values_are_rejected() -> None:
    s = KVStore()
    for call in (lambda: s.put(b"", b"v"), lambda: s.range(b""), lambda: s.delete_range(b"")):
        with pytest.raises(EmptyKeyError, match="etcdserver: key is not provided"):
            call()
    with pytest.raises(RequestTooLargeError):
        s.put(b"k" * (KEY_BYTES_MAX + 1))
    with pytest.raises(RequestTooLargeError):
        s.put(b"k", b"v" * (VALUE_BYTES_MAX + 1))
    assert s.revision == 1


# --- range ------------------------------------------------------------------------------------


def test_range_end_forms() -> None:
    s = filled((b"a", b""), (b"ab", b""), (b"abc", b""), (b"b", b""), (b"c", b""))
    assert keys(s.range(b"ab")) == [b"ab"]
    assert keys(s.range(b"zz")) == []
    assert keys(s.range(b"ab", b"ac")) == [b"ab", b"abc"]  # prefix
    assert keys(s.range(b"ab", b"\0")) == [b"ab", b"abc", b"b", b"c"]  # >= key
    assert keys(s.range(b"\0", b"\0")) == [b"a", b"ab", b"abc", b"b", b"c"]  # all
    assert keys(s.range(b"a", b"b")) == [b"a", b"ab", b"abc"]  # half-open
    assert keys(s.range(b"c", b"a")) == []  # end before start


def test_limit_more_count_and_count_only_keys_only() -> None:
    s = filled((b"a", b"1"), (b"b", b"2"), (b"c", b"3"))
    r = s.range(b"a", b"\0", limit=2)
    assert (keys(r), r.count, r.more, r.revision) == ([b"a", b"b"], 3, True, 4)
    r = s.range(b"a", b"\0", limit=3)
    assert (r.count, r.more) == (3, False)
    r = s.range(b"a", b"\0", count_only=True, limit=1)
    assert (r.kvs, r.count, r.more) == ((), 3, False)
    r = s.range(b"a", b"\0", keys_only=True)
    assert [kv.value for kv in r.kvs] == [b"", b"", b""]
    assert r.kvs[2].mod_revision == 4


def test_sort_orders_and_targets_then_limit() -> None:
    s = filled((b"a", b"z"), (b"b", b"y"), (b"c", b"x"))
    s.put(b"a", b"w")  # a: version 2, mod 5
    every = (b"\0", b"\0")
    assert keys(s.range(*every, sort_order=SortOrder.DESCEND)) == [b"c", b"b", b"a"]
    assert keys(s.range(*every, sort_target=SortTarget.VALUE)) == [b"a", b"c", b"b"]  # NONE+VALUE sorts ascending
    assert keys(s.range(*every, sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD)) == [b"a", b"c", b"b"]
    assert keys(s.range(*every, sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE)) == [b"a", b"b", b"c"]
    assert keys(s.range(*every, sort_order=SortOrder.DESCEND, sort_target=SortTarget.VERSION))[0] == b"a"
    r = s.range(*every, sort_order=SortOrder.DESCEND, sort_target=SortTarget.VALUE, limit=1)
    assert (keys(r), r.more, r.count) == ([b"b"], True, 3)  # limit applies after sorting


def test_invalid_sort_options_are_rejected() -> None:
    s = filled((b"a", b"1"))
    with pytest.raises(InvalidArgumentError, match="etcdserver: invalid sort option"):
        s.range(b"a", sort_order=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="etcdserver: invalid sort option"):
        s.txn([], [RequestPut(b"b"), RequestRange(b"a", sort_target=5)])  # type: ignore[arg-type]
    assert s.revision == 2


def test_mod_and_create_revision_filters() -> None:
    s = filled((b"a", b""), (b"b", b""), (b"c", b""))  # created at 2, 3, 4
    s.put(b"a", b"again")  # a mod 5
    every = (b"\0", b"\0")
    assert keys(s.range(*every, min_mod_revision=4)) == [b"a", b"c"]
    assert keys(s.range(*every, max_mod_revision=3)) == [b"b"]
    assert keys(s.range(*every, min_create_revision=3)) == [b"b", b"c"]
    assert keys(s.range(*every, max_create_revision=3)) == [b"a", b"b"]
    r = s.range(*every, min_mod_revision=5)
    assert r.count == 3  # etcd: count is taken before the filters


def test_historical_reads() -> None:
    s = KVStore()
    s.put(b"a", b"1")  # 2
    s.put(b"b", b"1")  # 3
    s.put(b"a", b"2")  # 4
    s.delete_range(b"b")  # 5
    assert s.range(b"a", revision=2).kvs == (KeyValue(b"a", 2, 2, 1, b"1"),)
    assert keys(s.range(b"\0", b"\0", revision=3)) == [b"a", b"b"]
    assert keys(s.range(b"\0", b"\0", revision=5)) == [b"a"]
    assert s.range(b"\0", b"\0", revision=1).count == 0
    assert s.range(b"a", revision=3).revision == 5  # the header carries the store revision
    with pytest.raises(FutureRevisionError) as ei:
        s.range(b"a", revision=6)
    assert (ei.value.code, str(ei.value)) == (11, "etcdserver: mvcc: required revision is a future revision")


# --- compaction -------------------------------------------------------------------------------


def test_compaction_errors_and_what_survives() -> None:
    s = KVStore()
    s.put(b"a", b"1")  # 2
    s.put(b"b", b"1")  # 3
    s.delete_range(b"b")  # 4
    s.put(b"a", b"2")  # 5
    s.put(b"c", b"1")  # 6
    s.compact(5)
    assert s.compact_revision == 5
    with pytest.raises(CompactedError) as ei:
        s.range(b"a", revision=4)
    assert (ei.value.code, ei.value.compact_revision) == (11, 5)
    assert str(ei.value) == "etcdserver: mvcc: required revision has been compacted"
    assert s.range(b"a", revision=5).kvs == (KeyValue(b"a", 2, 5, 2, b"2"),)
    assert keys(s.range(b"\0", b"\0", revision=5)) == [b"a"]
    assert keys(s.range(b"\0", b"\0", revision=6)) == [b"a", b"c"]
    assert s._history.keys() == {b"a", b"c"}  # b's tombstone is gone, a kept its latest only
    assert len(s._history[b"a"]) == 1
    with pytest.raises(CompactedError):
        s.compact(5)
    with pytest.raises(CompactedError):
        s.compact(3)
    with pytest.raises(FutureRevisionError):
        s.compact(7)
    s.compact(6)
    assert s.range(b"a").kvs[0].version == 2  # compaction never changes the current state
    assert s.range(b"a", revision=0).count == 1


def test_compaction_keeps_history_after_the_compacted_revision() -> None:
    s = KVStore()
    s.put(b"a", b"1")  # 2
    s.put(b"a", b"2")  # 3
    s.delete_range(b"a")  # 4
    s.put(b"a", b"3")  # 5
    s.compact(3)
    assert s.range(b"a", revision=3).kvs[0].value == b"2"
    assert s.range(b"a", revision=4).kvs == ()
    assert s.range(b"a", revision=5).kvs == (KeyValue(b"a", 5, 5, 1, b"3"),)


# --- txn --------------------------------------------------------------------------------------


def test_txn_writes_share_one_revision_with_sub_revisions_and_events() -> None:
    s = filled((b"x", b"old"))
    r = s.txn(
        [],
        [RequestPut(b"a", b"1"), RequestDeleteRange(b"x"), RequestPut(b"b", b"2"), RequestRange(b"a", b"\0")],
    )
    assert r.succeeded and r.revision == 3 and s.revision == 3
    assert [kv.mod_revision for kv in s.range(b"\0", b"\0").kvs] == [3, 3]
    assert [(e[0], e[1]) for e in s._history[b"b"]] == [(3, 2)]
    rng = r.responses[3]
    assert isinstance(rng, RangeResult) and keys(rng) == [b"a", b"b"]  # reads see earlier writes
    assert r.events == (
        Event(EventType.PUT, KeyValue(b"a", 3, 3, 1, b"1"), None),
        Event(EventType.DELETE, KeyValue(b"x", mod_revision=3), KeyValue(b"x", 2, 2, 1, b"old")),
        Event(EventType.PUT, KeyValue(b"b", 3, 3, 1, b"2"), None),
    )


def test_read_only_txn_does_not_raise_revision() -> None:
    s = filled((b"a", b"1"))
    r = s.txn([], [RequestRange(b"a"), RequestDeleteRange(b"nothing")])
    assert (r.revision, s.revision, r.events) == (2, 2, ())
    assert s.txn().revision == 2


def test_single_op_events() -> None:
    s = KVStore()
    assert s.put(b"a", b"1").events == (Event(EventType.PUT, KeyValue(b"a", 2, 2, 1, b"1"), None),)
    assert s.put(b"a", b"2").events[0].prev_kv == KeyValue(b"a", 2, 2, 1, b"1")
    d = s.delete_range(b"a", b"\0")
    assert d.events == (Event(EventType.DELETE, KeyValue(b"a", mod_revision=4), KeyValue(b"a", 2, 3, 2, b"2")),)
    assert s.delete_range(b"a").events == ()


@pytest.mark.parametrize(
    ("target", "result", "operand", "expected"),
    [
        (CompareTarget.VERSION, EQ, 2, True),
        (CompareTarget.VERSION, GT, 1, True),
        (CompareTarget.VERSION, LT, 2, False),
        (CompareTarget.VERSION, NE, 2, False),
        (CompareTarget.CREATE, EQ, 2, True),
        (CompareTarget.CREATE, LT, 3, True),
        (CompareTarget.MOD, EQ, 3, True),
        (CompareTarget.MOD, GT, 3, False),
        (CompareTarget.VALUE, EQ, b"v2", True),
        (CompareTarget.VALUE, LT, b"v3", True),
        (CompareTarget.VALUE, GT, b"v3", False),
        (CompareTarget.VALUE, NE, b"v1", True),
        (CompareTarget.LEASE, EQ, 9, True),
        (CompareTarget.LEASE, NE, 9, False),
    ],
)
def test_txn_compare_targets_and_results(
    target: CompareTarget, result: CompareResult, operand: int | bytes, expected: bool
) -> None:
    s = KVStore()
    s.put(b"k", b"v1")  # 2
    s.put(b"k", b"v2", lease=9)  # 3
    r = s.txn([Compare(b"k", target, result, operand)], [RequestPut(b"then")], [RequestPut(b"else")])
    assert r.succeeded is expected
    assert keys(s.range(b"then" if expected else b"else")) == [b"then" if expected else b"else"]


def test_compare_on_missing_key_and_over_ranges() -> None:
    s = filled((b"a1", b"x"), (b"a2", b"y"))
    miss = b"missing"
    assert s.txn([Compare(miss, CompareTarget.VERSION, EQ, 0)]).succeeded
    assert s.txn([Compare(miss, CompareTarget.CREATE, EQ, 0), Compare(miss, CompareTarget.LEASE, EQ, 0)]).succeeded
    assert not s.txn([Compare(miss, CompareTarget.VALUE, EQ, b"")]).succeeded
    assert not s.txn([Compare(miss, CompareTarget.VALUE, NE, b"x")]).succeeded
    assert s.txn([Compare(b"a", CompareTarget.VERSION, EQ, 1, b"b")]).succeeded  # every key holds
    assert not s.txn([Compare(b"a", CompareTarget.VALUE, EQ, b"x", b"b")]).succeeded  # a2 differs
    assert s.txn([Compare(b"a", CompareTarget.VALUE, GT, b"w", b"b")]).succeeded
    assert not s.txn(
        [Compare(b"a", CompareTarget.VERSION, EQ, 1), Compare(b"a1", CompareTarget.VERSION, EQ, 1)]
    ).succeeded
    with pytest.raises(InvalidArgumentError):
        Compare(b"k", CompareTarget.VALUE, EQ, 1)
    with pytest.raises(InvalidArgumentError):
        Compare(b"k", CompareTarget.MOD, EQ, b"1")
    with pytest.raises(InvalidArgumentError):
        Compare(b"k", 5, EQ, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        Compare(b"k", CompareTarget.MOD, 4, 1)  # type: ignore[arg-type]
    with pytest.raises(EmptyKeyError):
        s.txn([Compare(b"", CompareTarget.MOD, EQ, 1)])


def test_nested_txn_compares_see_the_state_before_the_txn() -> None:
    s = filled((b"flag", b"on"))
    inner = RequestTxn(
        (Compare(b"new", CompareTarget.VERSION, EQ, 0),),  # decided before the outer put runs
        (RequestPut(b"inner-then", b"1"), RequestRange(b"new")),
        (RequestPut(b"inner-else", b"1"),),
    )
    r = s.txn([Compare(b"flag", CompareTarget.VALUE, EQ, b"on")], [RequestPut(b"new", b"x"), inner])
    assert r.succeeded and s.revision == 3
    nested = r.responses[1]
    assert isinstance(nested, TxnResult) and nested.succeeded
    assert isinstance(nested.responses[1], RangeResult) and keys(nested.responses[1]) == [b"new"]
    assert keys(s.range(b"inner", b"inner.")) == [b"inner-then"]
    assert [e.kv.key for e in r.events] == [b"new", b"inner-then"]


def test_failure_branch_runs_when_a_compare_fails() -> None:
    s = KVStore()
    r = s.txn([Compare(b"k", CompareTarget.VERSION, GT, 0)], [RequestPut(b"k", b"then")], [RequestPut(b"k", b"else")])
    assert not r.succeeded
    assert s.range(b"k").kvs[0].value == b"else"
    assert isinstance(r.responses[0], PutResult) and r.responses[0].revision == 2


@pytest.mark.parametrize(
    "ops",
    [
        [RequestPut(b"a"), RequestPut(b"a")],
        [RequestPut(b"a"), RequestDeleteRange(b"a")],
        [RequestDeleteRange(b"\0", b"\0"), RequestPut(b"zz")],
        [RequestDeleteRange(b"a", b"c"), RequestPut(b"b")],
        [RequestPut(b"a"), RequestTxn((), (RequestPut(b"a"),), ())],
        [RequestDeleteRange(b"a", b"b"), RequestTxn((), (), (RequestPut(b"a1"),))],
        [RequestTxn((), (RequestDeleteRange(b"a"),), ()), RequestPut(b"a")],
        [RequestTxn((), (), (RequestPut(b"a"),)), RequestTxn((), (RequestPut(b"a"),), ())],
    ],
)
def test_duplicate_keys_are_rejected_and_change_nothing(ops: list[RequestOp]) -> None:
    s = filled((b"a", b"1"))
    before = s.snapshot()
    with pytest.raises(DuplicateKeyError) as ei:
        s.txn([], [RequestPut(b"ok")], ops)  # checked even on the branch that would not run
    assert (ei.value.code, str(ei.value)) == (3, "etcdserver: duplicate key given in txn request")
    assert s.snapshot() == before


@pytest.mark.parametrize(
    "ops",
    [
        [RequestDeleteRange(b"a", b"c"), RequestDeleteRange(b"b", b"d")],  # overlapping deletes are fine
        [RequestTxn((), (RequestPut(b"a"),), (RequestPut(b"a"),))],  # then/else exclude each other
        [RequestPut(b"a"), RequestDeleteRange(b"b"), RequestRange(b"a")],
    ],
)
def test_allowed_overlaps(ops: list[RequestOp]) -> None:
    s = filled((b"a", b""), (b"b", b""), (b"c", b""))
    assert s.txn([], ops).revision == 5


def test_too_many_ops_changes_nothing() -> None:
    s = KVStore()
    at_limit = [RequestPut(b"k%d" % i) for i in range(TXN_OPS_MAX)]
    assert s.txn([], at_limit).revision == 2
    with pytest.raises(TooManyOpsError) as ei:
        s.txn([], [*at_limit, RequestPut(b"one-more")])
    assert (ei.value.code, str(ei.value)) == (3, "etcdserver: too many operations in txn request")
    with pytest.raises(TooManyOpsError):
        s.txn([Compare(b"k", CompareTarget.VERSION, EQ, 0)] * (TXN_OPS_MAX + 1))
    # a nested txn gets what the parent's longest list leaves over (etcd's checkTxnRequest)
    nested = RequestTxn((), tuple(RequestPut(b"n%d" % i) for i in range(2)), ())
    with pytest.raises(TooManyOpsError):
        s.txn([], [*at_limit[:-1], nested])
    assert s.revision == 2


def test_txn_bad_range_or_ignore_value_changes_nothing() -> None:
    s = filled((b"a", b"1"))
    s.compact(2)
    bad: list[list[RequestOp]] = [
        [RequestPut(b"x"), RequestRange(b"a", revision=9)],
        [RequestPut(b"x"), RequestRange(b"a", revision=1)],
        [RequestPut(b"x"), RequestPut(b"missing", ignore_value=True)],
        [RequestPut(b"x"), RequestPut(b"", b"v")],
    ]
    for ops in bad:
        with pytest.raises(MvccError):
            s.txn([], ops)
    assert s.revision == 2 and keys(s.range(b"\0", b"\0")) == [b"a"]


# --- snapshot -------------------------------------------------------------------------------


def test_snapshot_restore_roundtrip_and_corruption() -> None:
    s = filled((b"a", b"1"), (b"b", b"2"))
    s.delete_range(b"a")
    s.put(b"b", b"3", lease=4)
    s.compact(3)
    data = s.snapshot()
    t = KVStore()
    t.restore(data)
    assert (t.revision, t.compact_revision) == (5, 3)
    assert t.snapshot() == data
    assert t.range(b"\0", b"\0", revision=3) == s.range(b"\0", b"\0", revision=3)
    assert t.range(b"\0", b"\0") == s.range(b"\0", b"\0")
    assert t.range(b"b").kvs[0] == KeyValue(b"b", 3, 5, 2, b"3", 4)
    with pytest.raises(CompactedError):
        t.range(b"b", revision=2)
    int_key = msgpack.packb({"format": 1, "rev": 3, "compact_rev": 0, "history": [[5, [[2, 0, None]]]]})
    for bad in (b"\xc1", msgpack.packb({"format": 99}), msgpack.packb({"format": 1}), int_key, b"\x01"):
        with pytest.raises(SnapshotError):
            t.restore(bad)
    unordered = msgpack.packb(
        {"format": 1, "rev": 3, "compact_rev": 0, "history": [[b"a", [[3, 0, None], [2, 0, None]]]]}
    )
    with pytest.raises(SnapshotError):
        t.restore(unordered)
    assert t.snapshot() == data  # a failed restore changed nothing


# --- model test -----------------------------------------------------------------------------

KEYS = [b"a", b"ab", b"b", b"b\0", b"c"]
END_KEYS = [b"", b"", b"b", b"c", b"\0", b"d"]


@dataclass
class Model:
    """The naive store: a full copy of the live keys at every revision."""

    states: list[dict[bytes, KeyValue]] = field(default_factory=lambda: [{}, {}])  # index = revision
    compacted: int = 0

    @property
    def rev(self) -> int:
        return len(self.states) - 1

    def select(self, state: dict[bytes, KeyValue], key: bytes, end: bytes) -> list[KeyValue]:
        if not end:
            return [state[key]] if key in state else []
        return [state[k] for k in sorted(state) if k >= key and (end == b"\0" or k < end)]

    def range(self, key: bytes, end: bytes, rev: int) -> tuple[KeyValue, ...]:
        if rev > self.rev:
            raise FutureRevisionError()
        if 0 < rev < self.compacted:
            raise CompactedError(self.compacted)
        return tuple(self.select(self.states[rev or self.rev], key, end))

    def write(self, ops: list[RequestOp]) -> tuple[list[object], list[Event]]:
        """Apply flat ops as one write transaction."""
        work, rev = dict(self.states[-1]), self.rev + 1
        out: list[object] = []
        events: list[Event] = []
        for op in ops:
            if isinstance(op, RequestPut):
                prev = work.get(op.key)
                kv = KeyValue(
                    op.key,
                    prev.create_revision if prev else rev,
                    rev,
                    prev.version + 1 if prev else 1,
                    op.value,
                    op.lease,
                )
                work[op.key] = kv
                events.append(Event(EventType.PUT, kv, prev))
                out.append(prev)
            elif isinstance(op, RequestDeleteRange):
                gone = self.select(work, op.key, op.range_end)
                for kv in gone:
                    del work[kv.key]
                    events.append(Event(EventType.DELETE, KeyValue(kv.key, mod_revision=rev), kv))
                out.append(gone)
            elif isinstance(op, RequestRange):
                out.append(self.select(work, op.key, op.range_end))
        if events:
            self.states.append(work)
        return out, events


# Requests are named tuples: st.builds would draw their defaulted fields too, so the lambdas
# and maps below pass only the fields these strategies mean to vary.
put_ops = st.builds(
    lambda k, v, lease: RequestPut(k, v, lease, prev_kv=True),
    st.sampled_from(KEYS),
    st.binary(max_size=2),
    st.integers(0, 2),
)
del_ops = st.builds(
    lambda k, end: RequestDeleteRange(k, end, prev_kv=True), st.sampled_from(KEYS), st.sampled_from(END_KEYS)
)
range_ops = st.builds(lambda k, end: RequestRange(k, end), st.sampled_from(KEYS), st.sampled_from(END_KEYS))
txn_op_lists = st.lists(st.one_of(put_ops, del_ops, range_ops), max_size=4)
actions = st.one_of(
    st.tuples(st.just("put"), put_ops),
    st.tuples(st.just("delete"), del_ops),
    st.tuples(st.just("range"), range_ops, st.integers(-1, 30)),
    st.tuples(st.just("compact"), st.integers(0, 30)),
    st.tuples(st.just("restore")),
    st.tuples(
        st.just("txn"),
        st.sampled_from(KEYS),
        st.sampled_from([CompareTarget.VERSION, CompareTarget.MOD]),
        st.sampled_from(list(CompareResult)),
        st.integers(0, 4),
        txn_op_lists,
        txn_op_lists,
    ),
)


def _has_duplicates(ops: list[RequestOp]) -> bool:
    puts = [op.key for op in ops if isinstance(op, RequestPut)]
    dels = [op for op in ops if isinstance(op, RequestDeleteRange)]
    covered = [
        k
        for k in puts
        for d in dels
        if d.key <= k and (k == d.key if not d.range_end else d.range_end == b"\0" or k < d.range_end)
    ]
    return len(set(puts)) != len(puts) or bool(covered)


def _check_flat(model: Model, ops: list[RequestOp], responses: tuple[object, ...], expected: list[object]) -> None:
    for op, got, want in zip(ops, responses, expected, strict=True):
        if isinstance(op, RequestPut):
            assert isinstance(got, PutResult) and got.prev_kv == want
        elif isinstance(op, RequestDeleteRange):
            assert isinstance(got, DeleteResult) and list(got.prev_kvs) == want and got.deleted == len(want)
        else:
            assert isinstance(got, RangeResult) and list(got.kvs) == want and got.count == len(want)


def _check_compacted(store: KVStore, rev: int) -> None:
    """Compaction touches only the keys written since the last one; every key must still end up trimmed."""
    assert store._keys == sorted(store._history)
    assert len(store._log_visit) == len(store._log_keys) == len(store._log_revs)
    for hist in store._history.values():
        at_or_below = [entry for entry in hist if entry[0] <= rev]
        assert len(at_or_below) <= 1 and all(value is not None for _, _, value in at_or_below)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, max_size=40))
def test_model(script: list[tuple[object, ...]]) -> None:
    store, model = KVStore(), Model()
    for action in script:
        kind = action[0]
        if kind == "put":
            op = action[1]
            assert isinstance(op, RequestPut)
            expected, events = model.write([op])
            r = store.put(op.key, op.value, lease=op.lease, prev_kv=True)
            assert (r.revision, r.prev_kv, list(r.events)) == (model.rev, expected[0], events)
        elif kind == "delete":
            op = action[1]
            assert isinstance(op, RequestDeleteRange)
            expected, events = model.write([op])
            d = store.delete_range(op.key, op.range_end, prev_kv=True)
            assert (d.revision, list(d.prev_kvs), list(d.events)) == (model.rev, expected[0], events)
        elif kind == "range":
            op, rev = action[1], action[2]
            assert isinstance(op, RequestRange) and isinstance(rev, int)
            try:
                want: object = model.range(op.key, op.range_end, rev)
            except MvccError as exc:
                want = type(exc)
            try:
                got: object = store.range(op.key, op.range_end, revision=rev).kvs
            except MvccError as exc:
                got = type(exc)
            assert got == want
        elif kind == "compact":
            rev = action[1]
            assert isinstance(rev, int)
            if rev <= model.compacted:
                with pytest.raises(CompactedError):
                    store.compact(rev)
            elif rev > model.rev:
                with pytest.raises(FutureRevisionError):
                    store.compact(rev)
            else:
                store.compact(rev)
                model.compacted = rev
                _check_compacted(store, rev)
        elif kind == "restore":
            data = store.snapshot()
            store = KVStore()
            store.restore(data)
            assert store.snapshot() == data
        else:
            _, key, target, result, operand, then_ops, else_ops = action
            assert isinstance(key, bytes) and isinstance(operand, int)
            assert isinstance(then_ops, list) and isinstance(else_ops, list)
            assert isinstance(target, CompareTarget) and isinstance(result, CompareResult)
            cmp = Compare(key, target, result, operand)
            if _has_duplicates(then_ops) or _has_duplicates(else_ops):
                before = store.snapshot()
                with pytest.raises(DuplicateKeyError):
                    store.txn([cmp], then_ops, else_ops)
                assert store.snapshot() == before
                continue
            cur = model.states[-1].get(key, KeyValue(key))
            actual = cur.version if target == CompareTarget.VERSION else cur.mod_revision
            ok = [actual == operand, actual > operand, actual < operand, actual != operand][result]
            expected, events = model.write(then_ops if ok else else_ops)
            t = store.txn([cmp], then_ops, else_ops)
            assert (t.succeeded, t.revision, list(t.events)) == (ok, model.rev, events)
            _check_flat(model, then_ops if ok else else_ops, t.responses, expected)
        assert store.revision == model.rev
    assert store.range(b"\0", b"\0").kvs == model.range(b"\0", b"\0", 0)
