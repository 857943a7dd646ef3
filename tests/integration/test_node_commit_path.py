"""The commit path of the asyncio Node keeps "persist before acknowledge" on every route.

A member writes its WAL either on the event loop thread (small batches, and always on a
follower) or on its I/O thread (the leader's larger batches). Whichever way, a follower may
acknowledge only entries it has fsynced, and an entry may be applied anywhere only once a quorum
of members hold it durably (the leader counts itself only once its own WAL write returned).
These tests watch every WAL write and every outgoing message of a real three-member cluster on
real sockets and disks, and check those two rules at the moment each event happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kvdisco.raft import Entry, HardState, Message, MessageType, Node, NodeConfig
from kvdisco.raft.transport import SnapshotPayload

from .test_node_api import Cluster


class WatchedCluster(Cluster):
    """A cluster whose members' WAL writes and sent messages are checked as they happen."""

    def __init__(self, root: Path, inline_fsync: bool) -> None:
        super().__init__(root, ["a", "b", "c"])
        self.inline_fsync = inline_fsync
        #: Member name -> last log index its WAL holds durably (a save() has returned).
        self.durable: dict[str, int] = {}
        self.violations: list[str] = []
        self.acks = 0
        self.applied = 0
        #: Member name -> peer id -> highest commit index sent to that peer.
        self.commit_sent: dict[str, dict[int, int]] = {}
        #: Whether every publish must come after the commit of what it publishes was sent to every peer.
        self.check_publish = False

    def config(self, name: str, join: bool = False) -> NodeConfig:
        return dataclasses.replace(super().config(name, join), inline_fsync=self.inline_fsync)

    async def start(self, name: str, join: bool = False) -> Node:
        node = await super().start(name, join)
        storage, transport = node._storage, node._transport
        assert storage is not None and transport is not None
        self.durable[name] = storage.last_index()
        save, send = storage.save, transport.send
        machine = self.machines[name]
        apply, publish = machine.apply, machine.publish
        sent = self.commit_sent[name] = {}
        last_applied = [0]

        def watched_save(entries: list[Entry], hard_state: HardState | None) -> None:
            save(entries, hard_state)
            self.durable[name] = storage.last_index()

        def watched_send(msg: Message, snapshot: SnapshotPayload | None = None) -> None:
            if msg.type == MessageType.APP_RESP and not msg.reject:
                self.acks += 1
                if msg.index > self.durable[name]:
                    self.violations.append(f"{name} acknowledged {msg.index} holding {self.durable[name]} durably")
            sent[msg.to] = max(sent.get(msg.to, 0), msg.commit)
            send(msg, snapshot)

        def watched_apply(index: int, command: bytes) -> Any:
            holders = sum(1 for last in self.durable.values() if last >= index)
            if holders < 2:
                self.violations.append(f"{name} applied {index} held durably by {holders} member(s)")
            self.applied += 1
            last_applied[0] = index
            return apply(index, command)

        def watched_publish() -> None:
            # A leader's fan-out to its own watchers must not hold back the followers' commit (and theirs).
            if self.check_publish and node.is_leader:
                peers = [p for p in node.members() if p != node.id]
                behind = [hex(p) for p in peers if sent.get(p, 0) < last_applied[0]]
                if behind:
                    self.violations.append(f"{name} published {last_applied[0]} before sending it to {behind}")
            publish()

        storage.save = watched_save  # type: ignore[method-assign]
        transport.send = watched_send  # type: ignore[method-assign]
        machine.apply = watched_apply  # type: ignore[method-assign]
        machine.publish = watched_publish  # type: ignore[method-assign]
        return node


@pytest.fixture(params=[True, False], ids=["inline-fsync", "io-thread-fsync"])
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[WatchedCluster]:
    c = WatchedCluster(tmp_path, inline_fsync=request.param)
    for name in c.peers:
        await c.start(name)
    yield c
    for name in list(c.nodes):
        await c.stop(name)


async def test_acknowledged_and_applied_entries_were_durable_first(cluster: WatchedCluster) -> None:
    lead = await cluster.leader()
    await cluster.converge()
    cluster.check_publish = True  # while every follower keeps up, each put's commit leaves before its publish
    for i in range(100):  # one at a time: the leader writes each entry on the loop thread (when inline)
        assert await lead.propose(f"one{i}".encode()) == i + 1
    cluster.check_publish = False
    # Many at once: with more than two proposals waiting the leader writes on its I/O thread.
    for burst in range(5):
        results = await asyncio.gather(*(lead.propose(f"many{burst}.{i}".encode()) for i in range(64)))
        assert sorted(results) == list(range(101 + 64 * burst, 101 + 64 * (burst + 1)))
    await cluster.converge()
    assert cluster.violations == []
    assert cluster.acks > 0 and cluster.applied == 3 * (100 + 5 * 64)


async def test_state_survives_a_restart_of_every_member(cluster: WatchedCluster) -> None:
    lead = await cluster.leader()
    await asyncio.gather(*(lead.propose(f"k{i}".encode()) for i in range(40)))
    await cluster.converge()
    for name in list(cluster.nodes):
        await cluster.stop(name)
    for name in list(cluster.peers):
        await cluster.start(name)
    lead = await cluster.leader()
    await lead.propose(b"after restart")
    await cluster.converge()
    assert sorted(cluster.machines[lead.config.name].items[:40]) == sorted(f"k{i}".encode() for i in range(40))
    assert cluster.violations == []
