"""The register demo's HTTP API, plus health and Raft status. Handlers decode, call one node operation, encode."""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from kvdisco.raft import NotLeader, ProposalDropped, RaftError
from kvdisco.raft.node import Node

from .machine import KEY_BYTES_MAX, RegisterMachine, encode_delete, encode_set

__all__ = ["NODE_KEY", "REGISTER_KEY", "make_app"]

NODE_KEY = web.AppKey("node", Node)
REGISTER_KEY = web.AppKey("register", RegisterMachine)

#: The register that /v1/register (no name) reads and writes.
DEFAULT_REGISTER = "default"

#: Largest request body, as etcd's gateway.
REQUEST_BYTES_MAX = int(1.5 * 1024 * 1024)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def _not_leader(node: Node, exc: NotLeader) -> web.Response:
    body: dict[str, Any] = {"error": "not the leader", "leader_id": f"{exc.leader_hint:x}" if exc.leader_hint else ""}
    info = node.member(exc.leader_hint) if exc.leader_hint else None
    headers = {}
    if info is not None and info.client_urls:
        body["leader"] = info.client_urls[0]
        headers["X-Kvdisco-Leader"] = info.client_urls[0]
        return _json(421, body, headers)
    return _json(503, body)


def _key(request: web.Request) -> str | None:
    key = request.match_info.get("key", DEFAULT_REGISTER)
    return key if key and len(key.encode()) <= KEY_BYTES_MAX else None


def _value_json(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode()}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode()}


async def get_register(request: web.Request) -> web.Response:
    node, reg = request.app[NODE_KEY], request.app[REGISTER_KEY]
    key = _key(request)
    if key is None:
        return _json(400, {"error": "bad register name"})
    if request.query.get("serializable") not in ("1", "true"):
        try:
            await node.linearizable_read()
        except NotLeader as exc:
            return _not_leader(node, exc)
        except ProposalDropped as exc:
            return _json(503, {"error": str(exc)})
    item = reg.get(key)
    if item is None:
        return _json(404, {"error": "register not set", "key": key})
    return _json(200, {"key": key, **_value_json(item[0]), "index": item[1]})


async def put_register(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    key = _key(request)
    if key is None:
        return _json(400, {"error": "bad register name"})
    value = await request.read()
    return await _propose(node, encode_set(key, value), key)


async def delete_register(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    key = _key(request)
    if key is None:
        return _json(400, {"error": "bad register name"})
    return await _propose(node, encode_delete(key), key)


async def _propose(node: Node, command: bytes, key: str) -> web.Response:
    try:
        result = await node.propose(command)
    except NotLeader as exc:
        return _not_leader(node, exc)
    except ProposalDropped as exc:
        return _json(503, {"error": str(exc)})
    except RaftError as exc:
        return _json(400, {"error": str(exc)})
    if "error" in result:
        return _json(400, {"error": result["error"]})
    return _json(200, {"key": key, "index": result["index"]})


async def dump_registers(request: web.Request) -> web.Response:
    """Every register with the applied index, read locally: for comparing replicas."""
    node, reg = request.app[NODE_KEY], request.app[REGISTER_KEY]
    items = {k: {**_value_json(v), "index": i} for k, (v, i) in sorted(reg.registers.items())}
    return _json(200, {"applied": node.applied_index, "digest": reg.digest(), "registers": items})


async def livez(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    if node.failure is not None:
        return _json(503, {"health": "false", "reason": str(node.failure)})
    return _json(200, {"health": "true"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when a leader is known and this node has applied everything it knows is committed."""
    node = request.app[NODE_KEY]
    if node.failure is not None:
        return _json(503, {"ready": False, "reason": "node failed"})
    if node.leader_id == 0:
        return _json(503, {"ready": False, "reason": "no leader"})
    if node.applied_index < node.commit_index:
        return _json(503, {"ready": False, "reason": f"applying backlog ({node.applied_index}/{node.commit_index})"})
    return _json(200, {"ready": True})


async def raft_status(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    st = node.status()
    st["id"] = f"{st['id']:x}"
    st["leader"] = f"{st['leader']:x}" if st["leader"] else ""
    st["vote"] = f"{st['vote']:x}" if st["vote"] else ""
    st["voters"] = [f"{v:x}" for v in st["voters"]]
    st["learners"] = [f"{v:x}" for v in st["learners"]]
    if "progress" in st:
        st["progress"] = {f"{k:x}": v for k, v in st["progress"].items()}
    st["members"] = [
        {"id": f"{m.id:x}", "name": m.name, "peer_url": m.peer_url, "client_urls": list(m.client_urls)}
        for m in node.members().values()
    ]
    return _json(200, st)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (body too large, no route, bad method) answered as JSON, like the rest."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json(exc.status, {"error": exc.reason})


def make_app(node: Node, register: RegisterMachine) -> web.Application:
    app = web.Application(client_max_size=REQUEST_BYTES_MAX, middlewares=[json_errors])
    app[NODE_KEY] = node
    app[REGISTER_KEY] = register
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/raft/status", raft_status)
    app.router.add_get("/v1/registers", dump_registers)
    app.router.add_get("/v1/register", get_register)
    app.router.add_put("/v1/register", put_register)
    app.router.add_delete("/v1/register", delete_register)
    app.router.add_get("/v1/register/{key}", get_register)
    app.router.add_put("/v1/register/{key}", put_register)
    app.router.add_delete("/v1/register/{key}", delete_register)
    return app
