"""kvctl against a kvdisco member: every command a newcomer reaches for, with the output etcdctl would print.

test_kvctl.py proves kvctl's formats against etcdctl on a real etcd; here the expected outputs are
written out, because etcdctl speaks gRPC and cannot talk to kvdisco.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .etcd_fixture import Cluster, running
from .test_kvctl import KVCTL, _env, kvctl, ok

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def kvd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(tmp_path_factory.mktemp("kvdisco1"), 1, "kvdisco") as c:
        yield c


@pytest.fixture
def ns() -> str:
    return f"kv-{uuid.uuid4().hex[:8]}/"


def test_put_get_del(kvd: Cluster, ns: str) -> None:
    assert ok(kvctl(kvd, "put", ns + "foo", "bar", subprocess_=True)) == "OK\n"
    assert ok(kvctl(kvd, "put", ns + "b", stdin="from stdin", subprocess_=True)) == "OK\n"
    assert ok(kvctl(kvd, "get", ns + "foo")) == f"{ns}foo\nbar\n"
    assert ok(kvctl(kvd, "get", "--prefix", ns)) == f"{ns}b\nfrom stdin\n{ns}foo\nbar\n"
    assert ok(kvctl(kvd, "get", "--prefix", "--keys-only", ns)) == f"{ns}b\n\n{ns}foo\n\n"
    assert ok(kvctl(kvd, "get", "--prefix", "--print-value-only", ns)) == "from stdin\nbar\n"
    assert ok(kvctl(kvd, "get", "--prefix", "--limit", "1", ns)) == f"{ns}b\nfrom stdin\n"
    assert ok(kvctl(kvd, "put", "--prev-kv", ns + "foo", "baz")) == f"OK\n{ns}foo\nbar\n"
    as_json = json.loads(ok(kvctl(kvd, "-w", "json", "get", ns + "foo")))
    assert as_json["count"] == 1 and as_json["kvs"][0]["version"] == 2
    rev = as_json["kvs"][0]["create_revision"]
    assert ok(kvctl(kvd, "get", "--rev", str(rev), ns + "foo")) == f"{ns}foo\nbar\n"
    assert ok(kvctl(kvd, "del", "--prev-kv", ns + "foo")) == f"1\n{ns}foo\nbaz\n"
    assert ok(kvctl(kvd, "del", "--prefix", ns)) == "1\n"
    assert ok(kvctl(kvd, "get", ns + "foo")) == ""


def test_txn_and_compaction(kvd: Cluster, ns: str, tmp_path: Path) -> None:
    k = ns + "t"
    script = f'version("{k}") = "0"\n\nput {k} v1\n\nget {k}\n\n'
    assert ok(kvctl(kvd, "txn", stdin=script)) == "SUCCESS\n\nOK\n"
    assert ok(kvctl(kvd, "txn", stdin=script)) == f"FAILURE\n\n{k}\nv1\n"
    r1 = json.loads(ok(kvctl(kvd, "-w", "json", "put", k, "v2")))["header"]["revision"]
    r2 = json.loads(ok(kvctl(kvd, "-w", "json", "put", k, "v3")))["header"]["revision"]
    assert ok(kvctl(kvd, "compaction", str(r2))) == f"compacted revision {r2}\n"
    old = kvctl(kvd, "get", "--rev", str(r1), k, subprocess_=True)
    assert old.returncode == 1 and old.stderr == "Error: etcdserver: mvcc: required revision has been compacted\n"
    assert ok(kvctl(kvd, "snapshot", "save", str(tmp_path / "s.db"))) == f"Snapshot saved at {tmp_path / 's.db'}\n"
    assert (tmp_path / "s.db").stat().st_size > 0


def test_leases(kvd: Cluster, ns: str) -> None:
    out = ok(kvctl(kvd, "lease", "grant", "60"))
    m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\(60s\)\n", out)
    assert m, out
    lid = m.group(1)
    assert ok(kvctl(kvd, "put", "--lease", lid, ns + "leased", "v")) == "OK\n"
    ttl = ok(kvctl(kvd, "lease", "timetolive", "--keys", lid))
    pattern = rf"lease {lid} granted with TTL\(60s\), remaining\(\d+s\), attached keys\(\[{ns}leased\]\)\n"
    assert re.fullmatch(pattern, ttl), ttl
    assert lid in ok(kvctl(kvd, "lease", "list")).split("\n")
    assert ok(kvctl(kvd, "lease", "keep-alive", "--once", lid)) == f"lease {lid} keepalived with TTL(60)\n"
    assert ok(kvctl(kvd, "lease", "revoke", lid)) == f"lease {lid} revoked\n"
    assert ok(kvctl(kvd, "get", ns + "leased")) == ""
    assert ok(kvctl(kvd, "lease", "timetolive", lid)) == f"lease {lid} already expired\n"
    again = kvctl(kvd, "lease", "revoke", lid, subprocess_=True)
    assert again.returncode == 1 and again.stderr == "Error: etcdserver: requested lease not found\n"


def test_member_endpoint_and_watch(kvd: Cluster, ns: str) -> None:
    members = ok(kvctl(kvd, "member", "list"))
    assert re.fullmatch(rf"[0-9a-f]+, started, m1, {kvd.members[0].peer_url}, {kvd.endpoints[0]}, false\n", members)
    assert "is healthy" in ok(kvctl(kvd, "endpoint", "health"))
    assert ok(kvctl(kvd, "endpoint", "status")).startswith(kvd.endpoints[0] + ", ")
    start = json.loads(ok(kvctl(kvd, "-w", "json", "put", ns + "seed", "0")))["header"]["revision"] + 1
    ok(kvctl(kvd, "put", ns + "w", "1"))
    ok(kvctl(kvd, "del", ns + "w"))
    p = subprocess.Popen(
        [*KVCTL, f"--endpoints={kvd.endpoints[0]}", "watch", "--prefix", "--rev", str(start), ns + "w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        assert p.stdout is not None
        lines = [p.stdout.readline() for _ in range(5)]
    finally:
        p.kill()
        p.wait()
    assert lines == ["PUT\n", f"{ns}w\n", "1\n", "DELETE\n", f"{ns}w\n"]
