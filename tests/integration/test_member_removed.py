"""A removed member's name can never be added again, and the cluster remembers it across restarts.

Three `kvdisco serve` processes: one is removed and stopped; adding its name back is refused on every
member, through /v1, /v3 and kvctl. The survivors then write until a snapshot covers the removal (so
the log that recorded it is compacted away) and restart: the refusal survives, read from the
snapshot's membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvdisco.raft.node import member_id

from .cluster import LocalCluster, Member

pytestmark = [pytest.mark.timeout(120)]

#: The ports this test may use.
PORT_MIN, PORT_MAX = 21000, 21999

#: Upper bound on the writes made to reach a snapshot (one is due every SNAPSHOT_COUNT entries).
SNAPSHOT_COUNT = 8
WRITES_MAX = 200


def _free_ports(n: int) -> list[int]:
    """``n`` loopback ports in [PORT_MIN, PORT_MAX] that nothing listens on now."""
    ports: list[int] = []
    candidates = list(range(PORT_MIN, PORT_MAX + 1))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"fewer than {n} free ports in {PORT_MIN}-{PORT_MAX}")


def _cluster(root: Path) -> LocalCluster:
    c = LocalCluster(root, 3, snapshot_count=SNAPSHOT_COUNT)
    ports = _free_ports(2 * len(c.members))
    for i, m in enumerate(c.members):
        m.client_port, m.peer_port = ports[2 * i], ports[2 * i + 1]
    c.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in c.members)
    return c


async def _request(c: LocalCluster, method: str, m: Member, path: str, body: Any = None) -> tuple[int, Any]:
    assert c.session is not None
    kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with c.session.request(method, m.client_url + path, **kw) as r:
        return r.status, await r.json(content_type=None)


async def _stop(m: Member) -> None:
    if m.proc is not None and m.proc.poll() is None:
        m.proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, m.proc.wait, 20)


async def _kvctl(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvdisco.cli.kvctl", *args]
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    )


async def _assert_refused(c: LocalCluster, members: list[Member], victim: Member) -> None:
    """Every member refuses the removed name on /v1 and /v3, and kvctl says why."""
    for m in members:
        status, body = await _request(c, "POST", m, "/v1/members", {"name": victim.name, "peer_url": victim.peer_url})
        assert status == 412, body
        assert "member ID removed" in body["message"] and f"'{victim.name}'" in body["message"], body
        status, body = await _request(
            c, "POST", m, "/v3/cluster/member/add", {"name": victim.name, "peerURLs": [victim.peer_url]}
        )
        assert status == 412 and body["code"] == 9 and "member ID removed" in body["message"], body
    p = await _kvctl(
        f"--endpoints={members[0].client_url}", "member", "add", victim.name, "--peer-urls", victim.peer_url
    )
    assert p.returncode != 0
    assert "was removed from this cluster and can never be added again" in p.stderr, p.stderr
    for m in members:
        _, listed = await _request(c, "GET", m, "/v1/members")
        assert victim.name not in {x.get("name") for x in listed["members"]}


async def _status(c: LocalCluster, m: Member) -> dict[str, Any]:
    status, st = await _request(c, "GET", m, "/v1/raft/status")
    assert status == 200, st
    return dict(st)


async def test_a_removed_member_can_never_be_added_again_even_after_a_restart(tmp_path: Path) -> None:
    c = _cluster(tmp_path)
    async with c:
        lead = await c.leader()
        victim = next(m for m in c.members if m is not lead)
        survivors = [m for m in c.members if m is not victim]
        status, body = await _request(c, "DELETE", lead, f"/v1/members/{member_id(victim.name):x}")
        assert status == 200, body
        removed_at = (await _status(c, lead))["applied"]
        await _stop(victim)

        await _assert_refused(c, survivors, victim)

        # Write until every survivor has a snapshot past the removal: its conf change entry is compacted away.
        for i in range(WRITES_MAX):
            status, body = await _request(c, "PUT", lead, f"/v1/kv/after-removal/{i}", b"v")
            assert status == 200, body
            snaps = [(await _status(c, m))["snapshot_index"] for m in survivors]
            if min(snaps) > removed_at:
                break
        else:
            pytest.fail(f"no snapshot past index {removed_at} after {WRITES_MAX} writes; logs in {tmp_path}")

        for m in survivors:
            await _stop(m)
        for m in survivors:
            c.start(m)
        await c.leader()
        for m in survivors:
            st = await _status(c, m)
            assert st["snapshot_index"] > removed_at  # what it knows of the removal, it read from the snapshot
            assert f"{member_id(victim.name):x}" not in st["voters"] + st["learners"]
        await _assert_refused(c, survivors, victim)
