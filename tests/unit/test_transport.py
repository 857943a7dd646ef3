"""PeerTransport over real sockets on 127.0.0.1.

Raw-socket tests build frames from the documented wire format
(docs/raft-transport.md) rather than from the module's private helpers, so
they also pin that format down.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdisco.raft import transport as transport_mod
from kvdisco.raft._codec import encode_message
from kvdisco.raft._messages import ConfState, Entry, Message, MessageType, SnapshotMeta
from kvdisco.raft.errors import MessageTooLarge, ProtocolError
from kvdisco.raft.transport import PeerTransport

CLUSTER = 7
HOST = "127.0.0.1"
HELLO, MSG, SNAP_CHUNK = 1, 2, 3

P = ParamSpec("P")
T = TypeVar("T")


def bounded(seconds: float) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Fail a test that runs longer than ``seconds`` instead of hanging the suite."""

    def deco(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await asyncio.wait_for(fn(*args, **kwargs), seconds)

        return run

    return deco


@dataclass
class Node:
    id: int
    t: PeerTransport
    got: list[Message] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    snap_status: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.t.listen_port


Make = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Node] = []
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))

    async def _make(node_id: int, *, port: int = 0, **kw: Any) -> Node:
        got: list[Message] = []
        unreachable: list[int] = []
        status: list[tuple[int, bool]] = []
        t = PeerTransport(
            node_id,
            CLUSTER,
            HOST,
            port,
            on_message=got.append,
            on_unreachable=unreachable.append,
            on_snapshot_status=lambda i, ok: status.append((i, ok)),
            **kw,
        )
        node = Node(node_id, t, got, unreachable, status)
        made.append(node)
        await t.start()
        return node

    yield _make
    for node in made:
        await asyncio.wait_for(node.t.close(), 5)
    await asyncio.sleep(0.01)
    assert loop_errors == []  # nothing escaped into the event loop, on close or before


def link(*nodes: Node) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.t.set_peer(b.id, HOST, b.port)


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.002)


def app(frm: int, to: int, i: int) -> Message:
    return Message(MessageType.APP, to=to, frm=frm, term=1, index=i, entries=[Entry(1, i + 1, bytes(64))])


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload), kind) + payload


def hello(
    frm: int, to: int, cluster: int = CLUSTER, magic: str = "kvdisco-raft", version: int = 1, meta: object = b""
) -> bytes:
    return frame(HELLO, msgpack.packb([magic, version, cluster, frm, to, meta]))


def non_listening_port() -> socket.socket:
    """A bound socket that never listens: dialling its port is refused at once."""
    s = socket.socket()
    s.bind((HOST, 0))
    return s


async def ping(a: Node, b: Node) -> None:
    """Check ``a`` still reaches ``b``: one message, delivered."""
    before = len(b.got)
    a.t.send(Message(MessageType.HEARTBEAT, to=b.id, frm=a.id, term=1))
    await wait_until(lambda: len(b.got) > before)


# -- delivery ---------------------------------------------------------------


@bounded(10)
async def test_three_peers_exchange_messages_in_order(make: Make) -> None:
    nodes = [await make(i) for i in (1, 2, 3)]
    link(*nodes)
    for a in nodes:
        for b in nodes:
            if a is not b:
                for i in range(50):
                    a.t.send(app(a.id, b.id, i))
    await wait_until(lambda: all(len(n.got) == 100 for n in nodes))
    for n in nodes:
        for peer in nodes:
            if peer is not n:
                assert [m.index for m in n.got if m.frm == peer.id] == list(range(50))
        assert all(m.to == n.id and m.entries[0].data == bytes(64) for m in n.got)
    assert nodes[0].t.stats()["frames_sent"] == 2 + 100  # a HELLO per connection


@bounded(30)
async def test_large_batch_arrives_complete_and_ordered(make: Make) -> None:
    count = 50_000
    a = await make(1, send_queue_msgs_max=count)
    b = await make(2)
    link(a, b)
    for i in range(count):
        a.t.send(app(1, 2, i))
    await wait_until(lambda: len(b.got) == count, timeout=25)
    assert [m.index for m in b.got] == list(range(count))
    assert a.t.stats()["msgs_dropped"] == 0
    assert b.t.stats()["frames_received"] == 1 + count


@bounded(20)
async def test_snapshot_is_reassembled_and_reported(make: Make) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    data = os.urandom(5 * 1024 * 1024 + 12_345)
    meta = SnapshotMeta(index=10, term=2, conf_state=ConfState(frozenset({1, 2})))
    a.t.send(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=meta, snapshot_data=data))
    a.t.send(app(1, 2, 11))  # queued behind the snapshot, must arrive after it
    await wait_until(lambda: len(b.got) == 2, timeout=15)
    snap, after = b.got
    assert snap.type == MessageType.SNAP and snap.snapshot == meta and snap.snapshot_data == data
    assert after.index == 11
    assert a.snap_status == [(2, True)]
    assert b.t.stats()["snapshots_received"] == 1
    assert a.t.stats()["frames_sent"] == 1 + 6 + 1  # HELLO, 6 chunks for 5 MiB and a bit, the APP


class _FailingPayload:
    """Snapshot data whose third chunk cannot be read, as a snapshot file failing its checksum."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, part: slice, /) -> bytes:
        if part.start >= 2 * 1024 * 1024:
            raise OSError(errno.EIO, "snapshot checksum mismatch")
        return self.data[part]


@bounded(20)
async def test_a_snapshot_payload_read_as_it_is_sent_and_one_that_fails_to_read(make: Make) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    data = os.urandom(3 * 1024 * 1024)
    meta = SnapshotMeta(index=10, term=2, conf_state=ConfState(frozenset({1, 2})))
    a.t.send(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=meta), _FailingPayload(data))
    await wait_until(lambda: a.snap_status == [(2, False)])  # failed, as a lost connection: no snapshot there
    assert b.got == []
    # A payload that reads (here bytes, as a file's would) arrives whole over the new connection.
    a.t.send(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=meta), data)
    await wait_until(lambda: len(b.got) == 1, timeout=15)
    assert b.got[0].snapshot_data == data and a.snap_status == [(2, False), (2, True)]


@bounded(10)
async def test_empty_snapshot_arrives(make: Make) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    a.t.send(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=SnapshotMeta(3, 1), snapshot_data=b""))
    await wait_until(lambda: len(b.got) == 1)
    assert b.got[0].snapshot_data == b""
    assert a.snap_status == [(2, True)]


@bounded(15)
async def test_reconnects_after_peer_restarts_on_same_port(make: Make) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    await ping(a, b)
    port = b.port
    await b.t.close()
    b2 = await make(2, port=port)
    # Raft resends until it gets through; so does this loop.
    async with asyncio.timeout(10):
        while not b2.got:
            a.t.send(app(1, 2, 0))
            await asyncio.sleep(0.02)
    await ping(a, b2)
    assert a.t.stats()["reconnects"] >= 1


# -- local misuse and unreachable peers -------------------------------------


@bounded(5)
async def test_unknown_peer_is_reported_unreachable(make: Make) -> None:
    a = await make(1)
    a.t.send(app(1, 9, 0))
    assert a.unreachable == []  # never called from inside send()
    await wait_until(lambda: a.unreachable == [9])
    assert a.t.stats()["msgs_dropped"] == 1


@bounded(5)
async def test_oversized_message_raises(make: Make) -> None:
    a = await make(1, frame_bytes_max=1024, snapshot_bytes_max=10_000)
    b = await make(2)
    link(a, b)
    big = Message(MessageType.APP, to=2, frm=1, entries=[Entry(1, 1, bytes(2000))])
    with pytest.raises(MessageTooLarge):
        a.t.send(big)
    with pytest.raises(MessageTooLarge):
        a.t.send(Message(MessageType.SNAP, to=2, frm=1, snapshot=SnapshotMeta(), snapshot_data=bytes(10_001)))
    with pytest.raises(ValueError):
        a.t.send(Message(MessageType.HUP, to=2, frm=1))
    # A small frame limit shrinks snapshot chunks instead of refusing them.
    data = os.urandom(9_000)
    a.t.send(Message(MessageType.SNAP, to=2, frm=1, snapshot=SnapshotMeta(), snapshot_data=data))
    await wait_until(lambda: len(b.got) == 1)
    assert b.got[0].snapshot_data == data


@bounded(10)
async def test_queue_bound_is_respected_for_a_dead_peer(make: Make) -> None:
    bound = 100
    a = await make(1, send_queue_msgs_max=bound)
    with non_listening_port() as dead:
        a.t.set_peer(2, HOST, dead.getsockname()[1])
        for i in range(10 * bound):
            a.t.send(app(1, 2, i))
            assert a.t.stats()["msgs_queued"] <= bound
        assert a.t.stats()["msgs_dropped"] == 9 * bound
        await wait_until(lambda: a.unreachable == [2])
        stats = a.t.stats()
        assert stats["msgs_queued"] == 0 and stats["msgs_dropped"] == 10 * bound
        assert stats["connect_failures"] == 1


@bounded(10)
async def test_snapshot_to_dead_peer_fails(make: Make) -> None:
    a = await make(1)
    with non_listening_port() as dead:
        a.t.set_peer(2, HOST, dead.getsockname()[1])
        a.t.send(Message(MessageType.SNAP, to=2, frm=1, snapshot=SnapshotMeta(), snapshot_data=b"x" * 100))
        await wait_until(lambda: a.snap_status == [(2, False)] and a.unreachable == [2])


@bounded(5)
async def test_removed_peer_is_unknown_and_close_is_idempotent(make: Make) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    await ping(a, b)
    a.t.remove_peer(2)
    a.t.send(app(1, 2, 0))
    await wait_until(lambda: a.unreachable == [2])
    await a.t.close()
    await a.t.close()
    a.t.send(app(1, 2, 1))  # dropped quietly after close
    assert a.t.stats()["msgs_dropped"] == 2


# -- remote garbage ---------------------------------------------------------


def _spoofed() -> bytes:
    return hello(3, 2) + frame(MSG, encode_message(app(4, 2, 0)))


def _snap_chunk(offset: int, total: int, chunk: bytes) -> bytes:
    head = encode_message(Message(MessageType.SNAP, to=2, frm=3, snapshot=SnapshotMeta()))
    return frame(SNAP_CHUNK, msgpack.packb([head, offset, total, chunk]))


BAD_INPUTS = {
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversize_length": struct.pack(">IB", 4 * 1024 * 1024 + 1, MSG),
    "wrong_cluster": hello(3, 2, cluster=CLUSTER + 1),
    "wrong_to_id": hello(3, 5),
    "wrong_magic": hello(3, 2, magic="etcd"),
    "wrong_version": hello(3, 2, version=2),
    "hello_from_self": hello(2, 2),
    "hello_meta_not_bytes": hello(3, 2, meta="text"),
    "hello_from_zero": hello(0, 2),
    "second_hello": hello(3, 2) + hello(3, 2),
    "hello_not_msgpack": frame(HELLO, b"\xc1\xc1"),
    "oversize_before_hello": struct.pack(">IB", 100_000, HELLO),
    "unknown_kind": hello(3, 2) + frame(9, b"hi"),
    "msg_before_hello": frame(MSG, encode_message(app(3, 2, 0))),
    "spoofed_frm": _spoofed(),
    "undecodable_msg": hello(3, 2) + frame(MSG, msgpack.packb([1, 2, 3])),
    "local_message_type": hello(3, 2) + frame(MSG, encode_message(Message(MessageType.HUP, to=2, frm=3))),
    "snap_as_plain_msg": hello(3, 2) + frame(MSG, encode_message(Message(MessageType.SNAP, to=2, frm=3))),
    "snap_chunk_gap": hello(3, 2) + _snap_chunk(0, 10, b"abc") + _snap_chunk(4, 10, b"def"),
    "snap_chunk_overflow": hello(3, 2) + _snap_chunk(0, 2, b"abc"),
    "snap_too_large": hello(3, 2) + _snap_chunk(0, 2**31 + 1, b"abc"),
    "msg_inside_snapshot": hello(3, 2) + _snap_chunk(0, 10, b"abc") + frame(MSG, encode_message(app(3, 2, 0))),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@bounded(10)
async def test_bad_input_closes_only_that_connection(make: Make, name: str) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    await ping(a, b)
    reader, writer = await asyncio.open_connection(HOST, b.port)
    writer.write(BAD_INPUTS[name])
    assert await asyncio.wait_for(reader.read(), 5) == b""  # b closed it, without writing anything
    writer.close()
    await wait_until(lambda: b.t.stats()["protocol_errors"] == 1)
    await ping(a, b)
    assert a.t.stats()["reconnects"] == 0  # a's connection to b was never disturbed
    assert all(m.frm == 1 for m in b.got)


@bounded(10)
async def test_redial_replaces_the_stale_connection_from_that_peer(make: Make) -> None:
    b = await make(2)
    old_reader, old_writer = await asyncio.open_connection(HOST, b.port)
    old_writer.write(hello(3, 2) + frame(MSG, encode_message(app(3, 2, 0))))
    await wait_until(lambda: len(b.got) == 1)
    _, new_writer = await asyncio.open_connection(HOST, b.port)
    new_writer.write(hello(3, 2) + frame(MSG, encode_message(app(3, 2, 1))))
    assert await asyncio.wait_for(old_reader.read(), 5) == b""
    await wait_until(lambda: len(b.got) == 2)
    assert b.t.stats()["protocol_errors"] == 0 and b.t.stats()["inbound_conns"] == 1
    old_writer.close()
    new_writer.close()


@bounded(10)
async def test_silent_connection_is_closed_after_hello_timeout(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_mod, "_HELLO_TIMEOUT_S", 0.1)
    b = await make(2)
    reader, writer = await asyncio.open_connection(HOST, b.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert b.t.stats()["protocol_errors"] == 1


@bounded(10)
async def test_raising_on_message_closes_connection_not_server(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    a = await make(1)
    calls: list[Message] = []

    def on_message(m: Message) -> None:
        calls.append(m)
        if len(calls) == 1:
            raise RuntimeError("driver bug")

    b = PeerTransport(2, CLUSTER, HOST, 0, on_message=on_message)
    await b.start()
    try:
        a.t.set_peer(2, HOST, b.listen_port)
        with caplog.at_level(logging.ERROR):
            async with asyncio.timeout(5):
                while len(calls) < 2:
                    a.t.send(app(1, 2, len(calls)))
                    await asyncio.sleep(0.02)
        assert "driver bug" in caplog.text
    finally:
        await b.close()


@pytest.fixture
async def pair(make: Make) -> tuple[Node, Node]:
    a, b = await make(1), await make(2)
    link(a, b)
    return a, b


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), after_hello=st.booleans())
@bounded(10)
async def test_fuzzed_bytes_never_kill_the_server(pair: tuple[Node, Node], data: bytes, after_hello: bool) -> None:
    a, b = pair
    reader, writer = await asyncio.open_connection(HOST, b.port)
    writer.write((hello(3, 2) if after_hello else b"") + data)
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 5)  # b closes on garbage or on our EOF
    writer.close()
    await wait_until(lambda: b.t.stats()["inbound_conns"] <= 1)
    await ping(a, b)


_frames = st.lists(
    st.tuples(st.sampled_from([HELLO, MSG, SNAP_CHUNK, 0, 4, 255]), st.binary(max_size=64)).map(lambda kp: frame(*kp)),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(frames=_frames, split=st.integers(min_value=1, max_value=64))
def test_decoder_raises_only_protocol_errors(frames: list[bytes], split: int) -> None:
    dec = transport_mod._InboundDecoder(2, CLUSTER, 1024, 1024, transport_mod._Counters())
    stream = hello(3, 2) + b"".join(frames)
    try:
        for i in range(0, len(stream), split):
            dec.feed(stream[i : i + split])
            while (m := dec.next_message()) is not None:
                assert m.frm == 3 and m.to == 2
    except ProtocolError:
        pass


@bounded(10)
async def test_hello_carries_the_member_description(make: Make) -> None:
    seen: list[tuple[int, bytes]] = []
    a = await make(1, hello_meta=b"member a")
    b = await make(2, on_peer_hello=lambda i, meta: seen.append((i, meta)))
    link(a, b)
    await ping(a, b)
    assert seen == [(1, b"member a")]
    with pytest.raises(ValueError):
        await make(3, hello_meta=b"x" * 10_000)


# -- writing at once to an idle connection ----------------------------------


@bounded(10)
async def test_idle_connection_takes_a_frame_inside_send(make: Make) -> None:
    """With nothing queued, ``send`` hands the frame to the socket itself: no loop turn on the commit path."""
    a, b = await make(1), await make(2)
    link(a, b)
    await ping(a, b)
    await wait_until(lambda: a.t._peers[2].idle is not None)
    before = a.t.stats()["frames_sent"]
    a.t.send(app(1, 2, 7))
    assert a.t.stats()["frames_sent"] == before + 1  # written before send() returned
    await wait_until(lambda: any(m.index == 7 for m in b.got))


@bounded(20)
async def test_frames_keep_their_order_between_direct_and_queued_writes(make: Make) -> None:
    a, b = await make(1, send_queue_msgs_max=100_000), await make(2)
    link(a, b)
    await ping(a, b)
    b.got.clear()
    sent = 0
    data = os.urandom(5 * 1024 * 1024)
    meta = SnapshotMeta(index=10, term=2, conf_state=ConfState(frozenset({1, 2})))
    for burst in range(40):
        for _ in range(1 + burst * 50):  # some bursts fill the socket buffer, so later frames queue
            a.t.send(app(1, 2, sent))
            sent += 1
        if burst == 20:  # a snapshot in the middle: everything after it waits behind its chunks
            a.t.send(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=meta, snapshot_data=data))
        await asyncio.sleep(0)
    await wait_until(lambda: len(b.got) == sent + 1, timeout=15)
    got = [m.index for m in b.got if m.type == MessageType.APP]
    assert got == list(range(sent))
    snap_at = next(k for k, m in enumerate(b.got) if m.type == MessageType.SNAP)
    assert b.got[snap_at - 1].index == sum(1 + k * 50 for k in range(21)) - 1
    assert a.t.stats()["msgs_dropped"] == 0


@bounded(15)
async def test_send_after_the_peer_closed_redials_instead_of_writing_into_the_dead_connection(make: Make) -> None:
    a, b = await make(1), await make(2)
    link(a, b)
    await ping(a, b)
    await wait_until(lambda: a.t._peers[2].idle is not None)
    port = b.port
    await b.t.close()
    b2 = await make(2, port=port)
    idle = a.t._peers[2].idle
    assert idle is not None
    await wait_until(idle[0].at_eof)  # the old connection's EOF has arrived
    before = a.t.stats()["frames_sent"]
    a.t.send(app(1, 2, 0))
    assert a.t.stats()["frames_sent"] == before  # queued for the writer task, which redials
    async with asyncio.timeout(10):
        while not b2.got:
            a.t.send(app(1, 2, 0))
            await asyncio.sleep(0.02)
    assert a.t.stats()["reconnects"] >= 1
