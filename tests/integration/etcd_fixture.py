"""Real servers for the client and kvctl tests: kvdisco, and a real etcd beside it.

The client speaks the etcd v3 JSON gateway, so every test runs against both servers: kvdisco
proves the product, etcd proves the client's reading of the protocol. ``KVCLIENT_SERVER=kvdisco``
(or ``etcd``) limits a run to one of them; the etcd runs skip when the ``etcd`` binary is
missing (CI installs it). Every process listens on free loopback ports with its data dir under
``tmp_path``.

etcd is started with short Raft timers (failover tests finish in seconds) and a 300 ms watch
progress-notify interval (so the client's dead-stream detection can be exercised quickly).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .cluster import free_port

__all__ = ["SERVERS", "Cluster", "ServerProc", "cluster3", "free_port", "running", "server1"]

#: The servers every client test runs against.
SERVERS = [os.environ["KVCLIENT_SERVER"]] if os.environ.get("KVCLIENT_SERVER") else ["kvdisco", "etcd"]


def _skip_missing(server: str) -> None:
    if server == "etcd" and shutil.which("etcd") is None:
        pytest.skip("etcd is not on PATH (apt-get install etcd-server)")


#: How long a fresh cluster may take to elect a leader and answer.
READY_TIMEOUT_S = 20.0


@dataclass
class ServerProc:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _post(url: str, path: str, body: dict[str, object], timeout_s: float = 1.0) -> dict[str, object]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


class Cluster:
    """``size`` members named m1..mN on loopback, started together."""

    def __init__(self, root: Path, size: int = 1, server: str = "kvdisco") -> None:
        self.root = root
        self.server = server
        self.members = [
            ServerProc(f"m{i}", free_port(), free_port(), root / f"m{i}.data", root / f"m{i}.log")
            for i in range(1, size + 1)
        ]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def _command(self, m: ServerProc) -> list[str]:
        common = [
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.url,
            "--listen-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
        ]  # fmt: skip
        if self.server == "kvdisco":
            return [
                sys.executable, "-m", "kvdisco.cli.server", "serve", *common,
                "--watch-progress-notify-interval", "0.3",
            ]  # fmt: skip
        return [
            "etcd",
            *common,
            "--advertise-client-urls", m.url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster-token", f"kvclient-test-{self.root.name}",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--experimental-watch-progress-notify-interval", "300ms",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            with open(m.log_path, "ab") as log:
                m.proc = subprocess.Popen(self._command(m), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every live member answers status and reports a leader."""
        deadline = time.monotonic() + timeout_s
        pending = [m for m in self.members if m.alive() and not m.paused]
        while pending and time.monotonic() < deadline:
            m = pending[0]
            with contextlib.suppress(OSError, ValueError):
                st = _post(m.url, "/v3/maintenance/status", {})
                if st.get("leader") not in (None, "0", 0):
                    pending.pop(0)
                    continue
            time.sleep(0.05)
        if pending:
            raise TimeoutError(f"{[m.name for m in pending]} not ready in {timeout_s} s:\n{self.logs()}")

    def member_id(self, m: ServerProc) -> int:
        return int(_post(m.url, "/v3/maintenance/status", {})["header"]["member_id"])  # type: ignore[index]

    def leader(self) -> ServerProc:
        """The live member that the others report as leader."""
        live = [m for m in self.members if m.alive() and not m.paused]
        ids = {self.member_id(m): m for m in live}
        for m in live:
            lead = int(_post(m.url, "/v3/maintenance/status", {}).get("leader") or 0)  # type: ignore[call-overload]
            if lead in ids:
                return ids[lead]
        raise LookupError("no leader found")

    def kill(self, m: ServerProc, sig: int = signal.SIGKILL) -> None:
        if m.proc is not None and m.alive():
            if m.paused:
                m.proc.send_signal(signal.SIGCONT)
                m.paused = False
            m.proc.send_signal(sig)
            m.proc.wait(timeout=10)

    def pause(self, m: ServerProc) -> None:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)
        m.paused = True

    def resume(self, m: ServerProc) -> None:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGCONT)
        m.paused = False

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.alive():
                if m.paused:
                    self.resume(m)
                m.proc.kill()  # test data only: no need for a graceful (and slow) shutdown
        for m in self.members:
            if m.proc is not None:
                m.proc.wait(timeout=10)

    def logs(self) -> str:
        parts = [f"==== {m.name}\n{m.log_path.read_text(errors='replace')[-3000:]}" for m in self.members]
        return "\n".join(parts)


@contextlib.contextmanager
def running(root: Path, size: int, server: str = "kvdisco") -> Iterator[Cluster]:
    _skip_missing(server)
    c = Cluster(root, size, server)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module", params=SERVERS)
def server1(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One member, shared by a module's tests (tests use their own key prefixes)."""
    with running(tmp_path_factory.mktemp(f"server1-{request.param}"), 1, request.param) as c:
        yield c


@pytest.fixture(params=SERVERS)
def cluster3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 3-member cluster per test: these tests kill and pause members."""
    with running(tmp_path / "cluster3", 3, request.param) as c:
        yield c
