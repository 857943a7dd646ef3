"""The fast HTTP path of a real `kvdisco serve`, spoken to over raw sockets.

Every connection starts on the fast path and moves to aiohttp at the first request the fast path
does not serve. These tests hold both halves to one behaviour: answers in order on one connection
across the hand-over, requests split at any byte, pipelining, and malformed or unusual HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from .cluster import LocalCluster, Member
from .test_serve import _wait_ready


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def post(path: str, body: dict[str, object] | bytes, *extra: str) -> bytes:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    head = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(data)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # aiohttp answers a request it could not parse with a closed connection
        body = await reader.read()
    return status, headers, body


@contextlib.asynccontextmanager
async def one_member(tmp_path: Path) -> AsyncIterator[Member]:
    """A single-member cluster, ready to serve."""
    async with LocalCluster(tmp_path, 1) as cluster:
        m = await cluster.leader()
        await _wait_ready(cluster)
        yield m


async def test_answers_stay_in_order_across_the_hand_over_to_aiohttp(tmp_path: Path) -> None:
    async with one_member(tmp_path) as m:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.client_port)
        try:
            # Pipelined: two puts and a range on the fast path, a GET only aiohttp serves, then a range
            # again (aiohttp's from now on), all written at once.
            writer.write(
                post("/v3/kv/put", {"key": b64("a"), "value": b64("1")})
                + post("/v3/kv/put", {"key": b64("a"), "value": b64("2")})
                + post("/v3/kv/range", {"key": b64("a")})
                + b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
                + post("/v3/kv/range", {"key": b64("a")})
            )
            await writer.drain()
            answers = [await read_response(reader) for _ in range(5)]
        finally:
            writer.close()
        assert [a[0] for a in answers] == [200] * 5
        first, second, ranged, live, again = (json.loads(a[2]) for a in answers)
        assert int(second["header"]["revision"]) == int(first["header"]["revision"]) + 1
        assert ranged["kvs"][0]["value"] == b64("2") and ranged["kvs"][0]["version"] == "2"
        assert live == {"health": "true"}
        assert again["kvs"] == ranged["kvs"]
        # The first three came from the fast path, the last two from aiohttp: one behaviour.
        assert answers[0][1]["server"] == "kvdisco" and "aiohttp" in answers[4][1]["server"]


async def test_a_request_split_at_every_byte_is_served(tmp_path: Path) -> None:
    async with one_member(tmp_path) as m:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.client_port)
        try:
            request = post("/v3/kv/put", {"key": b64("split"), "value": b64("v")}, "Content-Type: application/json")
            for i in range(len(request)):
                writer.write(request[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
            status, _, body = await read_response(reader)
            assert status == 200, body
            # Half-close after a request: it is still answered.
            writer.write(post("/v3/kv/range", {"key": b64("split")}))
            writer.write_eof()
            status, _, body = await read_response(reader)
            assert status == 200 and json.loads(body)["kvs"][0]["value"] == b64("v")
            assert await reader.read() == b""  # then the member closes
        finally:
            writer.close()


async def test_unusual_http_gets_aiohttps_answers_and_the_member_lives_on(tmp_path: Path) -> None:
    async with one_member(tmp_path) as m:

        async def exchange(raw: bytes) -> tuple[int, dict[str, str], bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.client_port)
            try:
                writer.write(raw)
                await writer.drain()
                return await asyncio.wait_for(read_response(reader), 10)
            finally:
                writer.close()

        body = orjson.dumps({"key": b64("c"), "value": b64("chunked")})
        chunked = (
            b"POST /v3/kv/put HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        status, _, got = await exchange(chunked)
        assert status == 200, got
        status, _, got = await exchange(post("/v3/kv/range", {"key": b64("c")}))
        assert json.loads(got)["kvs"][0]["value"] == b64("chunked")

        status, _, got = await exchange(post("/v3/kv/put", b"x" * (2 * 1024 * 1024)))
        assert status == 400 and "too large" in json.loads(got)["message"]
        status, _, got = await exchange(post("/v3/kv/range", b"{not json"))
        assert status == 400 and json.loads(got)["code"] == 3
        status, _, _ = await exchange(b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
        assert status == 400
        status, _, _ = await exchange(b"GARBAGE\r\n\r\n")
        assert status == 400
        status, headers, got = await exchange(post("/v3/kv/range", {"key": b64("c")}, "Connection: close"))
        assert status == 200 and headers.get("connection") == "close"
        status, _, got = await exchange(post("/v3/kv/range", {"key": b64("c")}))
        assert status == 200  # still serving


def _mutants(rng: random.Random, n: int) -> list[bytes]:
    """Valid requests with bytes flipped, dropped, duplicated or cut, and plain random bytes."""
    seeds = [
        post("/v3/kv/range", {"key": b64("fuzz")}),
        post("/v3/kv/put", {"key": b64("fuzz"), "value": b64("v")}, "Content-Type: application/json"),
        b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n",
    ]
    out = []
    for _ in range(n):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.randrange(5)
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i]
            elif op == 2:
                data[i:i] = data[i : i + rng.randint(1, 20)]
            elif op == 3:
                data[i:i] = rng.choice([b"\r\n", b"\n", b":", b" ", b"\x00", b"Content-Length: 3\r\n"])
            else:
                data = data[:i]
                break
        out.append(bytes(data) if rng.random() < 0.9 else rng.randbytes(rng.randint(1, 300)))
    return out


async def test_mutated_requests_never_break_the_member(tmp_path: Path) -> None:
    """After any mutated request the member answers or closes the connection, and keeps serving."""
    async with one_member(tmp_path) as m:
        for junk in _mutants(random.Random(20261127), 150):
            reader, writer = await asyncio.open_connection("127.0.0.1", m.client_port)
            try:
                writer.write(post("/v3/kv/range", {"key": b64("fuzz")}) + junk)
                writer.write_eof()
                data = await asyncio.wait_for(reader.read(), 10)
                assert data.startswith(b"HTTP/1.1 200 OK\r\n"), (junk, data[:200])
            finally:
                writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", m.client_port)
        try:
            writer.write(post("/v3/kv/range", {"key": b64("fuzz")}))
            assert (await asyncio.wait_for(read_response(reader), 10))[0] == 200
        finally:
            writer.close()
        assert m.alive()


async def test_sigterm_closes_idle_fast_path_connections(tmp_path: Path) -> None:
    async with one_member(tmp_path) as m:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.client_port)
        writer.write(post("/v3/kv/range", {"key": b64("x")}))
        assert (await read_response(reader))[0] == 200
        assert m.proc is not None
        m.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(reader.read(), 15) == b""  # the member closed the idle connection
        writer.close()
        assert m.proc.wait(timeout=15) == 0
