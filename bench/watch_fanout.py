"""Watch fan-out load: many watch streams on one prefix, read by several client processes.

``run()`` opens ``watchers`` streaming watches (``POST /v3/watch``) on one prefix, spread
round-robin over a cluster's members and over ``clients`` worker processes; then it sends
``puts`` puts of keys under the prefix to the leader at a steady rate and measures, for each
delivered event, the time from sending its put to the event reaching the watcher's socket.

With ``per_stream`` = 1 each watcher has its own connection. With M > 1 the watchers are
multiplexed M to a stream, as etcd's clientv3 does with all the watches of a client and as
etcd's ``benchmark watch-latency`` does (N streams x M watchers): one request body holds the M
create requests back to back, and the results of all M come back on one response stream, told
apart by their watch ids. etcd 3.4's gateway now and then answers only some of the creates of
such a body (no created result and no error for the others; it did not answer a chunked body
that stays open at all), so a stream still short of created results after
:data:`CREATE_RETRY_S` is opened again before any put is sent, and counted in
``reopened_streams``.

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
* A kernel timestamp is exact only while each read carries one put's events: TCP stamps a read
  with its last segment's arrival (and merges queued segments), so when a worker reads a stream
  late enough that a later put's event is already there, the earlier events get the later time.
  Such events are counted (``late_read_events``); their latencies are upper bounds. A run whose
  count is more than a small share of the events measured the client's reading, not the server.
  This is why the workers keep their normal CPU priority: at the lowest (nice 19) a server that
  keeps both cores busy gets its streams read late, and etcd's events were 80 to 96 % late.
* Each worker reports its CPU time.

Every watcher must receive every put exactly once and in order: the result counts the events
delivered, duplicates, out-of-order and foreign events (a foreign event is a key not put by this
run, or a result whose watch id no created result named), and the watchers that got them all.
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
#: How long a stream may take to answer all its creates before it is opened again, and how often.
CREATE_RETRY_S = 5.0
CREATE_RETRIES_MAX = 3
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


class _Watch:
    """One watcher's deliveries: per put, the kernel's arrival time and the read time of its event."""

    def __init__(self, puts: int) -> None:
        self.arrived = [math.nan] * puts
        self.read = [math.nan] * puts
        self.created = False
        self.got = 0
        self.last = -1
        self.duplicates = 0
        self.out_of_order = 0
        self.foreign = 0

    def event(self, i: int | None, arrived: float, now: float) -> bool:
        """Record put ``i``'s event; True if it counts (not foreign, not a duplicate)."""
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
            return True
        return False


class _WatchStream:
    """One watch connection carrying ``len(watches)`` watchers: HTTP/1.1 response, chunked or not,
    newline-delimited JSON results.

    The request body holds one create request per watcher, back to back. The server answers the
    creates in order, each with a ``created`` result that names the watch id it chose (etcd and
    kvdisco number them per stream; the gateway leaves out a zero id), so the n-th created result
    binds its id to the n-th watcher; later results go to the watcher of their ``watch_id``.
    """

    def __init__(self, sock: socket.socket, index: dict[str, int], puts: int, watchers: int) -> None:
        self.sock = sock
        self.opened = time.monotonic()
        #: How many streams before this one were opened for the same watchers.
        self.reopened = 0
        #: base64 key -> put index.
        self.index = index
        self.puts = puts
        self.watches = [_Watch(puts) for _ in range(watchers)]
        #: watch id -> watcher, filled from the created results in order.
        self.by_id: dict[int, _Watch] = {}
        self.raw = bytearray()
        self.body = bytearray()
        self.headers_done = False
        self.chunked = False
        #: Chunk bytes still to read, then the CRLF after the chunk to skip.
        self.chunk_left = 0
        self.skip = 0
        self.closed = False
        self.error = ""
        #: Results for a watch id no created result named.
        self.unknown_ids = 0
        self.stamped = 0
        self.url = ""
        #: Put indexes of the events in the read being parsed, and the events that shared a read
        #: with a later put's event (their arrival time is the later one's: an upper bound).
        self._read_puts: list[int] = []
        self.late_read_events = 0

    @property
    def created(self) -> bool:
        return len(self.by_id) == len(self.watches)

    @property
    def complete(self) -> bool:
        return all(w.got >= self.puts for w in self.watches)

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
        puts = self._read_puts
        while (nl := body.find(b"\n", start)) >= 0:
            if nl > start:
                self._line(bytes(body[start:nl]), arrived, now)
            start = nl + 1
        if start:
            del body[:start]
        if puts:
            last = max(puts)
            self.late_read_events += sum(i < last for i in puts)
            puts.clear()

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
        wid = int(result.get("watch_id", 0))
        if result.get("canceled"):
            self.error = self.error or f"watch {wid} canceled: {result.get('cancel_reason', '')}"
        if result.get("created"):
            if wid in self.by_id or self.created:
                self.error = self.error or f"watch id {wid} created twice"
                return
            new = self.watches[len(self.by_id)]
            new.created = True
            self.by_id[wid] = new
        events = result.get("events", ())
        if not events:
            return
        w = self.by_id.get(wid)
        if w is None:
            self.unknown_ids += 1
            return
        index = self.index
        for ev in events:
            i = index.get(ev["kv"]["key"])
            if w.event(i, arrived, now) and i is not None:
                self._read_puts.append(i)


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
    create = orjson.dumps({"create_request": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}})
    errors: list[str] = []
    streams: dict[int, _WatchStream] = {}
    missing = reopened = 0
    poller = select.epoll()

    def open_stream(url: str, watchers: int) -> _WatchStream | None:
        try:
            sock = _open(url, b"\n".join([create] * watchers))
        except OSError as exc:
            errors.append(f"connect {url}: {exc}")
            return None
        stream = _WatchStream(sock, index, puts, watchers)
        stream.url = url
        streams[sock.fileno()] = stream
        poller.register(sock.fileno(), select.EPOLLIN)
        return stream

    every: list[_WatchStream] = []
    for url, watchers in spec["streams"]:
        stream = open_stream(url, watchers)
        if stream is None:
            missing += watchers
        else:
            every.append(stream)

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
        # A stream still short of created results after a while is opened again (events only
        # start once every worker is ready, so a new stream misses nothing).
        for i, s in enumerate(every):
            if s.created or s.closed or s.error or time.monotonic() - s.opened < CREATE_RETRY_S:
                continue
            if s.reopened >= CREATE_RETRIES_MAX:
                s.error = f"{len(s.by_id)} of {len(s.watches)} watchers created, {s.reopened} times"
                continue
            poller.unregister(s.sock.fileno())
            del streams[s.sock.fileno()]
            s.close()
            again = open_stream(s.url, len(s.watches))
            if again is not None:
                again.reopened = s.reopened + 1
                every[i] = again
                reopened += 1
    for s in every:
        if not (s.created or s.error):
            s.error = f"{len(s.by_id)} of {len(s.watches)} watchers created in {READY_TIMEOUT_S:.0f} s"
    sys.stdout.write(f"ready {sum(w.created for s in every for w in s.watches)}\n")
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

    watches = [(s, w) for s in every for w in s.watches]
    return {
        "urls": [s.url for s, _ in watches],
        "arrived": [times(w.arrived) for _, w in watches],
        "read": [times(w.read) for _, w in watches],
        "created": sum(w.created for _, w in watches),
        "missing_watchers": missing,
        "reopened_streams": reopened,
        "duplicates": sum(w.duplicates for _, w in watches),
        "out_of_order": sum(w.out_of_order for _, w in watches),
        "foreign": sum(w.foreign for _, w in watches) + sum(s.unknown_ids for s in every),
        "late_read_events": sum(s.late_read_events for s in every),
        "unstamped_reads": 0 if all(s.stamped for s in every if any(w.got for w in s.watches)) else 1,
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


def stream_shape(watchers: int, per_stream: int) -> list[int]:
    """How many watchers each stream carries: ``per_stream`` each, the last one the rest."""
    if watchers < 1 or per_stream < 1:
        raise ValueError("watchers and watchers per stream must be at least 1")
    full, rest = divmod(watchers, per_stream)
    return [per_stream] * full + ([rest] if rest else [])


async def run(
    client_urls: list[str],
    leader: str,
    watchers: int,
    puts: int,
    rate: float,
    clients: int = 2,
    per_stream: int = 1,
) -> dict[str, Any]:
    """The fan-out test against one cluster; latencies in ms, counts, and the client's own load.

    The ``watchers`` are carried by streams of ``per_stream`` watchers each (the last may have
    fewer), as an etcd client multiplexes its watches on one stream; streams are spread
    round-robin over the members and the worker processes.
    """
    prefix = f"fan-{time.monotonic_ns()}/".encode()
    shape = stream_shape(watchers, per_stream)
    streams = [[client_urls[i % len(client_urls)], n] for i, n in enumerate(shape)]
    clients = max(1, min(clients, len(streams)))
    procs = []
    for c in range(clients):
        spec = {"prefix": _b64(prefix), "puts": puts, "streams": streams[c::clients]}
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
        "watchers": watchers,
        "streams": len(streams),
        "watchers_per_stream": per_stream,
        "watchers_ready": ready,
        "delivered": len(arrived),
        "expected": watchers * puts,
        "complete_watchers": complete,
        "duplicates": sum(r["duplicates"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "foreign": sum(r["foreign"] for r in results),
        "missing_watchers": sum(r["missing_watchers"] for r in results),
        "reopened_streams": sum(r["reopened_streams"] for r in results),
        "errors": sorted({e for r in results for e in r["errors"]})[:5],
        "kernel_timestamps": not any(r["unstamped_reads"] for r in results),
        "late_read_events": sum(r["late_read_events"] for r in results),
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
    p.add_argument(
        "--watchers-per-stream",
        type=int,
        default=1,
        metavar="M",
        help="watchers multiplexed on one watch stream (M create requests on one POST /v3/watch), as etcd "
        "clients do; 1 gives every watcher its own connection",
    )
    args = p.parse_args()
    if args.worker:
        _worker_main(args.worker)
        return
    if not args.urls:
        p.error("--urls is required")
    urls = args.urls.split(",")
    result = uvloop.run(run(urls, urls[0], args.watchers, args.puts, args.rate, args.clients, args.watchers_per_stream))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
