"""Asyncio TCP transport between Raft peers.

Each ordered pair of peers has its own TCP connection, dialled by the
sender: the dialler only writes and the acceptor only reads.  Each side is
then simple (one writer task per peer; an inbound connection is a protocol
that delivers each message in the callback that read it), and messages to a
peer keep their order without any acknowledgement protocol; Raft itself
resends whatever is lost.  The wire format is described in
docs/raft-transport.md.

Callbacks are never called from inside :meth:`PeerTransport.send`, so the
driver may call ``send`` while it walks a ``Ready`` without being re-entered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

from ._codec import decode_message, encode_message, pack, unpack
from ._messages import LOCAL_MESSAGES, Message, MessageType
from .errors import MessageTooLarge, ProtocolError
from .limits import FRAME_BYTES_MAX, PEER_SEND_QUEUE_MSGS_MAX, SNAPSHOT_CHUNK_BYTES

__all__ = ["SNAPSHOT_BYTES_MAX", "PeerTransport", "SnapshotPayload"]

#: Largest snapshot accepted from a peer. The receiver holds it in memory
#: while it is reassembled, so this bounds one connection's memory.
SNAPSHOT_BYTES_MAX = 2 * 1024 * 1024 * 1024

#: Frame header: payload length (not counting the header), then frame kind.
_HEADER = struct.Struct(">IB")
_FRAME_HELLO = 1
_FRAME_MSG = 2
_FRAME_SNAP_CHUNK = 3
_FRAME_KINDS = frozenset({_FRAME_HELLO, _FRAME_MSG, _FRAME_SNAP_CHUNK})
_MAGIC = "kvdisco-raft"
_VERSION = 1

#: msgpack envelope of a snapshot chunk beside its head and data (array,
#: two bin headers, two 64-bit ints come to 29 bytes).
_CHUNK_OVERHEAD_BYTES = 64
#: Frames joined into one socket write; larger batches only cost memory.
_WRITE_BATCH_BYTES_MAX = 2 * 1024 * 1024
#: The dialled connection's stream buffer limit. The acceptor never writes, so that reader only
#: ever sees EOF; inbound bytes go through _InboundConnection, which buffers one partial frame.
_READ_BYTES = 256 * 1024
#: A dial that takes longer than this is treated as a failed one.
_CONNECT_TIMEOUT_S = 2.0
#: A write the peer does not take within this long ends the connection, so a
#: silently dead host is noticed well before TCP's own retransmission timeout.
_WRITE_TIMEOUT_S = 5.0
#: Redial backoff: doubles per failure from start to max, with jitter.
_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 2.0
#: An inbound connection must identify itself this soon, or it is closed.
_HELLO_TIMEOUT_S = 5.0
#: Largest frame before HELLO is accepted (a HELLO is a few hundred bytes with
#: the member's description), so a stranger cannot make us buffer a full-size frame.
_HELLO_BYTES_MAX = 1024
#: Largest member description carried in a HELLO.
HELLO_META_BYTES_MAX = 768
#: close() waits this long for its tasks to end once their sockets are closed.
_CLOSE_TIMEOUT_S = 1.0
#: Inbound connections held at once; a cluster needs one per peer, the
#: rest of the headroom is for reconnects racing their stale predecessors.
_INBOUND_CONNS_MAX = 256


@dataclass(slots=True)
class _Counters:
    frames_sent: int = 0
    frames_received: int = 0
    msgs_dropped: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    protocol_errors: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    snapshots_received: int = 0


@dataclass(slots=True, eq=False)
class _Snapshot:
    """A SNAP message waiting in a send queue: one queue item, many frames."""

    head: bytes  # encode_message() of the SNAP message, repeated in every chunk
    data: SnapshotPayload
    chunk_bytes: int


class SnapshotPayload(Protocol):
    """Snapshot data to send, sliced a chunk at a time as it goes out: bytes, or a snapshot file that
    reads each chunk when it is taken (storage.SnapshotFilePayload). A slice may raise OSError, which
    fails the send as a lost connection does."""

    def __len__(self) -> int: ...

    def __getitem__(self, part: slice, /) -> bytes: ...


class _Peer:
    """Where to dial a peer, what is waiting for it, and the task that sends it."""

    __slots__ = (
        "greet",
        "host",
        "node_id",
        "parked",
        "port",
        "queue",
        "sending_snapshot",
        "task",
        "wakeup",
        "wrote_directly",
    )

    def __init__(self, node_id: int, host: str, port: int) -> None:
        self.node_id = node_id
        self.host = host
        self.port = port
        self.queue: deque[bytes | _Snapshot] = deque()  # bytes are whole MSG frames
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.sending_snapshot = False
        #: The connection, while its writer task waits on an empty queue with every frame handed to the
        #: kernel: ``write_queued`` may then write the queue itself. None otherwise.
        self.parked: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        #: ``send`` wrote a frame itself in this turn of the event loop (see :attr:`idle`).
        self.wrote_directly = False
        #: Dial even with nothing queued, so the peer hears our HELLO (and learns our client URLs).
        self.greet = False

    @property
    def idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The parked connection, if ``send`` may write one frame itself, in order, without waking the
        writer task (one loop turn less per message on the commit path): once per turn of the loop."""
        return None if self.wrote_directly else self.parked

    def allow_direct_write(self) -> None:
        self.wrote_directly = False


def _writable_now(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """Whether a frame may be written to ``conn`` outside its writer task: open both ways, nothing buffered.

    A connection the peer closed is left to the writer task, which notices it, redials and resends.
    """
    reader, writer = conn
    return not (reader.at_eof() or writer.is_closing() or writer.transport.get_write_buffer_size())


async def _drain(writer: asyncio.StreamWriter) -> None:
    async with asyncio.timeout(_WRITE_TIMEOUT_S):  # TimeoutError is an OSError: the connection is lost
        await writer.drain()


class _InboundDecoder:
    """Sans-I/O parser of one inbound connection: bytes in, validated messages out.

    Every check a remote can fail raises ProtocolError; nothing else escapes.
    """

    def __init__(
        self, node_id: int, cluster_id: int, frame_bytes_max: int, snapshot_bytes_max: int, counters: _Counters
    ) -> None:
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._frame_bytes_max = frame_bytes_max
        self._snapshot_bytes_max = snapshot_bytes_max
        self._counters = counters
        #: The sender named by HELLO; 0 until HELLO has been accepted.
        self.peer_id = 0
        #: The sender's self-description from its HELLO (opaque to the transport).
        self.peer_meta = b""
        #: The cluster id the sender named, when ours was still unknown (0): the transport adopts it.
        self.peer_cluster_id = 0
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed frame in _buf
        # The snapshot being reassembled, if _snap_msg is not None.
        self._snap_msg: Message | None = None
        self._snap_head = b""
        self._snap_total = 0
        self._snap_data = bytearray()

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes are fed."""
        buf = self._buf
        while len(buf) - self._pos >= _HEADER.size:
            length, kind = _HEADER.unpack_from(buf, self._pos)
            limit = self._frame_bytes_max if self.peer_id else _HELLO_BYTES_MAX
            if length > limit:
                raise ProtocolError(f"frame of {length} bytes is over the {limit}-byte limit")
            if kind not in _FRAME_KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            start = self._pos + _HEADER.size
            end = start + length
            if end > len(buf):
                return None
            payload = bytes(buf[start:end])
            self._pos = end
            self._counters.frames_received += 1
            if kind == _FRAME_MSG:
                if self._snap_msg is not None:
                    raise ProtocolError("message frame in the middle of a snapshot")
                msg = self._message(payload)
                if msg.type == MessageType.SNAP:
                    raise ProtocolError("SNAP message outside snapshot chunks")
                return msg
            if kind == _FRAME_HELLO:
                self._hello(payload)
            elif (snap := self._chunk(payload)) is not None:
                return snap
        return None

    def _hello(self, payload: bytes) -> None:
        if self.peer_id:
            raise ProtocolError("second HELLO")
        obj = self._unpack(payload, 6, "HELLO")
        frm, meta = obj[3], obj.pop()
        if type(meta) is not bytes:
            raise ProtocolError("HELLO member description is not bytes")
        if self._cluster_id == 0 and type(obj[2]) is int and 0 < obj[2] < 2**64:
            self.peer_cluster_id = obj[2]  # a member joining a cluster learns its id from the first HELLO
            obj[2] = 0
        if obj != [_MAGIC, _VERSION, self._cluster_id, frm, self._node_id] or type(frm) is not int or frm <= 0:
            raise ProtocolError(f"HELLO {obj!r:.200} is not for node {self._node_id} of cluster {self._cluster_id}")
        if frm == self._node_id:
            raise ProtocolError("HELLO from our own node id")
        self.peer_id = frm
        self.peer_meta = meta

    def _message(self, payload: bytes) -> Message:
        if not self.peer_id:
            raise ProtocolError("message before HELLO")
        try:
            msg = decode_message(payload)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"undecodable message: {exc}") from None
        if msg.frm != self.peer_id or msg.to != self._node_id:
            raise ProtocolError(f"message {msg.frm}->{msg.to} on the connection {self.peer_id}->{self._node_id}")
        if msg.type in LOCAL_MESSAGES:
            raise ProtocolError(f"local-only message {msg.type.name} from the network")
        return msg

    def _chunk(self, payload: bytes) -> Message | None:
        head, offset, total, chunk = self._unpack(payload, 4, "snapshot chunk")
        if type(head) is not bytes or type(chunk) is not bytes or type(offset) is not int or type(total) is not int:
            raise ProtocolError("malformed snapshot chunk")
        msg = self._snap_msg
        if msg is None:
            if offset != 0:
                raise ProtocolError(f"snapshot starts at offset {offset}")
            if not 0 <= total <= self._snapshot_bytes_max:
                raise ProtocolError(f"snapshot of {total} bytes is over the {self._snapshot_bytes_max}-byte limit")
            msg = self._message(head)
            if msg.type != MessageType.SNAP or msg.snapshot is None:
                raise ProtocolError(f"snapshot chunk carries a {msg.type.name} message")
            self._snap_msg, self._snap_head, self._snap_total = msg, head, total
        elif head != self._snap_head or total != self._snap_total or offset != len(self._snap_data):
            raise ProtocolError(f"snapshot chunk at offset {offset} out of sequence")
        if (not chunk and total) or offset + len(chunk) > total:
            raise ProtocolError(f"snapshot chunk of {len(chunk)} bytes at {offset} does not fit {total}")
        self._snap_data += chunk
        if len(self._snap_data) < total:
            return None
        msg.snapshot_data = bytes(self._snap_data)
        self._snap_msg, self._snap_data = None, bytearray()
        self._counters.snapshots_received += 1
        return msg

    @staticmethod
    def _unpack(payload: bytes, n: int, what: str) -> list[Any]:
        try:
            obj = unpack(payload)
        except ValueError as exc:
            raise ProtocolError(f"undecodable {what}: {exc}") from None
        if type(obj) is not list or len(obj) != n:
            raise ProtocolError(f"{what} is not an array of {n}")
        return obj


class PeerTransport:
    """Sends Raft messages to peers and hands received ones to ``on_message``.

    ``send`` never blocks: each peer has a bounded queue that a writer task
    drains in batches, and messages past the bound are dropped and counted.
    Bad input from the network closes that one connection and is logged.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: int,
        listen_host: str,
        listen_port: int,
        *,
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[int], None] = lambda _id: None,
        on_snapshot_status: Callable[[int, bool], None] = lambda _id, _ok: None,
        on_peer_hello: Callable[[int, bytes], None] = lambda _id, _meta: None,
        on_cluster_id: Callable[[int], None] = lambda _cid: None,
        hello_meta: bytes = b"",
        logger: logging.Logger | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX,
        send_queue_msgs_max: int = PEER_SEND_QUEUE_MSGS_MAX,
    ) -> None:
        if node_id <= 0:
            raise ValueError(f"node id must be >= 1, got {node_id}")
        if frame_bytes_max <= _CHUNK_OVERHEAD_BYTES or snapshot_bytes_max < 0 or send_queue_msgs_max <= 0:
            raise ValueError("transport limits must be positive")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_peer_hello = on_peer_hello
        self._on_cluster_id = on_cluster_id
        if len(hello_meta) > HELLO_META_BYTES_MAX:
            raise ValueError(f"hello_meta is {len(hello_meta)} bytes, over {HELLO_META_BYTES_MAX}")
        self._hello_meta = hello_meta
        self._log = logger or logging.getLogger(__name__)
        self._frame_bytes_max = frame_bytes_max
        self._snapshot_bytes_max = snapshot_bytes_max
        self._queue_msgs_max = send_queue_msgs_max
        self._peers: dict[int, _Peer] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self._inbound: set[_InboundConnection] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self._c = _Counters()

    async def start(self) -> None:
        if self._closed or self._server is not None:
            raise RuntimeError("transport already started or closed")
        self._server = await asyncio.get_running_loop().create_server(
            self._inbound_connection, self.listen_host, self.listen_port
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    def set_peer(self, node_id: int, host: str, port: int) -> None:
        peer = self._peers.get(node_id)
        if peer is None:
            self._peers[node_id] = _Peer(node_id, host, port)
        elif (peer.host, peer.port) != (host, port):
            peer.host, peer.port = host, port
            if peer.task is not None:  # redial the new address; the queue survives
                self._stop_writer(peer)
                if peer.queue:
                    self._start_writer(peer)

    def greet(self, node_id: int) -> None:
        """Connect to a known peer now, even with nothing to send, so that it hears our HELLO."""
        peer = self._peers.get(node_id)
        if peer is None or self._closed or self.cluster_id == 0:
            return  # with no cluster id yet (joining), our HELLO would be refused: wait to be contacted
        peer.greet = True
        if peer.task is None:
            self._start_writer(peer)
        else:
            peer.wakeup.set()

    def remove_peer(self, node_id: int) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._stop_writer(peer)
            self._abandon_queue(peer, soon=True)

    def send(self, msg: Message, snapshot: SnapshotPayload | None = None) -> None:
        """Queue ``msg`` for ``msg.to``; raises MessageTooLarge or ValueError only for local misuse.

        A SNAP message's data is ``snapshot`` if given, else ``msg.snapshot_data``.
        """
        item = self._encode(msg, snapshot)
        peer = self._peers.get(msg.to)
        if self._closed:
            self._c.msgs_dropped += 1
        elif peer is None:
            self._drop(msg.to, item)
            asyncio.get_running_loop().call_soon(self._notify, self._on_unreachable, msg.to)
        elif len(peer.queue) >= self._queue_msgs_max:
            self._drop(msg.to, item)
        elif peer.idle is not None and type(item) is bytes and self._write_now(peer, peer.idle, item):
            pass
        else:
            peer.queue.append(item)
            if peer.task is None:
                self._start_writer(peer)
            else:
                peer.wakeup.set()

    def _write_now(self, peer: _Peer, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], frame: bytes) -> bool:
        """Hand ``frame`` to an idle connection's socket at once; False if it must go through the queue.

        Only when nothing is queued or buffered, so frames keep their order and the queue's bound and
        the writer's drain still govern a slow peer.
        """
        if peer.queue or not _writable_now(conn):
            return False
        conn[1].write(frame)
        self._c.frames_sent += 1
        # One frame per loop turn: what follows in this turn goes through the queue, where the writer task
        # joins them into a single socket write (a system call each costs more under load). The next turn
        # may write directly again: a put's entry and, a round trip later, its commit both skip the task.
        peer.wrote_directly = True
        asyncio.get_running_loop().call_soon(peer.allow_direct_write)
        return True

    def write_queued(self) -> None:
        """Hand every queued frame to its socket now, where the connection is up and its writer task waits.

        The node calls this before it blocks its event loop (an fsync on the loop thread): frames queued
        in this loop turn, such as a new entry for the followers, would otherwise wait for the writer
        tasks' turn after the fsync. Under the same conditions as ``send``'s direct write, so order and
        the queue's bound are kept; the woken writer task finds the queue empty and waits again.
        """
        for peer in self._peers.values():
            conn = peer.parked
            if conn is not None and peer.queue and isinstance(peer.queue[0], bytes) and _writable_now(conn):
                self._write_batch(peer.queue, conn[1])

    def stats(self) -> dict[str, int]:
        out = {f.name: getattr(self._c, f.name) for f in fields(self._c)}
        out["msgs_queued"] = sum(len(p.queue) for p in self._peers.values())
        out["inbound_conns"] = len(self._inbound)
        return out

    async def close(self) -> None:
        """Stop serving and sending. Queued messages are dropped without callbacks."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in self._writers:
            task.cancel()
        for conn in list(self._inbound):
            conn.close()
        if self._writers:
            _, stuck = await asyncio.wait(self._writers, timeout=_CLOSE_TIMEOUT_S)
            for task in stuck:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        self._c.msgs_dropped += sum(len(p.queue) for p in self._peers.values())
        self._peers.clear()

    # -- sending --------------------------------------------------------

    def _encode(self, msg: Message, snapshot: SnapshotPayload | None = None) -> bytes | _Snapshot:
        if msg.type in LOCAL_MESSAGES:
            raise ValueError(f"{msg.type.name} is a local message and is never sent")
        head = encode_message(msg)
        if msg.type != MessageType.SNAP:
            if len(head) > self._frame_bytes_max:
                raise MessageTooLarge(f"{msg.type.name} of {len(head)} bytes to {msg.to} is over the frame limit")
            return _HEADER.pack(len(head), _FRAME_MSG) + head
        data: SnapshotPayload = snapshot if snapshot is not None else (msg.snapshot_data or b"")
        chunk_bytes = min(SNAPSHOT_CHUNK_BYTES, self._frame_bytes_max - len(head) - _CHUNK_OVERHEAD_BYTES)
        if len(data) > self._snapshot_bytes_max or chunk_bytes <= 0:
            raise MessageTooLarge(f"snapshot of {len(data)} bytes to {msg.to} is over the transport's limits")
        return _Snapshot(head, data, chunk_bytes)

    def _drop(self, to: int, item: bytes | _Snapshot) -> None:
        self._c.msgs_dropped += 1
        self._fail_snapshots(to, isinstance(item, _Snapshot), soon=True)

    def _abandon_queue(self, peer: _Peer, *, soon: bool) -> None:
        """Drop everything queued for ``peer``, failing any snapshot among it."""
        self._c.msgs_dropped += len(peer.queue)
        self._fail_snapshots(peer.node_id, sum(isinstance(item, _Snapshot) for item in peer.queue), soon=soon)
        peer.queue.clear()

    def _fail_snapshots(self, node_id: int, count: int, *, soon: bool) -> None:
        """Report snapshots as failed; ``soon`` defers that past the driver's current call into us."""
        self._c.snapshots_failed += count
        for _ in range(count):
            if soon:
                asyncio.get_running_loop().call_soon(self._notify, self._on_snapshot_status, node_id, False)
            else:
                self._notify(self._on_snapshot_status, node_id, False)

    def _start_writer(self, peer: _Peer) -> None:
        task = asyncio.get_running_loop().create_task(self._run_writer(peer), name=f"raft-send-{peer.node_id}")
        peer.task = task
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    def _stop_writer(self, peer: _Peer) -> None:
        if peer.task is not None:
            peer.task.cancel()  # its finally clause closes the socket
            peer.task = None
        peer.parked = None  # that connection is going: nothing more may be written to it
        self._fail_snapshots(peer.node_id, peer.sending_snapshot, soon=True)
        peer.sending_snapshot = False

    async def _run_writer(self, peer: _Peer) -> None:
        """Dial ``peer`` whenever it has something queued and feed the socket, until cancelled."""
        loop = asyncio.get_running_loop()
        delay = 0.0
        dialled = False
        while True:
            while not peer.queue and not peer.greet:
                peer.wakeup.clear()
                await peer.wakeup.wait()
            if delay:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if dialled:
                self._c.reconnects += 1
            dialled = True
            started = loop.time()
            try:
                connect = asyncio.open_connection(peer.host, peer.port, limit=_READ_BYTES)
                reader, writer = await asyncio.wait_for(connect, _CONNECT_TIMEOUT_S)
            except OSError as exc:  # includes TimeoutError
                self._c.connect_failures += 1
                self._log.info("raft peer %d at %s:%d unreachable: %r", peer.node_id, peer.host, peer.port, exc)
                self._abandon_queue(peer, soon=False)
                self._notify(self._on_unreachable, peer.node_id)
                delay = min(max(2 * delay, _BACKOFF_START_S), _BACKOFF_MAX_S)
                continue
            try:
                await self._pump(peer, reader, writer)
            except OSError as exc:
                self._log.info("raft peer %d: connection lost: %r", peer.node_id, exc)
                self._fail_snapshots(peer.node_id, peer.sending_snapshot, soon=False)
                peer.sending_snapshot = False
                self._notify(self._on_unreachable, peer.node_id)
            except Exception:
                self._log.exception("raft transport bug sending to peer %d; reconnecting", peer.node_id)
            finally:
                writer.close()
            long_lived = loop.time() - started >= _BACKOFF_MAX_S
            delay = 0.0 if long_lived else min(max(2 * delay, _BACKOFF_START_S), _BACKOFF_MAX_S)

    async def _pump(self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write queued frames to one connection until it fails (raises OSError)."""
        hello = pack([_MAGIC, _VERSION, self.cluster_id, self.node_id, peer.node_id, self._hello_meta])
        writer.write(_HEADER.pack(len(hello), _FRAME_HELLO) + hello)
        self._c.frames_sent += 1
        if peer.greet:
            await _drain(writer)
            peer.greet = False
        queue = peer.queue
        while True:
            if not queue:
                peer.parked, peer.wrote_directly = (reader, writer), False
                try:
                    while not queue:
                        peer.wakeup.clear()
                        await peer.wakeup.wait()
                finally:
                    if peer.parked is not None and peer.parked[1] is writer:  # not a newer task's connection
                        peer.parked = None
            # The acceptor never writes, so EOF here means it closed (or restarted).
            if reader.at_eof() or writer.is_closing():
                raise ConnectionResetError("closed by the peer")
            first = queue[0]
            if isinstance(first, _Snapshot):
                queue.popleft()
                await self._write_snapshot(peer, writer, first)
                continue
            self._write_batch(queue, writer)
            await _drain(writer)

    def _write_batch(self, queue: deque[bytes | _Snapshot], writer: asyncio.StreamWriter) -> None:
        """Write the frames at the head of ``queue`` (up to a snapshot or the batch bound) in one write."""
        frames: list[bytes] = []
        size = 0
        while queue and size < _WRITE_BATCH_BYTES_MAX:
            item = queue[0]
            if not isinstance(item, bytes):
                break
            queue.popleft()
            frames.append(item)
            size += len(item)
        if frames:
            writer.write(b"".join(frames))
            self._c.frames_sent += len(frames)

    async def _write_snapshot(self, peer: _Peer, writer: asyncio.StreamWriter, snap: _Snapshot) -> None:
        peer.sending_snapshot = True
        total = len(snap.data)
        offset = 0
        while True:  # at least one chunk, so an empty snapshot still arrives
            chunk = snap.data[offset : offset + snap.chunk_bytes]
            payload = pack([snap.head, offset, total, chunk])
            writer.write(_HEADER.pack(len(payload), _FRAME_SNAP_CHUNK))
            writer.write(payload)
            self._c.frames_sent += 1
            await _drain(writer)
            offset += len(chunk)
            if offset >= total:
                break
        peer.sending_snapshot = False
        self._c.snapshots_sent += 1
        self._notify(self._on_snapshot_status, peer.node_id, True)

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        """Call a driver callback; its exceptions are bugs to log, not reasons to stop sending."""
        try:
            callback(*args)
        except Exception:
            self._log.exception("raft transport callback %r%r raised", callback, args)

    # -- receiving ------------------------------------------------------

    def _inbound_connection(self) -> _InboundConnection:
        return _InboundConnection(self)

    def _accept_hello(self, conn: _InboundConnection) -> None:
        """A peer named itself: adopt or check the cluster id, drop its stale connection, pass on its description."""
        dec = conn.dec
        if dec.peer_cluster_id:
            if self.cluster_id == 0:
                self.cluster_id = dec.peer_cluster_id
                self._notify(self._on_cluster_id, self.cluster_id)
            elif dec.peer_cluster_id != self.cluster_id:
                raise ProtocolError(f"HELLO names cluster {dec.peer_cluster_id}, ours is {self.cluster_id}")
        for other in list(self._inbound):  # a peer redialled: its old connection is stale
            if other is not conn and other.dec.peer_id == dec.peer_id:
                other.close()
        self._notify(self._on_peer_hello, dec.peer_id, dec.peer_meta)


class _InboundConnection(asyncio.Protocol):
    """One connection a peer dialled: the bytes it sends are decoded and delivered in the callback that
    received them, with no reader task to wake (one loop turn less for every message on the commit path).

    The driver's ``on_message`` runs synchronously here, as it did from a reader task: it only steps
    the Raft core. Bad input, a missing HELLO or a raising driver closes this connection alone.
    """

    def __init__(self, owner: PeerTransport) -> None:
        self._owner = owner
        self.dec = _InboundDecoder(
            owner.node_id, owner.cluster_id, owner._frame_bytes_max, owner._snapshot_bytes_max, owner._c
        )
        self._transport: asyncio.BaseTransport | None = None
        self._address: Any = None
        self._accepted = False
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        self._transport = transport
        self._address = transport.get_extra_info("peername")
        if owner._closed or len(owner._inbound) >= _INBOUND_CONNS_MAX:
            owner._log.warning("raft transport: refusing connection from %s (closed or too many)", self._address)
            self.close()
            return
        owner._inbound.add(self)
        self._hello_timer = asyncio.get_running_loop().call_later(_HELLO_TIMEOUT_S, self._no_hello)

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        if self._transport is None or owner._closed:
            return
        dec = self.dec
        try:
            dec.feed(data)
            while True:
                msg = dec.next_message()
                if not self._accepted and dec.peer_id:  # before any message that followed the HELLO
                    self._accepted = True
                    if self._hello_timer is not None:
                        self._hello_timer.cancel()
                    owner._accept_hello(self)
                if msg is None or self._transport is None:
                    return
                try:
                    owner._on_message(msg)
                except Exception:
                    owner._log.exception(
                        "on_message raised for %s from peer %d; closing its connection", msg.type.name, msg.frm
                    )
                    self.close()
                    return
        except ProtocolError as exc:
            owner._c.protocol_errors += 1
            owner._log.warning("raft peer %s (%s): closing connection: %s", dec.peer_id or "?", self._address, exc)
            self.close()
        except Exception:
            owner._log.exception("raft transport bug on the connection from %s; closing it", self._address)
            self.close()

    def eof_received(self) -> bool:
        return False  # the dialler only writes: its end of writing is the end of the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._owner._log.info("raft peer %s (%s): connection lost: %r", self.dec.peer_id or "?", self._address, exc)
        self.close()

    def close(self) -> None:
        """Close the connection and forget it (idempotent)."""
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._owner._inbound.discard(self)
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _no_hello(self) -> None:
        self._hello_timer = None
        if self._transport is not None and not self._accepted:
            self._owner._c.protocol_errors += 1
            self._owner._log.warning(
                "raft peer at %s sent no HELLO in %s s; closing connection", self._address, _HELLO_TIMEOUT_S
            )
            self.close()
