"""The etcd v3 JSON gateway: ``POST /v3/...`` with etcd's field names, base64 bytes and errors.

Handlers are thin: decode with :mod:`v3_codec`, call one :class:`Backend` operation, encode.
A request that needs the leader (a write, a keepalive, a membership change) and reaches a
follower is forwarded to the leader's client URL with its body unchanged, so a client never
needs to know who leads. A forwarded request is never forwarded again: if the receiver is not
the leader either (leadership moved meanwhile), the client gets "no leader" and retries.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from kvdisco.api import v3_codec as codec
from kvdisco.api.backend import CODE_UNAVAILABLE, Backend, RequestFailed
from kvdisco.api.members import add_member, member_list, promote_member, remove_member
from kvdisco.api.metrics import RequestLatency
from kvdisco.mvcc.errors import LeaseNotFoundError, MvccError
from kvdisco.raft import NotLeader

__all__ = [
    "BACKEND_KEY",
    "FORWARD_HEADER",
    "FORWARD_SESSION_KEY",
    "WATCH_DELIVERY_KEY",
    "add_routes",
    "error_response",
    "forward_to_leader",
    "response_header",
]

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

V3Handler = Callable[[Backend, dict[str, Any]], Awaitable[dict[str, Any]]]


def error_response(code: int, message: str) -> web.Response:
    return to_response(error_answer(code, message))


def response_header(b: Backend, revision: int | None = None) -> dict[str, Any]:
    return codec.header(b.cluster_id, b.member_id, b.revision if revision is None else revision, b.raft_term)


def _member_header(b: Backend) -> dict[str, Any]:
    """Cluster responses carry no store revision (as etcd's)."""
    return codec.header(b.cluster_id, b.member_id, 0, b.raft_term)


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, whichever server (aiohttp or the fast path) writes it."""

    status: int
    body: bytes
    content_type: str = "application/json"


def error_answer(code: int, message: str) -> Answer:
    status, body = codec.error_body(code, message)
    return Answer(status, codec.dumps(body))


async def answer_unary(fn: V3Handler, b: Backend, raw: bytes) -> Answer:
    """Decode one unary request, run it, encode the result or the error. NotLeader propagates: forward it."""
    try:
        return Answer(200, codec.dumps(await fn(b, codec.loads(raw))))
    except codec.BadRequest as exc:
        return error_answer(exc.code, exc.message)
    except (MvccError, RequestFailed) as exc:
        return error_answer(exc.code, exc.message)


async def forward(
    session: aiohttp.ClientSession,
    b: Backend,
    exc: NotLeader,
    method: str,
    path_qs: str,
    body: bytes,
    *,
    content_type: str | None,
    already_forwarded: bool,
) -> Answer:
    """Send a request (method, path, query, body) unchanged to the leader and relay its answer.

    Shared by /v3 and /v1 and by both HTTP servers. Only a request that never left gets "no leader",
    which says it was not applied.
    """
    info = b.node.member(exc.leader_hint)
    if already_forwarded or info is None or not info.client_urls:
        return error_answer(CODE_UNAVAILABLE, "etcdserver: no leader")
    url = info.client_urls[0].rstrip("/") + path_qs
    headers = {FORWARD_HEADER: f"{b.member_id:x}"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        async with session.request(method, url, data=body, headers=headers) as resp:
            return Answer(resp.status, await resp.read(), resp.content_type)
    except aiohttp.ClientConnectorError as err:
        # Nothing was sent: the request cannot have been applied, and "no leader" tells the client so.
        log.debug("forward to leader %s failed: %r", url, err)
        return error_answer(CODE_UNAVAILABLE, "etcdserver: no leader")
    except (aiohttp.ClientError, TimeoutError) as err:
        log.debug("forward to leader %s failed: %r", url, err)
        return error_answer(CODE_UNAVAILABLE, "etcdserver: request timed out")


def to_response(a: Answer) -> web.Response:
    return web.Response(status=a.status, body=a.body, content_type=a.content_type)


async def forward_to_leader(request: web.Request, body: bytes, b: Backend, exc: NotLeader) -> web.Response:
    """:func:`forward` for a request aiohttp received."""
    a = await forward(
        request.app[FORWARD_SESSION_KEY],
        b,
        exc,
        request.method,
        request.path_qs,
        body,
        content_type=request.headers.get("Content-Type"),
        already_forwarded=bool(request.headers.get(FORWARD_HEADER)),
    )
    return to_response(a)


def _handler(fn: V3Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        b = request.app[BACKEND_KEY]
        raw = await request.read()
        try:
            return to_response(await answer_unary(fn, b, raw))
        except NotLeader as exc:
            return await forward_to_leader(request, raw, b, exc)

    handle.__name__ = fn.__name__
    return handle


# -- kv ---------------------------------------------------------------------------------------------------------------


async def kv_range(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    req, serializable = codec.parse_range(body)
    res = await b.range(req, serializable)
    return codec.range_response(response_header(b, res.revision), res)


async def kv_put(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.put(codec.parse_put(body))
    return codec.put_response(response_header(b, res.revision), res)


async def kv_delete_range(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.delete_range(codec.parse_delete_range(body))
    return codec.delete_range_response(response_header(b, res.revision), res)


async def kv_txn(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.txn(codec.parse_txn(body))
    return codec.txn_response(response_header(b, res.revision), res)


async def kv_compaction(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.compact(codec.parse_compaction(body))
    return codec.compaction_response(response_header(b, res.revision))


# -- leases -----------------------------------------------------------------------------------------------------------


async def lease_grant(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    res = await b.lease_grant(codec.parse_lease_grant(body))
    return codec.lease_grant_response(response_header(b), res)


async def lease_revoke(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    await b.lease_revoke(codec.parse_lease_id(body))
    return codec.lease_revoke_response(response_header(b))


async def lease_keepalive(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    lease_id = codec.parse_lease_id(body)
    try:
        ttl = await b.lease_keepalive(lease_id)
    except LeaseNotFoundError:
        ttl = 0  # etcd answers an unknown or expired lease with TTL 0, not an error
    return codec.lease_keepalive_response(response_header(b), lease_id, ttl)


async def lease_time_to_live(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    lease_id, keys = codec.parse_lease_timetolive(body)
    info = await b.lease_time_to_live(lease_id, keys)
    return codec.lease_timetolive_response(
        response_header(b), lease_id, info.ttl, info.granted_ttl, info.keys if keys else None
    )


async def lease_leases(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    codec.parse_empty(body, "LeaseLeasesRequest")
    return codec.lease_leases_response(response_header(b), await b.leases())


# -- maintenance and cluster ------------------------------------------------------------------------------------------


async def maintenance_status(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    codec.parse_empty(body, "StatusRequest")
    st = b.status()
    errors = (str(b.node.failure),) if b.node.failure is not None else ()
    return codec.status_response(
        response_header(b),
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


async def cluster_member_list(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    codec.parse_member_list(body)
    return {"header": _member_header(b), "members": member_list(b.node)}


async def cluster_member_add(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    added = await add_member(b.node, body)
    return {"header": _member_header(b), "member": added, "members": member_list(b.node)}


async def cluster_member_remove(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    await remove_member(b.node, body)
    return {"header": _member_header(b), "members": member_list(b.node)}


async def cluster_member_promote(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
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
    hdr = response_header(b)
    for start in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
        chunk = data[start : start + SNAPSHOT_CHUNK_BYTES]
        result: dict[str, Any] = {"header": hdr, "blob": base64.b64encode(chunk).decode()}
        remaining = len(data) - start - len(chunk)
        if remaining:
            result["remaining_bytes"] = str(remaining)
        await resp.write(codec.dumps({"result": result}) + b"\n")
    await resp.write_eof()
    return resp


#: The unary /v3 routes. Both HTTP servers serve them with the same handlers (see fastpath.py).
UNARY_ROUTES: dict[str, V3Handler] = {
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


def add_routes(app: web.Application) -> None:
    for path, fn in UNARY_ROUTES.items():
        app.router.add_post(path, _handler(fn))
    app.router.add_post("/v3/maintenance/snapshot", maintenance_snapshot)
