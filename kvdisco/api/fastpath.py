"""A lean HTTP/1.1 path for the unary /v3 gateway routes, in front of aiohttp.

aiohttp's per-request machinery (request and response objects, middleware, the response writer)
cost more of the leader's core than a put's whole trip through Raft (see docs/performance.md).
So each client connection starts here, on a plain asyncio protocol. It serves what etcd clients
and load tools send to the unary /v3 routes: ``POST`` with a ``Content-Length`` body over
HTTP/1.1. It uses the same handlers as the aiohttp routes (:data:`v3.UNARY_ROUTES`) and writes
each answer with one call.

The first request it does not serve itself (another route or method, a chunked or compressed
body, ``Expect``, an upgrade, anything it cannot parse) hands the connection, with every byte
read so far, to aiohttp for good. Everything else, including the answers to malformed HTTP,
stays aiohttp's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

from aiohttp import web

from kvdisco.api import v3
from kvdisco.api.app import METRICS_KEY
from kvdisco.api.backend import Backend
from kvdisco.api.metrics import RequestLatency
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX
from kvdisco.raft import NotLeader

__all__ = ["GatewaySite", "Head", "parse_head"]

log = logging.getLogger("kvdisco.api.fastpath")

#: A request head longer than this is aiohttp's to judge (it refuses heads over 8 KiB itself).
HEAD_BYTES_MAX = 8 * 1024

#: Bytes read ahead of the request in progress before the connection stops reading.
READ_AHEAD_MAX = REQUEST_BYTES_MAX + HEAD_BYTES_MAX

#: A connection with no request in progress for this long is closed (aiohttp's keep-alive default).
IDLE_TIMEOUT_S = 75.0

_FORWARD_HEADER = v3.FORWARD_HEADER.lower().encode()
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_INTERNAL_ERROR = v3.error_answer(13, "etcdserver: internal error")


@dataclass(frozen=True, slots=True)
class Head:
    """What the fast path needs from a request head it can serve."""

    path: str
    content_length: int
    keep_alive: bool
    content_type: str | None
    forwarded: bool


def parse_head(head: bytes, routes: Container[str]) -> Head | None:
    """Parse a request head (without its blank line), or None when aiohttp should have the request.

    Only a plain ``POST <route> HTTP/1.1`` with one decimal ``Content-Length`` within the body limit
    and well-formed header lines is taken; anything else, valid or not, is left to aiohttp.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    path = parts[1].decode("latin-1")
    if path not in routes:
        return None
    length = -1
    keep_alive = True
    content_type: str | None = None
    forwarded = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not name.isascii() or name != name.strip() or b"\n" in line or b"\r" in line:
            return None
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > 9:
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"):
            return None
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"upgrade" in tokens:
                return None
            keep_alive = b"close" not in tokens
        elif name == b"content-type":
            if all(32 <= c < 127 for c in value):
                content_type = value.decode("ascii")
        elif name == _FORWARD_HEADER:
            forwarded = bool(value)
    if length < 0 or length > REQUEST_BYTES_MAX:
        return None
    return Head(path, length, keep_alive, content_type, forwarded)


class _DateCache:
    """The ``Date`` header, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


def render(a: v3.Answer, keep_alive: bool, date: bytes) -> bytes:
    """One complete HTTP/1.1 response."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (a.status, _REASONS.get(a.status, b"Unknown")),
            b"Content-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: kvdisco\r\n"
            % (a.content_type.encode("latin-1", "replace"), len(a.body), date),
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n",
            a.body,
        )
    )


class _Gateway:
    """What every fast-path connection of one listening socket shares."""

    def __init__(self, app: web.Application, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.app = app
        self.backend: Backend = app[v3.BACKEND_KEY]
        self.fallback = fallback
        self.routes = v3.UNARY_ROUTES
        self.latency: RequestLatency = app[METRICS_KEY].request_seconds
        self.date = _DateCache()
        self.connections: set[_Connection] = set()

    def connection(self) -> _Connection:
        return _Connection(self)

    async def answer(self, head: Head, body: bytes) -> v3.Answer:
        start = time.perf_counter()
        try:
            return await self._answer(head, body)
        except Exception:  # a bug: the client gets a 500 and the member goes on, as with aiohttp
            log.exception("error serving %s", head.path)
            return _INTERNAL_ERROR
        finally:
            self.latency.observe(head.path, time.perf_counter() - start)

    async def _answer(self, head: Head, body: bytes) -> v3.Answer:
        try:
            return await v3.answer_unary(self.routes[head.path], self.backend, body)
        except NotLeader as exc:
            return await v3.forward(
                self.app[v3.FORWARD_SESSION_KEY],
                self.backend,
                exc,
                "POST",
                head.path,
                body,
                content_type=head.content_type,
                already_forwarded=head.forwarded,
            )

    def close_idle(self, older_than: float) -> None:
        """Close connections with no request in progress and no activity since ``older_than``."""
        for conn in list(self.connections):
            if conn.busy is None and conn.last_active < older_than:
                conn.close()

    async def shutdown(self, timeout: float) -> None:
        """Let requests in progress finish (up to ``timeout``), then close every connection."""
        busy = {c.busy for c in self.connections if c.busy is not None}
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for conn in list(self.connections):
            conn.close()


class _Connection(asyncio.Protocol):
    """One client connection while it is on the fast path: one request at a time, in order."""

    def __init__(self, gateway: _Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        #: The request in progress, if any.
        self.busy: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self._reading = True
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.busy is None:
            self._next()
        elif len(self.buf) > READ_AHEAD_MAX and self.transport is not None and self._reading:
            self.transport.pause_reading()
            self._reading = False

    def eof_received(self) -> bool:
        """The client will send nothing more: answer the request in progress, then close."""
        self._eof = True
        if self.busy is None:
            self.close()
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        """Start the next request in the buffer once it is complete; hand over what is not ours."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HEAD_BYTES_MAX or b"\n\n" in buf:
                self._hand_over()
            return
        head = parse_head(buf[:end], self.gateway.routes)
        if head is None:
            self._hand_over()
            return
        stop = end + 4 + head.content_length
        if len(buf) < stop:
            return
        body, self.buf = buf[end + 4 : stop], buf[stop:]
        self.busy = asyncio.get_running_loop().create_task(self._serve(head, body))

    async def _serve(self, head: Head, body: bytes) -> None:
        answer = await self.gateway.answer(head, body)
        self.busy = None
        self.last_active = time.monotonic()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.write(render(answer, head.keep_alive, self.gateway.date.get()))
            if not head.keep_alive:
                transport.close()
                return
            if not self._reading:
                self._reading = True
                transport.resume_reading()
            if self.buf:
                self._next()
            if self._eof and self.busy is None:
                self.close()
        except Exception:  # a bug: lose this connection, not the member
            log.exception("error on a client connection")
            transport.abort()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with the bytes not yet consumed."""
        transport = self.transport
        if transport is None:
            return
        self.gateway.connections.discard(self)
        proto = self.gateway.fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if not self._reading:
            self._reading = True
            transport.resume_reading()
        data, self.buf = self.buf, b""
        self.transport = None
        if data:
            proto.data_received(data)
        if self._eof and not proto.eof_received():
            transport.close()  # what the transport would have done had aiohttp seen the end itself


class GatewaySite(web.BaseSite):
    """A TCP site whose connections start on the fast path (aiohttp's runner still owns the app)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, shutdown_timeout: float) -> None:
        super().__init__(runner, backlog=1024)
        assert runner.server is not None, "call runner.setup() first"
        self._host = host
        self._port = port
        self._gateway = _Gateway(runner.app, runner.server)
        self._shutdown_timeout = shutdown_timeout
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._gateway.connection, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        await super().stop()  # stops accepting
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._gateway.shutdown(self._shutdown_timeout)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_TIMEOUT_S / 5)
            self._gateway.close_idle(time.monotonic() - IDLE_TIMEOUT_S)
