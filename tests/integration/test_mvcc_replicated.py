"""The revisioned store replicated by three real Raft nodes in one event loop on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kvdisco.mvcc import (
    CompactResult,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    RequestDeleteRange,
    RequestPut,
    RequestRange,
    RequestTxn,
    TxnResult,
)
from kvdisco.mvcc.commands import Command, RequestCompact, encode_command
from kvdisco.mvcc.errors import CODE_INVALID_ARGUMENT, CODE_OUT_OF_RANGE
from kvdisco.mvcc.machine import ApplyError, KVMachine
from kvdisco.raft import Node, NodeConfig

from .cluster import free_port


class KVCluster:
    def __init__(self, root: Path, names: list[str]) -> None:
        peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
        self.machines = {n: KVMachine() for n in names}
        self.nodes = {
            n: Node(
                NodeConfig(
                    name=n,
                    data_dir=root / n,
                    peer_url=peers[n],
                    initial_cluster=peers,
                    election_ticks=20,
                    heartbeat_ticks=2,
                ),
                self.machines[n],
            )
            for n in names
        }

    async def leader(self) -> Node:
        async with asyncio.timeout(10):
            while True:
                for n in self.nodes.values():
                    if n.is_leader:
                        return n
                await asyncio.sleep(0.02)

    async def propose(self, cmd: Command | bytes) -> Any:
        lead = await self.leader()
        return await lead.propose(cmd if isinstance(cmd, bytes) else encode_command(cmd))

    async def converge(self) -> list[bytes]:
        """Wait until every replica has applied the leader's commit index; their store snapshots."""
        async with asyncio.timeout(10):
            while True:
                lead = await self.leader()
                if all(n.applied_index >= lead.commit_index for n in self.nodes.values()):
                    snaps = [m.store.snapshot() for m in self.machines.values()]
                    if len(set(snaps)) == 1:
                        return snaps
                await asyncio.sleep(0.02)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KVCluster]:
    c = KVCluster(tmp_path, ["a", "b", "c"])
    for node in c.nodes.values():
        await node.start()
    yield c
    for node in c.nodes.values():
        await node.stop()


async def test_replicated_writes_results_and_identical_replicas(cluster: KVCluster) -> None:
    res = await cluster.propose(RequestPut(b"foo", b"1"))
    assert isinstance(res, PutResult) and res.revision == 2 and res.prev_kv is None
    res = await cluster.propose(RequestPut(b"foo", b"2", prev_kv=True))
    assert isinstance(res, PutResult) and res.revision == 3
    assert res.prev_kv == KeyValue(b"foo", 2, 2, 1, b"1")

    cas = RequestTxn(
        (Compare(b"foo", CompareTarget.MOD, CompareResult.EQUAL, 3),),
        (RequestPut(b"bar", b"x"), RequestRange(b"bar", b"fop")),
        (RequestRange(b"foo"),),
    )
    res = await cluster.propose(cas)
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 4
    rng = res.responses[1]
    assert isinstance(rng, RangeResult) and [kv.key for kv in rng.kvs] == [b"bar", b"foo"]
    res = await cluster.propose(cas)  # foo's mod revision is still 3, but bar is put again
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 5
    res = await cluster.propose(RequestPut(b"foo", b"3"))
    res = await cluster.propose(cas)
    assert isinstance(res, TxnResult) and not res.succeeded and res.revision == 6
    assert isinstance(res.responses[0], RangeResult) and res.responses[0].kvs[0].value == b"3"

    res = await cluster.propose(RequestDeleteRange(b"bar", prev_kv=True))
    assert isinstance(res, DeleteResult) and res.deleted == 1 and res.revision == 7
    assert res.prev_kvs[0].value == b"x" and res.prev_kvs[0].version == 2
    res = await cluster.propose(RequestCompact(5))
    assert res == CompactResult(7)

    # Many concurrent proposals: each gets its own revision, in log order.
    results = await asyncio.gather(*(cluster.propose(RequestPut(b"k%d" % i, b"v")) for i in range(30)))
    assert sorted(r.revision for r in results) == list(range(8, 38))

    snaps = await cluster.converge()
    assert len(set(snaps)) == 1
    for m in cluster.machines.values():
        assert m.store.revision == 37 and m.store.compact_revision == 5
        assert m.store.range(b"foo").kvs[0].value == b"3"
        assert m.store.range(b"k", b"l", count_only=True).count == 30


async def test_bad_commands_return_apply_error_and_change_nothing_anywhere(cluster: KVCluster) -> None:
    await cluster.propose(RequestPut(b"a", b"1"))
    await cluster.propose(RequestPut(b"b", b"1"))
    before = await cluster.converge()
    bad: list[tuple[Command | bytes, int]] = [
        (RequestTxn(success=(RequestPut(b"a", b"2"), RequestPut(b"a", b"3"))), CODE_INVALID_ARGUMENT),
        (RequestTxn(success=(RequestPut(b"c"), RequestDeleteRange(b"a", b"z"))), CODE_INVALID_ARGUMENT),
        (RequestCompact(100), CODE_OUT_OF_RANGE),
        (RequestPut(b""), CODE_INVALID_ARGUMENT),
        (RequestPut(b"nope", ignore_value=True), CODE_INVALID_ARGUMENT),
        (b"\xde\xad\xbe\xef garbage", CODE_INVALID_ARGUMENT),
        (b"\x91\x01", CODE_INVALID_ARGUMENT),
    ]
    for cmd, code in bad:
        res = await cluster.propose(cmd)
        assert isinstance(res, ApplyError), cmd
        assert res.code == code and res.message
    after = await cluster.converge()
    assert after == before
    applied = {n.applied_index for n in cluster.nodes.values()}
    assert {m.applied_index for m in cluster.machines.values()} == applied
    # The cluster goes on: the next good write takes the next revision.
    res = await cluster.propose(RequestPut(b"a", b"2"))
    assert isinstance(res, PutResult) and res.revision == 4
    snaps = await cluster.converge()
    assert snaps[0] != before[0]
