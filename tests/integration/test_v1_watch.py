"""GET /v1/watch on a real member: its NDJSON lines, resume from a revision, the compaction cancel,
many watchers fed by the member's shared flusher, and a client that stops reading while others go on."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .cluster import LocalCluster, Member
from .test_gateway_cluster import wait_ready


@pytest.fixture
async def member(tmp_path: Path) -> AsyncIterator[Member]:
    async with LocalCluster(tmp_path, 1) as cluster:
        await cluster.leader()
        await wait_ready(cluster)
        yield cluster.members[0]


class Lines:
    """The NDJSON lines of one /v1 watch response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(20):
            line = await self.resp.content.readline()
        assert line, "the stream ended"
        out: dict[str, Any] = json.loads(line)
        return out

    async def events(self) -> dict[str, Any]:
        """The next line with events or a cancel: progress lines (``{"revision"}`` alone, sent on
        the member's timer) are skipped."""
        while True:
            line = await self.next()
            if "events" in line or "canceled" in line:
                return line

    async def end(self) -> bytes:
        """What is left of the body once the server ends it."""
        async with asyncio.timeout(20):
            return await self.resp.content.read()


@asynccontextmanager
async def watch(session: aiohttp.ClientSession, m: Member, key: str, **query: str) -> AsyncIterator[Lines]:
    async with session.get(m.client_url + "/v1/watch/" + key, params=query) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        yield Lines(resp)


async def put(session: aiohttp.ClientSession, m: Member, key: str, value: bytes) -> int:
    async with session.put(m.client_url + "/v1/kv/" + key, data=value) as r:
        body = await r.json()
        assert r.status == 200, body
        return int(body["revision"])


async def delete(session: aiohttp.ClientSession, m: Member, key: str) -> int:
    async with session.delete(m.client_url + "/v1/kv/" + key) as r:
        body = await r.json()
        assert r.status == 200, body
        return int(body["revision"])


async def metric(session: aiohttp.ClientSession, m: Member, name: str) -> float:
    async with session.get(m.client_url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def no_timeout() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=30))


async def test_lines_filters_and_prev_kv(member: Member) -> None:
    async with (
        no_timeout() as session,
        watch(session, member, "app/", prefix="true") as all_,
        watch(session, member, "app/", prefix="true", prev_kv="true", puts="false") as deletes,
        watch(session, member, "app/a") as single,
    ):
        for w in (all_, deletes, single):
            first = await w.next()
            assert first["created"] is True and isinstance(first["revision"], int), first
        r1 = await put(session, member, "app/a", b"1")
        r2 = await put(session, member, "app/b", b"\xff\x00")
        r3 = await delete(session, member, "app/a")
        assert await all_.events() == {
            "revision": r1,
            "events": [
                {
                    "type": "PUT",
                    "kv": {"key": "app/a", "value": "1", "create_revision": r1, "mod_revision": r1, "version": 1},
                }
            ],
        }
        line = await all_.events()
        assert line["revision"] == r2
        assert line["events"][0]["kv"]["value_base64"] == base64.b64encode(b"\xff\x00").decode()
        assert await all_.events() == {
            "revision": r3,
            "events": [{"type": "DELETE", "kv": {"key": "app/a", "mod_revision": r3}}],
        }
        line = await deletes.events()
        assert line["revision"] == r3 and [ev["type"] for ev in line["events"]] == ["DELETE"]
        assert line["events"][0]["prev_kv"]["value"] == "1"
        assert [(await single.events())["revision"] for _ in range(2)] == [r1, r3]


async def test_resume_from_a_revision_and_the_compaction_cancel(member: Member) -> None:
    async with no_timeout() as session:
        revs = [await put(session, member, "res/k", b"%d" % i) for i in range(5)]
        async with watch(session, member, "res/k", rev=str(revs[1])) as w:
            assert (await w.next())["created"]
            seen: list[int] = []
            while len(seen) < 4:  # a line from history may hold several revisions
                seen.extend(ev["kv"]["mod_revision"] for ev in (await w.events())["events"])
            assert seen == revs[1:]
            live = await put(session, member, "res/k", b"live")
            assert (await w.events())["events"][0]["kv"]["mod_revision"] == live

        async with session.post(member.client_url + "/v3/kv/compaction", json={"revision": revs[3]}) as r:
            assert r.status == 200, await r.text()
        async with watch(session, member, "res/k", rev=str(revs[2])) as w:
            assert (await w.next())["created"]
            cancel = await w.events()
            assert cancel["canceled"] is True and cancel["compact_revision"] == revs[3] + 1, cancel
            assert "compacted" in cancel["reason"]
            assert await w.end() == b""  # the cancel is the last line: the server ends the stream


async def test_many_watchers_each_get_every_event_and_a_closed_one_is_removed(member: Member) -> None:
    n, puts = 50, 10
    async with no_timeout() as session:
        before = await metric(session, member, "kvdisco_watchers")
        async with watch(session, member, "fan/", prefix="true") as first:
            assert (await first.next())["created"]
            ctxs = [watch(session, member, "fan/", prefix="true") for _ in range(n - 1)]
            others = [await c.__aenter__() for c in ctxs]
            try:
                for w in others:
                    assert (await w.next())["created"]
                assert await metric(session, member, "kvdisco_watchers") == before + n
                revs = [await put(session, member, f"fan/{i}", b"v") for i in range(puts)]
                for w in [first, *others]:
                    got: list[int] = []
                    while len(got) < puts:
                        got.extend(ev["kv"]["mod_revision"] for ev in (await w.events())["events"])
                    assert got == revs
            finally:
                for c in ctxs:
                    await c.__aexit__(None, None, None)
            # The closed streams' watchers go (the server notices within a second or so).
            async with asyncio.timeout(20):
                while await metric(session, member, "kvdisco_watchers") != before + 1:
                    await asyncio.sleep(0.2)
            rev = await put(session, member, "fan/last", b"v")
            assert (await first.events())["revision"] == rev


async def test_a_client_that_stops_reading_holds_back_no_one_and_resumes_without_gap(member: Member) -> None:
    """The stalled stream's watcher falls back to history (its queue is bounded) instead of piling
    up lines in memory; the other stream gets every event meanwhile; the stalled one, read again,
    gets every event once and in order."""
    puts, value = 80, b"v" * 100_000  # about 10 MB of lines: more than the socket buffers hold
    async with (
        no_timeout() as session,
        no_timeout() as slow_session,
        watch(slow_session, member, "big/", prefix="true") as slow,
        watch(session, member, "big/", prefix="true") as fast,
    ):
        assert (await slow.next())["created"] and (await fast.next())["created"]
        revs = []
        for i in range(puts):
            revs.append(await put(session, member, f"big/{i:03d}", value))
            line = await fast.events()
            assert [ev["kv"]["mod_revision"] for ev in line["events"]] == [revs[-1]]
        assert await metric(session, member, "kvdisco_watchers_unsynced") == 1
        seen: list[int] = []
        while len(seen) < puts:
            line = await slow.events()
            seen.extend(ev["kv"]["mod_revision"] for ev in line["events"])
            assert all(ev["kv"]["value"] == value.decode() for ev in line["events"])
        assert seen == revs
