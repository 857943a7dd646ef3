"""POST /v3/watch: etcd's streaming watch over the JSON gateway.

One request body carries any number of watch requests (create, cancel, progress) back to back;
one response stream carries every watcher's results, newline-delimited, as grpc-gateway does.

A write seen by N watchers costs N socket writes and little else: the hub hands the watchers of
a range one shared events tuple and tells each stream through a listener (no task per watcher);
:class:`ResponseEncoder` builds the line once and splices in each watch id; the member's
:class:`~kvdisco.api.watch_flush.Flusher` (shared with /v1's watch) writes every ready stream
straight to its transport in one callback, in slices of 1 ms. A stream whose client stops reading
takes nothing more from its watchers until the transport drains, so their bounded queues send
them to history instead.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from kvdisco.api import v3_codec as codec
from kvdisco.api.backend import Backend
from kvdisco.api.v3 import BACKEND_KEY, WATCH_DELIVERY_KEY, error_response, response_header
from kvdisco.api.watch_flush import (
    WATCH_FLUSHER_KEY,
    Flusher,
    LiveLineCache,
    WatchStream,
    install,
)
from kvdisco.mvcc.errors import MvccError
from kvdisco.mvcc.kvstore import Event
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX
from kvdisco.mvcc.watch import Watcher, WatchResponse

__all__ = ["EVENT_JSON_KEY", "WATCH_ENCODER_KEY", "EventJsonCache", "ResponseEncoder", "add_routes"]


class EventJsonCache:
    """Each event's JSON, built once for all the watchers of this member instead of once per watcher.

    One write fans out to every watcher of its keys; without this, each of them base64-encoded the
    same key and value again. Entries hold their event, so an id is never reused while cached.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._cache: dict[tuple[int, bool], tuple[Event, dict[str, Any]]] = {}

    def encode(self, ev: Event, prev_kv: bool) -> dict[str, Any]:
        key = (id(ev), prev_kv)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is ev:
            return hit[1]
        out = codec.event_json(ev, prev_kv)
        if len(self._cache) >= self._size:
            self._cache.clear()
        self._cache[key] = (ev, out)
        return out


class _JsonStream:
    """Successive JSON objects from a streamed request body (grpc-gateway accepts them back to back).

    The buffer is parsed again only when a chunk brings a closing bracket (no object can end
    without one), so a large body sent in small pieces costs linear, not quadratic, time.
    """

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._buf = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()

    async def next(self) -> Any:
        """The next object, or None at the end of the body; BadRequest on garbage or oversize."""
        parse = bool(self._buf.strip())
        while True:
            if parse:
                text = self._buf.lstrip()
                try:
                    obj, end = self._decoder.raw_decode(text)
                except json.JSONDecodeError:
                    pass
                except RecursionError:
                    raise codec.BadRequest("invalid watch request: JSON nested too deeply") from None
                else:
                    if end > REQUEST_BYTES_MAX:
                        raise codec.BadRequest("etcdserver: request is too large")
                    self._buf = text[end:]
                    return obj
            if len(self._buf) > REQUEST_BYTES_MAX:
                raise codec.BadRequest("etcdserver: request is too large")
            chunk = await self._content.readany()
            try:
                piece = self._utf8.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                raise codec.BadRequest("invalid character in watch request: not UTF-8") from None
            if not chunk:
                if self._buf.strip():
                    raise codec.BadRequest("invalid character in watch request: malformed JSON")
                return None
            self._buf += piece
            parse = "}" in piece or "]" in piece


def _splice(head: bytes, wid: int, tail: bytes) -> bytes:
    """A shared response's line with one watcher's id; codec.watch_response leaves out a zero
    watch_id, as etcd's gateway does."""
    return head + b',"watch_id":"%d"' % wid + tail if wid else head + tail


class ResponseEncoder:
    """The bytes of watch responses. A live response is encoded once for all the watchers of a
    member that get the same events tuple (the hub shares one per group and options), with only
    the watch id spliced in per watcher: the header and events are built once per write, not
    once per watcher. The result is byte for byte what :func:`codec.watch_response` gives.
    """

    def __init__(self, b: Backend, events: EventJsonCache, flusher: Flusher) -> None:
        self._b = b
        self._events = events
        self._cache: LiveLineCache[tuple[bytes, bytes]] = LiveLineCache()
        #: The last live line's (flusher slice, events, prev_kv, head, tail). The next watchers of the
        #: same write in the same slice take it without building the cache key: the header's term
        #: cannot change inside one event-loop callback.
        self._flusher = flusher
        self._memo: tuple[int, tuple[Event, ...], bool, bytes, bytes] | None = None

    def line(self, wid: int, wr: WatchResponse, prev_kv: bool) -> bytes:
        """One line of the stream for watcher ``wid`` (its stream-local id), newline included."""
        if wr.canceled or not wr.events:
            return self.result_line(
                codec.watch_response(
                    response_header(self._b, wr.revision),
                    wid,
                    (),
                    canceled=wr.canceled,
                    compact_revision=wr.compact_revision,
                    cancel_reason=wr.cancel_reason,
                )
            )
        memo = self._memo
        if memo is not None and memo[1] is wr.events and memo[2] is prev_kv and memo[0] == self._flusher.slices:
            return _splice(memo[3], wid, memo[4])
        b = self._b
        key = (id(wr.events), prev_kv, wr.revision, b.raft_term, b.cluster_id)
        hit = self._cache.get(key, wr.events)
        if hit is None:
            head = b'{"result":{"header":' + codec.dumps(response_header(b, wr.revision))
            events = [self._events.encode(ev, prev_kv) for ev in wr.events]
            tail = b',"events":' + codec.dumps(events) + b"}}\n"
            hit = (head, tail)
            if wr.made_at:  # live: other watchers get the same tuple; history responses are not shared
                self._cache.put(key, wr.events, hit, len(head) + len(tail))
        head, tail = hit
        if wr.made_at:
            self._memo = (self._flusher.slices, wr.events, prev_kv, head, tail)
        return _splice(head, wid, tail)

    @staticmethod
    def result_line(result: dict[str, Any]) -> bytes:
        return codec.dumps(result) + b"\n"


class _WatchStream(WatchStream):
    """One POST /v3/watch: any number of watchers multiplexed on one response stream.

    Writing is :class:`WatchStream`'s (the member's flusher, no task per watcher). Here: the
    requests (create, cancel, progress) and the lines. A watcher canceled by the hub
    (compaction) stays in :attr:`watchers`, its id taken, as before a client cancel. The request
    reader waits for the drain after each request, so a client that sends requests without
    reading gets no more.
    """

    route = "v3"

    def __init__(
        self,
        request: web.Request,
        b: Backend,
        resp: web.StreamResponse,
        writer: AbstractStreamWriter,
    ) -> None:
        app = request.app
        super().__init__(request, resp, writer, app[WATCH_FLUSHER_KEY], app[WATCH_DELIVERY_KEY])
        self.b = b
        self._next_id = 0
        self._line = app[WATCH_ENCODER_KEY].line

    def encode(self, wid: int, watcher: Watcher, wr: WatchResponse) -> bytes:
        return self._line(wid, wr, watcher.prev_kv)

    def send_result(self, result: dict[str, Any]) -> None:
        """Queue one control line; it is written at the next flush, before later responses."""
        self.send(ResponseEncoder.result_line(result))

    async def handle(self, msg: Any) -> None:
        req = codec.parse_watch_request(msg)
        if isinstance(req, codec.WatchCreate):
            self._create(req)
        elif isinstance(req, codec.WatchCancel):
            self._cancel(req.watch_id)
        else:
            self._progress()
        await self.wait_writable()

    def _create(self, req: codec.WatchCreate) -> None:
        wid = req.watch_id if req.watch_id else self._next_id
        if wid in self.watchers:
            self.send_result(
                codec.watch_response(
                    response_header(self.b),
                    wid,
                    (),
                    created=True,
                    canceled=True,
                    cancel_reason="etcdserver: duplicate watch ID",
                )
            )
            return
        self._next_id = max(self._next_id, wid) + 1
        try:
            watcher = self.b.hub.watch(
                req.key,
                req.range_end,
                start_revision=req.start_revision,
                prev_kv=req.prev_kv,
                filters=req.filters,
                progress_notify=req.progress_notify,
            )
        except MvccError as exc:
            # etcd answers a watch it cannot create (e.g. an empty range) with a created+canceled result.
            self.send_result(
                codec.watch_response(
                    response_header(self.b), -1, (), created=True, canceled=True, cancel_reason=exc.message
                )
            )
            return
        self.send_result(codec.watch_response(response_header(self.b), wid, (), created=True))
        self.add(wid, watcher)

    def _progress(self) -> None:
        """A client's progress request. When nothing is pending on any of this stream's watchers, one
        result with watch_id -1 (as etcd) says the stream has delivered everything up to its revision;
        otherwise each synced watcher gets a progress result in its own order. (Responses taken from
        a watcher are written at once, so a watcher's queue is all that can be pending.)"""
        hub = self.b.hub
        idle = all(w.synced and w.next_revision > hub.notified_revision for w in self.watchers.values())
        if idle:
            self.send_result(codec.watch_response(response_header(self.b, hub.notified_revision), -1, ()))
        else:
            hub.progress([w.id for w in self.watchers.values()])

    def _cancel(self, wid: int) -> None:
        if self.remove(wid) is None:  # drops what it had queued: nothing of it is written after the cancel
            return
        self.send_result(codec.watch_response(response_header(self.b), wid, (), canceled=True))


async def watch(request: web.Request) -> web.StreamResponse:
    b = request.app[BACKEND_KEY]
    messages = _JsonStream(request.content)
    try:
        first = await messages.next()
        if first is None:
            raise codec.BadRequest("etcdserver: empty watch request")
        codec.parse_watch_request(first)  # refuse a bad first request with a plain 400
    except codec.BadRequest as exc:
        return error_response(exc.code, exc.message)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    writer = await resp.prepare(request)  # a StreamResponse sends its headers here
    if writer is None:  # only after write_eof, which nothing here has called
        raise RuntimeError("watch response prepared after its end")
    stream = _WatchStream(request, b, resp, writer)
    reader: asyncio.Task[Any] | None = None
    try:
        await stream.handle(first)
        reader = asyncio.ensure_future(messages.next())
        while not stream.connection_lost() and not b.hub.closed:
            await asyncio.wait({reader}, timeout=1.0)
            if reader.done():
                msg = reader.result()
                if msg is None:
                    reader = asyncio.ensure_future(asyncio.Event().wait())  # body ended: stream on
                    continue
                await stream.handle(msg)
                reader = asyncio.ensure_future(messages.next())
    except codec.BadRequest as exc:
        stream.send_result({"error": {"grpc_code": exc.code, "http_code": 400, "message": exc.message}})
    except ConnectionError:
        pass
    finally:
        if reader is not None:
            reader.cancel()
        stream.close()
    return resp


EVENT_JSON_KEY = web.AppKey("event_json", EventJsonCache)
WATCH_ENCODER_KEY = web.AppKey("watch_encoder", ResponseEncoder)


def add_routes(app: web.Application) -> None:
    app[EVENT_JSON_KEY] = EventJsonCache()
    app[WATCH_ENCODER_KEY] = ResponseEncoder(app[BACKEND_KEY], app[EVENT_JSON_KEY], install(app))
    app.router.add_post("/v3/watch", watch)
