"""The wire form of write commands, and the Raft state machine that applies them to the store."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdisco.mvcc import (
    CompactResult,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    PutResult,
    RangeResult,
    RequestDeleteRange,
    RequestOp,
    RequestPut,
    RequestRange,
    RequestTxn,
    SnapshotError,
    SortOrder,
    SortTarget,
    TxnResult,
)
from kvdisco.mvcc.commands import COMMAND_FORMAT, TXN_DEPTH_MAX, Command, RequestCompact, decode_command, encode_command
from kvdisco.mvcc.errors import CODE_INVALID_ARGUMENT, CODE_OUT_OF_RANGE
from kvdisco.mvcc.machine import ApplyError, KVMachine
from kvdisco.raft.node import StateMachine

INT64 = st.integers(-(2**63), 2**63 - 1)
KEYS = st.binary(max_size=6)

ranges = st.builds(
    RequestRange,
    KEYS,
    KEYS,
    INT64,
    INT64,
    st.sampled_from(SortOrder),
    st.sampled_from(SortTarget),
    st.booleans(),
    st.booleans(),
    INT64,
    INT64,
    INT64,
    INT64,
)
puts = st.builds(RequestPut, KEYS, st.binary(max_size=8), INT64, st.booleans(), st.booleans(), st.booleans())
deletes = st.builds(RequestDeleteRange, KEYS, KEYS, st.booleans())


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(CompareTarget))
    operand: int | bytes = draw(st.binary(max_size=6)) if target == CompareTarget.VALUE else draw(INT64)
    return Compare(draw(KEYS), target, draw(st.sampled_from(CompareResult)), operand, draw(KEYS))


def _txns(children: st.SearchStrategy[RequestOp]) -> st.SearchStrategy[RequestTxn]:
    ops = st.lists(children, max_size=3).map(tuple)
    return st.builds(RequestTxn, st.lists(compares(), max_size=3).map(tuple), ops, ops)


txn_ops: st.SearchStrategy[RequestOp] = st.recursive(ranges | puts | deletes, _txns, max_leaves=12)
commands: st.SearchStrategy[Command] = st.one_of(puts, deletes, _txns(txn_ops), st.builds(RequestCompact, INT64))

#: Anything msgpack packs, of any shape.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)


def _decode_only_value_error(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except ValueError:
        return
    # What does decode is a real command and encodes again (perhaps in a shorter form).
    assert decode_command(encode_command(cmd)) == cmd


# --- round trip ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands)
def test_round_trip_is_exact(cmd: Command) -> None:
    data = encode_command(cmd)
    back = decode_command(data)
    assert back == cmd
    assert type(back) is type(cmd)
    assert encode_command(back) == data


def test_round_trip_keeps_enum_types_and_every_field() -> None:
    rng = RequestRange(b"a", b"z", 5, 7, SortOrder.DESCEND, SortTarget.MOD, True, False, 1, 2, 3, 4)
    cmp = Compare(b"k", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"v", b"kz")
    txn = RequestTxn(
        (cmp,), (rng, RequestPut(b"p", b"v", 9, True, False, True)), (RequestDeleteRange(b"d", b"e", True),)
    )
    back = decode_command(encode_command(txn))
    assert back == txn
    assert isinstance(back, RequestTxn)
    r = back.success[0]
    assert isinstance(r, RequestRange)
    assert type(r.sort_order) is SortOrder and type(r.sort_target) is SortTarget
    assert type(back.compares[0].target) is CompareTarget and type(back.compares[0].result) is CompareResult


def test_encoding_is_compact() -> None:
    assert len(encode_command(RequestPut(b"key", b"value"))) - len(b"keyvalue") <= 9
    assert len(encode_command(RequestCompact(5))) <= 4


def test_nesting_up_to_the_limit_round_trips_and_beyond_is_refused() -> None:
    def nested(depth: int) -> RequestTxn:
        txn = RequestTxn()
        for _ in range(depth - 1):
            txn = RequestTxn(success=(txn,))
        return txn

    deepest = nested(TXN_DEPTH_MAX)
    assert decode_command(encode_command(deepest)) == deepest
    with pytest.raises(ValueError):
        encode_command(nested(TXN_DEPTH_MAX + 1))
    # Hand-built bytes nested too deep are refused too (by us or by msgpack's own stack limit).
    raw: list[Any] = [3, [], [], []]
    for _ in range(TXN_DEPTH_MAX):
        raw = [3, [], [raw], []]
    with pytest.raises(ValueError):
        decode_command(msgpack.packb([COMMAND_FORMAT, *raw], use_bin_type=True))
    for _ in range(2000):
        raw = [3, [], [raw], []]
    with pytest.raises(ValueError):
        decode_command(msgpack.packb([COMMAND_FORMAT, *raw], use_bin_type=True))


# --- what encode refuses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        RequestRange(b"k"),  # reads are not write commands
        b"raw bytes",
        None,
        RequestPut(b"k", lease=2**63),
        RequestPut(b"k", lease=-(2**63) - 1),
        RequestPut(b"k", lease=True),
        RequestPut("k"),  # type: ignore[arg-type]
        RequestPut(b"k", bytearray(b"v")),  # type: ignore[arg-type]
        RequestPut(b"k", prev_kv=1),  # type: ignore[arg-type]
        RequestCompact(2**64),
        RequestTxn(success=(RequestCompact(1),)),  # type: ignore[arg-type]
        RequestTxn(success=[RequestPut(b"k")]),  # type: ignore[arg-type]
        RequestTxn(compares=(RequestPut(b"k"),)),  # type: ignore[arg-type]
        RequestTxn(success=(RequestRange(b"k", sort_order=7),)),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_cannot_be_carried(req: Any) -> None:
    with pytest.raises(ValueError):
        encode_command(req)


# --- what decode refuses ------------------------------------------------------------------


def _pack(*items: Any) -> bytes:
    data: bytes = msgpack.packb(list(items), use_bin_type=True)
    return data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x93",  # truncated array
        encode_command(RequestPut(b"k")) + b"\x00",  # trailing data
        msgpack.packb({"put": 1}),
        _pack(COMMAND_FORMAT),
        _pack(2, 1, b"k", b"v", 0, 0),  # unknown format
        _pack(True, 1, b"k", b"v", 0, 0),
        _pack(COMMAND_FORMAT, 9, b"k"),  # unknown tag
        _pack(COMMAND_FORMAT, 0, b"k", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0),  # top-level range
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 0),  # too few fields
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 0, 0, 0),  # too many fields
        _pack(COMMAND_FORMAT, 1, "k", b"v", 0, 0),  # str key
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 1.0, 0),  # float lease
        _pack(COMMAND_FORMAT, 1, b"k", b"v", False, 0),  # bool lease
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 2**64 - 1, 0),  # beyond int64
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 0, 8),  # unknown flag
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 0, -1),
        _pack(COMMAND_FORMAT, 1, b"k", "v", 0, 0),  # str value
        _pack(COMMAND_FORMAT, 1, b"k", b"v", 0, True),  # bool flags
        _pack(COMMAND_FORMAT, True, b"k", b"v", 0, 0),  # bool tag, equal to the put tag
        _pack(COMMAND_FORMAT, 3, [], [[1, b"k", 5, 0, 0]], []),  # a put in a txn with an int value
        _pack(COMMAND_FORMAT, 3, [], [[1, b"k", b"v", 0, 8]], []),  # ... with an unknown flag
        _pack(COMMAND_FORMAT, 2, b"k", b"", 2),
        _pack(COMMAND_FORMAT, 4),
        _pack(COMMAND_FORMAT, 4, 1, 2),
        _pack(COMMAND_FORMAT, 4, None),
        _pack(COMMAND_FORMAT, 3, (), [5], []),  # an op that is not an array
        _pack(COMMAND_FORMAT, 3, [[b"k", 3, 0, 5, b""]], [], []),  # VALUE compare with an int operand
        _pack(COMMAND_FORMAT, 3, [[b"k", 0, 0, b"v", b""]], [], []),  # VERSION compare with bytes
        _pack(COMMAND_FORMAT, 3, [[b"k", 9, 0, 1, b""]], [], []),  # unknown target
        _pack(COMMAND_FORMAT, 3, [[b"k", 0, 9, 1, b""]], [], []),  # unknown result
        _pack(COMMAND_FORMAT, 3, [[b"k", 0, 0, 1]], [], []),  # short compare
        _pack(COMMAND_FORMAT, 3, [], [[0, b"k", b"", 0, 0, 5, 0, 0, 0, 0, 0, 0]], []),  # bad sort order
        _pack(COMMAND_FORMAT, 3, [], [[4, 1]], []),  # compact inside a txn
        _pack(COMMAND_FORMAT, 3, [], [[]], []),  # empty op
        _pack(COMMAND_FORMAT, 3, [], {"a": 1}, []),
        msgpack.packb([COMMAND_FORMAT, msgpack.ExtType(1, b"x")]),
        msgpack.packb([COMMAND_FORMAT, 1, b"k", b"v", 0, 0], use_bin_type=False),  # bytes as str: not bin
        b"\x96\x01\x01\xa2\xff\xfe\xc4\x00\x00\x00",  # invalid utf-8 in a str
        b"\x92\x01\xc7\x0c\xff" + b"\x00" * 12,  # a malformed timestamp extension
    ],
)
def test_decode_refuses_malformed_commands(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_command(data)


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(ValueError):
        decode_command("text")  # type: ignore[arg-type]


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_value_error(data: bytes) -> None:
    _decode_only_value_error(data)


@settings(max_examples=500, deadline=None)
@given(msgpack_values)
def test_random_msgpack_raises_only_value_error(value: Any) -> None:
    _decode_only_value_error(msgpack.packb(value, use_bin_type=True))
    _decode_only_value_error(msgpack.packb([COMMAND_FORMAT, value], use_bin_type=True))
    if isinstance(value, list):
        _decode_only_value_error(msgpack.packb([COMMAND_FORMAT, *value], use_bin_type=True))


def _mutate(tree: Any, data: st.DataObject) -> Any:
    """``tree`` with one node, chosen by walking down at random, replaced by a random value."""
    if not isinstance(tree, list) or not tree or data.draw(st.integers(0, 3)) == 0:
        return data.draw(msgpack_values)
    i = data.draw(st.integers(0, len(tree) - 1))
    how = data.draw(st.sampled_from(["descend", "drop", "dup"]))
    out = list(tree)
    if how == "drop":
        del out[i]
    elif how == "dup":
        out.insert(i, out[i])
    else:
        out[i] = _mutate(out[i], data)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.data())
def test_mutated_valid_commands_raise_only_value_error(cmd: Command, data: st.DataObject) -> None:
    tree = msgpack.unpackb(encode_command(cmd), raw=False)
    _decode_only_value_error(msgpack.packb(_mutate(tree, data), use_bin_type=True))
    raw = bytearray(encode_command(cmd))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    _decode_only_value_error(bytes(raw[: data.draw(st.integers(0, len(raw)))]))
    _decode_only_value_error(bytes(raw))


# --- the state machine ----------------------------------------------------------------------


def _apply(m: KVMachine, index: int, cmd: Command) -> Any:
    return m.apply(index, encode_command(cmd))


def test_machine_is_a_state_machine() -> None:
    sm: StateMachine = KVMachine()
    assert sm.snapshot()


def test_apply_runs_each_kind_of_command() -> None:
    m = KVMachine()
    assert _apply(m, 1, RequestPut(b"a", b"1")) == PutResult(
        2, events=(Event(EventType.PUT, KeyValue(b"a", 2, 2, 1, b"1"), None),)
    )
    res = _apply(m, 2, RequestPut(b"a", b"2", prev_kv=True))
    assert isinstance(res, PutResult) and res.revision == 3
    assert res.prev_kv == KeyValue(b"a", 2, 2, 1, b"1")
    txn = RequestTxn(
        (Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"2"),),
        (RequestPut(b"b", b"x"), RequestRange(b"a", b"c")),
        (RequestDeleteRange(b"a"),),
    )
    res = _apply(m, 3, txn)
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 4
    assert isinstance(res.responses[1], RangeResult)
    assert [kv.key for kv in res.responses[1].kvs] == [b"a", b"b"]
    res = _apply(m, 4, txn)  # b"a" is still "2": the success branch again
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 5
    res = _apply(m, 5, RequestDeleteRange(b"a", b"c", prev_kv=True))
    assert isinstance(res, DeleteResult) and res.deleted == 2 and res.revision == 6
    assert [kv.key for kv in res.prev_kvs] == [b"a", b"b"]
    res = _apply(m, 6, txn)
    assert isinstance(res, TxnResult) and not res.succeeded and res.revision == 6  # nothing to delete
    assert _apply(m, 7, RequestCompact(4)) == CompactResult(6)
    assert m.store.compact_revision == 4
    assert m.applied_index == 7


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"garbage", CODE_INVALID_ARGUMENT),
        (b"", CODE_INVALID_ARGUMENT),
        (encode_command(RequestPut(b"")), CODE_INVALID_ARGUMENT),  # empty key
        (encode_command(RequestTxn(success=(RequestPut(b"a"), RequestPut(b"a")))), CODE_INVALID_ARGUMENT),
        (encode_command(RequestPut(b"zz", ignore_value=True)), CODE_INVALID_ARGUMENT),  # key not found
        (encode_command(RequestCompact(99)), CODE_OUT_OF_RANGE),  # future revision
        (encode_command(RequestCompact(1)), CODE_OUT_OF_RANGE),  # already compacted
        (encode_command(RequestTxn(success=(RequestRange(b"a", revision=1),))), CODE_OUT_OF_RANGE),  # compacted
    ],
)
def test_bad_commands_return_apply_error_and_change_nothing(command: bytes, code: int) -> None:
    m = KVMachine()
    _apply(m, 1, RequestPut(b"a", b"1"))
    _apply(m, 2, RequestPut(b"b", b"1"))
    _apply(m, 3, RequestCompact(2))
    before = m.store.snapshot()
    res = m.apply(4, command)
    assert isinstance(res, ApplyError)
    assert res.code == code and res.message
    assert m.store.snapshot() == before
    assert m.applied_index == 4


def test_snapshot_restore_round_trip_keeps_state_and_applied_index() -> None:
    m = KVMachine()
    for i in range(1, 6):
        _apply(m, i, RequestPut(b"k%d" % (i % 2), b"v%d" % i))
    data = m.snapshot()
    other = KVMachine()
    store = other.store
    other.restore(data)
    assert other.store is store  # readers holding the store see the restored state
    assert other.applied_index == 5
    assert other.snapshot() == data
    assert other.store.range(b"k", b"l").kvs == m.store.range(b"k", b"l").kvs
    assert _apply(other, 6, RequestPut(b"x")) == _apply(m, 6, RequestPut(b"x"))
    assert other.snapshot() == m.snapshot()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([2, 1, KVMachine().store.snapshot()]),
        msgpack.packb([1, -1, KVMachine().store.snapshot()]),
        msgpack.packb([1, True, KVMachine().store.snapshot()]),
        msgpack.packb([1, 1, "text"]),
        msgpack.packb([1, 1]),
        msgpack.packb([1, 1, b"not a store snapshot"], use_bin_type=True),
        msgpack.packb({"a": 1}),
    ],
)
def test_restore_of_a_bad_snapshot_raises_and_changes_nothing(data: bytes) -> None:
    m = KVMachine()
    _apply(m, 1, RequestPut(b"a", b"1"))
    before = m.snapshot()
    with pytest.raises(SnapshotError):
        m.restore(data)
    assert m.snapshot() == before


small_keys = st.sampled_from([b"", b"a", b"b", b"c"])
# Requests are named tuples: st.builds would draw their defaulted fields too, so the lambdas
# and maps below pass only the fields these strategies mean to vary.
small_cmds: st.SearchStrategy[Command] = st.one_of(
    st.builds(RequestPut, small_keys, st.binary(max_size=2), st.integers(0, 2), st.booleans(), st.booleans()),
    st.builds(RequestDeleteRange, small_keys, st.sampled_from([b"", b"b", b"\0"]), st.booleans()),
    st.builds(RequestCompact, st.integers(0, 12)),
    st.builds(
        RequestTxn,
        st.lists(
            st.builds(
                Compare, small_keys, st.just(CompareTarget.VERSION), st.sampled_from(CompareResult), st.integers(0, 3)
            ),
            max_size=2,
        ).map(tuple),
        st.lists(
            st.builds(lambda k, v: RequestPut(k, v), small_keys, st.binary(max_size=2)) | small_keys.map(RequestRange),
            max_size=3,
        ).map(tuple),
        st.lists(small_keys.map(RequestDeleteRange), max_size=2).map(tuple),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(small_cmds | st.binary(max_size=4), max_size=30), st.data())
def test_machines_fed_the_same_commands_agree(cmds: list[Command | bytes], data: st.DataObject) -> None:
    entries = [c if isinstance(c, bytes) else encode_command(c) for c in cmds]
    a, b = KVMachine(), KVMachine()
    cut = data.draw(st.integers(0, len(entries)))
    late = KVMachine()
    for index, entry in enumerate(entries, start=1):
        ra = a.apply(index, entry)
        rb = b.apply(index, entry)
        assert ra == rb
        assert isinstance(ra, PutResult | DeleteResult | TxnResult | CompactResult | ApplyError)
        if index == cut:
            late.restore(a.snapshot())
        elif index > cut:
            assert late.apply(index, entry) == ra
    assert a.snapshot() == b.snapshot() == late.snapshot()
    assert a.applied_index == b.applied_index == late.applied_index == len(entries)
