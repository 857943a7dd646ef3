"""The etcd v3 JSON gateway: ``POST /v3/...`` with etcd's field names, base64 bytes and errors.

Handlers are thin: decode with :mod:`v3_codec`, call one :class:`Backend` operation, encode.
A request that needs the leader (a write, a keepalive, a membership change) and reaches a
follower is forwarded to the leader's client URL with its body unchanged, so a client never
needs to know who leads. A forwarded request is never forwarded again: if the receiver is not
the leader either (leadership moved meanwhile), the client gets "no leader" and retries.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from kvdisco.api import v3_codec as codec
from kvdisco.api.backend import CODE_UNAVAILABLE, Backend, RequestFailed
from kvdisco.api.members import add_member, member_list, promote_member, remove_member
from kvdisco.api.metrics import RequestLatency
from kvdisco.mvcc.errors import LeaseNotFoundError, MvccError
from kvdisco.mvcc.kvstore import Event
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX
from kvdisco.mvcc.watch import Watcher, WatchResponse
from kvdisco.raft import NotLeader

__all__ = ["BACKEND_KEY", "FORWARD_HEADER", "FORWARD_SESSION_KEY", "add_routes", "error_response", "forward_to_leader"]

log = logging.getLogger("kvdisco.api.v3")

BACKEND_KEY = web.AppKey("backend", Backend)
FORWARD_SESSION_KEY = web.AppKey("forward_session", aiohttp.ClientSession)
WATCH_DELIVERY_KEY = web.AppKey("watch_delivery", RequestLatency)

#: Set on a request one member forwards to another; its value is the forwarding member's id.
FORWARD_HEADER = "X-Kvdisco-Forwarded-By"

#: How long a forwarded request may take at the leader before the client gets "request timed out".
FORWARD_TIMEOUT_S = 10.0

#: Version reported by maintenance/status: the etcd API level kvdisco speaks, and kvdisco's own.
SERVER_VERSION = "3.4.0-kvdisco"

#: Bytes of snapshot per streamed maintenance/snapshot message (before base64).
SNAPSHOT_CHUNK_BYTES = 256 * 1024

V3Handler = Callable[[web.Request, Backend, dict[str, Any]], Awaitable[dict[str, Any]]]


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.dumps(obj), content_type="application/json")


def error_response(code: int, message: str) -> web.Response:
    status, body = codec.error_body(code, message)
    return _json_response(body, status)


def _header(b: Backend, revision: int | None = None) -> dict[str, Any]:
    return codec.header(b.cluster_id, b.member_id, b.revision if revision is None else revision, b.raft_term)


def _member_header(b: Backend) -> dict[str, Any]:
    """Cluster responses carry no store revision (as etcd's)."""
    return codec.header(b.cluster_id, b.member_id, 0, b.raft_term)


async def forward_to_leader(request: web.Request, body: bytes, b: Backend, exc: NotLeader) -> web.Response:
    """Send the request (method, path, query, body) unchanged to the leader and relay its answer.

    Shared by /v3 and /v1. Only a request that never left gets "no leader", which says it was not applied.
    """
    info = b.node.member(exc.leader_hint)
    if request.headers.get(FORWARD_HEADER) or info is None or not info.client_urls:
        return error_response(CODE_UNAVAILABLE, "etcdserver: no leader")
    session = request.app[FORWARD_SESSION_KEY]
    url = info.client_urls[0].rstrip("/") + request.path_qs
    headers = {FORWARD_HEADER: f"{b.member_id:x}"}
    if "Content-Type" in request.headers:
        headers["Content-Type"] = request.headers["Content-Type"]
    try:
        async with session.request(request.method, url, data=body, headers=headers) as resp:
            payload = await resp.read()
            return web.Response(status=resp.status, body=payload, content_type=resp.content_type)
    except aiohttp.ClientConnectorError as err:
        # Nothing was sent: the request cannot have been applied, and "no leader" tells the client so.
        log.debug("forward to leader %s failed: %r", url, err)
        return error_response(CODE_UNAVAILABLE, "etcdserver: no leader")
    except (aiohttp.ClientError, TimeoutError) as err:
        log.debug("forward to leader %s failed: %r", url, err)
        return error_response(CODE_UNAVAILABLE, "etcdserver: request timed out")


def _handler(fn: V3Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        b = request.app[BACKEND_KEY]
        raw = await request.read()
        try:
            body = codec.loads(raw)
            return _json_response(await fn(request, b, body))
        except NotLeader as exc:
            return await forward_to_leader(request, raw, b, exc)
        except codec.BadRequest as exc:
            return error_response(exc.code, exc.message)
        except (MvccError, RequestFailed) as exc:
            return error_response(exc.code, exc.message)

    handle.__name__ = fn.__name__
    return handle


# -- kv ---------------------------------------------------------------------------------------------------------------


async def kv_range(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    req, serializable = codec.parse_range(body)
    res = await b.range(req, serializable)
    return codec.range_response(_header(b, res.revision), res)


async def kv_put(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.put(codec.parse_put(body))
    return codec.put_response(_header(b, res.revision), res)


async def kv_delete_range(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.delete_range(codec.parse_delete_range(body))
    return codec.delete_range_response(_header(b, res.revision), res)


async def kv_txn(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.txn(codec.parse_txn(body))
    return codec.txn_response(_header(b, res.revision), res)


async def kv_compaction(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.compact(codec.parse_compaction(body))
    return codec.compaction_response(_header(b, res.revision))


# -- leases -----------------------------------------------------------------------------------------------------------


async def lease_grant(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.lease_grant(codec.parse_lease_grant(body))
    return codec.lease_grant_response(_header(b), res)


async def lease_revoke(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    await b.lease_revoke(codec.parse_lease_id(body))
    return codec.lease_revoke_response(_header(b))


async def lease_keepalive(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    lease_id = codec.parse_lease_id(body)
    try:
        ttl = await b.lease_keepalive(lease_id)
    except LeaseNotFoundError:
        ttl = 0  # etcd answers an unknown or expired lease with TTL 0, not an error
    return codec.lease_keepalive_response(_header(b), lease_id, ttl)


async def lease_time_to_live(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    lease_id, keys = codec.parse_lease_timetolive(body)
    info = await b.lease_time_to_live(lease_id, keys)
    return codec.lease_timetolive_response(
        _header(b), lease_id, info.ttl, info.granted_ttl, info.keys if keys else None
    )


async def lease_leases(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    codec.parse_empty(body, "LeaseLeasesRequest")
    return codec.lease_leases_response(_header(b), await b.leases())


# -- maintenance and cluster ------------------------------------------------------------------------------------------


async def maintenance_status(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    codec.parse_empty(body, "StatusRequest")
    st = b.status()
    errors = (str(b.node.failure),) if b.node.failure is not None else ()
    return codec.status_response(
        _header(b),
        version=SERVER_VERSION,
        db_size=st["db_size"],
        leader=st["leader"],
        raft_index=st["raft_index"],
        raft_term=st["raft_term"],
        raft_applied_index=st["raft_applied_index"],
        db_size_in_use=st["db_size"],
        errors=errors,
        is_learner=st["is_learner"],
    )


async def cluster_member_list(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    codec.parse_member_list(body)
    return {"header": _member_header(b), "members": member_list(b.node)}


async def cluster_member_add(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    added = await add_member(b.node, body)
    return {"header": _member_header(b), "member": added, "members": member_list(b.node)}


async def cluster_member_remove(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    await remove_member(b.node, body)
    return {"header": _member_header(b), "members": member_list(b.node)}


async def cluster_member_promote(request: web.Request, b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    await promote_member(b.node, body)
    return {"header": _member_header(b), "members": member_list(b.node)}


async def maintenance_snapshot(request: web.Request) -> web.StreamResponse:
    """The whole store (kvdisco's snapshot format) as of a linearizable point, as etcd streams it: base64 chunks."""
    b = request.app[BACKEND_KEY]
    try:
        codec.parse_empty(codec.loads(await request.read()), "SnapshotRequest")
        await b.read_barrier()
    except codec.BadRequest as exc:
        return error_response(exc.code, exc.message)
    except RequestFailed as exc:
        return error_response(exc.code, exc.message)
    data = b.machine.snapshot()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    hdr = _header(b)
    for start in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
        chunk = data[start : start + SNAPSHOT_CHUNK_BYTES]
        result: dict[str, Any] = {"header": hdr, "blob": base64.b64encode(chunk).decode()}
        remaining = len(data) - start - len(chunk)
        if remaining:
            result["remaining_bytes"] = str(remaining)
        await resp.write(codec.dumps({"result": result}) + b"\n")
    await resp.write_eof()
    return resp


# -- watch ------------------------------------------------------------------------------------------------------------


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
                    _header(self.b),
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
                codec.watch_response(_header(self.b), -1, (), created=True, canceled=True, cancel_reason=exc.message)
            )
            return
        await self.send(codec.watch_response(_header(self.b), wid, (), created=True))
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
            await self.send(codec.watch_response(_header(self.b, hub.notified_revision), -1, ()))
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
                _header(self.b, wr.revision),
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
        await self.send(codec.watch_response(_header(self.b), wid, (), canceled=True))

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
    routes: dict[str, V3Handler] = {
        "/v3/kv/range": kv_range,
        "/v3/kv/put": kv_put,
        "/v3/kv/deleterange": kv_delete_range,
        "/v3/kv/txn": kv_txn,
        "/v3/kv/compaction": kv_compaction,
        "/v3/lease/grant": lease_grant,
        "/v3/lease/revoke": lease_revoke,
        "/v3/kv/lease/revoke": lease_revoke,
        "/v3/lease/keepalive": lease_keepalive,
        "/v3/lease/timetolive": lease_time_to_live,
        "/v3/kv/lease/timetolive": lease_time_to_live,
        "/v3/lease/leases": lease_leases,
        "/v3/kv/lease/leases": lease_leases,
        "/v3/maintenance/status": maintenance_status,
        "/v3/cluster/member/list": cluster_member_list,
        "/v3/cluster/member/add": cluster_member_add,
        "/v3/cluster/member/remove": cluster_member_remove,
        "/v3/cluster/member/promote": cluster_member_promote,
    }
    for path, fn in routes.items():
        app.router.add_post(path, _handler(fn))
    app[EVENT_JSON_KEY] = EventJsonCache()
    app.router.add_post("/v3/watch", watch)
    app.router.add_post("/v3/maintenance/snapshot", maintenance_snapshot)
