"""POST /v3/watch: etcd's streaming watch over the JSON gateway.

One request body carries any number of watch requests (create, cancel, progress) back to back;
one response stream carries every watcher's results, newline-delimited, as grpc-gateway does.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from kvdisco.api import v3_codec as codec
from kvdisco.api.backend import Backend
from kvdisco.api.v3 import BACKEND_KEY, WATCH_DELIVERY_KEY, error_response, response_header
from kvdisco.mvcc.errors import MvccError
from kvdisco.mvcc.kvstore import Event
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX
from kvdisco.mvcc.watch import Watcher, WatchResponse

__all__ = ["EVENT_JSON_KEY", "EventJsonCache", "add_routes"]


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


class _WatchStream:
    """One POST /v3/watch: any number of watchers multiplexed on one response stream."""

    def __init__(self, request: web.Request, b: Backend, resp: web.StreamResponse) -> None:
        self.request = request
        self.b = b
        self.resp = resp
        self._write_lock = asyncio.Lock()
        self._next_id = 0
        #: Stream-local watch id -> (hub watcher, the task that sends its responses).
        self._watchers: dict[int, tuple[Watcher, asyncio.Task[None]]] = {}
        #: Responses taken from a watcher's queue and not yet written.
        self._sending = 0
        self.delivery = request.app[WATCH_DELIVERY_KEY]
        self.events = request.app[EVENT_JSON_KEY]

    async def send(self, result: dict[str, Any]) -> None:
        async with self._write_lock:
            await self.resp.write(codec.dumps(result) + b"\n")

    async def handle(self, msg: Any) -> None:
        req = codec.parse_watch_request(msg)
        if isinstance(req, codec.WatchCreate):
            await self._create(req)
        elif isinstance(req, codec.WatchCancel):
            await self._cancel(req.watch_id)
        else:
            await self._progress()

    async def _create(self, req: codec.WatchCreate) -> None:
        wid = req.watch_id if req.watch_id else self._next_id
        if wid in self._watchers:
            await self.send(
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
            await self.send(
                codec.watch_response(
                    response_header(self.b), -1, (), created=True, canceled=True, cancel_reason=exc.message
                )
            )
            return
        await self.send(codec.watch_response(response_header(self.b), wid, (), created=True))
        task = asyncio.ensure_future(self._pump(wid, watcher, req.prev_kv))
        self._watchers[wid] = (watcher, task)

    async def _progress(self) -> None:
        """A client's progress request. When nothing is pending on any of this stream's watchers, one
        result with watch_id -1 (as etcd) says the stream has delivered everything up to its revision;
        otherwise each synced watcher gets a progress result in its own order."""
        hub = self.b.hub
        idle = self._sending == 0 and all(
            w.synced and w.next_revision > hub.notified_revision for w, _ in self._watchers.values()
        )
        if idle:
            await self.send(codec.watch_response(response_header(self.b, hub.notified_revision), -1, ()))
        else:
            hub.progress([w.id for w, _ in self._watchers.values()])

    async def _pump(self, wid: int, watcher: Watcher, prev_kv: bool) -> None:
        while (wr := await watcher.next()) is not None:
            self._sending += 1  # taken from the queue, not yet written: a progress result must wait
            try:
                await self._send_result(wid, wr, prev_kv)
            finally:
                self._sending -= 1
            if wr.made_at:
                self.delivery.observe("v3", time.perf_counter() - wr.made_at)
            if wr.canceled:
                break

    async def _send_result(self, wid: int, wr: WatchResponse, prev_kv: bool) -> None:
        await self.send(
            codec.watch_response(
                response_header(self.b, wr.revision),
                wid,
                wr.events,
                prev_kv=prev_kv,
                canceled=wr.canceled,
                compact_revision=wr.compact_revision,
                cancel_reason=wr.cancel_reason,
                encode_event=self.events.encode,
            )
        )

    async def _cancel(self, wid: int) -> None:
        entry = self._watchers.pop(wid, None)
        if entry is None:
            return
        watcher, task = entry
        watcher.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await self.send(codec.watch_response(response_header(self.b), wid, (), canceled=True))

    def connection_lost(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def close(self) -> None:
        for watcher, task in self._watchers.values():
            watcher.cancel()
            task.cancel()
        for _, task in self._watchers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()

    def all_done(self) -> bool:
        return bool(self._watchers) and all(t.done() for _, t in self._watchers.values())


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
    await resp.prepare(request)
    stream = _WatchStream(request, b, resp)
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
        with contextlib.suppress(ConnectionError):
            await stream.send({"error": {"grpc_code": exc.code, "http_code": 400, "message": exc.message}})
    except ConnectionError:
        pass
    finally:
        if reader is not None:
            reader.cancel()
        await stream.close()
    return resp


EVENT_JSON_KEY = web.AppKey("event_json", EventJsonCache)


def add_routes(app: web.Application) -> None:
    app[EVENT_JSON_KEY] = EventJsonCache()
    app.router.add_post("/v3/watch", watch)
