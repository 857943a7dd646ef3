"""The /v3 watch stream on a real member: several watchers on one stream, cancel and progress, and a
client that stops reading while others go on."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from .cluster import LocalCluster, Member
from .test_gateway_cluster import wait_ready


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_of(ev: dict[str, Any]) -> bytes:
    return base64.b64decode(ev["kv"]["key"])


class Stream:
    """One POST /v3/watch whose request body stays open, so requests can follow the first."""

    def __init__(self, session: aiohttp.ClientSession, m: Member, first: dict[str, Any]) -> None:
        self._session = session
        self._url = m.client_url + "/v3/watch"
        self._requests: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.send(first)
        self._cm: Any = None
        self.resp: aiohttp.ClientResponse | None = None

    def send(self, msg: dict[str, Any]) -> None:
        self._requests.put_nowait(json.dumps(msg).encode())

    async def _body(self) -> AsyncIterator[bytes]:
        while (item := await self._requests.get()) is not None:
            yield item

    async def __aenter__(self) -> Stream:
        self._cm = self._session.post(self._url, data=self._body())
        self.resp = await self._cm.__aenter__()
        assert self.resp.status == 200
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._requests.put_nowait(None)
        await self._cm.__aexit__(*exc)

    async def result(self) -> dict[str, Any]:
        assert self.resp is not None
        async with asyncio.timeout(20):
            line = await self.resp.content.readline()
        assert line, "the stream ended"
        out: dict[str, Any] = json.loads(line)["result"]
        return out


async def v3(session: aiohttp.ClientSession, m: Member, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(m.client_url + path, json=body) as r:
        out: dict[str, Any] = await r.json(content_type=None)
        assert r.status == 200, out
        return out


async def put(session: aiohttp.ClientSession, m: Member, key: bytes, value: bytes) -> int:
    body = await v3(session, m, "/v3/kv/put", {"key": b64(key), "value": b64(value)})
    return int(body["header"]["revision"])


def create(key: bytes, range_end: bytes = b"", **more: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"key": b64(key), **more}
    if range_end:
        req["range_end"] = b64(range_end)
    return {"create_request": req}


async def put_while_one_keeps_up(
    session: aiohttp.ClientSession, m: Member, fast: Stream, puts: int, value: bytes
) -> list[int]:
    """Put ``puts`` keys under big/, checking after each that the ``fast`` stream got it at once; the revisions."""
    revs = []
    for i in range(puts):
        revs.append(await put(session, m, b"big/%03d" % i, value))
        r = await fast.result()
        assert [int(ev["kv"]["mod_revision"]) for ev in r["events"]] == [revs[-1]]
    return revs


async def unsynced_watchers(session: aiohttp.ClientSession, m: Member) -> float:
    """The member's ``kvdisco_watchers_unsynced`` gauge: watchers reading history, not live events."""
    async with session.get(m.client_url + "/metrics") as resp:
        metrics = await resp.text()
    return next(float(x.split()[1]) for x in metrics.splitlines() if x.startswith("kvdisco_watchers_unsynced "))


async def test_watchers_sharing_a_stream_each_get_their_events_in_order(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 1) as cluster, aiohttp.ClientSession() as session:
        m = cluster.members[0]
        await cluster.leader()
        await wait_ready(cluster)
        async with Stream(session, m, create(b"p/", b"p0", watch_id=1)) as s:
            s.send(create(b"p/", b"p0", watch_id=2, prev_kv=True))
            s.send(create(b"p/a", watch_id=3))
            s.send(create(b"p/", b"p0", watch_id=4, filters=["NOPUT"]))
            s.send(create(b"p/a", watch_id=3))  # taken: refused, the first one goes on
            created = [await s.result() for _ in range(5)]
            assert [c.get("watch_id") for c in created] == ["1", "2", "3", "4", "3"]
            assert all(c["created"] for c in created) and created[-1]["canceled"], created

            revs = [await put(session, m, b"p/a", b"1"), await put(session, m, b"p/b", b"2")]
            txn = {
                "success": [
                    {"request_put": {"key": b64(b"p/c"), "value": b64(b"3")}},
                    {"request_put": {"key": b64(b"p/d"), "value": b64(b"4")}},
                ]
            }
            revs.append(int((await v3(session, m, "/v3/kv/txn", txn))["header"]["revision"]))
            body = await v3(session, m, "/v3/kv/deleterange", {"key": b64(b"p/a")})
            revs.append(int(body["header"]["revision"]))
            revs.append(await put(session, m, b"p/a", b"5"))

            want = {1: 5, 2: 5, 3: 3, 4: 1}  # responses per watcher: one per revision it sees
            got: dict[int, list[dict[str, Any]]] = {w: [] for w in want}
            while any(len(got[w]) < n for w, n in want.items()):
                r = await s.result()
                got[int(r["watch_id"])].append(r)
            for w, resps in got.items():
                assert len(resps) == want[w], (w, resps)
            keys = [[key_of(ev) for ev in r["events"]] for r in got[1]]
            assert keys == [[b"p/a"], [b"p/b"], [b"p/c", b"p/d"], [b"p/a"], [b"p/a"]]  # the txn in one response
            assert [int(r["header"]["revision"]) for r in got[1]] == revs
            assert [[key_of(ev) for ev in r["events"]] for r in got[3]] == [[b"p/a"]] * 3
            assert got[4][0]["events"][0]["type"] == "DELETE"
            assert got[2][3]["events"][0]["prev_kv"]["value"] == b64(b"1")
            assert all("prev_kv" not in ev for r in got[1] for ev in r["events"])

            # A cancel ends one watcher; nothing of it follows its canceled line.
            s.send({"cancel_request": {"watch_id": 1}})
            r = await s.result()
            assert (r["watch_id"], r["canceled"], "events" in r) == ("1", True, False)
            rev = await put(session, m, b"p/e", b"6")
            r = await s.result()
            assert (r["watch_id"], int(r["header"]["revision"])) == ("2", rev)
            # Nothing pending on any watcher: a progress request is answered once, for the stream.
            s.send({"progress_request": {}})
            r = await s.result()
            assert (r["watch_id"], int(r["header"]["revision"]), "events" in r) == ("-1", rev, False)


async def test_a_client_that_stops_reading_holds_back_no_one_and_resumes_without_gap(tmp_path: Path) -> None:
    """The stalled stream's watcher falls back to history (its queue is bounded) instead of piling up
    responses in memory; the other stream gets every event meanwhile; the stalled one, read again,
    gets every event once and in order."""
    puts, value = 80, b"v" * 100_000  # about 10 MB of responses: more than the socket buffers hold
    async with LocalCluster(tmp_path, 1) as cluster, aiohttp.ClientSession() as session:
        m = cluster.members[0]
        await cluster.leader()
        await wait_ready(cluster)
        async with (
            aiohttp.ClientSession() as slow_session,
            Stream(slow_session, m, create(b"big/", b"big0")) as slow,
            Stream(session, m, create(b"big/", b"big0")) as fast,
        ):
            assert (await slow.result())["created"] and (await fast.result())["created"]
            revs = await put_while_one_keeps_up(session, m, fast, puts, value)
            assert await unsynced_watchers(session, m) == 1
            seen: list[int] = []
            while len(seen) < puts:
                r = await slow.result()
                seen.extend(int(ev["kv"]["mod_revision"]) for ev in r["events"])
                assert all(ev["kv"]["value"] == b64(value) for ev in r["events"])
            assert seen == revs


async def test_creates_back_to_back_in_one_body_each_get_every_event(tmp_path: Path) -> None:
    """How etcd clients and benchmarks multiplex: one request body of M create requests, no ids.
    The stream numbers them 0..M-1 in order (the gateway leaves out a zero id)."""
    n = 30
    body = b"\n".join(json.dumps(create(b"m/", b"m0")).encode() for _ in range(n))
    async with LocalCluster(tmp_path, 1) as cluster, aiohttp.ClientSession() as session:
        m = cluster.members[0]
        await cluster.leader()
        await wait_ready(cluster)
        async with session.post(m.client_url + "/v3/watch", data=body) as resp:
            assert resp.status == 200

            async def result() -> dict[str, Any]:
                async with asyncio.timeout(20):
                    line = await resp.content.readline()
                assert line, "the stream ended"
                out: dict[str, Any] = json.loads(line)["result"]
                return out

            created = [await result() for _ in range(n)]
            assert all(c["created"] and not c.get("canceled") for c in created), created
            assert [c.get("watch_id", "0") for c in created] == [str(i) for i in range(n)]
            revs = [await put(session, m, b"m/%d" % i, b"v") for i in range(3)]
            got: dict[str, list[int]] = {str(i): [] for i in range(n)}
            while any(len(v) < len(revs) for v in got.values()):
                r = await result()
                got[r.get("watch_id", "0")].extend(int(ev["kv"]["mod_revision"]) for ev in r["events"])
            assert all(v == revs for v in got.values()), got


async def test_cancel_of_one_watcher_leaves_the_others_on_its_stream(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 1) as cluster, aiohttp.ClientSession() as session:
        m = cluster.members[0]
        await cluster.leader()
        await wait_ready(cluster)
        async with Stream(session, m, create(b"c/", b"c0", watch_id=1)) as s:
            for wid in range(2, 11):
                s.send(create(b"c/", b"c0", watch_id=wid))
            assert [(await s.result())["watch_id"] for _ in range(10)] == [str(w) for w in range(1, 11)]
            for wid in (2, 5, 9):
                s.send({"cancel_request": {"watch_id": wid}})
                r = await s.result()
                assert (r["watch_id"], r["canceled"]) == (str(wid), True)
            rev = await put(session, m, b"c/a", b"1")
            live = {str(w) for w in range(1, 11)} - {"2", "5", "9"}
            got = [await s.result() for _ in live]
            assert {r["watch_id"] for r in got} == live
            assert all(int(r["header"]["revision"]) == rev for r in got)
            # Nothing more is pending for any watcher of the stream, the canceled ones included.
            s.send({"progress_request": {}})
            r = await s.result()
            assert (r["watch_id"], int(r["header"]["revision"])) == ("-1", rev)


async def test_a_slow_stream_of_many_watchers_holds_back_no_one_and_each_resumes_without_gap(tmp_path: Path) -> None:
    """A stream carrying many watchers whose client stops reading: its watchers fall back to history
    (bounded queues) while another stream gets every event; read again, every watcher of the slow
    stream gets every event once and in order."""
    watchers, puts, value = 20, 80, b"v" * 30_000  # about 64 MB of lines for the slow stream
    async with LocalCluster(tmp_path, 1) as cluster, aiohttp.ClientSession() as session:
        m = cluster.members[0]
        await cluster.leader()
        await wait_ready(cluster)
        async with (
            aiohttp.ClientSession() as slow_session,
            Stream(slow_session, m, create(b"big/", b"big0")) as slow,
            Stream(session, m, create(b"big/", b"big0")) as fast,
        ):
            for _ in range(watchers - 1):
                slow.send(create(b"big/", b"big0"))
            assert all([(await slow.result())["created"] for _ in range(watchers)])
            assert (await fast.result())["created"]
            revs = await put_while_one_keeps_up(session, m, fast, puts, value)
            assert await unsynced_watchers(session, m) >= 1
            seen: dict[str, list[int]] = {str(w): [] for w in range(watchers)}
            while any(len(v) < puts for v in seen.values()):
                r = await slow.result()
                seen[r.get("watch_id", "0")].extend(int(ev["kv"]["mod_revision"]) for ev in r["events"])
                assert all(ev["kv"]["value"] == b64(value) for ev in r["events"])
            assert all(v == revs for v in seen.values())
