"""KVMachine.apply takes each log index once, in rising order, and fails loudly otherwise.

Gaps are normal (Raft hands the machine only entries that carry a command: a new leader's empty
entry and membership changes never reach it; a snapshot restore jumps ahead). An index at or below
the last one applied would apply a write twice, so it raises InvariantViolation and changes nothing.
"""

from __future__ import annotations

import pytest

from kvdisco.mvcc.commands import Command, LeaseGrant, RequestPut, encode_command
from kvdisco.mvcc.kvstore import PutResult
from kvdisco.mvcc.machine import ApplyError, KVMachine
from kvdisco.raft.errors import InvariantViolation


def put(key: bytes, value: bytes = b"v") -> bytes:
    return encode_command(RequestPut(key, value))


def state(m: KVMachine) -> tuple[int, int, bytes]:
    return m.applied_index, m.store.revision, m.store.snapshot()


@pytest.mark.parametrize("again", [3, 2, 0, -1])
def test_an_index_not_past_the_last_is_refused_and_changes_nothing(again: int) -> None:
    m = KVMachine()
    m.apply(1, put(b"a"))
    m.apply(3, put(b"b"))
    before = state(m)
    with pytest.raises(InvariantViolation, match=rf"entry {again} applied after entry 3"):
        m.apply(again, put(b"c"))
    assert state(m) == before
    assert m.store.range(b"c").kvs == ()


@pytest.mark.parametrize("cmd", [RequestPut(b"a", b"twice"), LeaseGrant(7, 60)], ids=["put", "lease-grant"])
def test_replaying_the_last_entry_does_not_write_twice(cmd: Command) -> None:
    m = KVMachine()
    data = encode_command(cmd)
    m.apply(1, data)
    before = state(m)
    with pytest.raises(InvariantViolation):
        m.apply(1, data)
    assert state(m) == before


def test_gaps_are_fine() -> None:
    # Indexes 1-3 were the bootstrap's membership entries, 4 a leader's empty entry: the machine never saw them.
    m = KVMachine()
    assert isinstance(m.apply(5, put(b"a")), PutResult)
    assert isinstance(m.apply(9, put(b"b")), PutResult)
    assert m.applied_index == 9


def test_a_refused_command_still_takes_its_index() -> None:
    # Every replica refuses the same command the same way, so its index is spent all the same.
    m = KVMachine()
    assert isinstance(m.apply(1, b"\xc1 not a command"), ApplyError)
    assert m.applied_index == 1
    with pytest.raises(InvariantViolation):
        m.apply(1, put(b"a"))
    assert isinstance(m.apply(2, put(b"a")), PutResult)


def test_after_a_restore_only_later_indexes_apply() -> None:
    a = KVMachine()
    for i in range(1, 5):
        a.apply(i, put(b"k%d" % i))
    b = KVMachine()
    b.apply(10, put(b"ahead"))  # a replica further along is replaced by the snapshot (applied index 4)
    b.restore(a.snapshot())
    assert b.applied_index == 4
    with pytest.raises(InvariantViolation):
        b.apply(4, put(b"k4"))
    assert b.store.snapshot() == a.store.snapshot()
    assert a.apply(5, put(b"k5")) == b.apply(5, put(b"k5"))
    assert b.store.snapshot() == a.store.snapshot()
