"""The /v3 gateway on three real member processes: forwarding, leases across leader changes, watches, metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from .cluster import LocalCluster, Member, free_port


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def v3(cluster: LocalCluster, m: Member, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    assert cluster.session is not None
    async with cluster.session.post(m.client_url + path, json=body) as r:
        return r.status, await r.json(content_type=None)


async def wait_ready(cluster: LocalCluster, members: list[Member] | None = None) -> None:
    async with asyncio.timeout(30):
        for m in members or cluster.members:
            while True:
                try:
                    if (await cluster.get(m, "/readyz"))[0] == 200:
                        break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)


async def retry(cluster: LocalCluster, members: list[Member], path: str, body: dict[str, Any]) -> Any:
    """POST until some member answers 200 (leader elections take a moment)."""
    async with asyncio.timeout(30):
        while True:
            for m in members:
                try:
                    status, out = await v3(cluster, m, path, body)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    continue
                if status == 200:
                    return out
            await asyncio.sleep(0.2)


async def test_follower_forwards_writes_and_keepalives(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 3) as cluster:
        leader = await cluster.leader()
        await wait_ready(cluster)
        follower = next(m for m in cluster.members if m is not leader)
        status, body = await v3(cluster, follower, "/v3/kv/put", {"key": b64("a"), "value": b64("1")})
        assert status == 200, body
        status, body = await v3(cluster, follower, "/v3/lease/grant", {"TTL": 30, "ID": 77})
        assert (status, body["ID"], body["TTL"]) == (200, "77", "30"), body
        status, body = await v3(cluster, follower, "/v3/lease/keepalive", {"ID": 77})
        assert (status, body["result"]["TTL"]) == (200, "30"), body
        status, body = await v3(cluster, follower, "/v3/lease/timetolive", {"ID": 77})
        assert status == 200 and 28 <= int(body["TTL"]) <= 30, body
        # A linearizable read on the other follower sees the forwarded write.
        other = next(m for m in cluster.members if m not in (leader, follower))
        status, body = await v3(cluster, other, "/v3/kv/range", {"key": b64("a")})
        assert (status, body["kvs"][0]["value"]) == (200, b64("1"))
        # Every member reports the same member list with client URLs.
        status, body = await v3(cluster, other, "/v3/cluster/member/list", {})
        assert sorted(m["name"] for m in body["members"]) == ["n1", "n2", "n3"]
        assert all(m["clientURLs"] for m in body["members"]), body


async def test_expired_lease_deletes_its_keys_and_watchers_see_it(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 3) as cluster:
        await cluster.leader()
        await wait_ready(cluster)
        m = cluster.members[0]
        status, grant = await v3(cluster, m, "/v3/lease/grant", {"TTL": 2})
        assert status == 200, grant
        lease = grant["ID"]
        status, body = await v3(cluster, m, "/v3/kv/put", {"key": b64("eph"), "value": b64("x"), "lease": lease})
        assert status == 200, body
        put_rev = int(body["header"]["revision"])
        assert cluster.session is not None
        watch = {"create_request": {"key": b64("eph"), "start_revision": put_rev}}
        async with cluster.session.post(cluster.members[1].client_url + "/v3/watch", json=watch) as r:
            lines = r.content
            created = json.loads(await lines.readline())
            assert created["result"]["created"] is True
            put = json.loads(await lines.readline())
            assert put["result"]["events"][0]["kv"]["lease"] == lease
            async with asyncio.timeout(15):
                deleted = json.loads(await lines.readline())
        assert deleted["result"]["events"][0]["type"] == "DELETE", deleted
        status, body = await v3(cluster, m, "/v3/kv/range", {"key": b64("eph")})
        assert status == 200 and "kvs" not in body
        status, body = await v3(cluster, m, "/v3/lease/timetolive", {"ID": lease})
        assert body["TTL"] == "-1", body


async def test_remaining_lease_ttl_survives_a_leader_kill(tmp_path: Path) -> None:
    """The new leader resumes from the checkpointed remaining TTL instead of granting the full TTL again."""
    async with LocalCluster(tmp_path, 3) as cluster:
        for m in cluster.members:
            m.extra_args = ["--lease-checkpoint-interval", "0.5"]
        for m in cluster.members:
            cluster.kill(m, signal.SIGKILL)
            cluster.start(m)
        leader = await cluster.leader()
        await wait_ready(cluster)
        status, grant = await v3(cluster, leader, "/v3/lease/grant", {"TTL": 60, "ID": 5})
        assert status == 200, grant
        await asyncio.sleep(6)  # several checkpoints; about 54 s left
        cluster.kill(leader, signal.SIGKILL)
        survivors = [m for m in cluster.members if m is not leader]
        body = await retry(cluster, survivors, "/v3/lease/timetolive", {"ID": 5})
        # Without checkpoints the new leader would answer 60 + the election extension.
        assert int(body["TTL"]) <= 57, body
        assert body["grantedTTL"] == "60"


async def test_watch_on_a_follower_continues_across_a_leader_kill(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 3) as cluster:
        leader = await cluster.leader()
        await wait_ready(cluster)
        watcher_member = next(m for m in cluster.members if m is not leader)
        assert cluster.session is not None
        body = {"create_request": {"key": b64("seq/"), "range_end": b64("seq0")}}
        got: list[str] = []
        async with cluster.session.post(watcher_member.client_url + "/v3/watch", json=body) as r:
            assert json.loads(await r.content.readline())["result"]["created"]
            for i in range(10):
                await retry(cluster, [watcher_member], "/v3/kv/put", {"key": b64(f"seq/{i:03d}"), "value": b64("v")})
                if i == 4:
                    cluster.kill(leader, signal.SIGKILL)
            async with asyncio.timeout(20):
                while len(got) < 10:
                    msg = json.loads(await r.content.readline())
                    got += [base64.b64decode(ev["kv"]["key"]).decode() for ev in msg["result"].get("events", [])]
        assert got == [f"seq/{i:03d}" for i in range(10)]


async def test_metrics_are_served(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path, 1) as cluster:
        m = await cluster.leader()
        await wait_ready(cluster)
        await v3(cluster, m, "/v3/kv/put", {"key": b64("k"), "value": b64("v")})
        assert cluster.session is not None
        async with cluster.session.get(m.client_url + "/metrics") as r:
            text = await r.text()
        for name in (
            "kvdisco_raft_term",
            "kvdisco_raft_commit_index",
            "kvdisco_raft_applied_index",
            "kvdisco_raft_proposals_committed_total",
            "kvdisco_wal_fsync_seconds_total",
            "kvdisco_watchers",
            'kvdisco_http_request_duration_seconds_count{route="/v3/kv/put"} 1.0',
        ):
            assert name in text, name


def test_settings_from_config_file_and_environment(tmp_path: Path) -> None:
    """Flags beat KVDISCO_* variables, which beat the TOML file."""
    client, peer = free_port(), free_port()
    config = tmp_path / "kvdisco.toml"
    config.write_text(
        f'name = "from-file"\ndata-dir = "{tmp_path / "d"}"\n'
        f'listen-client-urls = "http://127.0.0.1:{client}"\nlisten_peer_urls = "http://127.0.0.1:{peer}"\n'
        "snapshot-count = 500\n"
    )
    env = {**os.environ, "KVDISCO_NAME": "from-env", "KVDISCO_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvdisco.cli.server", "serve", "--log-level", "debug"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def member_name() -> str:
            async with aiohttp.ClientSession() as s, asyncio.timeout(20):
                while True:
                    try:
                        async with s.post(f"http://127.0.0.1:{client}/v3/cluster/member/list", json={}) as r:
                            return str((await r.json())["members"][0]["name"])
                    except (aiohttp.ClientError, OSError):
                        await asyncio.sleep(0.1)

        assert asyncio.run(member_name()) == "from-env"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert (tmp_path / "d" / "wal").is_dir()

    bad = tmp_path / "bad.toml"
    bad.write_text('nmae = "typo"\n')
    out = subprocess.run(
        [sys.executable, "-m", "kvdisco.cli.server", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "unknown setting 'nmae'" in out.stderr


async def test_a_new_member_joins_catches_up_and_is_promoted(tmp_path: Path) -> None:
    """etcd's procedure: member add (a learner), start it with --initial-cluster-state existing and the
    cluster list that includes it, promote it once it has caught up. It learns the cluster id from the
    members that contact it, and keeps it across a restart."""
    async with LocalCluster(tmp_path, 3) as cluster:
        leader = await cluster.leader()
        await wait_ready(cluster)
        for i in range(50):
            await v3(cluster, leader, "/v3/kv/put", {"key": b64(f"pre/{i:02d}"), "value": b64("v")})
        new = Member("n4", free_port(), free_port(), tmp_path / "n4", tmp_path / "n4.log")
        add = {"name": "n4", "peerURLs": [new.peer_url], "isLearner": True}
        status, body = await v3(cluster, cluster.members[1], "/v3/cluster/member/add", add)
        assert status == 200, body
        new_id = body["member"]["ID"]
        full = f"{cluster.initial_cluster},n4={new.peer_url}"
        new.extra_args = ["--initial-cluster", full, "--initial-cluster-state", "existing"]
        cluster.members.append(new)
        cluster.start(new)
        body = await retry(cluster, [new], "/v3/kv/range", {"key": b64("pre/49"), "serializable": True})
        while "kvs" not in body:  # serving, but not caught up yet
            await asyncio.sleep(0.2)
            body = await retry(cluster, [new], "/v3/kv/range", {"key": b64("pre/49"), "serializable": True})
        body = await retry(cluster, cluster.members[:3], "/v3/cluster/member/promote", {"ID": new_id})
        assert not any(m.get("isLearner") for m in body["members"]), body
        # A write through the new member, a restart of it, and it still belongs to the same cluster.
        await retry(cluster, [new], "/v3/kv/put", {"key": b64("post"), "value": b64("x")})
        cluster.kill(new, signal.SIGKILL)
        cluster.start(new)
        body = await retry(cluster, [new], "/v3/kv/range", {"key": b64("post")})
        assert body["kvs"][0]["value"] == b64("x")
        assert int((tmp_path / "n4" / "cluster_id").read_text(), 16) == int(body["header"]["cluster_id"])
        status, members = await v3(cluster, cluster.members[0], "/v3/cluster/member/list", {})
        assert sorted(m["name"] for m in members["members"]) == ["n1", "n2", "n3", "n4"]
