"""Automatic snapshots of a real Node: the forked child writes the file into place, the node installs
it by rename, and how often snapshots are taken follows the size of the state."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import pytest

from kvdisco.raft import Node, NodeConfig, member_id
from kvdisco.raft import node as node_module
from kvdisco.raft.storage import DiskStorage

from .cluster import free_port
from .test_node_api import Cluster, ListMachine  # its snapshot is every command: the state grows with the log

ELECTION_TICKS = 20


def config(d: Path, name: str = "solo", **kw: object) -> NodeConfig:
    url = f"http://127.0.0.1:{free_port()}"
    return NodeConfig(
        name=name,
        data_dir=d / name,
        peer_url=url,
        initial_cluster={name: url},
        election_ticks=ELECTION_TICKS,
        heartbeat_ticks=2,
        **kw,  # type: ignore[arg-type]
    )


async def leader(cfg: NodeConfig, sm: ListMachine) -> Node:
    node = Node(cfg, sm)
    await node.start()
    async with asyncio.timeout(10):
        while not node.is_leader:
            await asyncio.sleep(0.02)
    return node


async def settle(node: Node) -> None:
    """Wait until no snapshot is in flight and the last one taken has compacted the log."""
    async with asyncio.timeout(15):
        while node._snapshotting or node._snapshot_done is not None:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("in_child", [True, False])
async def test_snapshot_file_is_installed_in_place_and_restored_on_restart(tmp_path: Path, in_child: bool) -> None:
    cfg = config(tmp_path, snapshot_entries=20, snapshot_in_child=in_child)
    sm = ListMachine()
    node = await leader(cfg, sm)
    try:
        for i in range(30):
            await node.propose(b"x%d" % i)
        await settle(node)
        assert node.metrics["snapshots_taken"] >= 1 and node.rawnode.raft.log.snapshot.index >= 20
        snap_files = sorted(p.name for p in (cfg.data_dir / "snap").iterdir())
        assert snap_files and all(n.endswith(".snap") for n in snap_files), snap_files  # no temp files left
        assert not list(cfg.data_dir.glob("*.tmp"))
        for i in range(30, 35):
            await node.propose(b"x%d" % i)
        items = list(sm.items)
    finally:
        await node.stop()
    storage = DiskStorage.open(cfg.data_dir)
    assert storage.snapshot.index >= 20 and storage.snapshot_file_bytes > 0
    storage.close()
    again = ListMachine()
    node = await leader(cfg, again)
    try:
        async with asyncio.timeout(10):
            while len(again.items) < len(items):
                await asyncio.sleep(0.02)
        assert again.items == items  # snapshot, then the log after it, replayed in order
    finally:
        await node.stop()


async def test_a_large_state_is_snapshotted_when_the_log_weighs_as_much(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every snapshot counts as large here: after the first, the next waits for as many bytes of
    entries as the last snapshot file holds, so their spacing doubles as the state doubles."""
    monkeypatch.setattr(node_module, "SNAPSHOT_CHEAP_BYTES", 0)
    cfg = config(tmp_path, snapshot_entries=10)
    sm = ListMachine()
    node = await leader(cfg, sm)
    taken: list[int] = []
    try:
        for i in range(250):
            await node.propose(b"%06d" % i)
            await settle(node)  # one at a time, so each snapshot sees the log since the last one
            index = node.rawnode.raft.log.snapshot.index
            if index and (not taken or taken[-1] != index):
                taken.append(index)
    finally:
        await node.stop()
    assert len(taken) >= 3, taken
    # Each snapshot waited for at least as many bytes of entries as the one before held.
    for a, b in itertools.pairwise(taken):
        assert b - a >= a - 2, taken  # the bootstrap and election entries weigh (almost) nothing


async def test_the_replay_bound_wins_over_the_growth_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "SNAPSHOT_CHEAP_BYTES", 0)
    monkeypatch.setattr(node_module, "SNAPSHOT_GROWTH", 1000.0)
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRIES_MAX", 25)
    cfg = config(tmp_path, snapshot_entries=10)
    node = await leader(cfg, ListMachine())
    try:
        for i in range(100):
            await node.propose(b"%06d" % i)
            await settle(node)
            log = node.rawnode.raft.log
            assert log.applied - log.snapshot.index <= 25 + 1
        assert node.metrics["snapshots_taken"] >= 3
    finally:
        await node.stop()


class SlowSnapshots(ListMachine):
    """Its snapshot takes a while (in the forked child), long enough to watch the child's scheduling."""

    def snapshot(self) -> bytes:
        time.sleep(1.5)
        return super().snapshot()


def open_sockets(pid: str) -> list[str]:
    """The sockets among a process's open files (/proc/PID/fd)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # the directory's own fd, say, closed since
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:"):
                out.append(target)
    return out


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_the_snapshot_child_holds_none_of_the_members_sockets(tmp_path: Path) -> None:
    """A member restarted after kill -9 binds its ports again at once, though its child may still be exiting."""
    cfg = config(tmp_path, snapshot_entries=5)
    node = await leader(cfg, SlowSnapshots())
    try:
        for i in range(6):
            await node.propose(b"x%d" % i)
        async with asyncio.timeout(10):
            while not (pid := node._snapshot_child):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # past the fork's first steps: the child is in the machine's snapshot
        assert open_sockets("self") and not open_sockets(str(pid))
        await settle(node)
        assert node.metrics["snapshots_taken"] >= 1
    finally:
        await node.stop()


_MEMBER_WITH_SLOW_SNAPSHOTS = """
import asyncio, sys, time
from pathlib import Path
from kvdisco.raft import Node, NodeConfig, member_id

class Slow:
    def __init__(self): self.items = []
    def apply(self, index, command): self.items.append(command); return len(self.items)
    def snapshot(self): time.sleep(60); return b""
    def restore(self, data): pass
    def publish(self): pass

async def main():
    url = sys.argv[2]
    cfg = NodeConfig(name="solo", data_dir=Path(sys.argv[1]), peer_url=url, initial_cluster={"solo": url},
                     election_ticks=20, heartbeat_ticks=2, snapshot_entries=5)
    node = Node(cfg, Slow())
    await node.start()
    while not node.is_leader:
        await asyncio.sleep(0.02)
    for i in range(10):
        await node.propose(b"x")
    while not node._snapshot_child:
        await asyncio.sleep(0.02)
    print(node._snapshot_child, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    """Running: a zombie waiting for whoever inherited it counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_member_killed_takes_its_snapshot_child_along(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MEMBER_WITH_SLOW_SNAPSHOTS, str(tmp_path / "solo"), url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            child = int(await proc.stdout.readline())
        assert alive(child)
        proc.kill()
        await proc.wait()
        async with asyncio.timeout(10):
            while alive(child):
                await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class StaggeredCluster(Cluster):
    """Three members whose large snapshots come from one bound only (see SNAPSHOT_STAGGER)."""

    def __init__(self, root: Path, **config: int) -> None:
        super().__init__(root, ["a", "b", "c"])
        self.extra = config

    def config(self, name: str, join: bool = False) -> NodeConfig:
        return dataclasses.replace(super().config(name, join), **self.extra)  # type: ignore[arg-type]


async def snapshot_indexes(cluster: StaggeredCluster, puts: int) -> list[list[int]]:
    """The indexes each member snapshotted at, members in id order, proposing one 100-byte entry at a time."""
    taken: dict[str, list[int]] = {name: [] for name in cluster.peers}
    for name in cluster.peers:
        await cluster.start(name)
    try:
        lead = await cluster.leader()
        for i in range(puts):
            await lead.propose(b"%099d" % i)
            await cluster.converge()
            for name, node in cluster.nodes.items():
                await settle(node)
                index = node.rawnode.raft.log.snapshot.index
                if index and index not in taken[name]:
                    taken[name].append(index)
    finally:
        for name in list(cluster.nodes):
            await cluster.stop(name)
    return [taken[name] for _, name in sorted((member_id(name), name) for name in taken)]


async def test_members_take_their_first_large_snapshot_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same entries and thresholds would have every member snapshot at once; under the bytes
    bound the first snapshot of each comes a quarter of a period earlier per place of its id."""
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRY_BYTES", 0)  # entries weigh their bytes only
    first = [t[0] for t in await snapshot_indexes(StaggeredCluster(tmp_path, snapshot_bytes=2_000), 40)]
    # 100-byte entries, 20 to the bound: the last in id order waives half, about 10 entries sooner.
    assert first[2] < first[1] < first[0] and first[0] - first[2] >= 8, first


async def test_a_crossing_soon_after_a_snapshot_for_the_bytes_bound_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a snapshot for the bytes bound, the entries bound's next crossing waits half a period: a
    bulk load's leftover bytes and then a crossing had a member take two snapshots in a row."""
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRIES_MAX", 40)
    monkeypatch.setattr(node_module, "SNAPSHOT_CHEAP_BYTES", 0)  # every snapshot is large
    monkeypatch.setattr(node_module, "SNAPSHOT_GROWTH", 1000.0)  # and the growth rule never fires
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRY_BYTES", 0)  # entries weigh their bytes only
    # 99-byte entries: the bytes bound every 30 of them; crossings every 40 at offsets 0, 10 and 20. The
    # first snapshot (no file yet) comes at --snapshot-count; a crossing may follow it a quarter period on.
    # Every later one is 30 entries after the last (bytes) or at a crossing at least 20 after it: before,
    # a member took a crossing 10 entries after a bytes snapshot.
    taken = await snapshot_indexes(StaggeredCluster(tmp_path, snapshot_entries=10, snapshot_bytes=30 * 99), 120)
    assert all(len(t) >= 4 and t[1] - t[0] >= 10 for t in taken), taken
    for t in taken:
        assert all(20 <= b - a <= 60 for a, b in itertools.pairwise(t[1:])), taken


async def test_the_bytes_bound_counts_each_entry_as_more_than_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small entries cost more to replay than their bytes say: each counts SNAPSHOT_ENTRY_BYTES more,
    so the bound holds what a restart replays for small entries, and for a mix of small and large."""
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRIES_MAX", 10_000)  # no crossing in this test
    monkeypatch.setattr(node_module, "SNAPSHOT_CHEAP_BYTES", 0)
    monkeypatch.setattr(node_module, "SNAPSHOT_GROWTH", 1000.0)
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRY_BYTES", 300)
    # 100-byte entries weigh 400: 3,000 bytes every 7.5 of them, where their bytes alone took 30.
    taken = await snapshot_indexes(StaggeredCluster(tmp_path, snapshot_entries=10_000, snapshot_bytes=3_000), 45)
    for t in taken:
        assert len(t) >= 4 and all(b - a <= 8 for a, b in itertools.pairwise(t)), taken


async def test_no_second_snapshot_before_the_log_is_compacted_to_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot that is saved but not yet compacted to leaves the log starting at the snapshot before it.
    An apply in that moment (the save ends while a Ready is being handled) counted the entries bound from
    there and started a second snapshot right after the first: two children back to back on one member."""
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRIES_MAX", 20)
    monkeypatch.setattr(node_module, "SNAPSHOT_CHEAP_BYTES", 0)
    monkeypatch.setattr(node_module, "SNAPSHOT_GROWTH", 1000.0)
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRY_BYTES", 0)
    release = asyncio.Event()
    started_again: list[bool] = []
    save = Node._save_snapshot

    async def held_save(self: Node, meta: object, child: object) -> None:
        await release.wait()
        await save(self, meta, child)  # type: ignore[arg-type]
        if self._snapshot_done is not None:  # saved, not compacted to: the moment in question
            await self._maybe_snapshot()
            started_again.append(self._snapshotting)

    monkeypatch.setattr(Node, "_save_snapshot", held_save)
    cluster = StaggeredCluster(tmp_path, snapshot_entries=10, snapshot_bytes=10**9)
    for name in cluster.peers:
        await cluster.start(name)
    try:
        lead = await cluster.leader()
        # The first snapshot of each member (--snapshot-count: no file yet) is held while the log grows past
        # every member's next crossing (20, 15 or 10 entries, by its offset), then let go.
        for i in range(40):
            await lead.propose(b"%099d" % i)
        await cluster.converge()
        assert all(node._snapshotting for node in cluster.nodes.values())
        release.set()
        for node in cluster.nodes.values():
            await settle(node)
    finally:
        for name in list(cluster.nodes):
            await cluster.stop(name)
    assert started_again and not any(started_again), started_again


async def test_members_keep_apart_under_the_entries_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under SNAPSHOT_ENTRIES_MAX alone each member snapshots at its own log indexes, every time, and
    never replays more than the bound."""
    monkeypatch.setattr(node_module, "SNAPSHOT_ENTRIES_MAX", 20)
    monkeypatch.setattr(node_module, "SNAPSHOT_CHEAP_BYTES", 0)  # every snapshot is large
    monkeypatch.setattr(node_module, "SNAPSHOT_GROWTH", 1000.0)  # and the growth rule never fires
    taken = await snapshot_indexes(StaggeredCluster(tmp_path, snapshot_entries=10), 70)
    assert all(len(t) >= 4 for t in taken), taken
    for t in taken:
        assert all(b - a <= 20 for a, b in itertools.pairwise(t)), taken
    # The first snapshot (there is no file yet to weigh against) comes at --snapshot-count for all; after
    # it, offsets of 0, 5 and 10 entries: no two members snapshot at the same index.
    later = [set(t[1:]) for t in taken]
    assert not (later[0] & later[1] or later[1] & later[2] or later[0] & later[2]), taken
    assert [t[-1] % 20 for t in taken] == [0, 15, 10], taken
