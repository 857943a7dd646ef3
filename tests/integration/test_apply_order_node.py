"""A Raft node over the real store stops loudly when an entry would be applied a second time.

The node never replays an applied entry by itself; the way to show what happens if it ever did is a
machine whose state is already ahead of the log (as if restored from a state that holds later
entries). Its next apply is refused with InvariantViolation, which stops the node: callers get an
error, nothing is half-applied, and the store is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from pathlib import Path

import pytest

from kvdisco.mvcc.commands import RequestPut, encode_command
from kvdisco.mvcc.kvstore import PutResult
from kvdisco.mvcc.machine import KVMachine
from kvdisco.raft import Node, NodeConfig, ProposalDropped, RaftError
from kvdisco.raft.errors import InvariantViolation

pytestmark = [pytest.mark.timeout(60)]


def _free_port() -> int:
    """A loopback port in 21000-21999, the range this test may use."""
    candidates = list(range(21000, 22000))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port in 21000-21999")


async def test_a_node_stops_rather_than_apply_an_entry_twice(tmp_path: Path) -> None:
    peer = f"http://127.0.0.1:{_free_port()}"
    machine = KVMachine()
    node = Node(
        NodeConfig(name="solo", data_dir=tmp_path / "solo", peer_url=peer, initial_cluster={"solo": peer}),
        machine,
    )
    await node.start()
    try:
        async with asyncio.timeout(10):
            while not node.is_leader:
                await asyncio.sleep(0.02)
        first = await node.propose(encode_command(RequestPut(b"a", b"1")))
        assert isinstance(first, PutResult)
        # The machine claims to hold entries the log has not reached: the next entry's index is not past it.
        machine.applied_index = node.commit_index + 1_000
        before = machine.store.snapshot()
        with pytest.raises((ProposalDropped, RaftError)):
            async with asyncio.timeout(10):
                await node.propose(encode_command(RequestPut(b"b", b"2")))
        await asyncio.wait_for(node.wait_stopped(), 10)
        assert isinstance(node.failure, InvariantViolation)
        assert "applying it again would duplicate its write" in str(node.failure)
        assert machine.store.snapshot() == before  # nothing half-applied
        with pytest.raises(RaftError, match="node has failed"):
            await node.propose(encode_command(RequestPut(b"c", b"3")))
    finally:
        await node.stop()
