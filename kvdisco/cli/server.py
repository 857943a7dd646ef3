"""``kvdisco serve``: one node, with flags named as etcd names them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from kvdisco.raft import RaftError
from kvdisco.raft.node import Node, NodeConfig
from kvdisco.register.http import make_app
from kvdisco.register.machine import RegisterMachine

__all__ = ["main"]

log = logging.getLogger("kvdisco.server")

#: How long in-flight HTTP requests get to finish on SIGTERM before the node stops.
SHUTDOWN_GRACE_S = 5.0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parse_cluster(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, url = part.strip().partition("=")
        if not sep or not name or not url:
            raise argparse.ArgumentTypeError(f"--initial-cluster: expected name=URL, got {part!r}")
        if name in out:
            raise argparse.ArgumentTypeError(f"--initial-cluster: member {name!r} listed twice")
        out[name] = url
    return out


def _host_port(url: str, what: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname or parts.port is None:
        raise SystemExit(f"{what}: expected a URL with host and port, got {url!r}")
    return parts.hostname, parts.port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvdisco", description="kvdisco server and admin commands")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a node", description="Run one kvdisco node.")
    s.add_argument("--name", default="default", help="member name, unique in the cluster (default: default)")
    s.add_argument("--data-dir", default="./kvdisco-data", help="WAL and snapshots (default: ./kvdisco-data)")
    s.add_argument("--listen-client-urls", default="http://127.0.0.1:2379", help="client API address")
    s.add_argument("--advertise-client-urls", default=None, help="client URL told to other members (default: listen)")
    s.add_argument("--listen-peer-urls", default="http://127.0.0.1:2380", help="Raft peer address")
    s.add_argument("--initial-advertise-peer-urls", default=None, help="peer URL told to others (default: listen)")
    s.add_argument(
        "--initial-cluster",
        default=None,
        help="name=peerURL,... of the members of a new cluster (default: this member alone)",
    )
    s.add_argument("--initial-cluster-state", choices=("new", "existing"), default="new")
    s.add_argument("--snapshot-count", type=int, default=20_000, help="applied entries between snapshots")
    s.add_argument("--log-format", choices=("text", "json"), default="text")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


async def serve(args: argparse.Namespace) -> int:
    peer_url = args.initial_advertise_peer_urls or args.listen_peer_urls.split(",")[0]
    client_listen = args.listen_client_urls.split(",")[0]
    client_urls = tuple((args.advertise_client_urls or client_listen).split(","))
    initial = _parse_cluster(args.initial_cluster) if args.initial_cluster else {args.name: peer_url}
    if args.initial_cluster_state == "new" and args.name not in initial:
        raise SystemExit(f"--initial-cluster does not list this member ({args.name!r})")
    cfg = NodeConfig(
        name=args.name,
        data_dir=Path(args.data_dir),
        peer_url=peer_url,
        initial_cluster=initial,
        client_urls=client_urls,
        join=args.initial_cluster_state == "existing",
        snapshot_entries=args.snapshot_count,
    )
    register = RegisterMachine()
    node = Node(cfg, register)
    try:
        await node.start()
    except (RaftError, OSError) as exc:
        # E.g. CorruptLogError names the WAL file and offset: say so plainly and refuse to run.
        log.error("cannot start member %s: %s", cfg.name, exc)
        return 2
    runner = web.AppRunner(make_app(node, register), shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None)
    await runner.setup()
    host, port = _host_port(client_listen, "--listen-client-urls")
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("member %s (%x) serving clients on %s, peers on %s", cfg.name, cfg.node_id, client_listen, peer_url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed = asyncio.ensure_future(node.wait_stopped())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    failed.cancel()
    log.info("shutting down: finishing in-flight requests")
    await runner.cleanup()
    await node.stop()
    if node.failure is not None:
        log.error("stopped after a failure: %s", node.failure)
        return 1
    log.info("stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_format, args.log_level)
    if args.command == "serve":
        try:
            import uvloop
        except ImportError:  # not on Linux
            return asyncio.run(serve(args))
        with contextlib.suppress(KeyboardInterrupt):
            return uvloop.run(serve(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
