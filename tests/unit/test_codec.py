"""The msgpack codec: exact round trips, and garbage only ever raises ValueError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvdisco.raft._codec import (
    decode_conf_change,
    decode_hard_state,
    decode_message,
    decode_snapshot_meta,
    encode_conf_change,
    encode_hard_state,
    encode_message,
    encode_snapshot_meta,
    msgpack_bin_header,
)
from kvdisco.raft._messages import (
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

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.integers(min_value=1, max_value=2**63 - 1)
entries = st.builds(Entry, u64, u64, st.binary(max_size=64), st.sampled_from(EntryType))
conf_states = st.builds(
    lambda v, extra: ConfState(frozenset(v), frozenset(extra - v)),
    st.sets(ids, max_size=5),
    st.sets(ids, max_size=3),
)
snapshots = st.builds(SnapshotMeta, u64, u64, conf_states)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=u64,
    frm=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=4),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    context=st.binary(max_size=16),
    snapshot=st.none() | snapshots,
)


@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@given(snapshots, st.builds(HardState, u64, u64, u64))
def test_snapshot_meta_and_hard_state_round_trip(meta: SnapshotMeta, hs: HardState) -> None:
    assert decode_snapshot_meta(encode_snapshot_meta(meta)) == meta
    assert decode_hard_state(encode_hard_state(hs)) == hs


@given(st.sampled_from(ConfChangeType), ids, st.binary(max_size=32))
def test_conf_change_round_trip(kind: ConfChangeType, node: int, ctx: bytes) -> None:
    cc = ConfChange(kind, node, ctx)
    assert decode_conf_change(encode_conf_change(cc)) == cc


def test_snapshot_data_is_not_encoded() -> None:
    m = Message(MessageType.SNAP, to=2, frm=1, term=1, snapshot=SnapshotMeta(5, 1), snapshot_data=b"big")
    assert decode_message(encode_message(m)).snapshot_data is None


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_message(data)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8) | st.text(max_size=8),
        lambda c: st.lists(c, max_size=13),
        max_leaves=40,
    )
)
def test_well_formed_msgpack_of_the_wrong_shape_raises_value_error(obj: object) -> None:
    with contextlib.suppress(ValueError):
        decode_message(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize(
    "bad",
    [
        [99, 1, 2, 3, 0, 0, [], 0, False, 0, b"", None],  # unknown type
        [3, -1, 2, 3, 0, 0, [], 0, False, 0, b"", None],  # negative id
        [3, 1, 2, 3, 0, 0, [[1, 1, 0, "text"]], 0, False, 0, b"", None],  # entry data not bytes
        [3, 1, 2, 3, 0, 0, [[1, 1, 7, b""]], 0, False, 0, b"", None],  # unknown entry type
        [3, 1, 2, 3, 0, 0, [], 0, 1, 0, b"", None],  # reject not a bool
        [3, 1, 2, 3, 0, 0, [], 0, False, 0, b"", [1, 1, [[1], [1]]]],  # voter and learner at once
    ],
)
def test_specific_malformed_messages(bad: list[object]) -> None:
    with pytest.raises(ValueError):
        decode_message(msgpack.packb(bad, use_bin_type=True))


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70_000])
def test_a_bin_header_is_the_one_packb_writes(size: int) -> None:
    data = bytes(size)
    assert msgpack_bin_header(size) + data == msgpack.packb(data, use_bin_type=True)


@pytest.mark.parametrize("state", [b"", b"abc", [b"a", b"", b"b" * 300], [b"x" * 70_000, b"y"]])
def test_a_wrapped_snapshot_in_pieces_is_the_packed_one(state: bytes | list[bytes]) -> None:
    from kvdisco.raft.node import wrap_snapshot

    members = {7: b"m7", 9: b"m9"}
    joined = state if isinstance(state, bytes) else b"".join(state)
    assert b"".join(wrap_snapshot(members, state)) == msgpack.packb([1, members, joined], use_bin_type=True)


class BufferSource:
    """A SnapshotSource over bytes (the node reads its snapshots from their files)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def remaining(self) -> int:
        return len(self._data) - self._pos


@pytest.mark.parametrize("state", [b"", b"abc", [b"a", b"", b"b" * 300], [b"x" * 70_000, b"y"]])
def test_unwrapping_a_snapshot_leaves_the_source_at_the_state(state: bytes | list[bytes]) -> None:
    from kvdisco.raft.node import unwrap_snapshot, wrap_snapshot

    members = {i: b"m" * 1000 for i in range(100)}
    source = BufferSource(b"".join(wrap_snapshot(members, state)))
    fmt, got_members = unwrap_snapshot(source)
    assert (fmt, got_members) == (1, members)
    joined = state if isinstance(state, bytes) else b"".join(state)
    assert source.remaining() == len(joined)
    assert source.read(len(joined) + 1) == joined  # not a byte of the state read by the unwrap
    assert source.read(1) == b""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93\x01",  # cut short in the head
        msgpack.packb([1, {}, b"state"], use_bin_type=True)[:-1],  # the state cut short
        msgpack.packb([1, {}, b"state"], use_bin_type=True) + b"\x00",  # bytes after the state
        msgpack.packb([1, {}], use_bin_type=True),
        msgpack.packb([1, {}, b"a", b"b"], use_bin_type=True),
        msgpack.packb([1, {}, "text"], use_bin_type=True),  # a str, not bin
        msgpack.packb({"a": 1}),
        b"\xc1\x00\x00",  # a never-used byte
        b"\x93\x01\x80\xc6\x00",  # the bin header cut short
    ],
)
def test_unwrap_refuses_what_is_not_a_snapshot(data: bytes) -> None:
    from kvdisco.raft.node import unwrap_snapshot

    with pytest.raises(ValueError):
        unwrap_snapshot(BufferSource(data))
