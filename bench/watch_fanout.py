"""Watch fan-out load: many watch streams on one prefix, read by several client processes.

``run()`` opens ``watchers`` streaming watches (``POST /v3/watch``) on one prefix, each on its
own connection, spread round-robin over a cluster's members and over ``clients`` worker
processes; then it sends ``puts`` puts of keys under the prefix to the leader at a steady rate and
measures, for each delivered event, the time from sending its put to the event reaching the
watcher's socket.

The client must not be what is measured:

* Each event's arrival time is the kernel's receive timestamp of the socket read that completed
  it (``SO_TIMESTAMPNS``, wall clock, as the parent's send times), not the time the worker got
  round to reading it; a worker busy with 500 sockets at once would otherwise add its own queue.
  The time of the read itself is kept too and reported as ``read_p50_ms``/``read_p99_ms``.
* A worker is a plain loop over non-blocking sockets and ``epoll`` (no HTTP client library, no
  event loop): every 5 ms it reads each ready socket once with ``recvmsg``, de-chunks the body,
  splits lines, and looks each event's base64 key up in a table of the keys it expects (no
  base64 decoding). Batching the reads keeps the client's CPU (and its wake-ups) away from the
  servers it measures, and costs the measure nothing since arrival times come from the kernel.
* Each worker reports its CPU time.

Every watcher must receive every put exactly once and in order: the result counts the events
delivered, duplicates, out-of-order and foreign events, and the watchers that got them all.
etcd and kvdisco are driven by the same code.

Run as a worker by ``run()`` itself: ``python watch_fanout.py --worker SPEC_JSON``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import resource
import select
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

__all__ = ["run"]

#: How long the watchers have to be created, and to receive every event after the last put.
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 30.0
#: A worker's result is one JSON line (two times per watcher and put: about 4 MB at 1,000 x 100).
RESULT_BYTES_MAX = 1 << 28
#: A worker's sleep between sweeps over its sockets, once the watches are created.
READ_INTERVAL_S = 0.005
CONNECT_TIMEOUT_S = 10.0
#: One read's size, and room for its ancillary data (the timestamp).
RECV_BYTES = 1 << 16
ANCILLARY_BYTES = 256

#: Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS), which Python's socket module does not name:
#: each read carries a struct timespec, the wall-clock time its last packet arrived.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _key(prefix: bytes, n: int) -> bytes:
    return prefix + b"%06d" % n


# --- worker ----------------------------------------------------------------------------------


class _WatchStream:
    """One watch connection: HTTP/1.1 response, chunked or not, newline-delimited JSON results."""

    def __init__(self, sock: socket.socket, index: dict[str, int], puts: int) -> None:
        self.sock = sock
        #: base64 key -> put index.
        self.index = index
        self.puts = puts
        self.raw = bytearray()
        self.body = bytearray()
        self.headers_done = False
        self.chunked = False
        #: Chunk bytes still to read, then the CRLF after the chunk to skip.
        self.chunk_left = 0
        self.skip = 0
        self.created = False
        self.closed = False
        self.error = ""
        #: Per put: the kernel's arrival time and the read time of its event (NaN until it comes).
        self.arrived = [math.nan] * puts
        self.read = [math.nan] * puts
        self.got = 0
        self.last = -1
        self.duplicates = 0
        self.out_of_order = 0
        self.foreign = 0
        self.stamped = 0

    @property
    def complete(self) -> bool:
        return self.got >= self.puts

    def close(self, error: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.error = self.error or error
            self.sock.close()

    def on_readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(RECV_BYTES, ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"read: {exc}")
            return
        now = time.time()
        if not data:
            self.close("" if self.complete else "connection closed by the server")
            return
        arrived = now
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(cdata)
                arrived = sec + nsec * 1e-9
                self.stamped += 1
        self.feed(data, arrived, now)

    def feed(self, data: bytes, arrived: float, now: float) -> None:
        self.raw += data
        if not self.headers_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).decode("latin-1").lower()
            del self.raw[: end + 4]
            self.headers_done = True
            if not head.startswith(("http/1.1 200", "http/1.0 200")):
                self.error = head.split("\r\n", 1)[0]
            self.chunked = "transfer-encoding: chunked" in head
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.raw
            self.raw.clear()
        body = self.body
        start = 0
        while (nl := body.find(b"\n", start)) >= 0:
            if nl > start:
                self._line(bytes(body[start:nl]), arrived, now)
            start = nl + 1
        if start:
            del body[:start]

    def _dechunk(self) -> None:
        raw, pos, n = self.raw, 0, len(self.raw)
        while pos < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                self.body += raw[pos : pos + take]
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.skip = 2
            elif self.skip:
                take = min(self.skip, n - pos)
                pos += take
                self.skip -= take
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(raw[pos:eol]).split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    pos = n
                    break
                self.chunk_left = size
        del raw[:pos]

    def _line(self, line: bytes, arrived: float, now: float) -> None:
        msg = orjson.loads(line)
        result = msg.get("result")
        if result is None:
            self.error = self.error or line[:200].decode("utf-8", "replace")
            return
        if result.get("created"):
            self.created = True
        if result.get("canceled"):
            self.error = self.error or f"watch canceled: {result.get('cancel_reason', '')}"
        for ev in result.get("events", ()):
            i = self.index.get(ev["kv"]["key"])
            if i is None:
                self.foreign += 1
            elif not math.isnan(self.arrived[i]):
                self.duplicates += 1
            else:
                if i < self.last:
                    self.out_of_order += 1
                self.last = i
                self.arrived[i] = arrived
                self.read[i] = now
                self.got += 1


def _open(url: str, body: bytes) -> socket.socket:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        request = (
            f"POST /v3/watch HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock.sendall(request)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _ms(sorted_s: list[float], p: float) -> float:
    return sorted_s[int(p * (len(sorted_s) - 1))] * 1e3 if sorted_s else math.nan


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Open the watches, say "ready", then read every stream until each has every event, or until
    the parent writes a line (or closes stdin).

    Reads are batched: the worker sleeps :data:`READ_INTERVAL_S` between sweeps over the ready
    sockets, so each event costs one ``recvmsg`` and no wake-up of its own. Arrival times come
    from the kernel, so the sleep adds nothing to the latencies measured (it shows in the read
    times); it keeps the client's CPU away from the servers it measures.
    """
    prefix = base64.b64decode(spec["prefix"])
    puts = int(spec["puts"])
    index = {_b64(_key(prefix, n)): n for n in range(puts)}
    body = orjson.dumps({"create_request": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}})
    errors: list[str] = []
    streams: dict[int, _WatchStream] = {}
    urls: list[str] = []
    poller = select.epoll()
    for url in spec["urls"]:
        try:
            sock = _open(url, body)
        except OSError as exc:
            errors.append(f"connect {url}: {exc}")
            continue
        streams[sock.fileno()] = _WatchStream(sock, index, puts)
        urls.append(url)
        poller.register(sock.fileno(), select.EPOLLIN)
    every = list(streams.values())

    def sweep(timeout_s: float) -> bool:
        """Read once from each readable socket; False when the parent said stop."""
        for fd, _ in poller.poll(timeout_s):
            if fd == stdin_fd:
                return False
            stream = streams[fd]
            stream.on_readable()
            if stream.closed:
                poller.unregister(fd)
        return True

    stdin_fd = -1
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not all(s.created or s.closed or s.error for s in every):
        sweep(0.1)
    sys.stdout.write(f"ready {sum(s.created for s in every)}\n")
    sys.stdout.flush()

    stdin_fd = sys.stdin.fileno()
    poller.register(stdin_fd, select.EPOLLIN)  # "stop", or EOF when the parent goes
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    waiting = len(every)
    while waiting:
        time.sleep(READ_INTERVAL_S)
        if not sweep(0):
            break
        waiting = sum(not (s.complete or s.closed) for s in every)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for s in every:
        s.close()
    poller.close()

    def times(values: list[float]) -> list[float | None]:
        return [None if math.isnan(t) else t for t in values]

    return {
        "urls": urls,
        "arrived": [times(s.arrived) for s in every],
        "read": [times(s.read) for s in every],
        "created": sum(s.created for s in every),
        "missing_watchers": len(spec["urls"]) - len(every),
        "duplicates": sum(s.duplicates for s in every),
        "out_of_order": sum(s.out_of_order for s in every),
        "foreign": sum(s.foreign for s in every),
        "unstamped_reads": 0 if all(s.stamped for s in every if s.got) else 1,
        "errors": (errors + sorted({s.error for s in every if s.error}))[:5],
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }


def _worker_main(spec_json: str) -> None:
    result = _worker(orjson.loads(spec_json))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()


# --- parent ----------------------------------------------------------------------------------


async def _put(session: aiohttp.ClientSession, url: str, key: bytes) -> None:
    body = {"key": _b64(key), "value": _b64(b"x" * 64)}
    async with session.post(url + "/v3/kv/put", json=body) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"put {key!r}: HTTP {r.status}")


async def run(
    client_urls: list[str], leader: str, watchers: int, puts: int, rate: float, clients: int = 2
) -> dict[str, Any]:
    """The fan-out test against one cluster; latencies in ms, counts, and the client's own load."""
    prefix = f"fan-{time.monotonic_ns()}/".encode()
    clients = max(1, min(clients, watchers))
    urls = [client_urls[i % len(client_urls)] for i in range(watchers)]
    procs = []
    for c in range(clients):
        spec = {"prefix": _b64(prefix), "puts": puts, "urls": urls[c::clients]}
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                orjson.dumps(spec).decode(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=RESULT_BYTES_MAX,
            )
        )
    try:
        ready = 0
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), READY_TIMEOUT_S + 30)
            if not line.startswith(b"ready "):
                raise RuntimeError(f"watch worker failed to start: {line!r}")
            ready += int(line.split()[1])
        sent = [math.nan] * puts
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            for n in range(puts):
                delay = t0 + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[n] = time.time()  # the clock of the kernel's receive timestamps
                await _put(s, leader, _key(prefix, n))
        results = []
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for p in procs:
            assert p.stdout is not None and p.stdin is not None
            try:
                out = await asyncio.wait_for(p.stdout.readline(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                p.stdin.write(b"stop\n")
                await p.stdin.drain()
                out = await asyncio.wait_for(p.stdout.readline(), DRAIN_TIMEOUT_S)
            results.append(orjson.loads(out))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()

    def latencies(field: str) -> list[float]:
        return sorted(t - sent[i] for r in results for got in r[field] for i, t in enumerate(got) if t is not None)

    arrived, read = latencies("arrived"), latencies("read")
    by_member: dict[str, list[float]] = {u: [] for u in client_urls}
    for r in results:
        for url, got in zip(r["urls"], r["arrived"], strict=True):
            by_member[url].extend(t - sent[i] for i, t in enumerate(got) if t is not None)
    complete = sum(all(t is not None for t in got) for r in results for got in r["arrived"])
    return {
        "watchers_ready": ready,
        "delivered": len(arrived),
        "expected": watchers * puts,
        "complete_watchers": complete,
        "duplicates": sum(r["duplicates"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "foreign": sum(r["foreign"] for r in results),
        "missing_watchers": sum(r["missing_watchers"] for r in results),
        "errors": sorted({e for r in results for e in r["errors"]})[:5],
        "kernel_timestamps": not any(r["unstamped_reads"] for r in results),
        "p50_ms": _ms(arrived, 0.50),
        "p99_ms": _ms(arrived, 0.99),
        "max_ms": _ms(arrived, 1.0),
        "read_p50_ms": _ms(read, 0.50),
        "read_p99_ms": _ms(read, 0.99),
        "by_member_p50_p99_ms": {
            u: [round(_ms(sorted(v), 0.5), 1), round(_ms(sorted(v), 0.99), 1)] for u, v in by_member.items()
        },
        "client_processes": clients,
        "client_cpu_s": sum(r["cpu_s"] for r in results),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", metavar="SPEC_JSON", help="run as a worker of run() (internal)")
    p.add_argument("--urls", help="comma-separated client URLs; the first one takes the puts")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--puts", type=int, default=100)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=2)
    args = p.parse_args()
    if args.worker:
        _worker_main(args.worker)
        return
    if not args.urls:
        p.error("--urls is required")
    urls = args.urls.split(",")
    print(orjson.dumps(uvloop.run(run(urls, urls[0], args.watchers, args.puts, args.rate, args.clients))).decode())


if __name__ == "__main__":
    main()
