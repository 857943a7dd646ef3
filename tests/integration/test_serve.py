"""`kvdisco serve` as an operator meets it: real processes, real HTTP, real signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from .cluster import LocalCluster, free_port


async def _wait_ready(cluster: LocalCluster) -> None:
    async with asyncio.timeout(20):
        while True:
            ok = 0
            for m in cluster.members:
                try:
                    status, _ = await cluster.get(m, "/readyz")
                    ok += status == 200
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
            if ok == len(cluster.members):
                return
            await asyncio.sleep(0.1)


async def test_three_members_follower_forwards_writes_to_the_leader(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 3) as cluster:
        leader = await cluster.leader()
        await _wait_ready(cluster)
        status, body = await cluster.put(leader, "/v1/kv/greeting", b"hello")
        assert status == 200, body
        follower = next(m for m in cluster.members if m is not leader)
        status, body = await cluster.put(follower, "/v1/kv/greeting", b"from a follower")
        assert status == 200, body
        # A linearizable read on the other follower sees the acknowledged write.
        other = next(m for m in cluster.members if m is not leader and m is not follower)
        status, body = await cluster.get(other, "/v1/kv/greeting")
        assert (status, body["kvs"][0]["value"], body["kvs"][0]["version"]) == (200, "from a follower", 2)
        status, body = await cluster.get(follower, "/v1/kv/never-set")
        assert status == 404


async def test_bad_requests_get_4xx_and_change_nothing(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 1) as cluster:
        m = await cluster.leader()
        await _wait_ready(cluster)
        status, body = await cluster.put(m, "/v1/kv/k", b"v1")
        assert status == 200
        revision = body["revision"]
        status, body = await cluster.put(m, "/v1/kv/k", b"x" * (2 * 1024 * 1024))
        assert (status, body["code"]) == (400, 3), body
        assert "too large" in body["message"]
        status, body = await cluster.put(m, "/v1/kv/k?lease=12345", b"v2")
        assert (status, body["message"]) == (404, "etcdserver: requested lease not found"), body
        status, body = await cluster.put(m, "/v1/kv/k?lease=banana", b"v2")
        assert (status, body["code"]) == (400, 3), body
        status, body = await cluster.get(m, "/v1/kv/k")
        assert (body["kvs"][0]["value"], body["revision"]) == ("v1", revision)


async def test_sigterm_stops_cleanly_and_data_survives_restart(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 1) as cluster:
        m = await cluster.leader()
        await _wait_ready(cluster)
        for i in range(20):
            assert (await cluster.put(m, f"/v1/kv/k{i}", f"v{i}".encode()))[0] == 200
        assert m.proc is not None
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=15) == 0
        assert "stopped cleanly" in m.log_path.read_text()
        cluster.start(m)
        await cluster.leader()
        await _wait_ready(cluster)
        for i in range(20):
            status, body = await cluster.get(m, f"/v1/kv/k{i}")
            assert (status, body["kvs"][0]["value"]) == (200, f"v{i}")


def test_corrupt_wal_is_a_clear_startup_error(tmp_path: Path) -> None:
    """A damaged record in the middle of the WAL stops the node with the file and offset, not a traceback."""
    data = tmp_path / "d"
    args = [
        sys.executable,
        "-m",
        "kvdisco.cli.server",
        "serve",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        f"http://127.0.0.1:{free_port()}",
        "--listen-peer-urls",
        f"http://127.0.0.1:{free_port()}",
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        # Wait for it to bootstrap and write a few records, then stop it.
        wal = data / "wal"
        for _ in range(200):
            segs = sorted(wal.glob("*.wal")) if wal.exists() else []
            # Segments are preallocated: wait for records, not for the file.
            if segs and len(segs[-1].read_bytes()[:4096].rstrip(b"\0")) > 40:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    seg = sorted((data / "wal").glob("*.wal"))[-1]
    raw = bytearray(seg.read_bytes())
    end = len(raw.rstrip(b"\0"))
    assert end > 40
    raw[20] ^= 0xFF  # inside an early record, with good records after it
    seg.write_bytes(bytes(raw))
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "corrupt WAL record" in out.stderr and str(seg) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
