"""Raft commit throughput and latency: 3 node processes on loopback, fsync on.

Each node is a separate OS process running kvdisco.raft.Node with a trivial
state machine. The leader process runs N concurrent proposers of 64-byte
commands for a fixed time; it reports committed proposals/s and the
p50/p99 of propose()-to-applied latency. Usage:

    .venv/bin/python bench/raft_bench.py [--seconds 5] [--concurrency 1,64] [--nodes 3]

A proposal counts as committed when the leader has applied it, which needs
a quorum fsync (the leader's own included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvdisco.raft.node import SnapshotSource

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the node process ------------------------------------------------------------------------------------------------


class CountingMachine:
    def __init__(self) -> None:
        self.count = 0

    def apply(self, index: int, command: bytes) -> int:
        self.count += 1
        return self.count

    def snapshot(self) -> bytes:
        return str(self.count).encode()

    def restore(self, data: SnapshotSource) -> None:
        self.count = int(data.read(data.remaining()))

    def publish(self) -> None:
        pass


async def node_main(args: argparse.Namespace) -> None:
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    from aiohttp import web

    from kvdisco.raft.node import Node, NodeConfig

    cluster = dict(part.split("=", 1) for part in args.cluster.split(","))
    cfg = NodeConfig(
        name=args.name,
        data_dir=Path(args.data_dir),
        peer_url=cluster[args.name],
        initial_cluster=cluster,
        snapshot_entries=200_000,
        inline_fsync=not args.no_inline_fsync,
    )
    node = Node(cfg, CountingMachine())
    await node.start()

    async def status(_req: web.Request) -> web.Response:
        return web.json_response({"leader": node.is_leader, "leader_id": node.leader_id, "applied": node.applied_index})

    async def load(req: web.Request) -> web.Response:
        n = int(req.query["n"])
        seconds = float(req.query["seconds"])
        payload = os.urandom(64)
        lat: list[float] = []
        errors = 0
        fsyncs0, fsync_s0 = node.metrics["fsyncs"], node.metrics["fsync_seconds_total"]
        deadline = time.perf_counter() + seconds

        async def proposer() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await node.propose(payload)
                except Exception:
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                lat.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(proposer() for _ in range(n)))
        elapsed = time.perf_counter() - t_start
        lat.sort()

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        return web.json_response(
            {
                "concurrency": n,
                "committed": len(lat),
                "errors": errors,
                "seconds": elapsed,
                "per_second": len(lat) / elapsed,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "fsyncs": node.metrics["fsyncs"] - fsyncs0,
                "fsync_ms": 1000
                * (node.metrics["fsync_seconds_total"] - fsync_s0)
                / max(1, node.metrics["fsyncs"] - fsyncs0),
            }
        )

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/load", load)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.control_port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await node.stop()


# -- the orchestrator ------------------------------------------------------------------------------------------------


async def _get(port: int, path: str, method: str = "GET", timeout: float = 120) -> Any:
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.request(method, f"http://127.0.0.1:{port}{path}") as r,
    ):
        return await r.json()


async def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="kvdisco-raft-bench-", dir=args.dir))
    names = [f"n{i}" for i in range(1, args.nodes + 1)]
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    control = {n: free_port() for n in names}
    cluster = ",".join(f"{n}={u}" for n, u in peers.items())
    procs = []
    try:
        for n in names:
            cmd = [sys.executable, __file__, "--node", n, "--cluster", cluster, "--data-dir", str(workdir / n)]
            cmd += ["--control-port", str(control[n]), "--switch-interval", str(args.switch_interval)]
            if args.no_inline_fsync:
                cmd.append("--no-inline-fsync")
            with open(workdir / f"{n}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log))
        leader = None
        for _ in range(300):
            await asyncio.sleep(0.1)
            for n in names:
                try:
                    if (await _get(control[n], "/status", timeout=2))["leader"]:
                        leader = n
                except Exception:
                    pass
            if leader:
                break
        if leader is None:
            raise SystemExit("no leader elected within 30 s; see logs in " + str(workdir))
        results = []
        for c in args.concurrency:
            await _get(control[leader], f"/load?n={c}&seconds=1", "POST")  # warm-up
            r = await _get(control[leader], f"/load?n={c}&seconds={args.seconds}", "POST")
            results.append(r)
        return results
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,64", help="comma-separated proposer counts")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the nodes' data dirs go (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    ap.add_argument("--switch-interval", type=float, default=0.0, help="sys.setswitchinterval in nodes (0: default)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument(
        "--no-inline-fsync", action="store_true", help="always fsync on the I/O thread (NodeConfig.inline_fsync off)"
    )
    # node-process mode (internal)
    ap.add_argument("--node", dest="name", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cluster", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--control-port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.name:
        import uvloop

        uvloop.run(node_main(args))
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    results = asyncio.run(run_bench(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"raft_bench: {args.nodes} processes on loopback, fsync on, 64-byte commands, {args.seconds:g} s per run")
    print(f"{'proposers':>9} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'fsyncs':>8} {'fsync ms':>8} {'errors':>6}")
    for r in results:
        print(
            f"{r['concurrency']:>9} {r['per_second']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['fsyncs']:>8.0f} {r['fsync_ms']:>8.2f} {r['errors']:>6}"
        )


if __name__ == "__main__":
    main()
