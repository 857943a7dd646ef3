"""The history pipeline with peer partitions: members in network namespaces, clients still reach every member.

A member cut off from its peers (an old leader in the minority, above all) keeps receiving client requests
from the test process; it must give no stale linearizable read and acknowledge no write the majority does not
commit. The etcd run proves the namespaced cluster and the partition fault raise no false alarm; the kvdisco
run is the same pipeline against kvdisco. Both need root and `ip netns` (skipped otherwise).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .checker import Outcome
from .clusters import EtcdCluster
from .netns import NetnsCluster, NetnsEtcdCluster, NetnsKvdiscoCluster, NetnsNetwork, netns_unavailable_reason
from .workload import Report, WorkloadConfig, run_pipeline

#: Partitions first (aimed at the leader), then a random mix that still favours them.
PARTITION_CFG = WorkloadConfig(
    duration_s=15.0,
    seed=1,
    fault_weights=(("partition", 2.0), ("bridge", 1.0), ("kill9", 1.0), ("pause", 1.0)),
    first_faults=("partition", "bridge"),
)


@pytest.fixture
def netns() -> Iterator[list[Callable[[], None]]]:
    """Skip without root / `ip netns`; after the test, run the listed synchronous cleanups.

    `cluster.stop()` in the test's own finally is the normal path; this is the net under it for a test whose
    event loop was abandoned (a pytest timeout), so no namespace, link or member outlives the test.
    """
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cleanups: list[Callable[[], None]] = []
    try:
        yield cleanups
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def _leftovers(names: list[str]) -> list[str]:
    """Which of these namespace / link names still exist."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    have = {line.split()[0] for line in ns.splitlines() if line.strip()}
    have |= {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.strip()}
    return [n for n in names if n in have]


async def _run(cluster: NetnsCluster) -> Report:
    try:
        await cluster.start()
        names = [cluster.net.bridge] + [cluster.net.ns(i) for i in range(3)] + [cluster.net.veth(i) for i in range(3)]
        report = await run_pipeline(cluster, PARTITION_CFG)
    finally:
        await cluster.stop()
    assert not _leftovers(names), f"left behind: {_leftovers(names)}"
    print(report.summary())
    return report


def _assert_clean(report: Report, logs: str) -> None:
    assert not report.problems, report.summary() + "\n" + logs
    assert report.check is not None and report.check.outcome is Outcome.OK, report.summary()
    assert report.fault_counts.get("partition", 0) >= 1 and report.fault_counts.get("bridge", 0) >= 1
    assert len(report.faults) >= 3
    assert all(r.ops > 30 for r in report.check.keys.values())
    assert report.final_revision - report.start_revision > 100


async def test_partition_cuts_peer_links_but_not_clients(netns: list[Callable[[], None]]) -> None:
    """The mechanism: a cut refuses new connections between two members, the host reaches both, heal undoes it."""
    net = NetnsNetwork(2)
    netns.append(net.teardown_sync)
    await net.setup()
    names = [net.bridge, net.ns(0), net.ns(1), net.veth(0), net.veth(1)]
    server = [
        sys.executable,
        "-c",
        "import socket,sys,time; s=socket.create_server((sys.argv[1],2380)); time.sleep(30)",
    ]
    procs = [subprocess.Popen(["ip", "netns", "exec", net.ns(i), *server, net.addr(i)]) for i in range(2)]

    def kill_servers() -> None:
        for p in procs:
            p.kill()
            p.wait()

    netns.append(kill_servers)
    connect = "import socket,sys; socket.create_connection((sys.argv[1],2380),timeout=2); print('ok')"

    async def from_member(i: int, j: int) -> str:
        p = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", net.ns(i), sys.executable, "-c", connect, net.addr(j),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(p.communicate(), 10)
        return out.decode().strip() or err.decode().strip().splitlines()[-1]

    async def from_host(j: int) -> None:
        for _ in range(50):
            try:
                socket.create_connection((net.addr(j), 2380), timeout=2).close()
                return
            except ConnectionRefusedError:
                await asyncio.sleep(0.1)  # the server is not listening yet
        raise AssertionError(f"host cannot reach member {j}")

    try:
        for j in range(2):
            await from_host(j)
        assert await from_member(0, 1) == "ok"
        await net.cut(0, 1)
        assert "PermissionError" in await from_member(0, 1)
        assert "PermissionError" in await from_member(1, 0)
        for j in range(2):
            await from_host(j)
        await net.uncut_all()
        assert await from_member(1, 0) == "ok"
    finally:
        kill_servers()
        await net.teardown()
    assert not _leftovers(names)


@pytest.mark.skipif(not Path(EtcdCluster.binary).exists(), reason="etcd not installed")
@pytest.mark.timeout(90)
async def test_etcd_history_under_partitions_is_linearizable(netns: list[Callable[[], None]], tmp_path: Path) -> None:
    cluster = NetnsEtcdCluster(tmp_path, 3)
    netns.append(cluster.kill_all_sync)
    report = await _run(cluster)
    _assert_clean(report, cluster.logs())


@pytest.mark.timeout(90)
async def test_kvdisco_history_under_partitions_is_linearizable(
    netns: list[Callable[[], None]], tmp_path: Path
) -> None:
    cluster = NetnsKvdiscoCluster(tmp_path, 3)
    netns.append(cluster.kill_all_sync)
    report = await _run(cluster)
    _assert_clean(report, cluster.logs())
