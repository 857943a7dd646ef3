"""Members in their own network namespaces, so peer links can be cut while clients still reach every member.

Why: kill -9 and SIGSTOP silence a member towards everyone. The interesting
partition is the one where a member is cut off from its PEERS but its
CLIENTS still reach it: an old leader in the minority still receives reads
and writes, and must answer neither a stale linearizable read nor an
acknowledged write that the majority never commits.

Layout (X is a per-run subnet number, locked by creating the bridge ``kvlinX``):

- root namespace: bridge ``kvlinX`` with 10.199.X.1/24 (the test process's address, and the only route
  added to the root namespace: the bridge's connected /24, which goes away with the bridge);
- member i: namespace ``kvlinX-<pid>-mi``, a veth pair ``kvlXmi`` (root side, enslaved to the bridge) /
  ``eth0`` (in the namespace) with 10.199.X.(i+2)/24, lo up, no default route; the member listens on
  10.199.X.(i+2):2379 (client) and :2380 (peer).

A cut between members a and b is a pair of ``prohibit`` routes (a's namespace: prohibit b/32, b's namespace:
prohibit a/32), so neither can send to the other (sends fail with EACCES, established connections stall and
reconnects fail at once), while both still reach and answer 10.199.X.1. Only iproute2 is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import shutil
import subprocess
from pathlib import Path

from .clusters import EtcdCluster, KvdiscoCluster, ProcessCluster

__all__ = [
    "NetnsCluster",
    "NetnsEtcdCluster",
    "NetnsError",
    "NetnsKvdiscoCluster",
    "NetnsNetwork",
    "netns_unavailable_reason",
]

#: Subnets 10.199.X.0/24 with X in 1..254; the bridge name ``kvlinX`` is the cross-process lock on X.
SUBNET_PREFIX = "10.199"
BRIDGE_PREFIX = "kvlin"
CLIENT_PORT = 2379
PEER_PORT = 2380
#: Any single `ip` invocation that takes longer than this is treated as a failure.
IP_TIMEOUT_S = 10.0

_run_counter = itertools.count()


class NetnsError(RuntimeError):
    """An `ip` command failed (the message carries its argv, exit status and stderr)."""


def _ip_sync(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


async def _ip(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), IP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NetnsError(f"ip {' '.join(args)}: no answer in {IP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: exit {proc.returncode}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why namespaced clusters cannot run here (not root, no iproute2, netns not permitted), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not installed"
    probe = f"kvlinprobe-{os.getpid()}"
    try:
        _ip_sync("netns", "add", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns add` not permitted here: {e}"
    try:
        _ip_sync("netns", "del", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns del` failed: {e}"
    return None


class NetnsNetwork:
    """A bridge in the root namespace plus one namespace per member; `cut`/`uncut` peer links between members."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.subnet: int | None = None
        self.created_ns: list[str] = []
        self.created_veths: list[str] = []
        #: Member pairs (low, high) whose link is currently cut.
        self.cuts: set[tuple[int, int]] = set()

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.subnet}"

    @property
    def host_addr(self) -> str:
        """The test process's address on the bridge (root namespace)."""
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def addr(self, i: int) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.{i + 2}"

    def ns(self, i: int) -> str:
        return f"{BRIDGE_PREFIX}{self.subnet}-{os.getpid()}-m{i}"

    def veth(self, i: int) -> str:
        return f"kvl{self.subnet}m{i}"

    async def _claim_subnet(self) -> None:
        """Create bridge kvlinX for the first free X (creation is atomic, so it locks X against other runs)."""
        start = (os.getpid() * 31 + next(_run_counter)) % 254
        for k in range(254):
            x = (start + k) % 254 + 1
            try:
                await _ip("link", "add", f"{BRIDGE_PREFIX}{x}", "type", "bridge")
            except NetnsError as e:
                if "exists" in str(e):
                    continue
                raise
            self.subnet = x
            # Something other than a run of ours may use the subnet (an address in it, or a route to it other
            # than the default one): then give X back and go on.
            addrs = await _ip("-4", "-o", "addr", "show", "to", f"{SUBNET_PREFIX}.{x}.0/24")
            routes = await _ip("-4", "-o", "route", "show", "to", "match", f"{SUBNET_PREFIX}.{x}.1")
            if addrs.strip() or any(not line.startswith("default") for line in routes.splitlines() if line.strip()):
                await _ip("link", "del", self.bridge)
                self.subnet = None
                continue
            return
        raise NetnsError(f"no free {SUBNET_PREFIX}.X.0/24 subnet (bridges {BRIDGE_PREFIX}1..254 all exist)")

    async def setup(self) -> None:
        try:
            await self._claim_subnet()
            await _ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
            await _ip("link", "set", self.bridge, "up")
            for i in range(self.size):
                ns = self.ns(i)
                await _ip("netns", "add", ns)
                self.created_ns.append(ns)
                await _ip("link", "add", self.veth(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
                self.created_veths.append(self.veth(i))
                await _ip("link", "set", self.veth(i), "master", self.bridge, "up")
                await _ip("-n", ns, "link", "set", "lo", "up")
                await _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                await _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            await self.teardown()
            raise

    async def teardown(self) -> None:
        """Delete veths, namespaces and the bridge (and so its /24 route); raise after trying everything."""
        errors: list[str] = []
        for veth in self.created_veths:
            try:
                await _ip("link", "del", veth)
            except NetnsError as e:
                errors.append(str(e))
        for ns in self.created_ns:
            try:
                await _ip("netns", "del", ns)
            except NetnsError as e:
                errors.append(str(e))
        if self.subnet is not None:
            try:
                await _ip("link", "del", self.bridge)
            except NetnsError as e:
                errors.append(str(e))
        self.created_veths.clear()
        self.created_ns.clear()
        self.cuts.clear()
        self.subnet = None
        if errors:
            raise NetnsError("teardown: " + "; ".join(errors))

    def teardown_sync(self) -> None:
        """`teardown` without an event loop: the safety net for a test whose loop was torn away (a timeout)."""
        for args in (
            *(("link", "del", v) for v in self.created_veths),
            *(("netns", "del", ns) for ns in self.created_ns),
            *((("link", "del", self.bridge),) if self.subnet is not None else ()),
        ):
            with contextlib.suppress(NetnsError, OSError, subprocess.TimeoutExpired):
                _ip_sync(*args)
        self.created_veths.clear()
        self.created_ns.clear()
        self.cuts.clear()
        self.subnet = None

    async def cut(self, a: int, b: int) -> None:
        """Stop all traffic between members a and b (both directions); no-op if already cut."""
        pair = (min(a, b), max(a, b))
        if a == b or pair in self.cuts:
            return
        self.cuts.add(pair)
        await _ip("-n", self.ns(a), "route", "add", "prohibit", f"{self.addr(b)}/32")
        await _ip("-n", self.ns(b), "route", "add", "prohibit", f"{self.addr(a)}/32")

    async def uncut(self, a: int, b: int) -> None:
        pair = (min(a, b), max(a, b))
        if pair not in self.cuts:
            return
        errors: list[str] = []
        for src, dst in ((a, b), (b, a)):
            try:
                await _ip("-n", self.ns(src), "route", "del", "prohibit", f"{self.addr(dst)}/32")
            except NetnsError as e:
                if "No such process" not in str(e):  # the route was never added (a failed cut)
                    errors.append(str(e))
        self.cuts.discard(pair)
        if errors:
            raise NetnsError("; ".join(errors))

    async def uncut_all(self) -> None:
        for a, b in sorted(self.cuts):
            await self.uncut(a, b)


class NetnsCluster(ProcessCluster):
    """Mixin: a `ProcessCluster` whose members run in their own namespaces (``ip netns exec``).

    Use it before the concrete cluster in the bases (``class X(NetnsCluster, EtcdCluster)``); member i
    listens on 10.199.X.(i+2):2379/2380 and `endpoints` are those client URLs. Adds peer partitions:
    `partition(i)` cuts i from every other member, `cut(a, b)` one link (a "bridge": a third member still
    talks to both), `heal_partition(i)` / `uncut(a, b)` / `heal_partitions()` undo them.
    """

    def __init__(self, root: Path, size: int = 3) -> None:
        super().__init__(root, size)
        self.net = NetnsNetwork(size)

    def argv(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.net.ns(i), *super().argv(i)]

    async def start(self) -> None:
        await self.net.setup()
        for i, m in enumerate(self.members):
            m.host, m.client_port, m.peer_port = self.net.addr(i), CLIENT_PORT, PEER_PORT
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await self.net.teardown()

    def kill_all_sync(self) -> None:
        """SIGKILL every member and remove the network, without an event loop (a test's last-resort cleanup)."""
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        self.net.teardown_sync()

    async def heal(self) -> None:
        await self.heal_partitions()
        await super().heal()

    async def partition(self, i: int) -> None:
        for j in range(len(self.members)):
            await self.net.cut(i, j)

    async def heal_partition(self, i: int) -> None:
        for j in range(len(self.members)):
            await self.net.uncut(i, j)

    async def cut(self, a: int, b: int) -> None:
        await self.net.cut(a, b)

    async def uncut(self, a: int, b: int) -> None:
        await self.net.uncut(a, b)

    async def heal_partitions(self) -> None:
        await self.net.uncut_all()


class NetnsEtcdCluster(NetnsCluster, EtcdCluster):
    """etcd members, one network namespace each."""


class NetnsKvdiscoCluster(NetnsCluster, KvdiscoCluster):
    """kvdisco members, one network namespace each."""
