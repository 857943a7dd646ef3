"""Three real processes; kill -9 leaders and followers while clients write; nothing acknowledged is lost.

Each write puts a unique key with a unique value, so "every acknowledged write
is present" is a plain lookup, and replicas must hold identical keys, values and
revisions at the same store revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path

import aiohttp
import pytest

from .cluster import LocalCluster, Member

#: Kill rounds; each kills one member (sometimes two) and brings it back. Bounded so the test stops by itself.
KILL_ROUNDS = 8
WRITERS = 4


async def _writer(cluster: LocalCluster, wid: int, acked: dict[str, str], stop: asyncio.Event) -> int:
    """Write w<wid>-<seq> until told to stop; record what the cluster acknowledged."""
    seq = 0
    target: Member = cluster.members[wid % len(cluster.members)]
    attempts = 0
    while not stop.is_set():
        key, value = f"w{wid}-{seq}", f"value-{wid}-{seq}"
        attempts += 1
        try:
            status, _ = await cluster.put(target, f"/v1/kv/{key}", value.encode())
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = 0
        if status == 200:
            acked[key] = value
            seq += 1
            continue
        # Followers forward writes to the leader; a failure means that member is down or there is no leader.
        target = random.choice(cluster.members)
        await asyncio.sleep(0.05)
        # The outcome of a failed write is unknown; writing the same key and value again is harmless.
    return attempts


async def _wait_converged(cluster: LocalCluster, timeout_s: float) -> dict[str, dict[str, object]]:
    """Every member's keys as of one store revision, read locally (serializable) on each member."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    leader = await cluster.leader()
    # A barrier write: once a member has applied it, it can serve the state as of its revision.
    while True:
        status, body = await cluster.put(leader, "/v1/kv/barrier", b"end")
        if status == 200:
            barrier = body["revision"]
            break
        leader = await cluster.leader()
    dumps: dict[str, dict[str, object]] = {}
    while loop.time() < deadline:
        dumps = {}
        for m in cluster.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                status, body = await cluster.get(m, f"/v1/kv/w?prefix=true&serializable=true&rev={barrier}")
                if status == 200:
                    dumps[m.name] = body
        if len(dumps) == len(cluster.members):
            return dumps
        await asyncio.sleep(0.2)
    raise AssertionError(f"members did not converge: {sorted(dumps)} of {len(cluster.members)}\n{cluster.logs()}")


@pytest.mark.slow
async def test_kill9_leaders_and_followers_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(9)
    async with LocalCluster(tmp_path, 3, snapshot_count=300) as cluster:
        await cluster.leader()
        acked: dict[str, str] = {}
        stop = asyncio.Event()
        writers = [asyncio.create_task(_writer(cluster, w, acked, stop)) for w in range(WRITERS)]
        kills = []
        for rnd in range(KILL_ROUNDS):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            leader = await cluster.leader()
            victims = [leader] if rnd % 2 == 0 else [rng.choice([m for m in cluster.members if m is not leader])]
            if rnd == KILL_ROUNDS - 2:
                victims = [leader, rng.choice([m for m in cluster.members if m is not leader])]  # lose quorum
            for v in victims:
                cluster.kill(v, signal.SIGKILL)
            kills.append([v.name for v in victims])
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            for v in victims:
                cluster.start(v)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*writers)
        assert len(acked) > 50, f"too few writes were acknowledged to mean anything: {len(acked)}\n{cluster.logs()}"

        dumps = await _wait_converged(cluster, 60)
        states = {name: d["kvs"] for name, d in dumps.items()}
        first = next(iter(states.values()))
        assert all(kvs == first for kvs in states.values()), "replicas diverged at the same revision"
        for name, d in dumps.items():
            kvs = d["kvs"]
            assert isinstance(kvs, list)
            stored = {kv["key"]: kv["value"] for kv in kvs}
            missing = [k for k, v in acked.items() if stored.get(k) != v]
            assert not missing, f"{name} lost {len(missing)} acknowledged writes, e.g. {missing[:5]}; kills {kills}"
        for m in cluster.members:
            assert m.log_path.read_text().count("CorruptLogError") == 0
