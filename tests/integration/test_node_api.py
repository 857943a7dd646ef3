"""The asyncio Node on real sockets and real disks (several nodes in one event loop).

These exercise the driver's public API end to end: proposals and their
results, NotLeader on followers, linearizable reads, membership changes
(learner, promote, remove), leader transfer, snapshot catch-up of a new
member, and restart from the data dir.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kvdisco.raft import ConfChangeError, MemberInfo, Node, NodeConfig, NotLeader, RaftError, member_id
from kvdisco.raft.node import SnapshotSource

from .cluster import free_port

ELECTION_TICKS = 20  # 200 ms: keeps the test quick, still 10x the heartbeat


class ListMachine:
    """Appends every command; apply returns the position, so results are checkable."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, index: int, command: bytes) -> int:
        self.items.append(command)
        return len(self.items)

    def snapshot(self) -> bytes:
        return b"\n".join(self.items)

    def restore(self, data: SnapshotSource) -> None:
        raw = data.read(data.remaining())
        self.items = raw.split(b"\n") if raw else []

    def publish(self) -> None:
        pass


class Cluster:
    def __init__(self, root: Path, names: list[str], snapshot_entries: int = 10_000) -> None:
        self.root = root
        self.peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
        self.initial = dict(self.peers)
        self.snapshot_entries = snapshot_entries
        self.nodes: dict[str, Node] = {}
        self.machines: dict[str, ListMachine] = {}

    def config(self, name: str, join: bool = False) -> NodeConfig:
        return NodeConfig(
            name=name,
            data_dir=self.root / name,
            peer_url=self.peers[name],
            initial_cluster=self.initial,
            join=join,
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=2,
            snapshot_entries=self.snapshot_entries,
        )

    async def start(self, name: str, join: bool = False) -> Node:
        self.machines[name] = ListMachine()
        node = Node(self.config(name, join), self.machines[name])
        await node.start()
        self.nodes[name] = node
        return node

    async def stop(self, name: str) -> None:
        await self.nodes.pop(name).stop()

    async def leader(self, timeout_s: float = 10) -> Node:
        async with asyncio.timeout(timeout_s):
            while True:
                leaders = [n for n in self.nodes.values() if n.is_leader]
                if leaders:
                    return leaders[0]
                await asyncio.sleep(0.02)

    async def converge(self, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                lead = await self.leader()
                if all(n.applied_index >= lead.commit_index for n in self.nodes.values()):
                    items = {tuple(self.machines[name].items) for name in self.nodes}
                    if len(items) == 1:
                        return
                await asyncio.sleep(0.02)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, ["a", "b", "c"])
    for name in c.peers:
        await c.start(name)
    yield c
    for name in list(c.nodes):
        await c.stop(name)


async def test_propose_returns_apply_result_and_followers_refuse(cluster: Cluster) -> None:
    lead = await cluster.leader()
    results = await asyncio.gather(*(lead.propose(f"cmd{i}".encode()) for i in range(50)))
    assert sorted(results) == list(range(1, 51))
    follower = next(n for n in cluster.nodes.values() if not n.is_leader)
    with pytest.raises(NotLeader) as exc:
        await follower.propose(b"nope")
    assert exc.value.leader_hint == lead.id
    assert exc.value.leader_address == cluster.peers[lead.config.name]
    await cluster.converge()


async def test_linearizable_read_on_follower_sees_acknowledged_write(cluster: Cluster) -> None:
    lead = await cluster.leader()
    follower_name = next(name for name, n in cluster.nodes.items() if not n.is_leader)
    follower = cluster.nodes[follower_name]
    for i in range(20):
        await lead.propose(f"w{i}".encode())
        await follower.linearizable_read()
        assert cluster.machines[follower_name].items[-1] == f"w{i}".encode()


async def test_leader_transfer(cluster: Cluster) -> None:
    lead = await cluster.leader()
    target = next(n for n in cluster.nodes.values() if n is not lead)
    await lead.propose(b"before")
    lead.transfer_leadership(target.id)
    async with asyncio.timeout(10):
        while not target.is_leader:
            await asyncio.sleep(0.02)
    assert await target.propose(b"after") >= 2


async def test_membership_learner_promote_remove_and_snapshot_catch_up(tmp_path: Path) -> None:
    c = Cluster(tmp_path, ["a", "b", "c"], snapshot_entries=50)
    try:
        for name in c.peers:
            await c.start(name)
        lead = await c.leader()
        for i in range(200):  # enough to compact the log behind snapshots
            await lead.propose(f"e{i}".encode())
        assert lead.rawnode.raft.log.snapshot.index > 0

        c.peers["d"] = f"http://127.0.0.1:{free_port()}"
        info = MemberInfo(member_id("d"), "d", c.peers["d"])
        cs = await lead.add_member(info, learner=True)
        assert info.id in cs.learners
        with pytest.raises(RaftError):
            await lead.add_member(info, learner=True)  # already a learner
        d = await c.start("d", join=True)
        async with asyncio.timeout(15):
            while len(c.machines["d"].items) < 200:
                await asyncio.sleep(0.05)
        assert d.metrics["snapshots_received"] >= 1, "the new member should have caught up from a snapshot"
        assert not d.is_leader

        # The leader learns d's progress from d's answers: promotion may be refused a moment longer.
        async with asyncio.timeout(10):
            while True:
                try:
                    cs = await lead.promote_member(info.id)
                    break
                except RaftError as exc:
                    assert "has not caught up" in str(exc)
                    await asyncio.sleep(0.05)
        assert info.id in cs.voters
        await lead.propose(b"with four voters")
        await c.converge()

        # Compact d's membership entries away, then restart a member: it must still know where d is.
        added_at = lead.applied_index
        for i in range(120):
            await lead.propose(f"f{i}".encode())
        await c.converge()
        other = next(name for name, n in c.nodes.items() if n is not lead and name != "d")
        await c.stop(other)
        restarted = await c.start(other)
        assert restarted.rawnode.raft.log.snapshot.index > added_at, "d's entries should be compacted"
        d_info = restarted.member(info.id)
        assert d_info is not None and d_info.peer_url == c.peers["d"]
        await c.converge()

        victim = next(name for name, n in c.nodes.items() if n is not lead and name != "d")
        cs = await lead.remove_member(c.nodes[victim].id)
        assert c.nodes[victim].id not in cs.voters
        await c.stop(victim)
        assert await lead.propose(b"after removal") > 0
        await c.converge()
    finally:
        for name in list(c.nodes):
            await c.stop(name)


async def test_one_conf_change_at_a_time(cluster: Cluster) -> None:
    lead = await cluster.leader()
    first = asyncio.ensure_future(lead.add_member(MemberInfo(member_id("x"), "x", "http://127.0.0.1:1")))
    await asyncio.sleep(0)
    with pytest.raises(ConfChangeError):
        await lead.add_member(MemberInfo(member_id("y"), "y", "http://127.0.0.1:2"))
    await first


async def test_restart_recovers_state_from_disk(cluster: Cluster) -> None:
    lead = await cluster.leader()
    for i in range(30):
        await lead.propose(f"k{i}".encode())
    await cluster.converge()
    names = list(cluster.nodes)
    for name in names:
        await cluster.stop(name)
    for name in names:
        await cluster.start(name)
    lead = await cluster.leader()
    await lead.propose(b"after restart")
    await cluster.converge()
    assert cluster.machines[lead.config.name].items[:30] == [f"k{i}".encode() for i in range(30)]


async def test_a_member_restarted_alone_replays_its_committed_log_for_wait_applied(cluster: Cluster) -> None:
    """No peer is up, so no leader: what wait_applied waits for is the replay of the member's own log."""
    lead = await cluster.leader()
    for i in range(40):
        await lead.propose(f"k{i}".encode())
    await cluster.converge()
    name = lead.config.name
    for other in list(cluster.nodes):
        await cluster.stop(other)
    node = await cluster.start(name)
    assert node.applied_index < node.commit_index  # nothing applied yet when start returns
    await asyncio.wait_for(node.wait_applied(node.commit_index), 10)
    assert node.applied_index >= node.commit_index
    # The commit index on disk may trail the last writes (they are committed again by the next leader).
    items = cluster.machines[name].items
    assert len(items) >= 30 and items == [f"k{i}".encode() for i in range(len(items))]
    await node.wait_applied(1)  # already applied: returns at once
    # An index no one will commit: the wait ends when the node stops, with an error, not never.
    waiting = asyncio.ensure_future(node.wait_applied(node.commit_index + 1_000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await cluster.stop(name)
    with pytest.raises(RaftError):
        await asyncio.wait_for(waiting, 5)


async def test_peer_rewriting_committed_entries_changes_nothing(tmp_path: Path) -> None:
    """A peer that claims a newer term and sends entries that would overwrite our committed log is ignored
    where it matters: committed entries stay as they are, and the node goes on serving."""
    import struct

    import msgpack

    from kvdisco.raft import Entry, Message, MessageType
    from kvdisco.raft._codec import encode_message

    c = Cluster(tmp_path, ["solo"])
    node = await c.start("solo")
    try:
        await c.leader()
        await node.propose(b"committed")
        log = node.rawnode.raft.log
        before = [(e.index, e.term, e.data) for e in log.entries]
        committed = log.committed
        host, port = c.peers["solo"].removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        hello = msgpack.packb(["kvdisco-raft", 1, node.config.cluster_id, 99, node.id, b""])
        frames = [struct.pack(">IB", len(hello), 1) + hello]
        for index in range(0, committed):  # entries at every position up to our commit index
            bogus = Message(
                MessageType.APP,
                to=node.id,
                frm=99,
                term=node.term + 1,
                index=index,
                log_term=log.term(index) or 0,
                entries=[Entry(node.term + 1, index + 1, b"rewrite")],
                commit=index + 1,
            )
            payload = encode_message(bogus)
            frames.append(struct.pack(">IB", len(payload), 2) + payload)
        writer.write(b"".join(frames))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        assert node.failure is None
        after = [(e.index, e.term, e.data) for e in node.rawnode.raft.log.entries if e.index <= committed]
        assert after == [b for b in before if b[0] <= committed]
        lead = await c.leader()
        assert await lead.propose(b"still serving") == 2
    finally:
        for name in list(c.nodes):
            await c.stop(name)


class FlakySnapshotMachine(ListMachine):
    """Its snapshot fails while ``broken`` is set: in the forked child, where the node encodes snapshots."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def snapshot(self) -> bytes:
        if self.broken:
            raise RuntimeError("snapshot failed on purpose")
        return super().snapshot()


async def test_a_failed_snapshot_child_is_retried_and_the_node_keeps_serving(tmp_path: Path) -> None:
    """Snapshots are encoded in a forked child. A child that fails costs that snapshot, not the node: writes
    go on, and a later snapshot, taken after the retry delay, succeeds and compacts the log."""
    peer_url = f"http://127.0.0.1:{free_port()}"
    cfg = NodeConfig(
        name="solo",
        data_dir=tmp_path / "solo",
        peer_url=peer_url,
        initial_cluster={"solo": peer_url},
        election_ticks=ELECTION_TICKS,
        heartbeat_ticks=2,
        snapshot_entries=20,
    )
    sm = FlakySnapshotMachine()
    node = Node(cfg, sm)
    await node.start()
    try:
        async with asyncio.timeout(10):
            while not node.is_leader:
                await asyncio.sleep(0.02)
        for i in range(60):
            assert await node.propose(b"x%d" % i) == i + 1
        assert node.failure is None and node.metrics["snapshots_taken"] == 0
        sm.broken = False
        node._snapshot_retry_at = 0.0  # skip the retry delay
        async with asyncio.timeout(10):
            i = 60
            # Taken, then the log compacted to it by the loop's next turn.
            while node.metrics["snapshots_taken"] == 0 or node.rawnode.raft.log.snapshot.index == 0:
                i += 1
                assert await node.propose(b"x%d" % i) == i
                await asyncio.sleep(0.01)
        assert not list((tmp_path / "solo").glob(".snapshot-*.tmp"))
    finally:
        await node.stop()
