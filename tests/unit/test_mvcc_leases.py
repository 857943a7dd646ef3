"""Leases: the lessor, their commands on the wire, and their effect on the store and machine."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdisco.mvcc import (
    ApplyError,
    DeleteResult,
    Event,
    EventType,
    InvalidArgumentError,
    KeyValue,
    KVMachine,
    KVStore,
    LeaseCheckpoint,
    LeaseCheckpointResult,
    LeaseGrant,
    LeaseGrantResult,
    LeaseNotFoundError,
    LeaseRevoke,
    LeaseRevokeResult,
    Lessor,
    PutResult,
    RequestDeleteRange,
    RequestPut,
    RequestTxn,
    SnapshotError,
    TxnResult,
    keepalive,
)
from kvdisco.mvcc.commands import COMMAND_FORMAT, Command, decode_command, encode_command
from kvdisco.mvcc.errors import CODE_FAILED_PRECONDITION, CODE_INVALID_ARGUMENT, CODE_NOT_FOUND, CODE_OUT_OF_RANGE
from kvdisco.mvcc.lessor import MAX_LEASE_TTL

INT64 = st.integers(-(2**63), 2**63 - 1)
lease_cmds: st.SearchStrategy[Command] = st.one_of(
    st.builds(LeaseGrant, INT64, INT64),
    st.builds(LeaseRevoke, INT64),
    st.builds(LeaseCheckpoint, st.lists(st.tuples(INT64, INT64), max_size=4).map(tuple)),
)


class Applier:
    """A machine fed encoded commands with increasing indexes."""

    def __init__(self) -> None:
        self.m = KVMachine()
        self.index = 0

    def __call__(self, cmd: Command) -> Any:
        self.index += 1
        return self.m.apply(self.index, encode_command(cmd))

    @property
    def store(self) -> KVStore:
        return self.m.store


def _keys(store: KVStore) -> list[bytes]:
    return [kv.key for kv in store.range(b"\0", b"\0").kvs]


# --- grant --------------------------------------------------------------------------------


def test_grant_with_an_id_and_with_id_zero() -> None:
    a = Applier()
    assert a(LeaseGrant(7, 30)) == LeaseGrantResult(7, 30)
    assert a(LeaseGrant(0, 10)) == LeaseGrantResult(8, 10)  # the counter is past every granted id
    assert a(LeaseGrant(0, 10)) == LeaseGrantResult(9, 10)
    assert a(LeaseGrant(3, 5)) == LeaseGrantResult(3, 5)
    assert a.store.leases() == (3, 7, 8, 9)
    assert a.store.lease_ttl_info(7) == (30, None, ())
    assert a.store.revision == 1  # leases do not move the store revision


def test_chosen_ids_are_never_reused() -> None:
    a = Applier()
    first = a(LeaseGrant(0, 10))
    assert isinstance(first, LeaseGrantResult)
    assert isinstance(a(LeaseRevoke(first.id)), LeaseRevokeResult)
    second = a(LeaseGrant(0, 10))
    assert isinstance(second, LeaseGrantResult) and second.id != first.id


def test_duplicate_id_is_refused_and_changes_nothing() -> None:
    a = Applier()
    a(LeaseGrant(5, 10))
    before = a.store.snapshot()
    res = a(LeaseGrant(5, 99))
    assert res == ApplyError(CODE_FAILED_PRECONDITION, "etcdserver: lease already exists")
    assert a.store.snapshot() == before
    assert a.store.lease_ttl_info(5)[0] == 10


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (LeaseGrant(-1, 10), CODE_INVALID_ARGUMENT),
        (LeaseGrant(1, MAX_LEASE_TTL + 1), CODE_OUT_OF_RANGE),
    ],
)
def test_bad_grants_are_refused(cmd: LeaseGrant, code: int) -> None:
    a = Applier()
    before = a.store.snapshot()
    res = a(cmd)
    assert isinstance(res, ApplyError) and res.code == code
    assert a.store.snapshot() == before and a.store.leases() == ()


def test_short_ttls_are_raised_to_the_minimum() -> None:
    m = KVMachine(min_lease_ttl=5)
    assert m.apply(1, encode_command(LeaseGrant(1, 2))) == LeaseGrantResult(1, 5)
    assert m.apply(2, encode_command(LeaseGrant(2, -3))) == LeaseGrantResult(2, 5)
    assert m.apply(3, encode_command(LeaseGrant(3, 6))) == LeaseGrantResult(3, 6)
    with pytest.raises(ValueError):
        Lessor(min_ttl=0)


def test_choosing_fails_cleanly_when_ids_run_out() -> None:
    a = Applier()
    a(LeaseGrant(2**63 - 1, 10))
    before = a.store.snapshot()
    res = a(LeaseGrant(0, 10))
    assert isinstance(res, ApplyError) and res.code == CODE_INVALID_ARGUMENT
    assert a.store.snapshot() == before


# --- puts and deletes with leases -----------------------------------------------------------


def test_put_with_an_unknown_lease_is_refused_and_changes_nothing() -> None:
    a = Applier()
    a(LeaseGrant(1, 10))
    a(RequestPut(b"k", b"v", lease=1))
    before = a.store.snapshot()
    for cmd in (
        RequestPut(b"k", b"w", lease=2),
        RequestPut(b"new", lease=2),
        RequestTxn(success=(RequestPut(b"a"), RequestPut(b"b", lease=2))),
    ):
        res = a(cmd)
        assert res == ApplyError(CODE_NOT_FOUND, "etcdserver: requested lease not found")
        assert a.store.snapshot() == before
    assert _keys(a.store) == [b"k"]
    assert a.store.lease_ttl_info(1)[2] == (b"k",)


def test_an_unknown_lease_on_the_branch_not_taken_is_fine() -> None:
    # etcd checks only the ops of the branch the compares choose.
    a = Applier()
    res = a(RequestTxn(success=(RequestPut(b"a"),), failure=(RequestPut(b"b", lease=9),)))
    assert isinstance(res, TxnResult) and res.succeeded


def test_store_without_a_lessor_keeps_leases_opaque() -> None:
    s = KVStore()
    s.put(b"k", lease=42)  # no lease needed
    assert s.leases() == ()
    with pytest.raises(InvalidArgumentError):
        s.lease_grant(1, 10)
    with pytest.raises(LeaseNotFoundError):
        s.lease_revoke(42)
    with pytest.raises(LeaseNotFoundError):
        s.lease_ttl_info(42)


def test_moving_a_key_between_leases() -> None:
    a = Applier()
    a(LeaseGrant(1, 10))
    a(LeaseGrant(2, 10))
    a(RequestPut(b"k", b"v", lease=1))
    assert a.store.lease_ttl_info(1)[2] == (b"k",)
    a(RequestPut(b"k", b"w", lease=2))
    assert a.store.lease_ttl_info(1)[2] == ()
    assert a.store.lease_ttl_info(2)[2] == (b"k",)
    a(RequestPut(b"k", b"x", ignore_lease=True))  # keeps lease 2
    assert a.store.lease_ttl_info(2)[2] == (b"k",)
    res = a(LeaseRevoke(1))
    assert isinstance(res, LeaseRevokeResult) and res.events == ()
    assert _keys(a.store) == [b"k"]
    a(RequestPut(b"k", b"y"))  # lease 0 detaches
    assert a.store.lease_ttl_info(2)[2] == ()
    a(LeaseRevoke(2))
    assert _keys(a.store) == [b"k"]


@pytest.mark.parametrize(
    "delete",
    [
        RequestDeleteRange(b"k"),
        RequestDeleteRange(b"j", b"l"),
        RequestTxn(success=(RequestDeleteRange(b"k"),)),
    ],
)
def test_deleting_a_key_detaches_it(delete: Command) -> None:
    a = Applier()
    a(LeaseGrant(1, 10))
    a(RequestPut(b"k", b"v", lease=1))
    a(RequestPut(b"m", b"v", lease=1))
    assert isinstance(a(delete), DeleteResult | TxnResult)
    assert a.store.lease_ttl_info(1)[2] == (b"m",)
    a(RequestPut(b"k", b"again"))  # put back without a lease: the revoke must leave it
    res = a(LeaseRevoke(1))
    assert isinstance(res, LeaseRevokeResult) and [e.kv.key for e in res.events] == [b"m"]
    assert _keys(a.store) == [b"k"]


def test_put_in_a_txn_attaches() -> None:
    a = Applier()
    a(LeaseGrant(3, 10))
    a(RequestTxn(success=(RequestPut(b"a", lease=3), RequestPut(b"b", lease=3))))
    assert a.store.lease_ttl_info(3)[2] == (b"a", b"b")


# --- revoke ---------------------------------------------------------------------------------


def test_revoke_deletes_the_attached_keys_in_one_revision() -> None:
    a = Applier()
    a(LeaseGrant(1, 10))
    a(RequestPut(b"c", b"3", lease=1))  # rev 2
    a(RequestPut(b"a", b"1", lease=1))  # rev 3
    a(RequestPut(b"b", b"2"))  # rev 4, no lease
    prev_a = a.store.range(b"a").kvs[0]
    prev_c = a.store.range(b"c").kvs[0]
    res = a(LeaseRevoke(1))
    assert res == LeaseRevokeResult(
        5,
        (
            Event(EventType.DELETE, KeyValue(b"a", mod_revision=5), prev_a),
            Event(EventType.DELETE, KeyValue(b"c", mod_revision=5), prev_c),
        ),
    )
    assert a.store.revision == 5
    assert _keys(a.store) == [b"b"]
    assert a.store.leases() == ()
    assert [kv.key for kv in a.store.range(b"a", b"z", revision=4).kvs] == [b"a", b"b", b"c"]
    with pytest.raises(LeaseNotFoundError):
        a.store.lease_ttl_info(1)


def test_revoke_of_a_lease_without_keys_keeps_the_revision() -> None:
    a = Applier()
    a(RequestPut(b"x"))
    a(LeaseGrant(4, 10))
    assert a(LeaseRevoke(4)) == LeaseRevokeResult(2, ())
    assert a.store.leases() == ()


def test_revoke_of_an_unknown_lease_is_not_found() -> None:
    a = Applier()
    a(LeaseGrant(1, 10))
    a(RequestPut(b"k", lease=1))
    before = a.store.snapshot()
    assert a(LeaseRevoke(2)) == ApplyError(CODE_NOT_FOUND, "etcdserver: requested lease not found")
    assert a.store.snapshot() == before


# --- checkpoints, keepalive, snapshot -------------------------------------------------------


def test_checkpoint_records_remaining_ttl_and_survives_snapshot_restore() -> None:
    a = Applier()
    a(LeaseGrant(1, 60))
    a(LeaseGrant(2, 30))
    a(RequestPut(b"k", lease=1))
    res = a(LeaseCheckpoint(((1, 42), (99, 5), (2, 7))))  # unknown 99 is ignored
    assert res == LeaseCheckpointResult(2)
    assert a.store.lease_ttl_info(1) == (60, 42, (b"k",))
    assert a.store.lease_ttl_info(2) == (30, 7, ())
    other = KVMachine()
    other.restore(a.m.snapshot())
    assert other.store.lease_ttl_info(1) == (60, 42, (b"k",))
    assert other.store.lease_ttl_info(2) == (30, 7, ())
    assert other.store.leases() == (1, 2)
    assert other.snapshot() == a.m.snapshot()
    # The restored machine keeps choosing ids and revoking as the original does.
    for cmd in (LeaseGrant(0, 5), LeaseRevoke(1)):
        a.index += 1
        assert other.apply(a.index, encode_command(cmd)) == a.m.apply(a.index, encode_command(cmd))
    assert other.snapshot() == a.m.snapshot()


def test_checkpoint_zero_clears_and_negative_is_refused() -> None:
    a = Applier()
    a(LeaseGrant(1, 60))
    a(LeaseCheckpoint(((1, 10),)))
    before = a.store.snapshot()
    res = a(LeaseCheckpoint(((1, 3), (1, -1))))
    assert isinstance(res, ApplyError) and res.code == CODE_INVALID_ARGUMENT
    assert a.store.snapshot() == before
    a(LeaseCheckpoint(((1, 0),)))
    assert a.store.lease_ttl_info(1)[1] is None


def test_keepalive_helper() -> None:
    lessor = Lessor()
    lessor.grant(1, 20)
    assert keepalive(lessor, 1) == (20, None)
    lessor.checkpoint([(1, 4)])
    assert keepalive(lessor, 1) == (20, LeaseCheckpoint(((1, 0),)))
    assert lessor.lookup(1).remaining_ttl == 4  # the helper changes nothing
    with pytest.raises(LeaseNotFoundError):
        keepalive(lessor, 2)


def test_restore_refuses_inconsistent_lease_state() -> None:
    plain = KVStore()
    plain.put(b"k", lease=3)
    m = KVMachine()
    m.apply(1, encode_command(LeaseGrant(1, 10)))
    before = m.snapshot()
    with pytest.raises(SnapshotError):
        m.store.restore(plain.snapshot())  # no leases in it
    with pytest.raises(SnapshotError):
        KVStore().restore(m.store.snapshot())  # leases a plain store cannot hold
    state = msgpack.unpackb(plain.snapshot(), raw=False)
    for leases in ([4, []], [4, [[1, 10, None]]], [1, [[1, 10, None]]], [4, [[3, 0, None]]], [4, [[3, 10, -1]]], "x"):
        state["leases"] = leases
        with pytest.raises(SnapshotError):  # k names missing lease 3, or the lease table is bad
            m.store.restore(msgpack.packb(state, use_bin_type=True))
    assert m.snapshot() == before
    state["leases"] = [4, [[3, 10, 2]]]
    m.store.restore(msgpack.packb(state, use_bin_type=True))
    assert m.store.lease_ttl_info(3) == (10, 2, (b"k",))


# --- the wire form --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(lease_cmds)
def test_lease_commands_round_trip(cmd: Command) -> None:
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data


def test_lease_command_layout() -> None:
    assert msgpack.unpackb(encode_command(LeaseGrant(0, 5))) == [COMMAND_FORMAT, 5, 0, 5]
    assert msgpack.unpackb(encode_command(LeaseRevoke(3))) == [COMMAND_FORMAT, 6, 3]
    assert msgpack.unpackb(encode_command(LeaseCheckpoint(((1, 2),)))) == [COMMAND_FORMAT, 7, [[1, 2]]]


@pytest.mark.parametrize(
    "cmd",
    [
        LeaseGrant(2**63, 1),
        LeaseGrant(1, True),
        LeaseRevoke(-(2**63) - 1),
        LeaseCheckpoint([(1, 2)]),  # type: ignore[arg-type]
        LeaseCheckpoint(((1, 2, 3),)),  # type: ignore[arg-type]
        LeaseCheckpoint(((1, 2.0),)),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_lease_commands_that_cannot_be_carried(cmd: Any) -> None:
    with pytest.raises(ValueError):
        encode_command(cmd)


def _pack(*fields: Any) -> bytes:
    data: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return data


@pytest.mark.parametrize(
    "data",
    [
        _pack(COMMAND_FORMAT, 5, 1),
        _pack(COMMAND_FORMAT, 5, 1, 2, 3),
        _pack(COMMAND_FORMAT, 5, 1, 2.0),
        _pack(COMMAND_FORMAT, 5, True, 2),
        _pack(COMMAND_FORMAT, 6),
        _pack(COMMAND_FORMAT, 6, b"1"),
        _pack(COMMAND_FORMAT, 6, 2**64 - 1),
        _pack(COMMAND_FORMAT, 7, [[1]]),
        _pack(COMMAND_FORMAT, 7, [[1, 2, 3]]),
        _pack(COMMAND_FORMAT, 7, [1, 2]),
        _pack(COMMAND_FORMAT, 7, {"a": 1}),
        _pack(COMMAND_FORMAT, 7),
        _pack(COMMAND_FORMAT, 3, [], [[5, 1, 2]], []),  # a lease command inside a txn
    ],
)
def test_decode_refuses_malformed_lease_commands(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_command(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lease_cmds, st.data())
def test_mutated_lease_commands_raise_only_value_error(cmd: Command, data: st.DataObject) -> None:
    raw = bytearray(encode_command(cmd))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ValueError):
        decode_command(bytes(raw[: data.draw(st.integers(0, len(raw)))]))


# --- determinism ----------------------------------------------------------------------------

small_keys = st.sampled_from([b"a", b"b", b"c"])
small_leases = st.integers(0, 3)
# Requests are named tuples: st.builds would draw their defaulted fields too, so the lambdas
# and maps below pass only the fields these strategies mean to vary.
machine_cmds: st.SearchStrategy[Command] = st.one_of(
    st.builds(lambda k, v, lease: RequestPut(k, v, lease), small_keys, st.binary(max_size=1), small_leases),
    small_keys.map(lambda k: RequestPut(k, ignore_lease=True)),
    st.builds(lambda k, end: RequestDeleteRange(k, end), small_keys, st.sampled_from([b"", b"\0"])),
    st.builds(LeaseGrant, small_leases, st.integers(-1, 3)),
    st.builds(LeaseRevoke, small_leases),
    st.builds(LeaseCheckpoint, st.lists(st.tuples(small_leases, st.integers(-1, 3)), max_size=2).map(tuple)),
    st.builds(
        RequestTxn,
        st.just(()),
        st.lists(
            st.builds(lambda k, lease: RequestPut(k, b"", lease), small_keys, small_leases),
            max_size=2,
            unique_by=lambda p: p.key,
        ).map(tuple),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(machine_cmds, max_size=30), st.data())
def test_machines_fed_the_same_lease_commands_agree(cmds: list[Command], data: st.DataObject) -> None:
    a, b, late = KVMachine(), KVMachine(), KVMachine()
    cut = data.draw(st.integers(0, len(cmds)))
    for index, cmd in enumerate(cmds, start=1):
        entry = encode_command(cmd)
        ra = a.apply(index, entry)
        assert ra == b.apply(index, entry)
        if index == cut:
            late.restore(a.snapshot())
        elif index > cut:
            assert late.apply(index, entry) == ra
        # The invariant tying leases and keys: each live key is attached to exactly its lease.
        live = {kv.key: kv.lease for kv in a.store.range(b"\0", b"\0").kvs}
        assert all(lease in a.store.leases() for lease in live.values() if lease)
        for lease_id in a.store.leases():
            attached = a.store.lease_ttl_info(lease_id)[2]
            assert attached == tuple(sorted(k for k, lease in live.items() if lease == lease_id))
        results = (PutResult, DeleteResult, TxnResult, ApplyError, LeaseGrantResult, LeaseRevokeResult)
        assert isinstance(ra, (*results, LeaseCheckpointResult))
    assert a.snapshot() == b.snapshot() == late.snapshot()
