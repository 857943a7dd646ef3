"""HTTP to the JSON gateway: endpoint failover, retry policy, and streamed JSON responses.

All the rules about *when a request may be sent again* live here, in ``Transport.call``:

* a connection that fails before the request is written (connect refused, connect timeout) is
  always retried on the next endpoint: nothing reached any server;
* an Unavailable (code 14) answer whose message proves nothing was applied ("no leader") is
  retried on the next endpoint too;
* anything else that fails after the request may have been sent (timeout, reset, other 503s) is
  retried only for ``idempotent=True`` calls; a write raises ``IndeterminateError`` (or the
  server's ``UnavailableError``) and the caller decides.

Retries back off exponentially (with jitter) after each full round of endpoints and stop at the
call's total deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from ._errors import (
    ConnectionFailedError,
    IndeterminateError,
    KvdiscoError,
    UnavailableError,
    error_from_body,
)

__all__ = ["JSON", "Transport", "iter_json_objects", "unwrap_result"]

JSON = dict[str, Any]

#: Limit on one streamed JSON object (a watch response or snapshot chunk), so garbage cannot grow
#: the buffer without bound. etcd's default request limit is 1.5 MiB; base64 adds a third.
STREAM_OBJECT_BYTES_MAX = 16 * 1024 * 1024


class _NotSent(Exception):
    """The connection failed before the request was written."""


class _Ambiguous(Exception):
    """The request may have been written; no usable answer came back."""


def normalize_endpoint(ep: str) -> str:
    ep = ep.strip().rstrip("/")
    if "://" not in ep:
        ep = "http://" + ep
    return ep


def unwrap_result(obj: Any, http_status: int = 200) -> JSON:
    """A streamed object is ``{"result": {...}}`` or ``{"error": {...}}``; plain objects pass through."""
    if not isinstance(obj, dict):
        raise KvdiscoError(None, f"unexpected response {obj!r}"[:300])
    if "result" in obj and isinstance(obj["result"], dict):
        return obj["result"]
    if "error" in obj and ("code" in obj or isinstance(obj["error"], dict)):
        raise error_from_body(obj, http_status)
    return obj


async def iter_json_objects(
    content: aiohttp.StreamReader,
    idle_timeout_s: float | None,
    on_idle: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[Any]:
    """Concatenated (usually newline-delimited) JSON objects from a streamed body.

    When nothing arrives for ``idle_timeout_s``, ``on_idle()`` decides: true keeps waiting, false
    (or no ``on_idle``) raises ``TimeoutError``. Ends at end of stream.
    """
    decoder = json.JSONDecoder()
    buf = ""
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                chunk = await content.readany()
        except TimeoutError:
            if on_idle is not None and await on_idle():
                continue
            raise
        if not chunk:
            if buf.strip():
                raise _Ambiguous(f"stream ended inside a JSON object ({len(buf)} chars)")
            return
        buf += chunk.decode("utf-8")
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = decoder.raw_decode(buf)
            except json.JSONDecodeError:
                if len(buf) > STREAM_OBJECT_BYTES_MAX:
                    raise KvdiscoError(None, "streamed JSON object too large or malformed") from None
                break
            buf = buf[end:]
            yield obj


class Transport:
    """A pool of endpoints behind one aiohttp session; one endpoint is preferred until it fails."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_s: float,
        connect_timeout_s: float,
        retry_deadline_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.endpoints = tuple(normalize_endpoint(e) for e in endpoints)
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = min(connect_timeout_s, request_timeout_s)
        self.retry_deadline_s = retry_deadline_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._pinned = 0
        self._session: aiohttp.ClientSession | None = None
        self._write_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Pooled keep-alive connections, for idempotent calls and streams."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    @property
    def write_session(self) -> aiohttp.ClientSession:
        """A fresh connection per request, for writes.

        A pooled connection whose server just died fails only *after* the request is written
        (ServerDisconnectedError), which is indistinguishable from a server that applied the write
        and then died. A fresh connection to a dead server fails at connect, before anything is
        sent, so the write can safely go to the next endpoint.
        """
        if self._write_session is None or self._write_session.closed:
            self._write_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                headers={"Content-Type": "application/json"},
            )
        return self._write_session

    async def close(self) -> None:
        for s in (self._session, self._write_session):
            if s is not None:
                await s.close()
        self._session = self._write_session = None

    @property
    def current(self) -> str:
        return self.endpoints[self._pinned]

    def mark_failed(self, endpoint: str) -> None:
        """Move the preferred endpoint past ``endpoint`` (no-op if another call already did)."""
        if self.endpoints[self._pinned] == endpoint:
            self._pinned = (self._pinned + 1) % len(self.endpoints)

    def backoff_s(self, round_no: int) -> float:
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(round_no, 16)))
        return float(base * random.uniform(0.5, 1.0))

    def _timeout(self, total_s: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_s, sock_connect=self.connect_timeout_s)

    async def post_once(
        self, endpoint: str, path: str, body: JSON, timeout_s: float | None = None, *, fresh_connection: bool = False
    ) -> JSON:
        """One POST to one endpoint: the decoded body, or the mapped error."""
        data = json.dumps(body)
        session = self.write_session if fresh_connection else self.session
        try:
            async with session.post(
                endpoint + path, data=data, timeout=self._timeout(timeout_s or self.request_timeout_s)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _NotSent(f"{endpoint}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Ambiguous(f"{endpoint}: {exc!r}") from exc
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        if status != 200:
            raise error_from_body(decoded, status)
        return unwrap_result(decoded, status)

    async def call(self, path: str, body: JSON, *, idempotent: bool, endpoint: str | None = None) -> JSON:
        """POST ``body`` to ``path`` with failover; see the module docstring for what is retried.

        With ``endpoint`` the call goes to that endpoint only, with no failover.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_deadline_s
        attempt = 0
        failures: list[str] = []
        while True:
            ep = endpoint or self.current
            last: UnavailableError | None = None
            try:
                return await self.post_once(ep, path, body, fresh_connection=not idempotent)
            except _NotSent as exc:
                failures.append(str(exc))
            except _Ambiguous as exc:
                if not idempotent:
                    raise IndeterminateError(None, f"no answer after sending {path}: {exc}") from exc
                failures.append(str(exc))
            except UnavailableError as exc:
                if not (idempotent or exc.not_applied):
                    raise
                failures.append(f"{ep}: {exc}")
                last = exc
            if endpoint is None:
                self.mark_failed(ep)
            attempt += 1
            n = 1 if endpoint else len(self.endpoints)
            pause = self.backoff_s(attempt // n - 1) if attempt % n == 0 else 0.0
            if endpoint is not None or loop.time() + pause >= deadline:
                if last is not None:
                    raise last
                summary = "; ".join(failures[-len(self.endpoints) :])
                raise ConnectionFailedError(None, f"no endpoint answered {path} after {attempt} tries: {summary}")
            if pause:
                await asyncio.sleep(pause)

    async def stream(
        self,
        endpoint: str,
        path: str,
        body: JSON,
        *,
        idle_timeout_s: float | None,
        on_idle: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[JSON]:
        """Streamed ``{"result": ...}`` objects from one endpoint; errors are raised as mapped.

        Connection failures raise ``_NotSent`` / ``_Ambiguous`` for the caller's own failover loop.
        """
        try:
            async with self.session.post(endpoint + path, data=json.dumps(body), timeout=self._timeout(None)) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    try:
                        decoded: Any = json.loads(raw)
                    except ValueError:
                        decoded = raw.decode("utf-8", "replace")
                    raise error_from_body(decoded, resp.status)
                async for obj in iter_json_objects(resp.content, idle_timeout_s, on_idle):
                    yield unwrap_result(obj)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _NotSent(f"{endpoint}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise _Ambiguous(f"{endpoint}: {exc!r}") from exc
