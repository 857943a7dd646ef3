"""kvdisco beside etcd 3.4, in one run on one machine, with the same load generator.

Both systems run as 3 member processes on loopback with fsync on. For each workload the
script runs etcd, then kvdisco, against each one's leader, and prints the ratio
kvdisco / etcd. Absolute numbers drift on a shared machine; the ratio is the figure to read.
With ``--rounds N`` the wrk workloads run N times each, alternating which system goes first,
and the round with the median ratio is reported beside every round's ratio.

Workloads:

* ``put`` and ``range``: wrk with ../shared/bench/put.lua (random keys, 64-byte values) and
  range.lua (a linearizable single-key range), at each --connections count.
* ``watch``: --watchers streaming watches (POST /v3/watch) on one prefix, spread over the
  members, then --watch-puts puts at a steady rate, once per --watchers-per-stream shape (M = 1:
  each watcher on its own connection; M > 1: the watchers multiplexed M to a stream, as etcd's
  clientv3 multiplexes a client's watches, so 1,000 watchers at M = 50 are 20 streams); the latency from
  sending a put to each watcher receiving its event (commit + fan-out + delivery), p50 and p99,
  and a check that every watcher got every event once and in order (bench/watch_fanout.py:
  --watch-clients processes on raw sockets, and each event's arrival taken from the kernel's
  receive timestamp, so the client's own speed is not measured; the time each event was read is
  reported too, as read_p50_ms/read_p99_ms; events read only after a later put's event had
  arrived on the same stream carry the later time, and are counted as late_read_events).
  kvdisco's own apply-to-socket latency is also read from its ``kvdisco_watch_delivery_seconds``
  metric (the difference over each shape's run) and printed as "server side".

Usage::

    .venv/bin/python bench/compare_etcd.py [--seconds 8] [--connections 1,64] [--watchers 1000]
        [--watchers-per-stream 1,50]

Ports: every member's client and peer port is one the kernel hands out for a bind to port 0,
so from its ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default).

Needs ``etcd`` (Debian: etcd-server) and ``wrk`` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from watch_fanout import run as watch_fanout_run

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = ROOT.parent / "shared" / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Cluster:
    name: str
    root: Path
    client_urls: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=f, env=env)


def start_etcd(root: Path, size: int = 3) -> Cluster:
    c = Cluster("etcd", root)
    ports = [(free_port(), free_port()) for _ in range(size)]
    initial = ",".join(f"e{i}=http://127.0.0.1:{pp}" for i, (_, pp) in enumerate(ports))
    for i, (cp, pp) in enumerate(ports):
        url = f"http://127.0.0.1:{cp}"
        cmd = [
            "etcd",
            "--name",
            f"e{i}",
            "--data-dir",
            str(root / f"e{i}"),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{pp}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{pp}",
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            "bench",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ]
        c.procs.append(_spawn(cmd, root / f"e{i}.log"))
        c.client_urls.append(url)
    return c


def start_kvdisco(root: Path, size: int = 3) -> Cluster:
    c = Cluster("kvdisco", root)
    ports = [(free_port(), free_port()) for _ in range(size)]
    initial = ",".join(f"k{i}=http://127.0.0.1:{pp}" for i, (_, pp) in enumerate(ports))
    for i, (cp, pp) in enumerate(ports):
        url = f"http://127.0.0.1:{cp}"
        cmd = [
            sys.executable,
            "-m",
            "kvdisco.cli.server",
            "serve",
            "--name",
            f"k{i}",
            "--data-dir",
            str(root / f"k{i}"),
            "--listen-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{pp}",
            "--initial-cluster",
            initial,
            "--log-level",
            "warning",
        ]
        c.procs.append(_spawn(cmd, root / f"k{i}.log", env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        c.client_urls.append(url)
    return c


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


async def wait_leader(c: Cluster, timeout_s: float = 30.0) -> str:
    """The client URL of the member that leads, once every member answers."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        while time.monotonic() < deadline:
            leader_url = None
            answered = 0
            for url in c.client_urls:
                try:
                    status, body = await post(s, url + "/v3/maintenance/status", {})
                except (aiohttp.ClientError, TimeoutError, OSError):
                    continue
                if status != 200:
                    continue
                answered += 1
                if body.get("leader") and body["leader"] == body["header"]["member_id"]:
                    leader_url = url
            if leader_url and answered == len(c.client_urls):
                # One write through the leader proves the cluster commits.
                status, _ = await post(
                    s, leader_url + "/v3/kv/put", {"key": b64(b"bench/00000001"), "value": b64(b"v")}
                )
                if status == 200:
                    return leader_url
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{c.name}: no leader within {timeout_s} s (logs in {c.root})")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    res: dict[str, float] = {"rps": rps}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(errors.group(1)) if errors else 0.0
    return res


async def watch_fanout(
    c: Cluster, leader: str, watchers: int, puts: int, rate: float, clients: int, per_stream: int
) -> dict[str, Any]:
    """Open ``watchers`` watchers, ``per_stream`` to a stream, then put ``puts`` keys; latency from each
    put's send to each delivery."""
    return await watch_fanout_run(c.client_urls, leader, watchers, puts, rate, clients, per_stream)


_DELIVERY_BUCKET = re.compile(r'^kvdisco_watch_delivery_seconds_bucket\{le="([^"]+)",route="v3"\} (\S+)$', re.M)


def _bucket_quantiles(buckets: dict[float, float]) -> dict[str, float]:
    """p50 and p99 as the upper bound of the bucket that holds them (cumulative bucket counts)."""
    total = buckets.get(float("inf"), 0.0)
    out: dict[str, float] = {"deliveries": total}
    for q in (0.5, 0.99):
        bound = next((b for b in sorted(buckets) if buckets[b] >= q * total), float("nan"))
        out[f"p{int(q * 100)}_le_ms"] = bound * 1e3
    return out


async def scrape_watch_buckets(c: Cluster) -> dict[str, dict[float, float]]:
    """Each member's cumulative ``kvdisco_watch_delivery_seconds`` buckets (route v3), by client URL."""
    out: dict[str, dict[float, float]] = {}
    async with aiohttp.ClientSession() as s:
        for url in c.client_urls:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            out[url] = {
                float("inf") if m.group(1) == "+Inf" else float(m.group(1)): float(m.group(2))
                for m in _DELIVERY_BUCKET.finditer(text)
            }
    return out


def watch_delivery(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> dict[str, Any]:
    """kvdisco's own apply-to-socket watch latency between two scrapes (bucket upper bounds), all
    members and each: the metric counts from each member's start, so one shape's run is the difference."""
    buckets: dict[float, float] = {}
    by_member: dict[str, Any] = {}
    for url, now in after.items():
        then = before.get(url, {})
        mine = {bound: n - then.get(bound, 0.0) for bound, n in now.items()}
        for bound, n in mine.items():
            buckets[bound] = buckets.get(bound, 0.0) + n
        by_member[url] = _bucket_quantiles(mine)
    return {**_bucket_quantiles(buckets), "by_member": by_member}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir or tempfile.mkdtemp(prefix="kvdisco-vs-etcd-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "etcd_version": subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
        "runs": [],
    }
    clusters: dict[str, Cluster] = {}
    try:
        (root / "etcd").mkdir(exist_ok=True)
        (root / "kvdisco").mkdir(exist_ok=True)
        clusters["etcd"] = start_etcd(root / "etcd")
        clusters["kvdisco"] = start_kvdisco(root / "kvdisco")
        leaders = {name: await wait_leader(c) for name, c in clusters.items()}
        for workload in args.workloads.split(","):
            if workload == "watch":
                for per_stream in args.watchers_per_stream:
                    row: dict[str, Any] = {"workload": f"watch x{args.watchers} m{per_stream}"}
                    for name, c in clusters.items():
                        before = await scrape_watch_buckets(c) if name == "kvdisco" else {}
                        row[name] = await watch_fanout(
                            c,
                            leaders[name],
                            args.watchers,
                            args.watch_puts,
                            args.watch_rate,
                            args.watch_clients,
                            per_stream,
                        )
                        if name == "kvdisco":
                            row["kvdisco_server_side"] = watch_delivery(before, await scrape_watch_buckets(c))
                        print(name, row[name], row.get("kvdisco_server_side", ""), flush=True)
                    results["runs"].append(row)
                continue
            script = LUA_DIR / f"{workload}.lua"
            if not script.is_file():  # wrk without its script sends GETs: every answer an error, a ratio of noise
                raise SystemExit(f"{script}: no such wrk script (the repository's ../shared/bench)")
            for conns in [int(x) for x in args.connections.split(",")]:
                rounds: list[dict[str, Any]] = []
                for i in range(args.rounds):
                    # Every other round kvdisco goes first, so a machine that drifts favours neither.
                    order = list(clusters) if i % 2 == 0 else list(reversed(clusters))
                    one: dict[str, Any] = {}
                    for name in order:
                        one[name] = await asyncio.to_thread(run_wrk, leaders[name], script, conns, args.seconds)
                    one["ratio_rps"] = one["kvdisco"]["rps"] / one["etcd"]["rps"]
                    if args.rounds > 1:
                        print(json.dumps({"workload": workload, "round": i + 1, **one}), flush=True)
                    rounds.append(one)
                row = {"workload": workload, "connections": conns, **median_round(rounds)}
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
    finally:
        for c in clusters.values():
            c.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return results


def _p50_ratio(one: dict[str, Any]) -> float | None:
    """kvdisco's p50 over etcd's in one round (lower is better for kvdisco), if wrk reported both."""
    if "p50_ms" in one["kvdisco"] and "p50_ms" in one["etcd"]:
        return float(one["kvdisco"]["p50_ms"] / one["etcd"]["p50_ms"])
    return None


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose throughput ratio is the median (the lower middle one of an even count), and,
    with several rounds, every round's ratios and the median p50 ratio (the upper middle of an even
    count: each choice is the one less kind to kvdisco).

    A shared machine's load moves within seconds; each round measures both systems back to back,
    so a round's ratio is a fair sample and the median of several resists a disturbed one.
    """
    ranked = sorted(rounds, key=lambda r: r["ratio_rps"])
    middle = ranked[(len(ranked) - 1) // 2]
    row = {"etcd": middle["etcd"], "kvdisco": middle["kvdisco"], "ratio_rps": middle["ratio_rps"]}
    if (ratio := _p50_ratio(middle)) is not None:
        row["ratio_p50"] = ratio
    if len(rounds) > 1:
        row["round_ratios"] = [r["ratio_rps"] for r in rounds]
        p50s = [p for r in rounds if (p := _p50_ratio(r)) is not None]
        row["round_p50_ratios"] = p50s
        if p50s:
            row["median_p50_ratio"] = sorted(p50s)[len(p50s) // 2]
    return row


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['etcd_version']}; {results['machine']}")
    print(f"{'workload':<16}{'etcd':>44}{'kvdisco':>44}{'ratio':>8}")
    for row in results["runs"]:
        if row["workload"].startswith("watch"):
            e, k = row["etcd"], row["kvdisco"]
            print(
                f"{row['workload']:<16}{'p50 {:.1f} p99 {:.1f} ms'.format(e['p50_ms'], e['p99_ms']):>44}"
                f"{'p50 {:.1f} p99 {:.1f} ms'.format(k['p50_ms'], k['p99_ms']):>44}"
            )
            check = {
                s: "{}/{} ev, {} dup, {} late, {} foreign".format(
                    row[s]["delivered"],
                    row[s]["expected"],
                    row[s]["duplicates"],
                    row[s]["out_of_order"],
                    row[s]["foreign"],
                )
                for s in ("etcd", "kvdisco")
            }
            print(f"{'  delivered':<16}{check['etcd']:>44}{check['kvdisco']:>44}")
            late = {s: f"{row[s]['late_read_events']} events read late (upper bounds)" for s in ("etcd", "kvdisco")}
            print(f"{'  late reads':<16}{late['etcd']:>44}{late['kvdisco']:>44}")
            srv = row.get("kvdisco_server_side")
            if srv:
                print(
                    f"{'  server side':<16}{'':>44}"
                    f"{'p50 <={:.1f} p99 <={:.1f} ms'.format(srv['p50_le_ms'], srv['p99_le_ms']):>44}"
                )
            continue
        name = f"{row['workload']} c{row['connections']}"
        cell = {s: f"{row[s]['rps']:.0f}/s p50 {row[s].get('p50_ms', 0.0):.2f} ms" for s in ("etcd", "kvdisco")}
        print(f"{name:<16}{cell['etcd']:>44}{cell['kvdisco']:>44}{row['ratio_rps']:>8.2f}")
        if "round_ratios" in row:
            print(f"{'  rounds':<16}{'median of ' + ', '.join(f'{r:.2f}' for r in row['round_ratios']):>96}")
        if row.get("round_p50_ratios"):
            p50s = ", ".join(f"{r:.2f}" for r in row["round_p50_ratios"])
            line = f"median {row['median_p50_ratio']:.2f} of {p50s}"
            print(f"{'  p50 k/e':<16}{line:>96}")


def _shapes(text: str) -> list[int]:
    """``--watchers-per-stream``: a comma-separated list of positive integers."""
    try:
        shapes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not shapes or min(shapes) < 1:
        raise argparse.ArgumentTypeError(f"watchers per stream must be at least 1, got {text!r}")
    return shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--connections", default="1,64")
    p.add_argument("--workloads", default="put,range,watch")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="wrk runs per system for put and range, alternating which goes first; the median round's "
        "ratio is reported (default: 1)",
    )
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--watch-puts", type=int, default=100)
    p.add_argument("--watch-rate", type=float, default=20.0, help="puts per second during the watch test")
    p.add_argument("--watch-clients", type=int, default=2, help="processes reading the watch streams")
    p.add_argument(
        "--watchers-per-stream",
        type=_shapes,
        default=[1],
        metavar="M[,M...]",
        help="watch shapes to run, one after the other: M watchers multiplexed on each watch stream "
        "(--watchers / M streams, each sending M create requests), as etcd clients multiplex their "
        "watches; 1 gives every watcher its own connection. E.g. 1,50 runs both (default: 1)",
    )
    p.add_argument("--dir", default=None, help="keep data and logs here")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    for tool in ("etcd", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (apt-get install etcd-server wrk)")
    results = asyncio.run(main_async(args))
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
