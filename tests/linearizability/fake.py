"""An in-process, deliberately breakable etcd v3 JSON gateway, to prove the pipeline catches bugs.

Why: a pipeline that passes against etcd might pass against anything (a
recorder bug that drops the interesting ops, a checker that accepts every
history). This fake serves the same gateway subset the workload uses, from one
shared in-memory store, on N loopback ports that play the members. With no
bug switched on it is trivially linearizable (each request is applied
atomically on the event loop) and must pass; each bug switch reproduces a
classic replicated-store failure and the pipeline must report it:

- ``stale_member``: that member answers reads from a replica lagging
  ``stale_lag_s`` behind (a follower serving "linearizable" reads locally);
- ``lose_every``: every Nth put is acknowledged (with a fresh revision) but
  never applied (an ack before durable replication, then a crash).

Faults are emulated so the fault driver can run too: ``kill9`` drops every
open connection of that member and refuses new requests until ``restart``;
``pause`` holds requests until ``resume``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..integration.cluster import free_port

__all__ = ["FakeCluster", "FakeStore"]


def _b(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _u(s: str) -> str:
    return base64.b64decode(s).decode()


@dataclass
class _Version:
    at: float
    value: str | None
    version: int
    create_rev: int
    mod_rev: int


@dataclass
class FakeStore:
    stale_lag_s: float = 0.3
    lose_every: int | None = None
    revision: int = 1
    #: Per key, every state it has been in, oldest first (so a lagging replica can be served).
    versions: dict[str, list[_Version]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    puts: int = 0

    def current(self, key: str, lag_s: float = 0.0) -> _Version:
        cutoff = time.monotonic() - lag_s
        for v in reversed(self.versions.get(key, [])):
            if v.at <= cutoff:
                return v
        return _Version(0.0, None, 0, 0, 0)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def put(self, key: str, value: str) -> None:
        self.puts += 1
        self.revision += 1
        if self.lose_every is not None and self.puts % self.lose_every == 0:
            return  # BUG: acknowledged, revision spent, never applied
        cur = self.current(key)
        create = cur.create_rev if cur.version else self.revision
        new = _Version(time.monotonic(), value, cur.version + 1, create, self.revision)
        self.versions.setdefault(key, []).append(new)
        self.events.append(
            {
                "kv": {
                    "key": _b(key),
                    "create_revision": str(create),
                    "mod_revision": str(self.revision),
                    "version": str(cur.version + 1),
                    "value": _b(value),
                }
            }
        )
        self.notify()

    def delete(self, key: str) -> int:
        if not self.current(key).version:
            return 0
        self.revision += 1
        self.versions[key].append(_Version(time.monotonic(), None, 0, 0, self.revision))
        self.events.append({"type": "DELETE", "kv": {"key": _b(key), "mod_revision": str(self.revision)}})
        self.notify()
        return 1


class FakeCluster:
    """N member ports over one FakeStore; implements the `Cluster` interface."""

    def __init__(self, size: int = 3, *, stale_member: int | None = None, store: FakeStore | None = None) -> None:
        self.store = store or FakeStore()
        self.stale_member = stale_member
        self.ports = [free_port() for _ in range(size)]
        self.runners: list[web.AppRunner] = []
        self.down = [False] * size
        self.gates = [asyncio.Event() for _ in range(size)]
        for g in self.gates:
            g.set()
        self.streams: list[set[asyncio.BaseTransport]] = [set() for _ in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    async def start(self) -> None:
        for i, port in enumerate(self.ports):
            app = web.Application()
            app.router.add_post("/v3/kv/range", self._h(i, self._range))
            app.router.add_post("/v3/kv/put", self._h(i, self._put))
            app.router.add_post("/v3/kv/deleterange", self._h(i, self._delete))
            app.router.add_post("/v3/kv/txn", self._h(i, self._txn))
            app.router.add_post("/v3/maintenance/status", self._h(i, self._status))
            app.router.add_post("/v3/watch", self._watch_handler(i))
            runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

    async def stop(self) -> None:
        for i in range(len(self.ports)):
            await self.kill9(i)
        self.store.notify()
        for r in self.runners:
            await r.cleanup()

    async def kill9(self, i: int) -> None:
        self.down[i] = True
        self.gates[i].set()
        self.store.notify()  # wake this member's watch handlers so they notice
        for transport in list(self.streams[i]):
            transport.close()

    async def restart(self, i: int) -> None:
        self.down[i] = False

    async def pause(self, i: int) -> None:
        self.gates[i].clear()

    async def resume(self, i: int) -> None:
        self.gates[i].set()

    def logs(self) -> str:
        return "(in-process fake)"

    def _h(self, i: int, fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            await self.gates[i].wait()
            if self.down[i]:
                raise web.HTTPServiceUnavailable(text='{"error":"member is down","code":14}')
            body = json.loads(await request.read() or b"{}")
            out = fn(i, body)
            out.setdefault("header", {})["revision"] = str(self.store.revision)
            return web.json_response(out)

        return handler

    def _kv(self, key: str, v: Any) -> dict[str, Any]:
        return {
            "key": _b(key),
            "create_revision": str(v.create_rev),
            "mod_revision": str(v.mod_rev),
            "version": str(v.version),
            "value": _b(v.value),
        }

    def _range(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        lag = self.store.stale_lag_s if i == self.stale_member else 0.0
        key = _u(body.get("key", ""))
        if "range_end" in body:
            end = _u(body["range_end"])
            keys = sorted(k for k in self.store.versions if key <= k < end)
        else:
            keys = [key]
        kvs = [self._kv(k, v) for k in keys if (v := self.store.current(k, lag)).version]
        return {"kvs": kvs, "count": str(len(kvs))} if kvs else {}

    def _put(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        self.store.put(_u(body["key"]), _u(body["value"]))
        return {}

    def _delete(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        n = self.store.delete(_u(body["key"]))
        return {"deleted": str(n)} if n else {}

    def _txn(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        (cmp,) = body["compare"]
        cur = self.store.current(_u(cmp["key"]))
        if cmp["target"] == "VERSION":
            holds = cur.version == int(cmp["version"])
        else:
            holds = cur.version > 0 and cur.value == _u(cmp["value"])
        if not holds:
            return {}
        (op,) = body["success"]
        self.store.put(_u(op["request_put"]["key"]), _u(op["request_put"]["value"]))
        return {"succeeded": True}

    def _status(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        return {"header": {"member_id": "1"}, "leader": "0"}

    def _watch_handler(self, i: int) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            await self.gates[i].wait()
            if self.down[i]:
                raise web.HTTPServiceUnavailable(text='{"error":"member is down","code":14}')
            req = json.loads(await request.read())["create_request"]
            lo, hi = _u(req["key"]), _u(req["range_end"])
            nxt = int(req.get("start_revision", "0")) or self.store.revision + 1
            resp = web.StreamResponse()
            await resp.prepare(request)
            transport = request.transport
            assert transport is not None
            self.streams[i].add(transport)
            pos = 0
            try:
                await resp.write(json.dumps({"result": {"header": {}, "created": True}}).encode() + b"\n")
                while not self.down[i]:
                    changed = self.store.changed
                    new, pos = self.store.events[pos:], len(self.store.events)
                    evs = [e for e in new if int(e["kv"]["mod_revision"]) >= nxt and lo <= _u(e["kv"]["key"]) < hi]
                    if evs:
                        nxt = int(evs[-1]["kv"]["mod_revision"]) + 1
                        await self.gates[i].wait()
                        await resp.write(json.dumps({"result": {"header": {}, "events": evs}}).encode() + b"\n")
                    else:
                        await changed.wait()
            finally:
                self.streams[i].discard(transport)
            return resp

        return handler
