"""``kvdisco serve``: one node, with flags named as etcd names them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from kvdisco.api.app import make_app
from kvdisco.api.backend import Backend, BackendConfig, WatchedMachine
from kvdisco.api.fastpath import GatewaySite
from kvdisco.api.metrics import gc_pauses
from kvdisco.cli.heap import FreezeAfterSlowCollections
from kvdisco.mvcc.errors import MvccError
from kvdisco.mvcc.lease_clock import LeaseClock
from kvdisco.mvcc.machine import KVMachine
from kvdisco.mvcc.watch import WatchHub
from kvdisco.raft import InvariantViolation, RaftError
from kvdisco.raft.node import Node, NodeConfig

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


@dataclass(frozen=True)
class _Option:
    flag: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


#: Every `serve` setting. Each is a flag, a KVDISCO_<NAME> environment variable and a key of the
#: --config TOML file (dashes or underscores), in that order of precedence.
SERVE_OPTIONS = (
    _Option("--name", "default", "member name, unique in the cluster"),
    _Option("--data-dir", "./kvdisco-data", "WAL and snapshots"),
    _Option("--listen-client-urls", "http://127.0.0.1:2379", "client API address"),
    _Option("--advertise-client-urls", None, "client URL told to other members (default: the listen URL)"),
    _Option("--listen-peer-urls", "http://127.0.0.1:2380", "Raft peer address"),
    _Option("--initial-advertise-peer-urls", None, "peer URL told to others (default: the listen URL)"),
    _Option("--initial-cluster", None, "name=peerURL,... of the members of a new cluster (default: this member)"),
    _Option(
        "--initial-cluster-state", "new", "bootstrap a new cluster or join an existing one", choices=("new", "existing")
    ),
    _Option("--snapshot-count", 20_000, "applied entries between snapshots", int),
    _Option(
        "--auto-compaction-mode",
        "revision",
        "keep the last N revisions, or N seconds of history (off: never)",
        choices=("revision", "periodic", "off"),
    ),
    _Option("--auto-compaction-retention", 10_000, "N for --auto-compaction-mode", int),
    _Option("--watch-progress-notify-interval", 10.0, "seconds between watch progress notifications", float),
    _Option("--lease-checkpoint-interval", 5.0, "seconds between checkpoints of remaining lease TTLs", float),
    _Option("--log-format", "text", "log line format", choices=("text", "json")),
    _Option("--log-level", "info", "least severe level logged", choices=("debug", "info", "warning", "error")),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvdisco", description="kvdisco server and admin commands")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="run a node",
        description="Run one kvdisco node. Every flag can also be set as KVDISCO_<FLAG> in the environment "
        "(e.g. KVDISCO_DATA_DIR) or in the --config TOML file; flags win over the environment, which wins "
        "over the file.",
    )
    s.add_argument("--config", default=argparse.SUPPRESS, help="TOML file of settings (also KVDISCO_CONFIG)")
    for opt in SERVE_OPTIONS:
        shown = "" if opt.default is None else f" (default: {opt.default})"
        s.add_argument(opt.flag, default=argparse.SUPPRESS, type=opt.type, choices=opt.choices, help=opt.help + shown)
    return p


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> argparse.Namespace:
    """Fill every setting not given as a flag from the environment, then the config file, then defaults."""
    given = vars(args)
    config_path = given.get("config") or env.get("KVDISCO_CONFIG")
    file_settings: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, "rb") as f:
                raw = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"--config {config_path}: {exc}") from None
        known = {o.dest for o in SERVE_OPTIONS}
        for key, value in raw.items():
            dest = key.replace("-", "_")
            if dest not in known:
                raise SystemExit(f"--config {config_path}: unknown setting {key!r}")
            file_settings[dest] = value
    out = argparse.Namespace(command=given.get("command"))
    for opt in SERVE_OPTIONS:
        env_name = "KVDISCO_" + opt.dest.upper()
        if opt.dest in given:
            value = given[opt.dest]
        elif env_name in env:
            value = _convert(opt, env[env_name], env_name)
        elif opt.dest in file_settings:
            value = file_settings[opt.dest]
            if opt.type is not str and isinstance(value, str):
                value = _convert(opt, value, f"config {opt.dest}")
            elif isinstance(value, list) and opt.type is str:
                value = ",".join(str(v) for v in value)
        else:
            value = opt.default
        if opt.choices is not None and value not in opt.choices:
            raise SystemExit(f"{opt.flag}: {value!r} is not one of {', '.join(opt.choices)}")
        setattr(out, opt.dest, value)
    return out


def _convert(opt: _Option, text: str, where: str) -> Any:
    try:
        return opt.type(text)
    except ValueError:
        raise SystemExit(f"{where}: cannot read {text!r} as {opt.type.__name__}") from None


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
    election_s = cfg.election_ticks * cfg.tick_interval_s
    machine = KVMachine(min_lease_ttl=max(1, math.ceil(1.5 * election_s)))
    hub = WatchHub(machine.store)
    clock = LeaseClock(machine.lessor, extend_s=election_s, checkpoint_interval_s=args.lease_checkpoint_interval)
    sm = WatchedMachine(machine, hub, clock)
    node = Node(cfg, sm)
    # Loading the snapshot and replaying the member's own committed log build the store: at a million
    # keys, millions of objects that live as long as the process. The cyclic garbage collector is paused
    # meanwhile (its collections would walk them again and again: seconds of a restart), then they are
    # frozen out of its way, so later full collections do not walk them either. No collection before the
    # freeze: it would walk them all once more (1.5 s at a million keys) and found no garbage there; a
    # cycle made during the start would stay frozen, a one-time cost of a few objects.
    gc.disable()
    try:
        await node.start()
        began, commit = time.monotonic(), node.commit_index
        await node.wait_applied(commit)
        log.info("replayed the committed log to index %d in %.2f s", commit, time.monotonic() - began)
    except (RaftError, OSError, MvccError, InvariantViolation) as exc:
        # E.g. CorruptLogError names the WAL file and offset, SnapshotError a snapshot this version
        # cannot read: say so plainly and refuse to run.
        log.error("cannot start member %s: %s", cfg.name, exc)
        return 2
    finally:
        gc.enable()
    gc.freeze()
    gc_pauses().note_freeze()
    FreezeAfterSlowCollections().install()  # and so on as the store grows: see kvdisco/cli/heap.py
    backend = Backend(
        node,
        sm,
        BackendConfig(
            progress_interval_s=args.watch_progress_notify_interval,
            auto_compaction_mode="" if args.auto_compaction_mode == "off" else args.auto_compaction_mode,
            auto_compaction_retention=args.auto_compaction_retention,
        ),
    )
    backend.start()
    runner = web.AppRunner(make_app(backend), shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None)
    await runner.setup()
    host, port = _host_port(client_listen, "--listen-client-urls")
    site = GatewaySite(runner, host, port, shutdown_timeout=SHUTDOWN_GRACE_S)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot serve clients on %s: %s", client_listen, exc)
        await runner.cleanup()
        await backend.stop()
        await node.stop()
        return 2
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
    backend.hub.close()  # ends watch streams, so the runner need not wait them out
    await runner.cleanup()
    await backend.stop()
    await node.stop()
    if node.failure is not None:
        log.error("stopped after a failure: %s", node.failure)
        return 1
    log.info("stopped cleanly")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = resolve_settings(build_parser().parse_args(argv), os.environ)
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
