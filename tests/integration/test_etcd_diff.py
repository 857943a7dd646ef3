"""Differential tests: the same request sequences against a real etcd 3.4 and a kvdisco node.

One etcd member and one kvdisco member are started once for the module (both empty, so their
revisions move in lockstep). Every request in a sequence goes to both servers, in the same
order, and the two answers must agree after normalisation:

* the HTTP status;
* the JSON body, without ``header.cluster_id``, ``header.member_id`` and ``header.raft_term``
  (random per cluster). ``header.revision`` stays: both stores start at revision 1;
* error bodies on ``code`` and ``message`` (``error`` repeats ``message``).

Lease IDs are given explicitly in the corpus, so they compare as they are; grants without an
ID are checked by shape. :data:`DECODE_ERRORS` (undecodable bodies: both
refuse, with different wording) are compared on status and code only; :data:`INTENDED_DIFFERENCES`
lists the requests kvdisco deliberately refuses where etcd accepts them.

Soft assertions: a test records every mismatch of its sequence and fails at the end with the
whole list, so one run shows all differences. If one server accepted a write the other refused,
their revisions drift; each test starts by padding the lagging server with writes to a scratch
key, so one difference does not cascade into every later test.

The cases at the end record the differences this suite found: kvdisco bugs since fixed, and one
intended difference (a strict xfail, so it must keep differing or its entry goes). The random
walk (:func:`test_random_sequence`) takes ``ETCD_DIFF_SEED`` and ``ETCD_DIFF_OPS`` from the
environment for longer explorations.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .cluster import free_port

ETCD = shutil.which("etcd")

pytestmark = [
    pytest.mark.skipif(ETCD is None, reason="etcd is not on PATH (apt-get install etcd-server)"),
    pytest.mark.timeout(60),
]

READY_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 5.0
#: Scratch key used to pad a lagging server's revision after a mismatch (never read by the corpus).
PAD_KEY = b"\x00pad"


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


# --- the two servers ------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def post(self, path: str, body: Any, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, Any]:
        """``(status, parsed JSON or the raw text)``; ``body`` is a JSON value, or bytes sent as is."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            pass
        try:  # a stream endpoint answers one JSON object per line
            return resp.status, [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def logs(self) -> str:
        return f"==== {self.name}\n{self.log_path.read_text(errors='replace')[-3000:]}"


def _wait(server: Server, ready: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{server.name} not ready in {READY_TIMEOUT_S} s:\n{server.logs()}")


def _start_etcd(root: Path) -> Server:
    port, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    log_path = root / "etcd.log"
    cmd = [
        str(ETCD),
        "--name", "e1",
        "--data-dir", str(root / "etcd.data"),
        "--listen-client-urls", url,
        "--advertise-client-urls", url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"e1={peer_url}",
        "--initial-cluster-token", f"diff-{root.name}",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    server = Server("etcd", port, proc, log_path)
    _wait(server, lambda: server.post("/v3/maintenance/status", {}, 1.0)[1].get("leader") not in (None, "0"))
    return server


def _start_kvdisco(root: Path) -> Server:
    port, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    log_path = root / "kvdisco.log"
    cmd = [
        sys.executable, "-m", "kvdisco.cli.server", "serve",
        "--name", "k1",
        "--data-dir", str(root / "kvdisco.data"),
        "--listen-client-urls", url,
        "--listen-peer-urls", peer_url,
        "--initial-cluster", f"k1={peer_url}",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    server = Server("kvdisco", port, proc, log_path)

    def ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    _wait(server, ready)
    return server


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# --- normalisation and comparison -----------------------------------------------------------

_HEADER_NOISE = ("cluster_id", "member_id", "raft_term")


def normalise(body: Any) -> Any:
    """Drop the per-cluster header fields everywhere; reduce error bodies to code and message."""
    if isinstance(body, list):
        return [normalise(x) for x in body]
    if not isinstance(body, dict):
        return body
    if "code" in body and "message" in body and "header" not in body:
        return {"code": body["code"], "message": body["message"]}
    out = {}
    for k, v in body.items():
        if k == "header" and isinstance(v, dict):
            out[k] = {hk: hv for hk, hv in v.items() if hk not in _HEADER_NOISE}
        else:
            out[k] = normalise(v)
    return out


@dataclass
class Pair:
    etcd: Server
    kvdisco: Server
    mismatches: list[str] = field(default_factory=list)
    requests: int = 0

    def both(self, path: str, body: Any) -> tuple[tuple[int, Any], tuple[int, Any]]:
        self.requests += 1
        return self.etcd.post(path, body), self.kvdisco.post(path, body)

    def same(self, path: str, body: Any, note: str = "") -> tuple[int, Any]:
        """Send to both; record a mismatch unless status and normalised body agree. Returns etcd's."""
        (es, eb), (ks, kb) = self.both(path, body)
        e, k = (es, normalise(eb)), (ks, normalise(kb))
        if e != k:
            self.mismatch(path, body, e, k, note)
        return e

    def same_ttl(self, path: str, body: Any) -> None:
        """As :meth:`same`, for timetolive: remaining TTL and key order normalised (see _ttl_normalised)."""
        (es, eb), (ks, kb) = self.both(path, body)
        e, k = (es, _ttl_normalised(normalise(eb))), (ks, _ttl_normalised(normalise(kb)))
        if e != k:
            self.mismatch(path, body, e, k)

    def mismatch(self, path: str, body: Any, e: Any, k: Any, note: str = "") -> None:
        shown = body if isinstance(body, bytes) else json.dumps(body)
        self.mismatches.append(
            f"{note}\n  POST {path} {str(shown)[:400]}\n    etcd:    {json.dumps(e)[:800]}\n"
            f"    kvdisco: {json.dumps(k)[:800]}"
        )

    def check(self, what: str, e: Any, k: Any) -> None:
        if e != k:
            self.mismatches.append(f"{what}\n    etcd:    {json.dumps(e)[:1500]}\n    kvdisco: {json.dumps(k)[:1500]}")

    def revisions(self) -> tuple[int, int]:
        out = []
        for s in (self.etcd, self.kvdisco):
            _, body = s.post("/v3/kv/range", {"key": b64(PAD_KEY)})
            out.append(int(body["header"]["revision"]))
        return out[0], out[1]

    def resync(self) -> None:
        """Pad the lagging server so both are at the same revision (after an earlier mismatch).

        PAD_KEY then exists on one side only: it sorts before every corpus key, and only the
        first test reads all keys."""
        e, k = self.revisions()
        lagging = self.etcd if e < k else self.kvdisco
        for _ in range(abs(e - k)):
            lagging.post("/v3/kv/put", {"key": b64(PAD_KEY)})
        assert self.revisions()[0] == self.revisions()[1]

    def revision(self) -> int:
        e, k = self.revisions()
        self.check("current revision", e, k)
        return e

    def assert_clean(self) -> None:
        if self.mismatches:
            found, self.mismatches = self.mismatches, []
            pytest.fail(f"{len(found)} difference(s) etcd vs kvdisco:\n" + "\n".join(found))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    root = tmp_path_factory.mktemp("etcd_diff")
    etcd = _start_etcd(root)
    try:
        kvdisco = _start_kvdisco(root)
        try:
            yield etcd, kvdisco
        finally:
            _stop(kvdisco)
    finally:
        _stop(etcd)


@pytest.fixture
def pair(servers: tuple[Server, Server]) -> Iterator[Pair]:
    p = Pair(*servers)
    p.resync()
    yield p
    p.assert_clean()


def put(p: Pair, key: str, value: str = "", **extra: Any) -> tuple[int, Any]:
    return p.same("/v3/kv/put", {"key": b64(key), "value": b64(value), **extra})


def rng(p: Pair, key: str, range_end: str | bytes | None = None, **extra: Any) -> tuple[int, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return p.same("/v3/kv/range", {**body, **extra})


# --- KV: put and range ----------------------------------------------------------------------


def test_range_with_every_option(pair: Pair) -> None:
    p = pair
    for i, (k, v) in enumerate([("r/b", "2"), ("r/a", "3"), ("r/c", "1"), ("r/a", "33"), ("r/d", ""), ("r/e", "5")]):
        put(p, k, v, prev_kv=i % 2 == 0)
    first = p.revision() - 5
    rng(p, "r/a")
    rng(p, "r/none")
    rng(p, "r/", "r0")  # prefix
    rng(p, "r/c", "\x00")  # from key
    rng(p, "\x00", "\x00")  # all keys
    rng(p, "r/", "r0", limit=2)
    rng(p, "r/", "r0", limit="2")
    rng(p, "r/", "r0", limit=5)
    rng(p, "r/", "r0", limit=6)
    rng(p, "r/", "r0", count_only=True)
    rng(p, "r/", "r0", count_only=True, limit=1)
    rng(p, "r/", "r0", keys_only=True)
    rng(p, "r/", "r0", keys_only=True, limit=1, count_only=False)
    rng(p, "r/", "r0", serializable=True)
    rng(p, "r/b", "r/a")  # empty interval
    for order in ("NONE", "ASCEND", "DESCEND", 0, 1, 2):
        for target in ("KEY", "VERSION", "CREATE", "MOD", "VALUE", 0, 1, 2, 3, 4):
            rng(p, "r/", "r0", sort_order=order, sort_target=target)
            if not (order in ("NONE", 0) and target not in ("KEY", 0)):  # see test_intended_sort_none_with_limit
                rng(p, "r/", "r0", sort_order=order, sort_target=target, limit=2)
    rng(p, "r/", None, sortOrder="DESCEND", sortTarget="VALUE", keysOnly=True, rangeEnd=b64("r0"), countOnly=False)
    rng(p, "r/", "r0", revision=first)
    rng(p, "r/", "r0", revision=str(first + 2), sort_order="DESCEND")
    rng(p, "r/a", revision=first + 1)
    rng(p, "r/", "r0", revision=1)
    for name in ("min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision"):
        for value in (first, first + 1, first + 3, first + 100):
            rng(p, "r/", "r0", **{name: value})
            rng(p, "r/", "r0", **{name: value}, count_only=True)
            rng(p, "r/", "r0", **{name: value}, limit=1)
    rng(p, "r/", "r0", min_mod_revision=first + 1, max_mod_revision=first + 3, min_create_revision=first)
    rng(p, "r/", "r0", revision=p.revision())
    rng(p, "r/", "r0", revision=p.revision() + 1)  # future revision
    rng(p, "r/", "r0", revision=p.revision() + 1000)
    rng(p, "")  # empty key
    rng(p, "", "\x00")
    rng(p, "", "r0")


def test_put_options(pair: Pair) -> None:
    p = pair
    put(p, "p/a", "1")
    put(p, "p/a", "2", prev_kv=True)
    put(p, "p/new", "x", prev_kv=True)  # no previous: no prev_kv
    put(p, "p/a", ignore_value=True, prev_kv=True)
    put(p, "p/a", "v", ignore_value=True)  # value given with ignore_value
    put(p, "p/missing", ignore_value=True)  # key not found
    put(p, "p/missing", ignore_lease=True)
    put(p, "", "v")  # empty key
    p.same("/v3/kv/put", {"key": b64("p/novalue")})
    p.same("/v3/kv/put", {"key": b64("p/nolease"), "lease": 0})
    put(p, "p/l", "v", lease=0x7001)  # lease not found
    p.same("/v3/lease/grant", {"ID": 0x7001, "TTL": 60})
    put(p, "p/l", "v", lease=0x7001, prev_kv=True)
    put(p, "p/l", "w", ignore_lease=True, prev_kv=True)  # keeps the lease
    put(p, "p/l", "w", ignore_lease=True, lease=0x7001)  # lease given with ignore_lease
    put(p, "p/l", ignore_value=True, ignore_lease=True, prev_kv=True)
    rng(p, "p/l")
    put(p, "p/l", "x", prev_kv=True)  # detaches the lease
    rng(p, "p/l")
    put(p, "p/l", "y", lease=str(0x7001))
    p.same_ttl("/v3/lease/timetolive", {"ID": 0x7001, "keys": True})
    p.same("/v3/lease/revoke", {"ID": 0x7001})
    rng(p, "p/", "p0")
    put(p, "p/bin", "\x00\xff\xfe")
    rng(p, "p/bin")


def test_put_error_precedence(pair: Pair) -> None:
    """Which error wins when a put is wrong in several ways."""
    p = pair
    put(p, "pe/exists", "1")
    put(p, "pe/exists", ignore_value=True, lease=0x7499)  # lease not found
    put(p, "pe/missing", "v", ignore_value=True, lease=0x7499)  # value provided (checked before apply)
    put(p, "pe/missing", ignore_lease=True, lease=0x7499)  # lease provided
    put(p, "", ignore_value=True, lease=0x7499)  # key not provided
    for flag in ("ignore_value", "ignore_lease"):
        p.same("/v3/kv/txn", {"success": [{"request_put": {"key": b64("pe/missing"), flag: True}}]})
    # inside a txn etcd checks the key before the lease (unlike a plain put)
    p.same("/v3/kv/txn", {"success": [_op_put("pe/missing", ignore_value=True, lease=0x7499)]})
    p.same("/v3/kv/txn", {"success": [_op_put("pe/exists", ignore_value=True, lease=0x7499)]})


def test_delete_range(pair: Pair) -> None:
    p = pair
    for k in ("d/a", "d/b", "d/c", "d/d", "e/x"):
        put(p, k, k.upper())
    p.same("/v3/kv/deleterange", {"key": b64("d/none")})
    p.same("/v3/kv/deleterange", {"key": b64("d/none"), "prev_kv": True})
    p.same("/v3/kv/deleterange", {"key": b64("d/a"), "prev_kv": True})
    p.same("/v3/kv/deleterange", {"key": b64("d/b"), "range_end": b64("d/d"), "prev_kv": True})
    p.same("/v3/kv/deleterange", {"key": b64("d/"), "range_end": b64("d0")})
    p.same("/v3/kv/deleterange", {"key": b64("")})
    p.same("/v3/kv/deleterange", {"key": b64("e/"), "range_end": b64("\x00"), "prevKv": True})
    p.same("/v3/kv/deleterange", {"key": b64("e/")})
    rng(p, "d/", "f")


# --- txn ------------------------------------------------------------------------------------


def _cmp(key: str, target: str, result: str, **operand: Any) -> dict[str, Any]:
    return {"key": b64(key), "target": target, "result": result, **operand}


def _op_put(key: str, value: str = "", **extra: Any) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value), **extra}}


def _op_range(key: str, range_end: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), **extra}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return {"request_range": body}


def _op_del(key: str, range_end: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), **extra}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return {"request_delete_range": body}


def test_txn(pair: Pair) -> None:
    p = pair
    txn = "/v3/kv/txn"
    p.same(txn, {})
    put(p, "t/a", "10")
    put(p, "t/b", "20")
    put(p, "t/a", "11")
    rev = p.revision()
    p.same("/v3/lease/grant", {"ID": 0x7101, "TTL": 60})
    put(p, "t/l", "lease", lease=0x7101)
    operands = {
        "VERSION": ("version", [0, 1, 2, 3, "2"]),
        "CREATE": ("create_revision", [0, rev - 2, rev - 1, rev, rev + 5]),
        "MOD": ("mod_revision", [0, rev - 1, rev, rev + 1]),
        "VALUE": ("value", [b64(""), b64("10"), b64("11"), b64("12"), b64("1")]),
        "LEASE": ("lease", [0, 0x7101, 0x7102]),
    }
    for target, (field_name, values) in operands.items():
        for result in ("EQUAL", "GREATER", "LESS", "NOT_EQUAL"):
            for value in values:
                for key in ("t/a", "t/l", "t/missing"):
                    p.same(
                        txn,
                        {
                            "compare": [_cmp(key, target, result, **{field_name: value})],
                            "success": [_op_range(key)],
                            "failure": [_op_range("t/", "t0", keys_only=True)],
                        },
                        note=f"compare {key} {target} {result} {value}",
                    )
    # compares over ranges (etcd 3.4 supports range_end in Compare)
    for target, (field_name, values) in operands.items():
        for result in ("EQUAL", "GREATER", "LESS", "NOT_EQUAL"):
            for value in values[:3]:
                for end in ("t0", "\x00", "t/b"):
                    p.same(
                        txn,
                        {
                            "compare": [{**_cmp("t/", target, result, **{field_name: value}), "range_end": b64(end)}],
                            "success": [_op_range("t/x")],
                        },
                        note=f"range compare {target} {result} {value} end={end!r}",
                    )
    # enum numbers, absent target/result (VERSION / EQUAL, operand 0)
    p.same(txn, {"compare": [{"key": b64("t/a"), "target": 1, "result": 3, "create_revision": 1}]})
    p.same(txn, {"compare": [{"key": b64("t/missing")}], "success": [_op_range("t/missing")]})
    p.same(txn, {"compare": [{"key": b64("t/a"), "target": "VALUE", "result": "EQUAL"}]})
    # several compares, all ops kinds, success and failure, prev_kv in ops
    p.same(
        txn,
        {
            "compare": [_cmp("t/a", "VALUE", "EQUAL", value=b64("11")), _cmp("t/b", "VERSION", "EQUAL", version=1)],
            "success": [
                _op_put("t/c", "30", prev_kv=True),
                _op_put("t/a", "12", prev_kv=True),
                _op_range("t/", "t0", sort_order="DESCEND"),
                _op_del("t/b", prev_kv=True),
                _op_range("t/", "t0", count_only=True),
            ],
            "failure": [_op_put("t/failed", "1")],
        },
    )
    # failing txn runs failure
    p.same(
        txn,
        {
            "compare": [_cmp("t/a", "VALUE", "EQUAL", value=b64("11"))],
            "success": [_op_put("t/never", "1")],
            "failure": [_op_put("t/failed", "1", prev_kv=True), _op_range("t/failed"), _op_del("t/none")],
        },
    )
    p.same(txn, {"compare": [_cmp("t/a", "VALUE", "EQUAL", value=b64("nope"))]})  # fails, no ops
    p.same(txn, {"success": [_op_range("t/a")]})  # read-only: revision unchanged
    # nested txns
    nested = {
        "compare": [_cmp("t/a", "VERSION", "GREATER", version=0)],
        "success": [
            _op_put("t/n1", "1"),
            {
                "request_txn": {
                    "compare": [_cmp("t/n1", "VALUE", "EQUAL", value=b64("1"))],
                    "success": [_op_put("t/n2", "2", prev_kv=True), {"request_txn": {"success": [_op_range("t/n2")]}}],
                    "failure": [_op_put("t/n3", "3")],
                }
            },
            {"request_txn": {"compare": [_cmp("t/n1", "VALUE", "EQUAL", value=b64("x"))]}},
            {"request_txn": {}},
            _op_range("t/n", "t/o"),
        ],
    }
    p.same(txn, nested)
    p.same(txn, {"success": [{"request_txn": {"success": [_op_put("t/n1", "z")]}}]})
    # duplicate keys
    p.same(txn, {"success": [_op_put("t/d", "1"), _op_put("t/d", "2")]})
    p.same(txn, {"success": [_op_put("t/d", "1"), _op_del("t/d")]})
    p.same(txn, {"success": [_op_put("t/d1", "1"), _op_del("t/d", "t/e")]})
    p.same(txn, {"success": [_op_del("t/d", "t/e"), _op_del("t/d", "t/e")]})
    p.same(txn, {"success": [_op_put("t/d", "1"), _op_range("t/d"), _op_put("t/d2", "2")]})
    p.same(txn, {"success": [_op_put("t/d", "1")], "failure": [_op_put("t/d", "2")]})  # different branches
    p.same(txn, {"success": [_op_put("t/d", "1"), {"request_txn": {"success": [_op_put("t/d", "2")]}}]})
    p.same(
        txn,
        {
            "success": [
                {"request_txn": {"success": [_op_put("t/d", "1")]}},
                {"request_txn": {"success": [_op_put("t/d", "2")]}},
            ]
        },
    )
    p.same(
        txn,
        {"success": [{"request_txn": {"success": [_op_put("t/d", "1")], "failure": [_op_put("t/d", "2")]}}]},
    )
    # errors inside ops
    p.same(txn, {"success": [_op_put("", "1")]})
    p.same(txn, {"success": [_op_put("t/x", "1", lease=0x7199)]})
    p.same(txn, {"success": [_op_put("t/x-missing", ignore_value=True)]})
    p.same(txn, {"success": [_op_range("t/a", revision=p.revision() + 10)]})
    # op limits: 128 fine, 129 too many
    p.same(txn, {"success": [_op_put(f"t/many/{i}", "v") for i in range(128)]})
    p.same(txn, {"success": [_op_put(f"t/many/{i}", "v") for i in range(129)]})
    p.same(txn, {"compare": [_cmp("t/a", "VERSION", "GREATER", version=0)] * 129})
    p.same(txn, {"failure": [_op_range("t/a")] * 129})
    p.same(txn, {"success": [_op_range("t/a")] * 128, "failure": [_op_range("t/a")] * 128})
    rng(p, "t/", "t0", keys_only=True, count_only=False, limit=20)
    p.same("/v3/lease/revoke", {"ID": 0x7101})


# --- compaction -----------------------------------------------------------------------------


def test_compaction(pair: Pair) -> None:
    p = pair
    for i in range(5):
        put(p, "c/a", f"v{i}")
        put(p, f"c/k{i}", "x")
    p.same("/v3/kv/deleterange", {"key": b64("c/k0")})
    rev = p.revision()
    at = rev - 4
    p.same("/v3/kv/compaction", {"revision": rev + 1})  # future
    p.same("/v3/kv/compaction", {"revision": at})
    p.same("/v3/kv/compaction", {"revision": at})  # again: compacted
    p.same("/v3/kv/compaction", {"revision": at - 1})
    p.same("/v3/kv/compaction", {"revision": 0})
    for r in (1, at - 1, at, at + 1, rev, rev + 1):
        rng(p, "c/", "c0", revision=r)
        rng(p, "c/a", revision=r, count_only=True)
        p.same("/v3/kv/txn", {"success": [_op_range("c/a", revision=r)]})
    p.same("/v3/kv/compaction", {"revision": rev, "physical": True})
    rng(p, "c/", "c0", revision=rev)
    rng(p, "c/", "c0", revision=rev - 1)
    rng(p, "c/", "c0", min_mod_revision=1)


# --- leases ---------------------------------------------------------------------------------


def _ttl_normalised(body: Any) -> Any:
    """timetolive depends on timing, and etcd lists a lease's keys in Go map order: the keys are
    sorted, and a remaining TTL within 10 s of grantedTTL counts as grantedTTL."""
    if isinstance(body, dict) and "grantedTTL" in body and "TTL" in body:
        granted, ttl = int(body["grantedTTL"]), int(body["TTL"])
        body = {**body, "keys": sorted(body["keys"])} if "keys" in body else body
        if granted - 10 <= ttl <= granted:
            return {**body, "TTL": body["grantedTTL"]}
    return body


def test_leases(pair: Pair) -> None:
    p = pair
    p.same("/v3/lease/grant", {"ID": 0x7201, "TTL": 60})
    p.same("/v3/lease/grant", {"ID": 0x7201, "TTL": 60})  # already exists
    p.same("/v3/lease/grant", {"ID": str(0x7202), "TTL": "100"})
    p.same("/v3/lease/grant", {"ID": 0x7203, "TTL": 9000000001})  # too large
    p.same("/v3/lease/grant", {"ID": 0x7204, "TTL": 9000000000})
    put(p, "l/a", "1", lease=0x7201)
    put(p, "l/b", "2", lease=0x7201)
    put(p, "l/c", "3", lease=0x7202)
    put(p, "l/d", "4")
    for lid, keys in ((0x7201, True), (0x7201, False), (0x7202, True), (0x7299, True), (0x7299, False), (0, True)):
        p.same_ttl("/v3/lease/timetolive", {"ID": lid, "keys": keys})
    p.same_ttl("/v3/kv/lease/timetolive", {"ID": 0x7202})
    p.same_ttl("/v3/lease/timetolive", {"ID": 0x7204, "keys": True})
    p.same("/v3/lease/leases", {})
    p.same("/v3/kv/lease/leases", {})
    p.same("/v3/lease/revoke", {"ID": 0x7201})  # deletes l/a and l/b
    rng(p, "l/", "l0")
    p.same("/v3/lease/revoke", {"ID": 0x7201})  # not found
    p.same("/v3/kv/lease/revoke", {"ID": 0x7202})
    p.same("/v3/lease/revoke", {"ID": 0})
    rng(p, "l/", "l0")
    p.same("/v3/lease/timetolive", {"ID": 0x7201, "keys": True})
    p.same("/v3/lease/leases", {})
    p.same("/v3/lease/keepalive", {"ID": 0x7299})  # unknown lease: TTL 0, no error
    p.same("/v3/lease/keepalive", {"ID": 0x7204})
    p.same("/v3/lease/keepalive", {"ID": str(0x7204)})
    p.same("/v3/lease/keepalive", {"ID": 0})
    # TTLs below the minimum (etcd: 2 s with the default timers) and negative ones are raised
    for lid, ttl in ((0x7205, 1), (0x7206, 0), (0x7207, -5)):
        p.same("/v3/lease/grant", {"ID": lid, "TTL": ttl})
        p.same("/v3/lease/revoke", {"ID": lid})
    p.same("/v3/lease/revoke", {"ID": 0x7204})
    p.same("/v3/lease/leases", {})


def test_lease_grant_without_id_by_shape(pair: Pair) -> None:
    p = pair
    (es, eb), (ks, kb) = p.both("/v3/lease/grant", {"TTL": 30})
    shape = []
    for status, body in ((es, eb), (ks, kb)):
        body = normalise(body)
        lease_id = int(body.pop("ID"))
        assert 0 < lease_id < 2**63, body
        shape.append((status, body))
    p.check("grant without ID", shape[0], shape[1])
    e_id, k_id = int(eb["ID"]), int(kb["ID"])
    for server, lid in ((p.etcd, e_id), (p.kvdisco, k_id)):
        status, body = server.post("/v3/kv/put", {"key": b64("g/k"), "lease": lid})
        assert status == 200, (server.name, body)
    (es, eb), (ks, kb) = p.both("/v3/kv/range", {"key": b64("g/k")})
    for body, lid in ((eb, e_id), (kb, k_id)):
        assert body["kvs"][0].pop("lease") == str(lid), body
    p.check("range of a key with a server-chosen lease", (es, normalise(eb)), (ks, normalise(kb)))
    for server, lid in ((p.etcd, e_id), (p.kvdisco, k_id)):
        status, body = server.post("/v3/lease/revoke", {"ID": lid})
        assert status == 200, (server.name, body)
    rng(p, "g/k")


# --- bad requests ---------------------------------------------------------------------------


def test_bad_requests_with_etcds_answer(pair: Pair) -> None:
    """Refused (or accepted) by the store, not the decoder: same code and same message."""
    p = pair
    for path in ("/v3/kv/range", "/v3/kv/put", "/v3/kv/deleterange"):
        p.same(path, b"")
        p.same(path, b"null")
        p.same(path, {})
        p.same(path, {"key": None})
        p.same(path, b" {} \r\n")
    p.same("/v3/kv/range", {"key": b64("x"), "limit": " 5 "})
    p.same("/v3/kv/range", {"key": b64("x"), "limit": "-0"})
    p.same("/v3/kv/range", {"key": "eA==\r\n"})  # CR/LF inside base64 are skipped
    p.same("/v3/kv/range", {"key": "eA\n=="})
    p.same("/v3/kv/range", {"key": b64("x"), "keys_only": None, "limit": None})
    p.same("/v3/kv/txn", {"compare": None, "success": None})
    p.same("/v3/kv/txn", {"success": [_op_range("")]})
    p.same("/v3/kv/compaction", {})
    p.same("/v3/lease/revoke", {})
    p.same("/v3/lease/timetolive", {})
    p.same("/v3/lease/leases", b"")
    p.same("/v3/kv/put", {"key": b64("bad/k"), "value": b64("x" * 1000)})
    p.same("/v3/kv/deleterange", {"key": b64("bad/k")})


#: Undecodable request bodies. Both servers refuse them with HTTP 400 / code 3, but etcd's message
#: is Go's ``encoding/json`` or ``encoding/base64`` text ("unexpected EOF", "illegal base64 data at
#: input byte 0", "json: cannot unmarshal number into Go value of type []uint8") while kvdisco's
#: names the field and what it expected. Intended difference no. 1: only status and code compared.
DECODE_ERRORS: list[tuple[str, Any]] = [
    ("/v3/kv/range", b'{"key":'),  # malformed JSON
    ("/v3/kv/range", b"[1]"),  # not an object
    ("/v3/kv/put", b'"x"'),
    ("/v3/kv/range", {"key": "YQ"}),  # base64 without padding
    ("/v3/kv/put", {"key": "Y-Q="}),  # url-safe alphabet
    ("/v3/kv/range", {"key": "YWJj ZA=="}),  # a space inside
    ("/v3/kv/range", {"key": 1}),  # bytes as a number
    ("/v3/kv/range", {"key": ["YQ=="]}),  # bytes as an array
    ("/v3/kv/range", {"key": "YQ==", "limit": "x"}),  # int64 string not a number
    ("/v3/kv/range", {"key": "YQ==", "limit": "01"}),  # leading zero
    ("/v3/kv/range", {"key": "YQ==", "limit": 1.5}),  # float
    ("/v3/kv/range", {"key": "YQ==", "limit": 2**64}),  # out of int64
    ("/v3/kv/range", {"key": "YQ==", "serializable": "true"}),  # bool as a string
    ("/v3/kv/range", {"key": "YQ==", "keys_only": 1}),  # bool as a number
    ("/v3/kv/range", {"key": "YQ==", "sort_order": "UP"}),  # unknown enum name
    ("/v3/kv/range", {"key": "YQ==", "sort_target": "key"}),  # enum names are case-sensitive
    ("/v3/kv/range", {"key": "YQ==", "sort_order": "2"}),  # enum number as a string
    ("/v3/kv/txn", {"compare": [{"key": "YQ==", "result": "BIGGER"}]}),
    ("/v3/kv/txn", {"success": {"request_range": {"key": "YQ=="}}}),  # list given as an object
    ("/v3/lease/revoke", {"ID": "x"}),
    ("/v3/lease/grant", {"ID": 1.0, "TTL": 5}),
]

#: Requests kvdisco deliberately refuses (HTTP 400, code 3) where etcd 3.4 accepts them or fails
#: oddly, because etcd's reading of them is silently wrong. Asserted exactly so. (Intended
#: differences checked elsewhere: the watch compaction boundary in test_watch_compacted, bad watch
#: requests in test_watch_bad_requests, and timetolive's timing-dependent TTL and Go-map-ordered
#: keys, normalised in _ttl_normalised.)
INTENDED_DIFFERENCES: list[tuple[str, Any, str]] = [
    ("/v3/kv/range", {"key": "YQ==", "limit": -1}, "negative limit: etcd takes it as no limit"),
    ("/v3/kv/range", {"key": "YQ==", "revision": -1}, "negative revision: etcd reads the latest"),
    ("/v3/kv/range", {"key": "YQ==", "min_mod_revision": -3}, "negative filter: etcd ignores it"),
    ("/v3/kv/compaction", {"revision": -1}, "negative revision: etcd says 'compacted' (code 11)"),
    ("/v3/lease/grant", {"ID": -7, "TTL": 5}, "negative lease ID: etcd grants lease -7"),
    ("/v3/kv/range", {"key": "YQ==", "sort_order": 7}, "unknown enum number: etcd passes it on"),
    ("/v3/kv/range", {"key": "YQ==", "bogus": 1}, "unknown field: etcd drops it silently"),
    ("/v3/lease/grant", {"id": 5, "ttl": 5}, "lower-case lease fields: etcd drops them, grants a random lease"),
    ("/v3/kv/range", b'{"key":"YQ=="} x', "data after the object: etcd ignores it"),
    ("/v3/kv/range", {"key": "YQ==", "rangeEnd": "Yg==", "range_end": None}, "a field in both spellings"),
    (
        "/v3/kv/txn",
        {"compare": [{"key": "YQ==", "target": "VALUE", "version": 3}]},
        "compare operand in the wrong field: etcd compares the value with empty bytes",
    ),
    ("/v3/kv/txn", {"success": [{}]}, "empty RequestOp: etcd answers 'key not found'"),
    (
        "/v3/kv/txn",
        {"success": [{"request_range": {"key": "YQ=="}, "request_put": {"key": "Yg=="}}]},
        "RequestOp with two members: etcd runs the last one",
    ),
]


def test_decode_errors(pair: Pair) -> None:
    p = pair
    for path, body in DECODE_ERRORS:
        (es, eb), (ks, kb) = p.both(path, body)
        p.check(f"decode error {path} {body!r}", (es, eb.get("code")), (ks, kb.get("code")))
        p.check(f"etcd refuses {path} {body!r} ('kvdisco' = expected)", (es, eb.get("code")), (400, 3))
        if eb.get("message") == kb.get("message"):
            p.mismatches.append(f"same message now, move it to test_bad_requests_with_etcds_answer: {body!r}")


def test_intended_differences(pair: Pair) -> None:
    p = pair
    for path, body, why in INTENDED_DIFFERENCES:
        (es, eb), (ks, kb) = p.both(path, body)
        p.check(f"kvdisco must refuse ({why}; 'etcd' = expected): {path} {body!r}", (400, 3), (ks, kb.get("code")))
        if es == 400 and eb.get("message") == kb.get("message"):
            p.mismatches.append(f"no longer a difference, drop it from the list: {why}")
    # requests etcd accepted may have written (leases, the put of "b"): drop what etcd made
    p.etcd.post("/v3/kv/deleterange", {"key": b64("b")})
    _, leases = p.etcd.post("/v3/lease/leases", {})
    _, kv_leases = p.kvdisco.post("/v3/lease/leases", {})
    for lease in leases.get("leases", []):
        if int(lease["ID"]) not in {int(x["ID"]) for x in kv_leases.get("leases", [])}:
            p.etcd.post("/v3/lease/revoke", {"ID": lease["ID"]})
    p.resync()


# --- watch ----------------------------------------------------------------------------------


class WatchStream:
    """One POST /v3/watch, its request objects sent as the body, results read line by line."""

    def __init__(self, server: Server, requests: list[dict[str, Any]]) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        body = b"\n".join(json.dumps(r).encode() for r in requests)
        self.conn.request("POST", "/v3/watch", body=body, headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.results: list[Any] = []

    def read(self, until: Any, timeout_s: float = 3.0) -> list[Any]:
        """Read results until ``until(results)`` holds or ``timeout_s`` passes; all results so far."""
        deadline = time.monotonic() + timeout_s
        while not until(self.results):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            assert self.conn.sock is not None
            self.conn.sock.settimeout(left)
            try:
                line = self.resp.readline()
            except (TimeoutError, OSError):
                break
            if not line:
                break
            if line.strip():
                self.results.append(normalise(json.loads(line)))
        return self.results

    def close(self) -> None:
        self.conn.close()


def _events(results: list[Any]) -> list[Any]:
    return [ev for r in results for ev in r.get("result", r).get("events", [])]


def _n_events(n: int) -> Any:
    return lambda results: len(_events(results)) >= n


@contextlib.contextmanager
def watching(p: Pair, *requests: dict[str, Any]) -> Iterator[tuple[WatchStream, WatchStream]]:
    e, k = WatchStream(p.etcd, list(requests)), WatchStream(p.kvdisco, list(requests))
    try:
        yield e, k
    finally:
        e.close()
        k.close()


def _watch_same(p: Pair, what: str, requests: list[dict[str, Any]], until: Any) -> tuple[list[Any], list[Any]]:
    with watching(p, *requests) as (e, k):
        er, kr = e.read(until), k.read(until)
        if not until(er):
            p.mismatches.append(f"watch {what}: etcd itself did not answer as the test expects: {er}")
        p.check(f"watch {what}: {json.dumps(requests)[:300]}", (e.status, er), (k.status, kr))
        return er, kr


def test_watch_history_filters_prev_kv(pair: Pair) -> None:
    p = pair
    first = p.revision() + 1
    put(p, "w/a", "1")
    put(p, "w/b", "1")
    put(p, "w/a", "2")
    p.same("/v3/kv/deleterange", {"key": b64("w/b")})
    p.same("/v3/kv/txn", {"success": [_op_put("w/c", "3"), _op_put("w/d", "4"), _op_del("w/a")]})
    put(p, "x/outside", "1")
    put(p, "w/c", "33")
    n_all = 8

    def create(**extra: Any) -> dict[str, Any]:
        return {"create_request": {"key": b64("w/"), "range_end": b64("w0"), "start_revision": first, **extra}}

    _watch_same(p, "history", [create()], _n_events(n_all))
    _watch_same(p, "history prev_kv", [create(prev_kv=True)], _n_events(n_all))
    _watch_same(p, "NOPUT", [create(filters=["NOPUT"], prev_kv=True)], _n_events(2))
    _watch_same(p, "NODELETE", [create(filters=["NODELETE"])], _n_events(n_all - 2))
    _watch_same(p, "NODELETE by number", [create(filters=[1])], _n_events(n_all - 2))
    _watch_same(p, "one key", [{"create_request": {"key": b64("w/a"), "start_revision": first}}], _n_events(3))
    _watch_same(
        p,
        "from key",
        [{"create_request": {"key": b64("w/c"), "range_end": "AA==", "start_revision": first}}],
        _n_events(4),
    )
    _watch_same(p, "mid history", [create(start_revision=first + 4)], _n_events(n_all - 4))
    # several watches on one stream, ids chosen by the server. The order of lines across
    # watches depends on timing, so each watch's own lines are compared.
    with watching(p, create(), {"create_request": {"key": b64("w/a"), "start_revision": first}}) as (e, k):
        until = _n_events(n_all + 3)
        er, kr = e.read(until), k.read(until)
    for wid in ("0", "1"):
        p.check(f"two watches, lines of watch {wid}", _of_watch(er, wid), _of_watch(kr, wid))
    # create then cancel, no history
    _watch_same(
        p,
        "create and cancel",
        [{"create_request": {"key": b64("w/a")}}, {"cancel_request": {"watch_id": 0}}],
        lambda rs: len(rs) >= 2,
    )


def _of_watch(results: list[Any], wid: str) -> list[Any]:
    """The results of one watch id, events of consecutive responses joined (batching may differ)."""
    out: list[Any] = []
    for r in results:
        res = dict(r["result"])
        if res.get("watch_id", "0") != wid:
            continue
        if out and "events" in res and "events" in out[-1] and set(res) == set(out[-1]):
            out[-1] = {**out[-1], "events": out[-1]["events"] + res["events"]}
        else:
            out.append(res)
    return out


def test_watch_from_the_current_revision(pair: Pair) -> None:
    """start_revision equal to the store's revision: the write of that revision is the first event."""
    p = pair
    put(p, "wr/a", "1")
    put(p, "wr/a", "2")
    now = p.revision()
    _watch_same(
        p, "from the current revision", [{"create_request": {"key": b64("wr/a"), "start_revision": now}}], _n_events(1)
    )
    _watch_same(
        p,
        "from the current revision, a range",
        [{"create_request": {"key": b64("wr/"), "range_end": b64("wr0"), "start_revision": now, "prev_kv": True}}],
        _n_events(1),
    )
    _watch_same(
        p,
        "from the previous revision",
        [{"create_request": {"key": b64("wr/a"), "start_revision": now - 1}}],
        _n_events(2),
    )


def test_watch_live_and_future(pair: Pair) -> None:
    p = pair
    now = p.revision()
    with watching(
        p,
        {"create_request": {"key": b64("wl/"), "range_end": b64("wl0"), "prev_kv": True}},
        {"create_request": {"key": b64("wl/"), "range_end": b64("wl0"), "start_revision": now + 3}},
    ) as (e, k):
        p.check("created", e.read(lambda rs: len(rs) >= 2), k.read(lambda rs: len(rs) >= 2))
        put(p, "wl/a", "1")
        put(p, "wl/a", "2")
        p.same("/v3/kv/txn", {"success": [_op_put("wl/b", "1"), _op_put("wl/c", "1")]})
        p.same("/v3/kv/deleterange", {"key": b64("wl/"), "range_end": b64("wl0"), "prev_kv": True})
        until = _n_events(4 + 3 + 3 + 2)
        er, kr = e.read(until), k.read(until)
        # live responses may batch differently; compare event streams per watch id
        for wid in ("0", "1"):
            p.check(f"live events of watch {wid}", _events(_of_watch(er, wid)), _events(_of_watch(kr, wid)))


def test_watch_compacted(pair: Pair) -> None:
    p = pair
    for i in range(4):
        put(p, "wc/a", str(i))
    compact_at = p.revision() - 1
    p.same("/v3/kv/compaction", {"revision": compact_at})
    create = {"create_request": {"key": b64("wc/a"), "start_revision": compact_at - 2}}
    with watching(p, create) as (e, k):
        er, kr = e.read(lambda rs: len(rs) >= 2), k.read(lambda rs: len(rs) >= 2)
    # intended difference: kvdisco reports the first revision it can serve completely (compact + 1,
    # see kvdisco/mvcc/watch.py "Compaction, exactly"); etcd reports the compacted revision
    assert er[-1]["result"].get("compact_revision") == str(compact_at), er
    assert kr[-1]["result"].get("compact_revision") == str(compact_at + 1), kr
    kr[-1]["result"]["compact_revision"] = str(compact_at)
    p.check("watch from a compacted revision", er, kr)
    # intended difference: a watch from exactly the compacted revision: etcd serves it (and may miss
    # a delete at that revision), kvdisco cancels it with compact_revision = compact + 1
    create = {"create_request": {"key": b64("wc/a"), "start_revision": compact_at}}
    with watching(p, create) as (e, k):
        er, kr = e.read(_n_events(2)), k.read(lambda rs: len(rs) >= 2)
    p.check("etcd serves a watch from the compacted revision", len(_events(er)), 2)
    p.check("kvdisco cancels it", kr[-1]["result"].get("compact_revision"), str(compact_at + 1))
    # from compact + 1 both serve it
    _watch_same(
        p,
        "from compact + 1",
        [{"create_request": {"key": b64("wc/a"), "start_revision": compact_at + 1}}],
        _n_events(1),
    )


def test_watch_bad_requests(pair: Pair) -> None:
    p = pair
    # kvdisco refuses a bad first request with a plain 400 (intended: etcd answers code 2 / HTTP 500
    # on its streaming endpoints, or ignores unknown fields and never answers)
    for body in ({"create_request": {"key": "YQ"}}, {"bogus": {}}):
        k = WatchStream(p.kvdisco, [body])
        try:
            p.check(f"kvdisco refuses watch {body}", k.status, 400)
        finally:
            k.close()


# --- maintenance and cluster ----------------------------------------------------------------


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_status_and_member_list_shape(pair: Pair) -> None:
    p = pair
    put(p, "s/a", "1")  # a non-empty store: kvdisco reports no dbSize while it holds nothing
    (es, eb), (ks, kb) = p.both("/v3/maintenance/status", {})
    p.check("status shape", (es, _shape(normalise(eb))), (ks, _shape(normalise(kb))))
    p.check("status header", normalise(eb)["header"], normalise(kb)["header"])
    for body in (eb, kb):
        assert body["leader"] == body["header"]["member_id"], body
        assert body["version"].startswith("3.4."), body
    (es, eb), (ks, kb) = p.both("/v3/cluster/member/list", {})
    p.check("member list shape", (es, _shape(normalise(eb))), (ks, _shape(normalise(kb))))
    for s, body in ((p.etcd, eb), (p.kvdisco, kb)):
        (member,) = body["members"]
        assert member["ID"] == body["header"]["member_id"], body
        assert member["clientURLs"] == [f"http://127.0.0.1:{s.port}"], body
        assert "revision" not in body["header"], body


# --- a seeded random walk -------------------------------------------------------------------

#: Override to explore: ``ETCD_DIFF_SEED=7 ETCD_DIFF_OPS=2000 pytest -k random ...``
RANDOM_OPS = int(os.environ.get("ETCD_DIFF_OPS", "300"))
RANDOM_SEED = int(os.environ.get("ETCD_DIFF_SEED", "20261127"))


def test_random_sequence(pair: Pair) -> None:
    """300 random operations over 6 keys, compared step by step (seeded, so a failure replays)."""
    p = pair
    r = random.Random(RANDOM_SEED)
    keys = [f"z/{c}" for c in "abcdef"]
    leases = [0x7300 + i for i in range(3)]
    live_leases: set[int] = set()
    start = current = p.revision()
    compacted = 0
    outcomes: Counter[tuple[str, int, bool]] = Counter()

    def key() -> str:
        return r.choice(keys)

    def some_range() -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key())}
        if r.random() < 0.5:
            body["range_end"] = r.choice([b64("z0"), "AA==", b64(key())])
        if r.random() < 0.3:
            body["limit"] = r.randint(1, 4)
        if r.random() < 0.3:
            body["sort_target"] = r.choice(["KEY", "VERSION", "CREATE", "MOD", "VALUE"])
            body["sort_order"] = r.choice(["NONE", "ASCEND", "DESCEND"])
            if body["sort_order"] == "NONE" and body["sort_target"] != "KEY" and "limit" in body:
                body["sort_order"] = "ASCEND"  # see test_intended_sort_none_with_limit
        if r.random() < 0.2:
            body[r.choice(["min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision"])] = (
                r.randint(start, current + 1)
            )
        for flag in ("keys_only", "count_only", "serializable"):
            if r.random() < 0.15:
                body[flag] = True
        if r.random() < 0.2:
            body["revision"] = r.randint(max(1, compacted - 2), current + 1)
        return body

    def some_put() -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key()), "value": b64(str(r.randint(0, 9)) * r.randint(0, 2))}
        if r.random() < 0.3:
            body["prev_kv"] = True
        if r.random() < 0.15:
            body["lease"] = r.choice(leases)
        if r.random() < 0.08:
            body["ignore_value"] = True
            body.pop("value")
        if r.random() < 0.08:
            body["ignore_lease"] = True
            body.pop("lease", None)
        return body

    def some_delete() -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key()), "prev_kv": r.random() < 0.5}
        if r.random() < 0.4:
            body["range_end"] = r.choice([b64("z0"), b64(key())])
        return body

    def some_compare() -> dict[str, Any]:
        target = r.choice(["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])
        c: dict[str, Any] = {
            "key": b64(key()),
            "target": target,
            "result": r.choice(["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]),
        }
        if target == "VERSION":
            c["version"] = r.randint(0, 3)
        elif target in ("CREATE", "MOD"):
            c["create_revision" if target == "CREATE" else "mod_revision"] = r.randint(0, current + 1)
        elif target == "VALUE":
            c["value"] = b64(str(r.randint(0, 9)) * r.randint(0, 2))
        else:
            c["lease"] = r.choice([0, *leases])
        if r.random() < 0.2:
            c["range_end"] = b64("z0")
        return c

    def some_op(depth: int) -> dict[str, Any]:
        kind = r.choice(["range", "put", "put", "delete"] + (["txn"] if depth < 2 else []))
        if kind == "range":
            body = some_range()
            body.pop("serializable", None)
            return {"request_range": body}
        if kind == "put":
            return {"request_put": some_put()}
        if kind == "delete":
            return {"request_delete_range": some_delete()}
        return {"request_txn": some_txn(depth + 1)}

    def some_txn(depth: int = 0) -> dict[str, Any]:
        return {
            "compare": [some_compare() for _ in range(r.randint(0, 2))],
            "success": [some_op(depth) for _ in range(r.randint(0, 3))],
            "failure": [some_op(depth) for _ in range(r.randint(0, 2))],
        }

    for step in range(RANDOM_OPS):
        if step % 25 == 0:
            current = p.revision()
        x = r.random()
        if x < 0.3:
            path, body = "/v3/kv/put", some_put()
        elif x < 0.45:
            path, body = "/v3/kv/range", some_range()
        elif x < 0.55:
            path, body = "/v3/kv/deleterange", some_delete()
        elif x < 0.85:
            path, body = "/v3/kv/txn", some_txn()
        elif x < 0.89:
            path, body = "/v3/kv/compaction", {"revision": r.randint(max(1, compacted - 1), current + 1)}
        elif x < 0.94:
            lid = r.choice(leases)
            path, body = "/v3/lease/grant", {"ID": lid, "TTL": 60}
        elif x < 0.97:
            path, body = "/v3/lease/revoke", {"ID": r.choice(leases)}
        else:
            path, body = "/v3/lease/timetolive", {"ID": r.choice(leases), "keys": True}
        if path == "/v3/lease/timetolive":
            p.same_ttl(path, body)
            continue
        status, answer = p.same(path, body, note=f"random step {step} (seed {RANDOM_SEED})")
        outcomes[path, status, isinstance(answer, dict) and bool(answer.get("succeeded"))] += 1
        if status == 200 and isinstance(answer, dict) and "revision" in answer.get("header", {}):
            current = int(answer["header"]["revision"])
        if path == "/v3/kv/compaction" and status == 200:
            compacted = body["revision"]
        if path == "/v3/lease/grant" and status == 200:
            live_leases.add(body["ID"])
        if len(p.mismatches) > 10:
            break
    for lid in live_leases:
        p.same("/v3/lease/revoke", {"ID": lid})
    rng(p, "z/", "z0")
    print("random walk outcomes:", sorted(outcomes.items()))
    # the walk must exercise both txn branches, errors and compactions, or it proves little
    assert outcomes["/v3/kv/txn", 200, True] >= 20 and outcomes["/v3/kv/txn", 200, False] >= 10, outcomes
    assert outcomes["/v3/kv/compaction", 200, False] >= 2, outcomes
    assert sum(n for (_, status, _), n in outcomes.items() if status != 200) >= 10, outcomes


# --- differences found here, and the fixes --------------------------------------------------------
#
# The first is kept on purpose (strict xfail: it must keep differing, or this entry goes). The
# others were kvdisco bugs, fixed; they stay here as regular cases.


@pytest.mark.xfail(
    strict=True,
    reason="intended: kvdisco sorts the whole range before the limit; etcd 3.4 sorts only the first limit+1 "
    "keys in key order, so its answer is not the smallest values",
)
def test_intended_sort_none_with_limit(pair: Pair) -> None:
    """sort_order NONE with a sort_target other than KEY and a limit. etcd 3.4's applier fetches
    limit+1 keys in key order (the limit is dropped only for an explicit order or a min/max
    filter), then sorts those ASCEND by the target and truncates to the limit; kvdisco sorts the
    whole range, then truncates. (Etcd's answer is arguably its own bug, but it is what clients see.)"""
    p = pair
    for k, v in (("kb/a", "9"), ("kb/b", "8"), ("kb/c", "1"), ("kb/d", "0")):
        put(p, k, v)
    rng(p, "kb/", "kb0", sort_order="NONE", sort_target="VALUE", limit=2)
    p.assert_clean()


def test_watch_of_an_empty_range(pair: Pair) -> None:
    """etcd answers ``watch_id -1, created, canceled, cancel_reason "mvcc: watcher range is
    empty"``; kvdisco's stream ends with no line (HTTP 200, empty body) and logs a traceback:
    WatchHub.watch raises InvalidArgumentError, which _WatchStream._create does not catch."""
    p = pair
    _watch_same(
        p, "empty range", [{"create_request": {"key": b64("w/b"), "range_end": b64("w/a")}}], lambda rs: len(rs) >= 1
    )
    p.assert_clean()


def test_watch_progress_request(pair: Pair) -> None:
    """etcd 3.4 answers a progress_request with one response of ``watch_id "-1"`` (broadcast to the
    stream); kvdisco sends the progress response through each watcher with that watcher's id
    (``watch_id`` 0, left out)."""
    p = pair
    _watch_same(
        p,
        "progress request",
        [{"create_request": {"key": b64("wp/a")}}, {"progress_request": {}}],
        lambda rs: len(rs) >= 2,
    )
    p.assert_clean()


def test_put_ignore_value_missing_key_and_lease(pair: Pair) -> None:
    """A plain put with ignore_value (or ignore_lease) of a key that does not exist and an unknown
    lease: etcd 3.4's applier looks the lease up first (404, code 5 "requested lease not found");
    kvdisco answers 400, code 3 "etcdserver: key not found". (Inside a txn etcd checks the key
    first, as kvdisco does: see test_put_error_precedence.)"""
    p = pair
    put(p, "pe/missing", ignore_value=True, lease=0x7499)
    p.assert_clean()


def test_txn_error_precedence(pair: Pair) -> None:
    """A txn whose ops fail in two ways. etcd 3.4's applier runs checkRequests twice over the
    whole op tree: first the puts (ignore_value/ignore_lease of a missing key, unknown lease), then
    the ranges (future or compacted revision). So a put error wins even when a failing range comes
    first; kvdisco reports the first failing op in order ("required revision is a future revision")."""
    p = pair
    future = p.revision() + 100
    p.same(
        "/v3/kv/txn",
        {"success": [_op_range("tp/a", revision=future), _op_put("tp/missing", ignore_value=True)]},
    )
    p.assert_clean()
