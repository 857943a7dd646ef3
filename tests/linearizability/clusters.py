"""Clusters under test for the fault-injection history test, behind one small interface.

The recorder and the fault driver only need client endpoints and five faults
(kill -9, restart, pause, resume, stop), so any etcd-v3-gateway speaking
database can be put under the same workload. `ProcessCluster` does the
process handling (spawn, SIGKILL, SIGSTOP/SIGCONT, readiness over the v3
gateway); a concrete cluster only says how to build one member's command line.
`EtcdCluster` proves the recorder and the checker against a real, correct
database; a kvdisco cluster is the same thing with a different `command()`.
A cluster that can also cut peer links (see netns.py, one network namespace
per member) is `Partitionable`, and the fault driver then partitions too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp

from ..integration.cluster import free_port

__all__ = ["Cluster", "EtcdCluster", "KvdiscoCluster", "MemberSpec", "Partitionable", "ProcessCluster"]

#: How long `start()`/`restart()` wait for members to answer a linearizable read.
READY_TIMEOUT_S = 30.0
#: How long a SIGTERM'd member gets before SIGKILL on `stop()`.
STOP_GRACE_S = 5.0


class Cluster(Protocol):
    """What the workload and the fault driver need from a cluster of `size` members."""

    @property
    def endpoints(self) -> list[str]:
        """Client base URLs (``http://127.0.0.1:port``, or the member's namespace address), index = member number."""
        ...

    async def start(self) -> None:
        """Start every member and wait until the cluster serves linearizable reads."""
        ...

    async def kill9(self, i: int) -> None:
        """SIGKILL member i (no flush, no goodbye)."""
        ...

    async def restart(self, i: int) -> None:
        """Start member i again on its existing data dir (does not wait for it to catch up)."""
        ...

    async def pause(self, i: int) -> None:
        """SIGSTOP member i: its sockets stay open but nothing answers."""
        ...

    async def resume(self, i: int) -> None:
        """SIGCONT member i."""
        ...

    async def stop(self) -> None:
        """Stop every member (resuming paused ones first) and reap the processes."""
        ...

    def logs(self) -> str:
        """Tail of every member's log, for failure messages."""
        ...


@runtime_checkable
class Partitionable(Protocol):
    """A cluster that can cut PEER links between members while clients still reach every member."""

    async def partition(self, i: int) -> None:
        """Cut member i off from every other member."""
        ...

    async def heal_partition(self, i: int) -> None:
        """Restore member i's links to every other member."""
        ...

    async def cut(self, a: int, b: int) -> None:
        """Cut the link between members a and b only."""
        ...

    async def uncut(self, a: int, b: int) -> None:
        """Restore the link between members a and b."""
        ...

    async def heal_partitions(self) -> None:
        """Restore every cut link."""
        ...


@dataclass
class MemberSpec:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    #: Address the member listens on (client and peer); a namespaced member has its own.
    host: str = "127.0.0.1"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


class ProcessCluster(ABC):
    """N local processes on loopback, one data dir each; subclasses provide the command line."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.members = [
            MemberSpec(f"m{i}", free_port(), free_port(), root / f"m{i}.data", root / f"m{i}.log") for i in range(size)
        ]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.paused: list[bool] = [False] * size

    @abstractmethod
    def command(self, m: MemberSpec) -> list[str]:
        """argv that starts member m (fresh or on its existing data dir)."""

    def argv(self, i: int) -> list[str]:
        """The full argv that starts member i (a wrapper such as ``ip netns exec`` goes here)."""
        return self.command(self.members[i])

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        with open(m.log_path, "ab") as log:
            log.write(b"--- start ---\n")
            log.flush()
            self.procs[i] = subprocess.Popen(self.argv(i), stdout=log, stderr=log, env=dict(os.environ))
        self.paused[i] = False

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    async def start(self) -> None:
        for i in range(len(self.members)):
            self._spawn(i)
        await self.wait_ready(range(len(self.members)))

    async def wait_ready(self, which: range | list[int], timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until each listed member answers a linearizable read (so a leader exists and it is caught up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            for i in which:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with s.post(self.endpoints[i] + "/v3/kv/range", json={"key": "AA=="}) as r:
                            if r.status == 200:
                                break
                    if loop.time() > deadline:
                        raise TimeoutError(f"member {i} not ready in {timeout_s} s\n{self.logs()}")
                    if not self.alive(i):
                        raise RuntimeError(f"member {i} exited\n{self.logs()}")
                    await asyncio.sleep(0.1)

    async def kill9(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            await asyncio.to_thread(p.wait)
        self.paused[i] = False

    async def restart(self, i: int) -> None:
        if self.alive(i):
            raise RuntimeError(f"member {i} is still running")
        self._spawn(i)

    async def pause(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGSTOP)
            self.paused[i] = True

    async def resume(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGCONT)
        self.paused[i] = False

    async def heal(self) -> None:
        """Resume paused members, restart dead ones, and wait until all serve reads."""
        for i in range(len(self.members)):
            if self.paused[i]:
                await self.resume(i)
            if not self.alive(i):
                self._spawn(i)
        await self.wait_ready(range(len(self.members)))

    async def stop(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
            self.paused[i] = False
        for p in self.procs:
            if p is None:
                continue
            try:
                await asyncio.to_thread(p.wait, STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait)

    def logs(self) -> str:
        out = []
        for m in self.members:
            text = m.log_path.read_text(errors="replace") if m.log_path.exists() else ""
            out.append(f"==== {m.name}\n{text[-3000:]}")
        return "\n".join(out)


class EtcdCluster(ProcessCluster):
    """A real etcd 3.4 cluster (``/usr/bin/etcd``), the reference the pipeline must pass against."""

    binary = shutil.which("etcd") or "/usr/bin/etcd"

    def command(self, m: MemberSpec) -> list[str]:
        return [
            self.binary,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"lin-{self.root.name}",
            # Short timeouts: elections after a kill or pause finish well inside the test's time budget.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip


class KvdiscoCluster(ProcessCluster):
    """`kvdisco serve` members with the same etcd-style flags."""

    def command(self, m: MemberSpec) -> list[str]:
        return [
            sys.executable, "-m", "kvdisco.cli.server", "serve",
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--log-level", "warning",
        ]  # fmt: skip
