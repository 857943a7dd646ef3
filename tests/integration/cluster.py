"""Real `kvdisco serve` processes on loopback, for tests that kill, pause and restart them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["LocalCluster", "Member", "free_port"]


def _ports_below_ephemeral() -> range:
    """Ports the kernel never picks as the local port of an outgoing connection on this machine."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return range(max(1024, first - 12_000), first)


_PORTS = _ports_below_ephemeral()
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, for a server this test starts a moment later.

    Chosen below the kernel's ephemeral range: a port the kernel hands out itself (bind to 0) could be taken
    as the source port of some outgoing connection before the server binds it ("address already in use").
    Never the same port twice in one test process.
    """
    rng = random.Random()
    for _ in range(10_000):
        port = rng.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_PORTS}")


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_args: list[str] = field(default_factory=list)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """N members named n1..nN, each a separate OS process with its own data dir."""

    def __init__(self, root: Path, size: int = 3, *, snapshot_count: int | None = None) -> None:
        self.root = root
        self.members = [
            Member(f"n{i}", free_port(), free_port(), root / f"n{i}", root / f"n{i}.log") for i in range(1, size + 1)
        ]
        self.snapshot_count = snapshot_count
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalCluster:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        for m in self.members:
            self.start(m)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for m in self.members:
            self.kill(m, signal.SIGTERM)
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
        if self.session is not None:
            await self.session.close()

    def start(self, m: Member) -> None:
        if m.alive():
            return
        cmd = [
            sys.executable,
            "-m",
            "kvdisco.cli.server",
            "serve",
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            *m.extra_args,
        ]
        if self.snapshot_count is not None:
            cmd += ["--snapshot-count", str(self.snapshot_count)]
        log = open(m.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"--- start {m.starts} ---\n".encode())
        log.flush()
        m.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        m.starts += 1

    def kill(self, m: Member, sig: int = signal.SIGKILL) -> None:
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                m.proc.wait()

    async def get(self, m: Member, path: str) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(m.client_url + path) as r:
            return r.status, await r.json(content_type=None)

    async def put(self, m: Member, path: str, body: bytes) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.put(m.client_url + path, data=body) as r:
            return r.status, await r.json(content_type=None)

    async def leader(self, timeout_s: float = 20.0) -> Member:
        """The member that reports itself leader (waits for one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for m in self.members:
                if not m.alive():
                    continue
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    status, st = await self.get(m, "/v1/raft/status")
                    if status == 200 and st["role"] == "leader":
                        return m
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no leader within {timeout_s} s; logs in {self.root}")

    async def statuses(self) -> dict[str, Any]:
        out = {}
        for m in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                out[m.name] = (await self.get(m, "/v1/raft/status"))[1]
        return out

    def logs(self) -> str:
        return "\n".join(f"==== {m.name}\n{m.log_path.read_text(errors='replace')[-4000:]}" for m in self.members)
