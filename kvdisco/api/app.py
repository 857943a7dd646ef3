"""The client-facing aiohttp application of one member: /v3 gateway, /v1 native API, health, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from kvdisco.api import v1, v3, v3_watch
from kvdisco.api.backend import Backend, RequestFailed
from kvdisco.api.metrics import Metrics
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX
from kvdisco.raft import NotLeader

__all__ = ["METRICS_KEY", "make_app"]

METRICS_KEY = web.AppKey("metrics", Metrics)

#: How long /readyz waits for this member to catch up with the leader's commit index.
READY_BARRIER_TIMEOUT_S = 1.0

_CODE_INVALID_ARGUMENT = 3
_CODE_NOT_FOUND = 12  # gRPC Unimplemented: no such method


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request by route, and answer aiohttp's own refusals (body too large, no route, bad
    method) in etcd's error shape. One middleware, not two: each layer costs a coroutine per request."""
    start = time.perf_counter()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            msg = "etcdserver: request is too large"
            return _json(400, {"error": msg, "code": _CODE_INVALID_ARGUMENT, "message": msg})
        code = _CODE_NOT_FOUND if exc.status in (404, 405) else _CODE_INVALID_ARGUMENT
        msg = exc.reason
        return _json(exc.status, {"error": msg, "code": code, "message": msg})
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS_KEY].request_seconds.observe(route, time.perf_counter() - start)


async def livez(request: web.Request) -> web.Response:
    node = request.app[v3.BACKEND_KEY].node
    if node.failure is not None:
        return _json(503, {"health": "false", "reason": str(node.failure)})
    return _json(200, {"health": "true"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when a leader is known and this member has applied every write the leader has committed.

    The check is a ReadIndex round (as for a linearizable read), not a comparison with this member's
    own commit index: a member that is far behind, a new learner above all, does not know yet how
    much it is missing.
    """
    backend = request.app[v3.BACKEND_KEY]
    node = backend.node
    if node.failure is not None:
        return _json(503, {"ready": False, "reason": "node failed"})
    if node.leader_id == 0:
        return _json(503, {"ready": False, "reason": "no leader"})
    try:
        await asyncio.wait_for(backend.read_barrier(), READY_BARRIER_TIMEOUT_S)
    except (TimeoutError, RequestFailed, NotLeader):
        reason = f"catching up with the leader (applied {node.applied_index}, known committed {node.commit_index})"
        return _json(503, {"ready": False, "reason": reason})
    return _json(200, {"ready": True})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _open_forward_session(app: web.Application) -> Any:
    app[v3.FORWARD_SESSION_KEY] = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=v3.FORWARD_TIMEOUT_S),
        connector=aiohttp.TCPConnector(limit=256),
    )
    yield
    await app[v3.FORWARD_SESSION_KEY].close()


def make_app(backend: Backend) -> web.Application:
    app = web.Application(client_max_size=REQUEST_BYTES_MAX, middlewares=[observe])
    app[v3.BACKEND_KEY] = backend
    app[METRICS_KEY] = Metrics(backend)
    app[v3.WATCH_DELIVERY_KEY] = app[METRICS_KEY].watch_delivery_seconds
    app.cleanup_ctx.append(_open_forward_session)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", livez)
    app.router.add_get("/metrics", metrics)
    v3.add_routes(app)
    v3_watch.add_routes(app)
    v1.add_routes(app)
    return app
