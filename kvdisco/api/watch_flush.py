"""Writing hub watchers' responses to HTTP streams: one implementation for /v3/watch and /v1/watch.

A write seen by N watchers must cost N socket writes at most, and no task wake-up per watcher:

* each watcher tells its stream through a listener (:meth:`Watcher.set_listener`) that it may
  have something; the stream marks itself dirty with the member's :class:`Flusher`;
* the flusher runs one event-loop callback that calls :meth:`WatchStream.flush` on every dirty
  stream, in slices of :data:`FLUSH_SLICE_S`, starting one loop turn after the first mark, so
  the Raft loop and the callers' answers never wait for a whole fan-out, nor for its first
  slice (the hub itself hears of a write only after the new commit index went to the
  followers: see ``StateMachine.publish``);
* a stream's flush takes what its ready watchers have (:meth:`Watcher.poll`), encodes each
  response (the route's :meth:`WatchStream.encode`), and writes them all to the socket in one
  chunk, synchronously. A stream carrying many watchers thus costs one ``send()`` per flush;
* a stream whose client stops reading (the transport above its high-water mark) takes nothing
  more from its watchers until the transport drains: their bounded queues fill and the hub sends
  them to history, so memory stays bounded and the other streams are never held back.

The routes differ only in their lines (:meth:`WatchStream.encode`), their control lines
(:meth:`WatchStream.send`), and what a watcher's end means (:meth:`WatchStream.watcher_ended`).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import time
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from kvdisco.api.metrics import RequestLatency
from kvdisco.mvcc.watch import Watcher, WatchResponse

__all__ = [
    "FLUSH_BYTES_MAX",
    "FLUSH_SLICE_S",
    "LINE_CACHE_BYTES_MAX",
    "LINE_CACHE_ENTRIES_MAX",
    "LiveLineCache",
    "WATCH_FLUSHER_KEY",
    "Flusher",
    "WatchStream",
    "install",
]

#: Bytes one stream writes in one go before the others get their turn: bounds how long one
#: stream's flush holds the event loop, and how far one write can overshoot the transport's
#: high-water mark.
FLUSH_BYTES_MAX = 256 << 10

#: How long one flush callback may write before the event loop gets a turn.
FLUSH_SLICE_S = 0.001

#: Encoded live responses kept for the other watchers of the same write, by count and by bytes.
#: A write is usually encoded and sent to all its watchers in one event-loop iteration, so a
#: few entries suffice; the bytes bound keeps a burst of large revisions from pinning memory.
LINE_CACHE_ENTRIES_MAX = 256
LINE_CACHE_BYTES_MAX = 8 << 20

_V = TypeVar("_V")


class LiveLineCache(Generic[_V]):
    """Encoded live responses, kept for the other watchers of the same write.

    The hub hands every watcher of one group the same events tuple, so a key starts with the
    tuple's id. An entry holds its tuple, so that id cannot be reused while cached, and a lookup
    checks it is still the same tuple. Bounded by :data:`LINE_CACHE_ENTRIES_MAX` and
    :data:`LINE_CACHE_BYTES_MAX`: past either, the cache starts afresh.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Any, ...], _V]] = {}
        self._bytes = 0

    def get(self, key: Hashable, events: tuple[Any, ...]) -> _V | None:
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] is events else None

    def put(self, key: Hashable, events: tuple[Any, ...], value: _V, nbytes: int) -> None:
        if len(self._entries) >= LINE_CACHE_ENTRIES_MAX or self._bytes > LINE_CACHE_BYTES_MAX:
            self._entries.clear()
            self._bytes = 0
        self._entries[key] = (events, value)
        self._bytes += nbytes


class Flusher:
    """Writes the watch streams of a member that have something to send: one event-loop callback
    per slice of writes for all of them, instead of a task wake-up per watcher per write.

    A slice lasts at most :data:`FLUSH_SLICE_S`, then the rest waits for the next turn of the
    loop: a fan-out to a thousand watchers takes milliseconds, and the Raft loop's next steps
    and the callers' answers must not wait for all of it.
    """

    def __init__(self) -> None:
        #: Streams to flush, in the order they were marked (a dict as an ordered set).
        self._dirty: dict[WatchStream, None] = {}
        self._handle: asyncio.Handle | None = None
        #: Slices run so far: an encoder may keep what it built for as long as this is unchanged.
        self.slices = 0

    def mark(self, stream: WatchStream) -> None:
        self._dirty[stream] = None
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        """The first slice waits one more turn of the loop: what was ready when the streams were
        marked (the Raft loop's next Ready, the callers' answers) goes first."""
        self._handle = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._handle = None
        self.slices += 1
        batch = list(self._dirty)
        self._dirty.clear()
        again: list[WatchStream] = []
        done = 0
        deadline = time.perf_counter() + FLUSH_SLICE_S
        try:
            for stream in batch:
                done += 1
                if stream.flush():
                    again.append(stream)  # more to send: its turn comes again after the others'
                if time.perf_counter() >= deadline:
                    break
        finally:
            rest = batch[done:] + again
            if rest:
                self._dirty = {**dict.fromkeys(rest), **self._dirty}
                if self._handle is None:
                    self._handle = asyncio.get_running_loop().call_soon(self._run)


class WatchStream(abc.ABC):
    """One streamed HTTP response carrying the responses of any number of hub watchers, each
    known by a stream-local id.

    Nothing here waits per watcher: :meth:`flush` (called by the :class:`Flusher`) takes the
    ready responses of all the stream's watchers, in each watcher's order, and writes them with
    the queued control lines in one chunk. Control lines are written before any response taken
    after them. While the client does not read, nothing is taken from the watchers; one task
    awaits the drain and marks the stream again.
    """

    #: The ``route`` label of the apply-to-socket latency (``kvdisco_watch_delivery_seconds``).
    route = ""

    def __init__(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        writer: AbstractStreamWriter,
        flusher: Flusher,
        delivery: RequestLatency,
    ) -> None:
        self.request = request
        self._writer = writer
        self._protocol = request.protocol
        self._chunked = resp.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        self._flusher = flusher
        self._delivery = delivery
        #: Stream-local id -> hub watcher. What the route does with one that ended is its choice.
        self.watchers: dict[int, Watcher] = {}
        #: Watch ids that may have responses to take, in the order they were signalled.
        self._ready: dict[int, None] = {}
        #: Encoded control lines not yet written.
        self._out: list[bytes] = []
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False

    # --- what a route provides ---------------------------------------------------------------

    @abc.abstractmethod
    def encode(self, wid: int, watcher: Watcher, wr: WatchResponse) -> bytes:
        """One line of the stream (newline included) for response ``wr`` of watcher ``wid``."""

    def watcher_ended(self, wid: int) -> None:  # noqa: B027 (an optional hook; doing nothing is its default)
        """Watcher ``wid`` will send nothing more: its last response was written (a cancel after
        compaction), or it was removed from the hub (the hub closed). Nothing by default."""

    # --- what a route uses ---------------------------------------------------------------------

    def send(self, line: bytes) -> None:
        """Queue one control line (newline included); it is written at the next flush, before
        the responses taken after it."""
        self._out.append(line)
        self._flusher.mark(self)

    def add(self, wid: int, watcher: Watcher) -> None:
        """Carry ``watcher`` as ``wid``: its responses follow the control lines queued so far."""
        self.watchers[wid] = watcher
        watcher.set_listener(functools.partial(self._mark, wid))
        self._mark(wid)  # a watcher from history has something to read before anything is signalled

    def remove(self, wid: int) -> Watcher | None:
        """Stop carrying ``wid`` and cancel its watcher: nothing it had queued is written after this."""
        watcher = self.watchers.pop(wid, None)
        if watcher is not None:
            watcher.set_listener(None)
            watcher.cancel()
        self._ready.pop(wid, None)
        return watcher

    async def wait_writable(self) -> None:
        """Wait while the client does not read what was written."""
        if self._protocol.writing_paused:
            await self._writer.drain()

    def connection_lost(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def close(self) -> None:
        """Cancel every watcher and write the control lines still queued (e.g. an error)."""
        for watcher in self.watchers.values():
            watcher.set_listener(None)
            watcher.cancel()
        self.watchers.clear()
        self._ready.clear()
        if self._out:
            self.flush()
        self._closed = True
        if self._drainer is not None:
            self._drainer.cancel()

    # --- the flush -----------------------------------------------------------------------------

    def _mark(self, wid: int) -> None:
        """A watcher's listener: it may have something to send."""
        self._ready[wid] = None
        self._flusher.mark(self)

    def flush(self) -> bool:
        """Write the control lines, then what the ready watchers have, in one chunk, without waiting.

        True when a watcher has more to send (over :data:`FLUSH_BYTES_MAX`, or catching up from
        history) and the stream should be flushed again once others have had their turn.
        """
        protocol = self._protocol
        transport = protocol.transport
        if self._closed or transport is None or transport.is_closing():
            self._out.clear()
            return False
        parts, self._out = self._out, []
        size = sum(map(len, parts)) if parts else 0
        made: dict[float, int] = {}  # apply time -> responses: a write's watchers share one
        ended: list[int] = []
        more = False
        paused = self._drainer is not None or protocol.writing_paused
        if not paused and self._ready:
            ready, watchers, encode = self._ready, self.watchers, self.encode
            for wid in list(ready):
                watcher = watchers.get(wid)
                if watcher is None:
                    del ready[wid]
                    continue
                while size < FLUSH_BYTES_MAX:
                    wr = watcher.poll()
                    if wr is None:
                        if watcher.catching_up:
                            more = True  # a history step found nothing to send: read on next turn
                        else:
                            del ready[wid]
                            if watcher.ended:
                                ended.append(wid)
                        break
                    line = encode(wid, watcher, wr)
                    parts.append(line)
                    size += len(line)
                    if wr.made_at:
                        made[wr.made_at] = made.get(wr.made_at, 0) + 1
                    if wr.canceled:  # the watcher's last response (compaction)
                        watcher.set_listener(None)
                        del ready[wid]
                        ended.append(wid)
                        break
                else:
                    more = True
                    break
        if parts:
            if self._chunked:
                parts.insert(0, b"%x\r\n" % size)
                parts.append(b"\r\n")
            transport.write(b"".join(parts))
            if made:
                now = time.perf_counter()
                observe, route = self._delivery.observe, self.route
                for t, n in made.items():
                    observe(route, now - t, n)
        for wid in ended:
            self.watcher_ended(wid)
        if self._ready and self._drainer is None and protocol.writing_paused:
            self._drainer = asyncio.ensure_future(self._drain())  # the only way back once paused
            return False
        return more and not paused

    async def _drain(self) -> None:
        """The client stopped reading: wait until it has read enough, then send what is ready."""
        try:
            await self._writer.drain()
        except ConnectionError:
            return  # the request loop sees the connection is gone and closes the stream
        finally:
            self._drainer = None
        if self._ready:
            self._flusher.mark(self)


WATCH_FLUSHER_KEY = web.AppKey("watch_flusher", Flusher)


def install(app: web.Application) -> Flusher:
    """The member's one flusher, made by the first route that needs it (/v3 and /v1 share it)."""
    if WATCH_FLUSHER_KEY not in app:
        app[WATCH_FLUSHER_KEY] = Flusher()
    return app[WATCH_FLUSHER_KEY]
