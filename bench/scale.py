"""kvdisco at scale: load N keys into a 3-member cluster and measure memory, disk, recovery and throughput.

Steps, in one run:

1. Start 3 members on loopback (fsync on) and measure put and range throughput on the (nearly)
   empty store. --snapshot-count counts Raft entries, and a txn of 128 puts is one entry: 1M keys
   is ~7,800 entries (~170 MiB of log), so the load's snapshots come from the 64 MiB bound on
   applied entries (two of them at 1M keys); past a few MiB of state, a member also waits for as
   many bytes of log as its last snapshot holds (see "When a snapshot is taken" in
   docs/design-decisions.md), so a smaller --snapshot-count changes little at this size.
2. Load --keys keys (32-byte keys, --value-bytes values) through POST /v3/kv/txn with 128 puts per
   txn from --clients concurrent clients; the load rate is recorded. The load stops at
   --load-seconds; the keys actually loaded are reported, never extrapolated.
3. RSS (VmRSS, and the peak VmHWM) of every member, and the size of its wal/ and snap/ directories.
4. Put/range throughput at that size (closed loop, --load-conns clients, --seconds each; puts for
   --put-seconds if given, on the empty store too), once the load's last snapshots are written (the
   members' snapshot children have exited; waited for up to --settle-limit, and reported). A window
   long enough to hold one of the periodic snapshots a steady load takes (every 100,000 entries at
   most) shows their cost too: --put-seconds 90. Each window prints the requests answered and
   the slowest in each of its seconds, and per member what happened meanwhile (WindowMonitor): CPU
   seconds, minor page faults, snapshots taken, compaction, full collections, the seconds its
   snapshot child ran and that child's CPU, and the CPU other processes on the machine took.
   --skip-recovery stops here.
5. kill -9 one follower, restart it, and time until /readyz answers 200 and a serializable range
   on it sees a marker key written just before the kill. With --restart-backlog N, single puts first
   run until the victim has applied N entries past its newest snapshot, so the restart replays that
   many (the worst case is just under the snapshot bounds: about 100,000 single puts).
6. Add a learner k3 (POST /v3/cluster/member/add), start it with --initial-cluster-state existing,
   and time until a serializable range on it sees a marker written after the add (snapshot catch-up).
7. With --steady-minutes > 0: overwrite random keys for that long (auto-compaction at its default)
   and sample every member's RSS every --sample-seconds.

Usage::

    .venv/bin/python bench/scale.py [--keys 1000000] [--value-bytes 128] [--clients 32] \
        [--steady-minutes 3] [--json scale.json]

Add --profile-restart to run the restarted member and the new learner under ``py-spy record``
(flame graphs as speedscope JSON in --dir).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PY_SPY = Path(sys.executable).parent / "py-spy"
KEY_BYTES = 32
TXN_OPS = 128
MARKER = b"scale-marker"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_of(i: int) -> bytes:
    """The i-th key: exactly 32 bytes."""
    return b"scale/%026d" % i


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value, _unit = line.split()
                    out[name.rstrip(":")] = int(value) * 1024
    except OSError:
        pass
    return out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def dir_disk_bytes(path: Path) -> int:
    """Blocks actually allocated (WAL segments are preallocated, so this is >= the data written)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def mib(n: float) -> float:
    return n / (1 << 20)


@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0  # the server's pid (differs from proc.pid when run under py-spy)


@dataclass
class Cluster:
    root: Path
    base_port: int
    snapshot_count: int = 20000
    members: list[Member] = field(default_factory=list)
    initial: str = ""

    def __post_init__(self) -> None:
        for i in range(3):
            self.members.append(self._member(i))
        self.initial = ",".join(f"{m.name}=http://{m.peer_url.split('//')[1]}" for m in self.members)

    def _member(self, i: int) -> Member:
        cp, pp = self.base_port + 2 * i, self.base_port + 2 * i + 1
        return Member(f"k{i}", f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}", self.root / f"k{i}")

    def start(self, m: Member, state: str = "new", profile: Path | None = None) -> None:
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
            self.initial,
            "--initial-cluster-state",
            state,
            "--snapshot-count",
            str(self.snapshot_count),
            "--log-level",
            "info",  # the start's steps and each snapshot, in <dir>/<member>.log
        ]
        if profile is not None:
            cmd = [
                str(PY_SPY),
                "record",
                "--nonblocking",
                "--format",
                "speedscope",
                "-r",
                "50",
                "-o",
                str(profile),
                "--",
                *cmd,
            ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.root / f"{m.name}.log", "ab") as f:
            m.proc = subprocess.Popen(cmd, stdout=f, stderr=f, env=env)
        m.pid = m.proc.pid
        if profile is not None:  # the server is py-spy's child
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    kids = Path(f"/proc/{m.proc.pid}/task/{m.proc.pid}/children").read_text().split()
                except OSError:
                    kids = []
                if kids:
                    m.pid = int(kids[0])
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                if m.pid != m.proc.pid:
                    os.kill(m.pid, signal.SIGTERM)  # py-spy writes its profile when the child exits
                else:
                    m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
            if m.pid != m.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.pid, signal.SIGKILL)


async def post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with s.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


async def find_leader(s: aiohttp.ClientSession, c: Cluster, timeout_s: float = 60.0) -> Member:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in c.members[:3]:
            try:
                status, body = await post(s, m.client_url + "/v3/maintenance/status", {})
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
            if status == 200 and body.get("leader") and body["leader"] == body["header"]["member_id"]:
                st, _ = await post(s, m.client_url + "/v3/kv/put", {"key": b64(MARKER), "value": b64(b"0")})
                if st == 200:
                    return m
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no leader within {timeout_s} s (logs in {c.root})")


async def load(
    s: aiohttp.ClientSession, url: str, n: int, value: bytes, clients: int, limit_s: float
) -> dict[str, Any]:
    """Put keys 0..n-1 in txns of 128 puts from ``clients`` workers; stop at ``limit_s``."""
    vb = b64(value)
    batches = iter(range(0, n, TXN_OPS))
    done = 0
    errors = 0
    t0 = time.monotonic()
    deadline = t0 + limit_s
    last_print = t0

    async def worker() -> None:
        nonlocal done, errors, last_print
        for start in batches:
            if time.monotonic() > deadline:
                return
            ops = [{"request_put": {"key": b64(key_of(i)), "value": vb}} for i in range(start, min(start + TXN_OPS, n))]
            give_up = time.monotonic() + 120
            while True:
                # A put of the same key twice is harmless, so a failed txn is simply sent again.
                try:
                    status, body = await post(s, url + "/v3/kv/txn", {"success": ops})
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status, body = 0, repr(exc)
                if status == 200:
                    done += len(ops)
                    break
                errors += 1
                print(f"  txn at key {start}: {status} {str(body)[:200]}", flush=True)
                if time.monotonic() > give_up:
                    raise RuntimeError(f"txn at key {start} kept failing for 120 s")
                await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - last_print > 15:
                last_print = now
                print(f"  loaded {done} keys in {now - t0:.0f} s ({done / (now - t0):.0f} keys/s)", flush=True)

    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.monotonic() - t0
    # Keys are handed out in order, so everything below the lowest unfinished batch is loaded;
    # with a deadline stop, `done` counts exactly the keys put.
    return {"keys": done, "seconds": elapsed, "keys_per_s": done / elapsed, "txn_retries": errors}


async def closed_loop(
    s: aiohttp.ClientSession,
    url: str,
    kind: str,
    nkeys: int,
    value: bytes,
    conns: int,
    seconds: float,
    per_second: list[list[float]] | None = None,
) -> dict[str, float]:
    """``conns`` clients each issuing one request at a time for ``seconds``: puts or linearizable ranges.

    With ``per_second``, row i gets [requests answered, slowest ms] for second i of the window, so a
    stall shows where it happened (see WindowMonitor).
    """
    vb = b64(value)
    lat: list[float] = []
    errors = 0
    start = time.monotonic()
    deadline = start + seconds
    rng = random.Random(1)
    if per_second is not None:
        per_second[:] = [[0, 0.0] for _ in range(int(seconds) + 1)]

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            k = b64(key_of(rng.randrange(nkeys)))
            body = {"key": k, "value": vb} if kind == "put" else {"key": k}
            t = time.perf_counter()
            try:
                status, _ = await post(s, url + ("/v3/kv/put" if kind == "put" else "/v3/kv/range"), body)
            except (aiohttp.ClientError, TimeoutError, OSError):
                status = 0
            if status == 200:
                took = time.perf_counter() - t
                lat.append(took)
                if per_second is not None:
                    row = per_second[min(len(per_second) - 1, int(time.monotonic() - start))]
                    row[0] += 1
                    row[1] = max(row[1], took * 1e3)
            else:
                errors += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    elapsed = time.monotonic() - t0
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")

    return {"rps": len(lat) / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": errors}


async def sees(s: aiohttp.ClientSession, url: str, key: bytes, value: bytes) -> bool:
    try:
        status, body = await post(s, url + "/v3/kv/range", {"key": b64(key), "serializable": True})
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
    kvs = (body.get("kvs") or []) if status == 200 and isinstance(body, dict) else []
    return bool(kvs) and kvs[0].get("value") == b64(value)


async def ready(s: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with s.get(url + "/readyz") as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def wait_serving(
    s: aiohttp.ClientSession, m: Member, c: Cluster, value: bytes, t0: float, limit_s: float
) -> dict[str, Any]:
    """Poll until ``m`` is ready and sees the marker; track every member's RSS meanwhile."""
    out: dict[str, Any] = {"ready_s": None, "sees_marker_s": None}
    peak = {x.name: 0 for x in c.members if x.proc is not None}
    deadline = t0 + limit_s
    while time.monotonic() < deadline:
        for x in c.members:
            if x.proc is not None:
                peak[x.name] = max(peak[x.name], proc_status(x.pid).get("VmRSS", 0))
        if out["ready_s"] is None and await ready(s, m.client_url):
            out["ready_s"] = time.monotonic() - t0
        if out["sees_marker_s"] is None and await sees(s, m.client_url, MARKER, value):
            out["sees_marker_s"] = time.monotonic() - t0
        if out["ready_s"] is not None and out["sees_marker_s"] is not None:
            break
        if m.proc is not None and m.proc.poll() is not None:
            out["exited"] = m.proc.returncode
            break
        await asyncio.sleep(0.05)
    out["serving_s"] = (
        max(out["ready_s"], out["sees_marker_s"])
        if out["ready_s"] is not None and out["sees_marker_s"] is not None
        else None
    )
    st = proc_status(m.pid)
    out["rss_mib_after"] = mib(st.get("VmRSS", 0))
    out["hwm_mib"] = mib(st.get("VmHWM", 0))
    out["sampled_peak_rss_mib"] = {k: mib(v) for k, v in peak.items()}
    return out


async def gc_stats(s: aiohttp.ClientSession, c: Cluster) -> dict[str, dict[str, float]]:
    """Per member: seconds paused in full (generation 2) garbage collections, their count, the longest."""
    out: dict[str, dict[str, float]] = {}
    wanted = {
        'kvdisco_gc_pause_seconds_total{generation="2"}': "gen2_s",
        'kvdisco_gc_collections_total{generation="2"}': "gen2_n",
        'kvdisco_gc_pause_longest_seconds{generation="2"}': "gen2_longest_s",
        'kvdisco_gc_pause_seconds_total{generation="0"}': "gen0_s",
        'kvdisco_gc_pause_seconds_total{generation="1"}': "gen1_s",
    }
    for m in c.members:
        if m.proc is None or m.proc.poll() is not None:
            continue
        try:
            async with s.get(m.client_url + "/metrics") as r:
                text = await r.text()
        except (aiohttp.ClientError, OSError):
            continue
        row: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name in wanted:
                row[wanted[name]] = round(float(value), 3)
        out[m.name] = row
    return out


def proc_cpu(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of ``pid`` (copy-on-write shows as the latter)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0
    # After the command name: state is field 3, minflt 10, utime 14, stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, int(fields[7])


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    """Children of ``pid``: a member's only child is its snapshot writer."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


#: /metrics series WindowMonitor follows per member.
_WATCHED_METRICS = {
    "kvdisco_raft_snapshots_taken_total": "snapshots",
    "kvdisco_mvcc_compact_revision": "compact_rev",
    "kvdisco_raft_applied_index": "applied",
    'kvdisco_gc_pause_seconds_total{generation="2"}': "gen2_s",
    'kvdisco_gc_collections_total{generation="2"}': "gen2_n",
    'kvdisco_gc_pause_seconds_total{generation="1"}': "gen1_s",
    "kvdisco_wal_fsync_seconds_total": "fsync_s",
}


async def scrape(s: aiohttp.ClientSession, m: Member) -> dict[str, float]:
    try:
        async with s.get(m.client_url + "/metrics") as r:
            text = await r.text()
    except (aiohttp.ClientError, OSError):
        return {}
    row: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in _WATCHED_METRICS:
            row[_WATCHED_METRICS[name]] = float(value)
    return row


class WindowMonitor:
    """What every member did during one throughput window: CPU, page faults, snapshot children, GC.

    /metrics is read just before and just after the window, never during it: the scrape walks the
    collector's frozen objects to count them (about 3 per key), which stops a member at a million
    keys for a noticeable time. Meanwhile /proc is sampled every half second (free for the
    members): each member's CPU seconds and minor page faults (copy-on-write after a fork shows
    there) and its snapshot child, if one runs. The summary says per member how much CPU it and its
    children took, how many snapshots and full collections fell in the window, and in which seconds
    of the window a snapshot child was running.
    """

    def __init__(self, s: aiohttp.ClientSession, c: Cluster) -> None:
        self.s, self.c = s, c
        self.samples: list[dict[str, Any]] = []
        self.metrics_before: dict[str, dict[str, float]] = {}
        self.child_cpu: dict[int, float] = {}  # last CPU seconds seen per child pid
        self.child_first: dict[int, float] = {}  # CPU seconds of each child when first seen
        self.child_of: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    def _members(self) -> list[Member]:
        return [m for m in self.c.members if m.proc is not None and m.proc.poll() is None]

    async def _scrape_all(self) -> dict[str, dict[str, float]]:
        members = self._members()
        rows = await asyncio.gather(*(scrape(self.s, m) for m in members))
        return {m.name: row for m, row in zip(members, rows, strict=True)}

    def _sample(self) -> None:
        row: dict[str, Any] = {"t": round(time.monotonic() - self._t0, 2)}
        for m in self._members():
            cpu, flt = proc_cpu(m.pid)
            kids = child_pids(m.pid)
            for k in kids:
                kcpu, _ = proc_cpu(k)
                self.child_first.setdefault(k, kcpu)
                self.child_cpu[k] = kcpu
                self.child_of[k] = m.name
            row[m.name] = {"cpu_s": cpu, "minflt": flt, "children": kids}
        row["busy_s"], row["bench_s"] = machine_busy_s(), proc_cpu(os.getpid())[0]
        self.samples.append(row)

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0.5)

    async def start(self) -> None:
        """Read /metrics, then sample /proc until stop(); the window starts when this returns."""
        self.metrics_before = await self._scrape_all()
        self._t0 = time.monotonic()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> dict[str, Any]:
        """Call right after the window: one last /proc sample, then /metrics again."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sample()
        after = await self._scrape_all()
        first, last = self.samples[0], self.samples[-1]
        out: dict[str, Any] = {}
        for name in first:
            if not name.startswith("k") or name not in last:
                continue
            a, b = first[name], last[name]
            row: dict[str, Any] = {"cpu_s": round(b["cpu_s"] - a["cpu_s"], 2), "minflt": b["minflt"] - a["minflt"]}
            ma, mb = self.metrics_before.get(name, {}), after.get(name, {})
            row.update({k: round(mb[k] - ma[k], 3) for k in _WATCHED_METRICS.values() if k in ma and k in mb})
            kids = [k for k, owner in self.child_of.items() if owner == name]
            row["child_cpu_s"] = round(sum(self.child_cpu[k] - self.child_first[k] for k in kids), 2)
            alive = sorted({int(x["t"]) for x in self.samples if x.get(name, {}).get("children")})
            row["child_alive_at_s"] = alive
            row["child_at_start"] = bool(a["children"])
            out[name] = row
        # CPU the whole machine spent that neither the members, their children nor this load generator
        # account for: another process competing with the cluster makes the window's figure unfair.
        ours = sum(r["cpu_s"] + r["child_cpu_s"] for r in out.values()) + last["bench_s"] - first["bench_s"]
        out["other_cpu_s"] = round(last["busy_s"] - first["busy_s"] - ours, 2)
        return out


def memory(c: Cluster) -> dict[str, dict[str, float]]:
    out = {}
    for m in c.members:
        if m.proc is None or m.proc.poll() is not None:
            continue
        st = proc_status(m.pid)
        out[m.name] = {
            "rss_mib": mib(st.get("VmRSS", 0)),
            "hwm_mib": mib(st.get("VmHWM", 0)),
            "wal_mib": mib(dir_bytes(m.data_dir / "wal")),
            "wal_disk_mib": mib(dir_disk_bytes(m.data_dir / "wal")),
            "wal_files": len(list((m.data_dir / "wal").glob("*"))),
            "snap_mib": mib(dir_bytes(m.data_dir / "snap")),
            "snap_files": len(list((m.data_dir / "snap").glob("*"))),
        }
    return out


class Overwriter:
    """Clients overwriting random keys with single puts, one request at a time each, until stopped."""

    def __init__(self, s: aiohttp.ClientSession, url: str, nkeys: int, value: bytes, seed: int) -> None:
        self.s, self.url, self.nkeys, self.vb = s, url, nkeys, b64(value)
        self.rng = random.Random(seed)
        self.puts = 0
        self.deadline = float("inf")

    def stop(self) -> None:
        self.deadline = 0.0

    async def run(self, conns: int, seconds: float = float("inf")) -> None:
        self.deadline = min(self.deadline, time.monotonic() + seconds)
        await asyncio.gather(*(self._writer() for _ in range(conns)))

    async def _writer(self) -> None:
        while time.monotonic() < self.deadline:
            body = {"key": b64(key_of(self.rng.randrange(self.nkeys))), "value": self.vb}
            try:
                status, _ = await post(self.s, self.url + "/v3/kv/put", body)
            except (aiohttp.ClientError, TimeoutError, OSError):
                status = 0
            self.puts += status == 200


async def steady(
    s: aiohttp.ClientSession, c: Cluster, url: str, nkeys: int, value: bytes, conns: int, minutes: float, every: float
) -> dict[str, Any]:
    """Overwrite random keys for ``minutes``; RSS of every member every ``every`` seconds."""
    samples: list[dict[str, Any]] = []
    stop = time.monotonic() + minutes * 60
    t0 = time.monotonic()
    writers = Overwriter(s, url, nkeys, value, seed=2)

    async def sampler() -> None:
        while True:
            row: dict[str, Any] = {"t_s": round(time.monotonic() - t0, 1), "puts": writers.puts}
            for m in c.members:
                if m.proc is not None and m.proc.poll() is None:
                    row[m.name] = round(mib(proc_status(m.pid).get("VmRSS", 0)), 1)
            samples.append(row)
            print("  steady", row, flush=True)
            if time.monotonic() >= stop:
                return
            await asyncio.sleep(min(every, max(0.0, stop - time.monotonic())))

    await asyncio.gather(sampler(), writers.run(conns, stop - time.monotonic()))
    names = [k for k in samples[0] if k.startswith("k")]
    drift = {n: samples[-1].get(n, 0) - samples[0].get(n, 0) for n in names}
    return {"minutes": minutes, "puts": writers.puts, "puts_per_s": writers.puts / (time.monotonic() - t0),
            "samples": samples, "rss_change_mib": drift}  # fmt: skip


def newest_snapshot_index(m: Member) -> int:
    """The log index of the member's newest snapshot file (named <index>-<term>.snap, in hex)."""
    names = [p.name for p in (m.data_dir / "snap").glob("*.snap")]
    return max((int(n.split("-")[0], 16) for n in names), default=0)


async def applied_index(s: aiohttp.ClientSession, m: Member) -> int:
    st, body = await post(s, m.client_url + "/v3/maintenance/status", {})
    if st != 200:
        raise RuntimeError(f"status of {m.name}: {st} {body}")
    return int(body["raftAppliedIndex"])


async def build_backlog(
    s: aiohttp.ClientSession,
    url: str,
    victim: Member,
    nkeys: int,
    value: bytes,
    conns: int,
    target: int,
    limit_s: float,
) -> dict[str, Any]:
    """Overwrite random keys with single puts until ``victim`` has applied ``target`` entries past its
    newest snapshot: all of them are what its restart replays. A snapshot it takes meanwhile starts
    the count again (the schedule is its own: see Node._maybe_snapshot), so a target near the
    snapshot bounds can take a while; this gives up at ``limit_s``."""
    writers = Overwriter(s, url, nkeys, value, seed=3)
    t0 = time.monotonic()
    seen: dict[str, Any] = {"target": target, "snapshots_meanwhile": 0}

    async def watch() -> None:
        last_snap = newest_snapshot_index(victim)
        try:
            while True:
                await asyncio.sleep(0.25)
                snap = newest_snapshot_index(victim)
                seen["snapshots_meanwhile"] += snap != last_snap
                last_snap = snap
                backlog = await applied_index(s, victim) - snap
                if backlog >= target:
                    break
                if time.monotonic() - t0 > limit_s:
                    raise RuntimeError(f"{victim.name} did not reach a backlog of {target} in {limit_s} s")
        finally:
            writers.stop()
        seen.update(backlog=backlog, snapshot_index=snap)

    await asyncio.gather(watch(), writers.run(conns))
    seen.update(puts=writers.puts, seconds=round(time.monotonic() - t0, 1))
    return seen


async def settle(c: Cluster, limit_s: float) -> dict[str, Any]:
    """Wait (up to ``limit_s``) until no member's snapshot child runs: a bulk load leaves its last
    snapshots being written for a while after it ends, and a throughput window measures the store's
    size, not the load's tail. Returns how long that took, and whether any child was still running."""
    t0 = time.monotonic()
    while any(child_pids(m.pid) for m in c.members if m.proc is not None and m.proc.poll() is None):
        if time.monotonic() - t0 >= limit_s:
            return {"seconds": round(time.monotonic() - t0, 1), "children_still_running": True}
        await asyncio.sleep(0.5)
    return {"seconds": round(time.monotonic() - t0, 1), "children_still_running": False}


async def window(
    s: aiohttp.ClientSession,
    c: Cluster,
    url: str,
    kind: str,
    nkeys: int,
    value: bytes,
    args: argparse.Namespace,
    phase: str,
) -> dict[str, Any]:
    """One throughput window (--put-seconds for puts, --seconds for ranges) with what each member did."""
    seconds = args.put_seconds if kind == "put" and args.put_seconds else args.seconds
    per_second: list[list[float]] = []
    mon = WindowMonitor(s, c)
    await mon.start()
    r: dict[str, Any] = dict(await closed_loop(s, url, kind, nkeys, value, args.load_conns, seconds, per_second))
    r["members"] = await mon.stop()
    r["per_second"] = [[int(n), round(worst, 1)] for n, worst in per_second if n]
    print(f"{phase} {kind}: " + json.dumps({k: v for k, v in r.items() if k not in ("members", "per_second")}))
    print(f"  per second [answered, slowest ms]: {r['per_second']}")
    for name, row in r["members"].items():
        print(f"  {name}: {json.dumps(row)}", flush=True)
    return r


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir or tempfile.mkdtemp(prefix="kvdisco-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    value = bytes(random.Random(0).randrange(256) for _ in range(args.value_bytes))
    res: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": vars(args),
        "dir": str(root),
    }
    c = Cluster(root, args.base_port, args.snapshot_count)
    conn = aiohttp.TCPConnector(limit=0)
    s = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120))
    try:
        for m in c.members:
            c.start(m)
        leader = await find_leader(s, c)
        print(f"leader {leader.name}; data in {root}", flush=True)
        await asyncio.sleep(1.0)
        gone = [m.name for m in c.members if m.proc is not None and m.proc.poll() is not None]
        if gone:  # e.g. a port still held by another process: the figures would be a smaller cluster's
            raise RuntimeError(f"members {gone} exited at start (logs in {root})")

        # Empty store: a small key set so puts overwrite and ranges hit.
        small = 1000
        await load(s, leader.client_url, small, value, args.clients, 60)
        res["empty"] = {"memory": memory(c), "settle": await settle(c, args.settle_limit)}
        for kind in ("put", "range"):
            res["empty"][kind] = await window(s, c, leader.client_url, kind, small, value, args, "empty")

        print(f"loading {args.keys} keys ...", flush=True)
        res["load"] = await load(s, leader.client_url, args.keys, value, args.clients, args.load_seconds)
        n = res["load"]["keys"]
        print(f"load: {res['load']}", flush=True)
        res["loaded"] = {"settle": await settle(c, args.settle_limit)}
        print(f"snapshot children of the load finished: {res['loaded']['settle']}", flush=True)
        res["loaded"].update(memory=memory(c), gc_before=await gc_stats(s, c))
        for kind in ("put", "range"):
            res["loaded"][kind] = await window(s, c, leader.client_url, kind, n, value, args, "loaded")
        res["loaded"]["memory_after_throughput"] = memory(c)
        res["loaded"]["gc_after"] = await gc_stats(s, c)
        print(
            f"garbage collection before / after the loaded runs: {res['loaded']['gc_before']} / "
            f"{res['loaded']['gc_after']}",
            flush=True,
        )

        if args.skip_recovery:
            res["final_memory"] = memory(c)
            return res

        # Restart a follower after kill -9.
        leader = await find_leader(s, c)
        victim = next(m for m in c.members if m is not leader)
        if args.restart_backlog > 0:
            res["backlog"] = await build_backlog(
                s, leader.client_url, victim, n, value, args.load_conns, args.restart_backlog, args.recovery_limit * 3
            )
            print(f"backlog before the kill: {res['backlog']}", flush=True)
        marker = b"restart-%d" % time.time_ns()
        st, _ = await post(s, leader.client_url + "/v3/kv/put", {"key": b64(MARKER), "value": b64(marker)})
        assert st == 200
        deadline = time.monotonic() + 60
        while not await sees(s, victim.client_url, MARKER, marker):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{victim.name} did not see the marker within 60 s (logs in {root})")
            await asyncio.sleep(0.05)
        assert victim.proc is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait()
        t0 = time.monotonic()
        c.start(victim, "new", root / f"{victim.name}-restart.speedscope.json" if args.profile_restart else None)
        res["restart"] = {"member": victim.name, **await wait_serving(s, victim, c, marker, t0, args.recovery_limit)}
        print(f"restart: {res['restart']}", flush=True)

        # A new learner catching up by snapshot.
        leader = await find_leader(s, c)
        new = c._member(5)
        new.name = "k3"
        new.data_dir = root / "k3"
        st, body = await post(
            s,
            leader.client_url + "/v3/cluster/member/add",
            {"name": "k3", "peerURLs": [new.peer_url], "isLearner": True},
        )
        if st != 200:
            raise RuntimeError(f"member add: {st} {body}")
        marker = b"learner-%d" % time.time_ns()
        st, _ = await post(s, leader.client_url + "/v3/kv/put", {"key": b64(MARKER), "value": b64(marker)})
        c.members.append(new)
        t0 = time.monotonic()
        c.start(new, "existing", root / "k3-catchup.speedscope.json" if args.profile_restart else None)
        res["catchup"] = {"member": "k3", **await wait_serving(s, new, c, marker, t0, args.recovery_limit)}
        res["catchup"]["memory"] = memory(c)
        print(f"catch-up: {res['catchup']}", flush=True)

        if args.steady_minutes > 0:
            leader = await find_leader(s, c)
            res["steady"] = await steady(
                s, c, leader.client_url, n, value, args.load_conns, args.steady_minutes, args.sample_seconds
            )
        res["final_memory"] = memory(c)
    finally:
        await s.close()
        c.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return res


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['machine']}")
    load = r.get("load")
    if load:
        print(f"load: {load['keys']} keys in {load['seconds']:.1f} s = {load['keys_per_s']:.0f} keys/s")
    for phase in ("empty", "loaded", "catchup", "final_memory"):
        mem = r.get(phase, {})
        mem = mem.get("memory", {}) if phase != "final_memory" else mem
        for name, m in mem.items():
            print(
                f"{phase:<13}{name:<4} RSS {m['rss_mib']:8.1f} MiB  peak {m['hwm_mib']:8.1f} MiB"
                f"  wal {m['wal_mib']:7.1f} MiB/{m['wal_files']} files"
                f"  snap {m['snap_mib']:7.1f} MiB/{m['snap_files']} files"
            )
    if load and "empty" in r and "loaded" in r:
        for kind in ("put", "range"):
            e, f = r["empty"][kind], r["loaded"][kind]
            print(
                f"{kind:<6} empty {e['rps']:7.0f}/s p50 {e['p50_ms']:6.1f} ms p99 {e['p99_ms']:6.1f} ms"
                f" | at {load['keys']} keys {f['rps']:7.0f}/s p50 {f['p50_ms']:6.1f} ms p99 {f['p99_ms']:6.1f} ms"
                f" | ratio {f['rps'] / e['rps']:.2f}"
            )
    b = r.get("backlog")
    if b:
        print(
            f"backlog  {b['backlog']} entries past the snapshot at {b['snapshot_index']} after {b['puts']} puts"
            f" in {b['seconds']} s ({b['snapshots_meanwhile']} snapshots meanwhile)"
        )
    for phase in ("restart", "catchup"):
        x = r.get(phase)
        if x:
            print(
                f"{phase:<8} {x['member']}: ready {x['ready_s']} s, sees marker {x['sees_marker_s']} s,"
                f" RSS after {x['rss_mib_after']:.0f} MiB, peak {x['hwm_mib']:.0f} MiB"
            )
    st = r.get("steady")
    if st:
        print(f"steady {st['minutes']} min: {st['puts_per_s']:.0f} puts/s, RSS change {st['rss_change_mib']} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-bytes", type=int, default=128)
    p.add_argument("--clients", type=int, default=32, help="concurrent loaders (txns of 128 puts)")
    p.add_argument("--load-conns", type=int, default=64, help="closed-loop clients for throughput and steady load")
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    p.add_argument(
        "--put-seconds",
        type=float,
        default=0.0,
        help="put windows (empty and loaded) last this long (default --seconds)",
    )
    p.add_argument("--skip-recovery", action="store_true", help="stop after the throughput at scale")
    p.add_argument(
        "--settle-limit",
        type=float,
        default=120.0,
        help="before each throughput pair, wait up to this long for the members' snapshot children to finish",
    )
    p.add_argument("--load-seconds", type=float, default=1200.0, help="stop loading after this long")
    p.add_argument("--recovery-limit", type=float, default=300.0, help="give up on restart/catch-up after this")
    p.add_argument(
        "--restart-backlog",
        type=int,
        default=0,
        help="before the kill, overwrite keys until the victim has applied this many entries past its last snapshot",
    )
    p.add_argument("--steady-minutes", type=float, default=3.0)
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--snapshot-count", type=int, default=20000, help="passed to every member")
    # Below the kernel's ephemeral range (32768 and up by default): a port in it may be taken as the source
    # port of an outgoing connection while a killed member is down, and its restart could not bind it.
    p.add_argument("--base-port", type=int, default=23000)
    p.add_argument("--profile-restart", action="store_true", help="run restart and catch-up under py-spy")
    p.add_argument("--dir", default=None, help="keep data and logs here")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
