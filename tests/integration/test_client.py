"""kvdisco.client against a real server (etcd 3.4 until kvdisco serves the gateway): every call,
the txn builder, error mapping, failover, watch resumption, leases and the lock/election recipes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from kvdisco.client import (
    Client,
    CompactedError,
    Compare,
    ConnectionFailedError,
    Event,
    EventType,
    FailedPreconditionError,
    FutureRevisionError,
    GetResult,
    IndeterminateError,
    InvalidArgumentError,
    LeaseLostError,
    LeaseNotFoundError,
    NotFoundError,
    PutResult,
    SortOrder,
    SortTarget,
    UnavailableError,
    delete,
    get,
    put,
)
from kvdisco.client.recipes import Election, Lock, NotLeaderError

from .etcd_fixture import Cluster, ServerProc, cluster3, running, server1  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own, so tests can share one server."""
    return f"t-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def c(server1: Cluster) -> AsyncIterator[Client]:  # noqa: F811
    async with Client(server1.endpoints, retry_deadline_s=5) as client:
        yield client


# --- KV ------------------------------------------------------------------------------------------


async def test_put_get_str_and_bytes(c: Client, ns: str) -> None:
    r1 = await c.put(ns + "a", "1")
    r2 = await c.put((ns + "b").encode(), b"\xff\x00")
    assert r2.revision == r1.revision + 1 and r1.prev_kv is None
    g = await c.get(ns + "a")
    assert g.count == 1 and not g.more and g.revision == r2.revision
    kv = g.kvs[0]
    assert (kv.key, kv.value, kv.key_str, kv.value_str) == ((ns + "a").encode(), b"1", ns + "a", "1")
    assert kv.create_revision == kv.mod_revision == r1.revision and kv.version == 1 and kv.lease == 0
    assert (await c.get(ns + "b")).kvs[0].value == b"\xff\x00"
    missing = await c.get(ns + "missing")
    assert missing.kvs == () and missing.count == 0
    r3 = await c.put(ns + "a", "2", prev_kv=True)
    assert r3.prev_kv is not None and r3.prev_kv.value == b"1"
    assert (await c.get(ns + "a")).kvs[0].version == 2


async def test_ranges_limits_revisions_and_sorting(c: Client, ns: str) -> None:
    revs = [(await c.put(ns + k, k.upper())).revision for k in ("a", "b", "c", "d")]
    await c.put(ns[:-1] + "0", "outside")  # sorts after the prefix: not in it
    g = await c.get(ns, prefix=True)
    assert [kv.key_str for kv in g.kvs] == [ns + k for k in "abcd"] and g.count == 4
    lim = await c.get(ns, prefix=True, limit=2)
    assert len(lim.kvs) == 2 and lim.more and lim.count == 4
    assert [kv.key_str for kv in (await c.get(ns + "c", from_key=True)).kvs][:2] == [ns + "c", ns + "d"]
    assert [kv.key_str for kv in (await c.get(ns + "b", range_end=ns + "d")).kvs] == [ns + "b", ns + "c"]
    keys_only = await c.get(ns, prefix=True, keys_only=True)
    assert all(kv.value == b"" for kv in keys_only.kvs) and len(keys_only.kvs) == 4
    counted = await c.get(ns, prefix=True, count_only=True)
    assert counted.count == 4 and counted.kvs == ()
    old = await c.get(ns, prefix=True, revision=revs[1])
    assert [kv.key_str for kv in old.kvs] == [ns + "a", ns + "b"]
    desc = await c.get(ns, prefix=True, sort_order=SortOrder.DESCEND, sort_target=SortTarget.CREATE)
    assert [kv.key_str for kv in desc.kvs] == [ns + k for k in "dcba"]
    filt = await c.get(ns, prefix=True, max_create_revision=revs[1], min_create_revision=revs[1])
    assert [kv.key_str for kv in filt.kvs] == [ns + "b"]
    ser = await c.get(ns + "a", serializable=True)
    assert ser.kvs[0].value == b"A"
    with pytest.raises(ValueError):
        await c.get(ns, prefix=True, from_key=True)


async def test_delete_single_prefix_and_prev_kv(c: Client, ns: str) -> None:
    for k in ("x", "y1", "y2"):
        await c.put(ns + k, k)
    d1 = await c.delete(ns + "x")
    assert d1.deleted == 1 and d1.prev_kvs == ()
    d2 = await c.delete(ns + "y", prefix=True, prev_kv=True)
    assert d2.deleted == 2 and sorted(kv.value for kv in d2.prev_kvs) == [b"y1", b"y2"]
    assert (await c.delete(ns + "nothing")).deleted == 0
    assert (await c.get(ns, prefix=True)).count == 0
    put_again = await c.put(ns + "x", "new")
    assert (await c.get(ns + "x")).kvs[0].version == 1 and put_again.revision > d2.revision


async def test_put_ignore_value_and_lease(c: Client, ns: str) -> None:
    g = await c.lease_grant(60)
    await c.put(ns + "k", "v", lease=g.id)
    await c.put(ns + "k", "", ignore_value=True, ignore_lease=True)
    kv = (await c.get(ns + "k")).kvs[0]
    assert kv.value == b"v" and kv.lease == g.id
    with pytest.raises(LeaseNotFoundError):
        await c.put(ns + "k2", "v", lease=0x7FFF_0000_1234)
    await c.lease_revoke(g.id)
    assert (await c.get(ns + "k")).count == 0


async def test_txn_builder(c: Client, ns: str) -> None:
    k = ns + "k"
    r = await c.txn().if_(Compare.version(k) == 0).then(put(k, "v1")).else_(get(k)).commit()
    assert r.succeeded and isinstance(r.responses[0], PutResult)
    r = await c.txn().if_(Compare.version(k) == 0).then(put(k, "v2")).else_(get(k)).commit()
    assert not r.succeeded and isinstance(r.responses[0], GetResult)
    assert r.responses[0].kvs[0].value == b"v1"
    mod = r.responses[0].kvs[0].mod_revision
    # every compare target and operator, both spellings
    r = await (
        c.txn()
        .if_(
            Compare.value(k) == "v1",
            Compare.value(k) != "zz",
            Compare.mod(k) < mod + 1,
            Compare.create(k).gt(0),
            Compare.version(k).eq(1),
            Compare.lease(k) == 0,
        )
        .then(put(k, "v3", prev_kv=True), put(ns + "other", "o"), delete(ns + "gone"), get(ns, prefix=True))
        .commit()
    )
    assert r.succeeded and len(r.responses) == 4
    put_res, _, del_res, get_res = r.responses
    assert isinstance(put_res, PutResult) and put_res.prev_kv is not None and put_res.prev_kv.value == b"v1"
    assert isinstance(get_res, GetResult) and get_res.count == 2
    assert del_res.revision == r.revision  # one txn, one revision
    # a read-only txn and an empty else branch
    ro = await c.txn().if_(Compare.value(k) == "nope").then(put(k, "x")).commit()
    assert not ro.succeeded and ro.responses == ()
    with pytest.raises(InvalidArgumentError):
        await c.txn().then(put(k, "a"), put(k, "b")).commit()  # a txn may write a key only once
    with pytest.raises(RuntimeError):
        c.txn().then(put(k, "a")).if_(Compare.version(k) == 1)
    with pytest.raises(TypeError):
        Compare.version(k) == "one"  # noqa: B015 - the comparison itself raises


async def test_compaction_and_revision_errors(c: Client, ns: str) -> None:
    r1 = await c.put(ns + "k", "1")
    r2 = await c.put(ns + "k", "2")
    await c.compact(r2.revision, physical=True)
    with pytest.raises(CompactedError) as exc_info:
        await c.get(ns + "k", revision=r1.revision)
    err = exc_info.value
    assert err.code == 11 and "compacted" in err.message
    # etcd does not put the revision in a range error; kvdisco may (then it must be right)
    assert err.compact_revision in (None, r2.revision)
    with pytest.raises(FutureRevisionError):
        await c.get(ns + "k", revision=r2.revision + 1000)
    with pytest.raises(CompactedError):
        await c.compact(r1.revision)  # compacting again below the compacted revision
    assert (await c.get(ns + "k", revision=r2.revision)).kvs[0].value == b"2"


async def test_lease_calls(c: Client, ns: str) -> None:
    g = await c.lease_grant(30)
    assert g.ttl == 30 and g.id > 0
    await c.put(ns + "leased", "v", lease=g.id)
    ttl = await c.lease_time_to_live(g.id, keys=True)
    assert ttl.id == g.id and ttl.granted_ttl == 30 and 0 < ttl.ttl <= 30 and ttl.keys == ((ns + "leased").encode(),)
    assert g.id in await c.leases()
    ka = await c.lease_keepalive_once(g.id)
    assert ka.id == g.id and ka.ttl == 30
    chosen = await c.lease_grant(20, lease_id=0x1234_5678 + int(ns[2:10], 16))
    assert chosen.id == 0x1234_5678 + int(ns[2:10], 16)
    with pytest.raises(FailedPreconditionError):
        await c.lease_grant(20, lease_id=chosen.id)  # "lease already exists"
    await c.lease_revoke(g.id)
    await c.lease_revoke(chosen.id)
    assert (await c.get(ns + "leased")).count == 0
    assert (await c.lease_time_to_live(g.id)).ttl == -1
    with pytest.raises(LeaseNotFoundError) as exc_info:
        await c.lease_revoke(g.id)
    assert isinstance(exc_info.value, NotFoundError) and exc_info.value.code == 5
    with pytest.raises(LeaseNotFoundError):
        await c.lease_keepalive_once(g.id)


async def test_cluster_and_maintenance_calls(c: Client, server1: Cluster, tmp_path: Path) -> None:  # noqa: F811
    await c.put("status-probe", "x")  # an empty kvdisco store is 0 bytes; etcd's never is
    members = await c.member_list()
    assert len(members) == 1 and members[0].name == "m1" and members[0].client_urls == (server1.endpoints[0],)
    st = await c.status()
    assert st.leader == members[0].id == st.header.member_id and st.raft_index > 0 and st.db_size > 0
    assert st.endpoint == server1.endpoints[0] and st.version
    assert (await c.status(server1.endpoints[0])).header.member_id == st.header.member_id
    size = await c.snapshot_save(tmp_path / "snap.db")
    assert size == (tmp_path / "snap.db").stat().st_size > 0 and not (tmp_path / "snap.db.part").exists()


async def test_member_add_promote_remove(c: Client) -> None:
    added = await c.member_add(["http://127.0.0.1:1"], learner=True, name="learner1")  # never started
    assert added.member.is_learner and added.member.peer_urls == ("http://127.0.0.1:1",)
    assert added.member.id in {m.id for m in added.members}
    with pytest.raises(FailedPreconditionError):
        await c.member_promote(added.member.id)  # a learner that is not in sync cannot be promoted
    remaining = await c.member_remove(added.member.id)
    assert added.member.id not in {m.id for m in remaining} and len(remaining) == 1
    with pytest.raises(NotFoundError):
        await c.member_remove(added.member.id)


# --- watch ---------------------------------------------------------------------------------------


async def test_watch_prefix_key_range_and_txn_batches(c: Client, ns: str) -> None:
    start = (await c.put(ns + "seed", "0")).revision + 1
    await c.put(ns + "a/1", "1")
    await c.put(ns + "a/1", "2")
    txn = await c.txn().then(put(ns + "a/2", "x"), put(ns + "a/3", "y"), delete(ns + "a/1")).commit()
    await c.put(ns + "b", "outside")

    async with c.watch(ns + "a/", prefix=True, start_revision=start, prev_kv=True) as w:
        batches = []
        async for batch in w.batches():
            batches.append(batch)
            if batch.revision == txn.revision:
                break
    assert [len(b.events) for b in batches] == [1, 1, 3]
    assert batches[-1].revision == txn.revision and all(ev.kv.mod_revision == txn.revision for ev in batches[-1].events)
    first, second = batches[0].events[0], batches[1].events[0]
    assert first.type is EventType.PUT and first.prev_kv is None and first.kv.value == b"1"
    assert second.prev_kv is not None and second.prev_kv.value == b"1" and second.kv.version == 2
    deleted = [ev for ev in batches[-1].events if ev.type is EventType.DELETE]
    assert len(deleted) == 1 and deleted[0].kv.key_str == ns + "a/1" and deleted[0].prev_kv is not None

    async with c.watch(ns + "a/2", start_revision=start) as single:
        ev = await anext(aiter(single))
    assert ev.kv.key_str == ns + "a/2"
    async with c.watch(ns + "a/3", range_end=ns + "a/4", start_revision=start, no_put=True) as rng:
        waiter = asyncio.ensure_future(anext(aiter(rng)))
        await c.delete(ns + "a/3")
        ev = await asyncio.wait_for(waiter, 10)
    assert ev.type is EventType.DELETE and ev.kv.key_str == ns + "a/3"

    # start_revision 0 means "from now": only later writes arrive
    async with c.watch(ns + "live", start_revision=0) as live:
        it = aiter(live)
        waiter = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.3)  # let the watch be created; a write before that is simply not seen
        for _ in range(50):
            await c.put(ns + "live", "v")
            done, _ = await asyncio.wait({waiter}, timeout=0.2)
            if done:
                break
        assert waiter.result().kv.key_str == ns + "live"


async def test_watch_from_compacted_revision_raises(c: Client, ns: str, server1: Cluster) -> None:  # noqa: F811
    r1 = await c.put(ns + "k", "1")
    r2 = await c.put(ns + "k", "2")
    await c.compact(r2.revision)
    with pytest.raises(CompactedError) as exc_info:
        async for _ in c.watch(ns + "k", start_revision=r1.revision):
            pass
    # etcd reports the compacted revision C; kvdisco reports C + 1, the oldest revision a new watch can be served
    # from completely (compaction at C drops C's tombstones and the prev_kv of C's events; see kvdisco/mvcc/watch.py).
    assert exc_info.value.compact_revision == r2.revision + (1 if server1.server == "kvdisco" else 0)


# --- failure handling against fake servers -------------------------------------------------------


async def _fake_server(handler: web.RequestHandler) -> tuple[web.AppRunner, str]:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_retry_rules_for_reads_and_writes(server1: Cluster, ns: str) -> None:  # noqa: F811
    """A hanging endpoint: reads move on to the next endpoint, a write reports IndeterminateError.
    A "no leader" endpoint: the write was not applied, so it moves on too."""

    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.json_response({})

    async def no_leader(request: web.Request) -> web.Response:
        body = {"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14}
        return web.json_response(body, status=503)

    async def timed_out(request: web.Request) -> web.Response:
        msg = "etcdserver: request timed out"
        return web.json_response({"error": msg, "message": msg, "code": 14}, status=503)

    real = server1.endpoints[0]
    hang_runner, hang_url = await _fake_server(hang)
    nl_runner, nl_url = await _fake_server(no_leader)
    to_runner, to_url = await _fake_server(timed_out)
    try:
        async with Client([hang_url, real], request_timeout_s=0.5, retry_deadline_s=5) as cl:
            with pytest.raises(IndeterminateError):
                await cl.put(ns + "k", "v")
            assert (await cl.get(ns + "k")).count == 0  # the get moved on; the put went nowhere real
            assert cl.current_endpoint == real
        async with Client([hang_url, real], request_timeout_s=0.5) as cl:
            assert (await cl.get(ns + "k")).count == 0
        async with Client([nl_url, real], retry_deadline_s=5) as cl:
            assert (await cl.put(ns + "k", "v")).revision > 0
        async with Client([to_url, real], retry_deadline_s=5) as cl:
            with pytest.raises(UnavailableError) as exc_info:
                await cl.put(ns + "k", "v2")  # may have been applied: not retried
            assert not exc_info.value.not_applied
            assert (await cl.get(ns + "k")).kvs[0].value == b"v"
        async with Client(["http://127.0.0.1:1"], retry_deadline_s=0.3) as cl:
            with pytest.raises(ConnectionFailedError):
                await cl.get("k")
            with pytest.raises(ConnectionFailedError):
                await cl.put("k", "v")
    finally:
        release.set()
        for r in (hang_runner, nl_runner, to_runner):
            await r.cleanup()


# --- leases held by the client -------------------------------------------------------------------


async def test_lease_keepalive_keeps_key_past_ttl(c: Client, ns: str) -> None:
    async with c.lease(ttl=2) as lease:
        await c.put(ns + "alive", "v", lease=lease.id)
        await asyncio.sleep(4.5)  # more than twice the TTL
        assert (await c.get(ns + "alive")).count == 1
        assert lease.alive and not lease.lost.is_set()
        lease.check()
    assert (await c.get(ns + "alive")).count == 0  # revoked on exit
    assert (await c.lease_time_to_live(lease.id)).ttl == -1


async def test_lease_loss_is_reported_to_holder(c: Client, server1: Cluster, ns: str) -> None:  # noqa: F811
    async with c.lease(ttl=3) as lease, Client(server1.endpoints) as other:
        work_cancelled = asyncio.Event()

        async def holder_work() -> None:
            try:
                async with lease.guard():
                    await asyncio.sleep(60)
            finally:
                work_cancelled.set()

        work = asyncio.create_task(holder_work())
        await asyncio.sleep(0.1)
        await other.lease_revoke(lease.id)
        with pytest.raises(LeaseLostError):
            await asyncio.wait_for(lease.wait_lost(), 10)
        with pytest.raises(LeaseLostError):
            await asyncio.wait_for(work, 10)
        assert work_cancelled.is_set() and lease.lost.is_set() and not lease.alive
        with pytest.raises(LeaseLostError):
            lease.check()


async def test_lease_lost_when_no_endpoint_answers_within_ttl(tmp_path: Path) -> None:
    with running(tmp_path / "solo", 1) as solo:
        async with Client(solo.endpoints, request_timeout_s=0.5, retry_deadline_s=1) as cl:
            lease = await cl.lease(ttl=2).grant()
            try:
                solo.pause(solo.members[0])  # connections hang: only the local TTL deadline can tell
                with pytest.raises(LeaseLostError) as exc_info:
                    await asyncio.wait_for(lease.wait_lost(), 15)
                assert "TTL" in str(exc_info.value)
            finally:
                solo.resume(solo.members[0])
                await lease.release()


# --- recipes -------------------------------------------------------------------------------------


async def test_lock_mutual_exclusion_and_fencing_tokens(server1: Cluster, ns: str) -> None:  # noqa: F811
    holders: list[int] = []
    tokens: list[int] = []
    inside = 0

    async def contender(i: int) -> None:
        nonlocal inside
        async with Client(server1.endpoints) as cl:
            for _ in range(2):
                async with Lock(cl, ns + "lock", ttl=5) as lock:
                    inside += 1
                    assert inside == 1, "two holders at once"
                    holders.append(i)
                    tokens.append(lock.fencing_token)
                    await asyncio.sleep(0.05)
                    lock.check()
                    inside -= 1

    await asyncio.wait_for(asyncio.gather(*(contender(i) for i in range(3))), 30)
    assert sorted(holders) == [0, 0, 1, 1, 2, 2]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    async with Client(server1.endpoints) as cl:
        assert (await cl.get(ns + "lock/", prefix=True)).count == 0  # every key released


async def test_lock_body_cancelled_when_lease_lost(server1: Cluster, ns: str) -> None:  # noqa: F811
    async with Client(server1.endpoints) as cl, Client(server1.endpoints) as other:
        with pytest.raises(LeaseLostError):
            async with Lock(cl, ns + "lock", ttl=5) as lock:
                await other.lease_revoke(lock.lease.id)
                await asyncio.sleep(30)  # cancelled by the loss, well before this ends


async def test_election(server1: Cluster, ns: str) -> None:  # noqa: F811
    async with Client(server1.endpoints) as c1, Client(server1.endpoints) as c2:
        e1, e2 = Election(c1, ns + "elect", ttl=5), Election(c2, ns + "elect", ttl=5)
        t1 = await e1.campaign("one")
        assert (await e2.leader()) is not None and (await e2.leader()).value == b"one"  # type: ignore[union-attr]
        observed = e2.observe()
        assert (await anext(observed)).value == b"one"  # type: ignore[union-attr]
        second = asyncio.create_task(e2.campaign("two"))
        await asyncio.sleep(0.3)
        assert not second.done()
        await e1.proclaim("one-b")
        assert (await anext(observed)).value == b"one-b"  # type: ignore[union-attr]
        await e1.resign()
        with pytest.raises(NotLeaderError):
            await e1.proclaim("late")
        t2 = await asyncio.wait_for(second, 10)
        assert t2 > t1
        assert (await e1.leader()).value == b"two"  # type: ignore[union-attr]
        await observed.aclose()
        await e2.resign()


# --- a 3-member cluster: kill -9 and SIGSTOP -----------------------------------------------------


async def test_reads_fail_over_after_kill9_of_the_leader(cluster3: Cluster) -> None:  # noqa: F811
    leader = cluster3.leader()
    endpoints = [leader.url] + [m.url for m in cluster3.members if m is not leader]
    async with Client(endpoints, request_timeout_s=1, retry_deadline_s=15) as cl:
        await cl.put("k", "v")
        assert cl.current_endpoint == leader.url
        cluster3.kill(leader)
        for _ in range(5):
            assert (await cl.get("k")).kvs[0].value == b"v"  # retried through the election
        assert cl.current_endpoint != leader.url
        # a linearizable read succeeded, so there is a leader again: writes go through
        assert (await cl.put("after", "1")).revision > 0
        assert (await cl.status()).endpoint != leader.url


async def test_writes_fail_over_when_connection_refused(cluster3: Cluster) -> None:  # noqa: F811
    follower = next(m for m in cluster3.members if m is not cluster3.leader())
    endpoints = [follower.url] + [m.url for m in cluster3.members if m is not follower]
    async with Client(endpoints, request_timeout_s=2, retry_deadline_s=15) as cl:
        await cl.put("k", "v")
        cluster3.kill(follower)
        for i in range(5):
            await cl.put(f"after/{i}", str(i))  # refused at connect: never sent, so safe to send elsewhere
        assert (await cl.get("after/", prefix=True)).count == 5


async def _collect(w: AsyncIterator[Event], n: int, out: list[int]) -> None:
    async for ev in w:
        out.append(int(ev.kv.value))
        if len(out) >= n:
            return


def _follower_first(cluster: Cluster) -> tuple[ServerProc, list[str]]:
    """A follower as the victim (so writes are not stalled by an election), first in the endpoints."""
    leader = cluster.leader()
    victim = next(m for m in cluster.members if m is not leader)
    return victim, [victim.url] + [m.url for m in cluster.members if m is not victim]


async def test_watch_resumes_after_kill9_without_gap_or_duplicate(cluster3: Cluster) -> None:  # noqa: F811
    n = 60
    victim, endpoints = _follower_first(cluster3)
    async with Client(endpoints, request_timeout_s=2, retry_deadline_s=15) as cl:
        start = (await cl.put("seq/start", "-1")).revision + 1
        w = cl.watch("seq/", prefix=True, start_revision=start, progress_deadline_s=2)
        seen: list[int] = []
        consumer = asyncio.create_task(_collect(w, n, seen))
        try:
            for i in range(n):
                if i == n // 3:
                    while len(seen) < i:  # the watch is streaming from the victim and caught up
                        await asyncio.sleep(0.02)
                    assert w.endpoint == victim.url
                    cluster3.kill(victim)
                await cl.put(f"seq/{i % 7}", str(i))
            await asyncio.wait_for(consumer, 30)
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            await w.aclose()
        assert seen == list(range(n))
        assert w.reconnects >= 1 and w.endpoint != victim.url


async def test_watch_leaves_a_paused_server(cluster3: Cluster) -> None:  # noqa: F811
    n = 30
    victim, endpoints = _follower_first(cluster3)
    writer_endpoints = [m.url for m in cluster3.members if m is not victim]
    async with (
        Client(endpoints, request_timeout_s=2, retry_deadline_s=15) as cl,
        Client(writer_endpoints, request_timeout_s=2, retry_deadline_s=15) as writer,
    ):
        start = (await writer.put("p/start", "-1")).revision + 1
        w = cl.watch("p/", prefix=True, start_revision=start, progress_deadline_s=1.5)
        seen: list[int] = []
        consumer = asyncio.create_task(_collect(w, n, seen))
        try:
            for i in range(n):
                if i == n // 3:
                    while len(seen) < i:
                        await asyncio.sleep(0.02)
                    assert w.endpoint == victim.url
                    cluster3.pause(victim)  # TCP stays up; only the silent stream gives it away
                await writer.put(f"p/{i}", str(i))  # a write sent to a paused server would be indeterminate
            await asyncio.wait_for(consumer, 30)
        finally:
            cluster3.resume(victim)
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            await w.aclose()
        assert seen == list(range(n))
        assert w.reconnects >= 1 and w.endpoint != victim.url
