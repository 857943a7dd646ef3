"""kvdisco's native HTTP API: what the etcd gateway cannot say plainly.

Keys are UTF-8 path segments (``/v1/kv/pods/web-1``) and values are raw request bodies, numbers
are JSON numbers, and watches are NDJSON streams, so curl and shell scripts need no base64.
Cluster membership, Raft status and snapshot download live here too. The OpenAPI document at
``/v1/openapi.json`` describes every route (see :mod:`openapi`).

Errors have the gateway's shape, ``{"error", "code", "message"}``, with the same gRPC codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from kvdisco.api import v3
from kvdisco.api.backend import Backend, RequestFailed
from kvdisco.api.members import add_member, member_list, promote_member, remove_member
from kvdisco.api.openapi import OPENAPI
from kvdisco.api.watch_flush import (
    WATCH_FLUSHER_KEY,
    LiveLineCache,
    WatchStream,
    install,
)
from kvdisco.mvcc.errors import MvccError
from kvdisco.mvcc.kvstore import Event, EventType, KeyValue, RequestDeleteRange, RequestPut, RequestRange
from kvdisco.mvcc.watch import Watcher, WatchResponse
from kvdisco.raft import NotLeader

__all__ = ["add_routes"]

_CODE_INVALID_ARGUMENT = 3
_CODE_NOT_FOUND = 5

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)

#: How often a watch stream that has nothing to send checks that its client is still connected.
WATCH_POLL_S = 1.0

_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")


class _BadParam(Exception):
    pass


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(code: int, message: str) -> web.Response:
    return v3.error_response(code, message)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise _BadParam(f"kvdisco: query parameter {name} must be true or false, got {raw!r}")


def _int(request: web.Request, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    raw = request.query.get(name, "0")
    if not _DECIMAL.fullmatch(raw):
        raise _BadParam(f"kvdisco: query parameter {name} must be a decimal integer, got {raw!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise _BadParam(f"kvdisco: query parameter {name} must be in [{lo}, {hi}], got {value}")
    return value


def _key(request: web.Request) -> bytes:
    key = request.match_info.get("key", "").encode()
    if not key:
        raise _BadParam("etcdserver: key is not provided")
    return key


def _prefix_end(key: bytes) -> bytes:
    """The range_end that selects every key starting with ``key`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _range_end(request: web.Request, key: bytes) -> bytes:
    return _prefix_end(key) if _flag(request, "prefix") else b""


def _value(data: bytes) -> dict[str, str]:
    try:
        return {"value": data.decode()}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(data).decode()}


def _key_text(key: bytes) -> dict[str, str]:
    try:
        return {"key": key.decode()}
    except UnicodeDecodeError:
        return {"key_base64": base64.b64encode(key).decode()}


def kv_json(kv: KeyValue) -> dict[str, Any]:
    out: dict[str, Any] = _key_text(kv.key)
    out.update(_value(kv.value))
    out.update(create_revision=kv.create_revision, mod_revision=kv.mod_revision, version=kv.version)
    if kv.lease:
        out["lease"] = kv.lease
    return out


def event_json(ev: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "PUT" if ev.type == EventType.PUT else "DELETE"}
    if ev.type == EventType.PUT:
        out["kv"] = kv_json(ev.kv)
    else:
        out["kv"] = {**_key_text(ev.kv.key), "mod_revision": ev.kv.mod_revision}
    if ev.prev_kv is not None:
        out["prev_kv"] = kv_json(ev.prev_kv)
    return out


Native = Callable[[web.Request, Backend], Awaitable[web.StreamResponse]]


def _handler(fn: Native) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        b = request.app[v3.BACKEND_KEY]
        try:
            return await fn(request, b)
        except NotLeader as exc:
            return await v3.forward_to_leader(request, await request.read(), b, exc)
        except _BadParam as exc:
            return _error(_CODE_INVALID_ARGUMENT, str(exc))
        except (MvccError, RequestFailed) as exc:
            return _error(exc.code, exc.message)

    handle.__name__ = fn.__name__
    return handle


# -- kv ---------------------------------------------------------------------------------------------------------------


async def get_kv(request: web.Request, b: Backend) -> web.StreamResponse:
    key = _key(request)
    prefix = _flag(request, "prefix")
    req = RequestRange(
        key,
        _prefix_end(key) if prefix else b"",
        limit=_int(request, "limit"),
        revision=_int(request, "rev"),
        keys_only=_flag(request, "keys_only"),
    )
    res = await b.range(req, _flag(request, "serializable"))
    if not prefix and not res.kvs:
        return _json({"error": "key not found", "code": _CODE_NOT_FOUND, "message": "key not found"}, 404)
    body = {"revision": res.revision, "count": res.count, "more": res.more, "kvs": [kv_json(kv) for kv in res.kvs]}
    return _json(body)


async def put_kv(request: web.Request, b: Backend) -> web.StreamResponse:
    key = _key(request)
    cmd = RequestPut(key, await request.read(), lease=_int(request, "lease"), prev_kv=_flag(request, "prev_kv"))
    res = await b.put(cmd)
    body: dict[str, Any] = {"revision": res.revision}
    if res.prev_kv is not None:
        body["prev_kv"] = kv_json(res.prev_kv)
    return _json(body)


async def delete_kv(request: web.Request, b: Backend) -> web.StreamResponse:
    key = _key(request)
    cmd = RequestDeleteRange(key, _range_end(request, key), prev_kv=_flag(request, "prev_kv"))
    res = await b.delete_range(cmd)
    body: dict[str, Any] = {"revision": res.revision, "deleted": res.deleted}
    if res.prev_kvs:
        body["prev_kvs"] = [kv_json(kv) for kv in res.prev_kvs]
    return _json(body)


class _WatchLines:
    """/v1 watch lines. A live response's line is built once for all the /v1 watchers of a member
    that get the same events tuple (the hub shares one per group and options, and a /v1 line has
    no watch id), not once per watcher."""

    def __init__(self) -> None:
        self._cache: LiveLineCache[bytes] = LiveLineCache()

    def line(self, wr: WatchResponse) -> bytes:
        live = bool(wr.made_at and wr.events)
        key = (id(wr.events), wr.revision)
        if live and (hit := self._cache.get(key, wr.events)) is not None:
            return hit
        out: dict[str, Any] = {"revision": wr.revision}
        if wr.events:
            out["events"] = [event_json(ev) for ev in wr.events]
        if wr.canceled:
            out.update(canceled=True, reason=wr.cancel_reason)
            if wr.compact_revision:
                out["compact_revision"] = wr.compact_revision
        line = orjson.dumps(out) + b"\n"
        if live:
            self._cache.put(key, wr.events, line, len(line))
        return line


_WATCH_LINES_KEY = web.AppKey("v1_watch_lines", _WatchLines)


class _WatchStream(WatchStream):
    """One GET /v1/watch: a single watcher on the member's shared flusher (no task per watcher);
    the stream ends after the watcher's last response (a compaction cancel) or its removal."""

    route = "v1"

    def __init__(self, request: web.Request, resp: web.StreamResponse, writer: AbstractStreamWriter) -> None:
        app = request.app
        super().__init__(request, resp, writer, app[WATCH_FLUSHER_KEY], app[v3.WATCH_DELIVERY_KEY])
        self._line = app[_WATCH_LINES_KEY].line
        self.ended = asyncio.Event()

    def encode(self, wid: int, watcher: Watcher, wr: WatchResponse) -> bytes:
        return self._line(wr)

    def watcher_ended(self, wid: int) -> None:
        self.ended.set()


async def watch_kv(request: web.Request, b: Backend) -> web.StreamResponse:
    """NDJSON: a ``created`` line, then one line per revision's events, progress lines, or a cancel.

    A client that stops reading holds no one back: its watcher's bounded queue sends it to
    history, and it resumes from there, without gap, once the client reads again."""
    key = _key(request)
    filters = frozenset(f for f, off in (("NOPUT", "puts"), ("NODELETE", "deletes")) if not _flag_default(request, off))
    watcher = b.hub.watch(
        key,
        _range_end(request, key),
        start_revision=_int(request, "rev"),
        prev_kv=_flag(request, "prev_kv"),
        filters=filters,
        progress_notify=True,
    )
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    stream: _WatchStream | None = None
    try:
        writer = await resp.prepare(request)
        if writer is None:  # only after write_eof, which nothing here has called
            raise RuntimeError("watch response prepared after its end")
        stream = _WatchStream(request, resp, writer)
        stream.send(orjson.dumps({"created": True, "revision": b.revision}) + b"\n")
        stream.add(0, watcher)
        while not stream.ended.is_set() and not stream.connection_lost():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.ended.wait(), WATCH_POLL_S)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        if stream is not None:
            stream.close()
        watcher.cancel()
    return resp


def _flag_default(request: web.Request, name: str) -> bool:
    """Flags that default to true (``puts``/``deletes`` select which event types to send)."""
    return True if name not in request.query else _flag(request, name)


# -- cluster ----------------------------------------------------------------------------------------------------------


async def list_members(request: web.Request, b: Backend) -> web.StreamResponse:
    return _json({"members": member_list(b.node)})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise _BadParam("kvdisco: the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadParam("kvdisco: the body must be a JSON object")
    return body


async def post_member(request: web.Request, b: Backend) -> web.StreamResponse:
    body = await _json_body(request)
    peer = body.get("peer_url")
    if not isinstance(peer, str):
        raise _BadParam("kvdisco: peer_url must be a string, e.g. http://10.0.0.4:2380")
    req = {
        "name": body.get("name"),
        "peerURLs": [peer],
        "isLearner": body.get("learner", True),
    }
    member = await add_member(b.node, req)
    return _json({"member": member, "members": member_list(b.node)}, 201)


def _path_id(request: web.Request) -> dict[str, Any]:
    raw = request.match_info["id"]
    try:
        return {"ID": int(raw, 16)}
    except ValueError:
        raise _BadParam(f"kvdisco: member id must be hexadecimal, got {raw!r}") from None


async def delete_member(request: web.Request, b: Backend) -> web.StreamResponse:
    await remove_member(b.node, _path_id(request))
    return _json({"members": member_list(b.node)})


async def post_promote(request: web.Request, b: Backend) -> web.StreamResponse:
    await promote_member(b.node, _path_id(request))
    return _json({"members": member_list(b.node)})


async def raft_status(request: web.Request, b: Backend) -> web.StreamResponse:
    st = b.node.status()
    for field in ("id", "leader", "vote"):
        st[field] = f"{st[field]:x}" if st[field] else ""
    st["voters"] = [f"{v:x}" for v in st["voters"]]
    st["learners"] = [f"{v:x}" for v in st["learners"]]
    if "progress" in st:
        st["progress"] = {f"{k:x}": v for k, v in st["progress"].items()}
    st["revision"] = b.store.revision
    st["compact_revision"] = b.store.compact_revision
    return _json(st)


async def snapshot(request: web.Request, b: Backend) -> web.StreamResponse:
    """The whole store as of a linearizable point, in kvdisco's snapshot format (msgpack)."""
    await b.read_barrier()
    data = b.machine.snapshot()
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="kvdisco.snapshot"'},
    )


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def add_routes(app: web.Application) -> None:
    install(app)
    app[_WATCH_LINES_KEY] = _WatchLines()
    r = app.router
    r.add_get("/v1/openapi.json", openapi)
    # [\s\S]: a key may hold any byte, newlines included (`.` would not match them).
    r.add_get("/v1/kv/{key:[\\s\\S]+}", _handler(get_kv))
    r.add_put("/v1/kv/{key:[\\s\\S]+}", _handler(put_kv))
    r.add_delete("/v1/kv/{key:[\\s\\S]+}", _handler(delete_kv))
    r.add_get("/v1/watch/{key:[\\s\\S]+}", _handler(watch_kv))
    r.add_get("/v1/members", _handler(list_members))
    r.add_post("/v1/members", _handler(post_member))
    r.add_delete("/v1/members/{id}", _handler(delete_member))
    r.add_post("/v1/members/{id}/promote", _handler(post_promote))
    r.add_get("/v1/raft/status", _handler(raft_status))
    r.add_get("/v1/snapshot", _handler(snapshot))
