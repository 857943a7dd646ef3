"""kvctl as a user runs it: a subprocess against a real server, its output compared with what
etcdctl prints for the same command where the formats are meant to match."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from kvdisco.cli.kvctl import main as kvctl_main

from .etcd_fixture import Cluster, running

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def server1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real etcd: these tests use etcdctl, which speaks gRPC, as the oracle for kvctl's output on the same
    server. kvctl against kvdisco is tested in test_kvctl_kvdisco.py."""
    with running(tmp_path_factory.mktemp("etcd1"), 1, "etcd") as c:
        yield c


_VENV_KVCTL = Path(sys.executable).parent / "kvctl"
KVCTL = [str(_VENV_KVCTL)] if _VENV_KVCTL.exists() else [sys.executable, "-m", "kvdisco.cli.kvctl"]
requires_etcdctl = pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not on PATH")

#: Bound on one CLI run; a hung command fails the test instead of stalling the suite.
RUN_TIMEOUT_S = 20


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVCTL_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return {**env, **(extra or {})}


def kvctl(
    server: Cluster,
    *args: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    endpoints: bool = True,
    subprocess_: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run kvctl. In-process (``main(argv)`` with stdio redirected) unless ``subprocess_``: starting
    Python and aiohttp costs most of a second per run here, so only some runs pay for a real
    process; those cover the console script, stdin, env vars and exit codes end to end."""
    flags = [f"--endpoints={','.join(server.endpoints)}"] if endpoints else []
    argv = [*flags, *args]
    if subprocess_:
        return subprocess.run(
            [*KVCTL, *argv], input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=_env(env)
        )
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, _env(env), clear=True),
        mock.patch.object(sys, "stdin", io.StringIO(stdin)),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = kvctl_main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def etcdctl(server: Cluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["etcdctl", f"--endpoints={','.join(server.endpoints)}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=_env(),
    )


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}"
    return p.stdout


@pytest.fixture
def ns() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}/"


@requires_etcdctl
def test_put_get_output_matches_etcdctl(server1: Cluster, ns: str) -> None:
    assert ok(kvctl(server1, "put", ns + "a", "1")) == "OK\n"
    assert ok(kvctl(server1, "put", ns + "b", stdin="from stdin", subprocess_=True)) == "OK\n"
    assert ok(kvctl(server1, "put", ns + "c", "3")) == "OK\n"
    assert ok(kvctl(server1, "put", "--prev-kv", ns + "c", "4")) == f"OK\n{ns}c\n3\n"
    for args in (
        ["get", ns + "a"],
        ["get", ns + "b"],
        ["get", "--prefix", ns],
        ["get", "--prefix", "--keys-only", ns],
        ["get", "--prefix", "--print-value-only", ns],
        ["get", "--prefix", "--limit", "2", ns],
        ["get", "--from-key", ns + "b"],
        ["get", ns + "a", ns + "c"],
        ["get", ns + "missing"],
    ):
        expected = ok(etcdctl(server1, *args))
        if args[1] == "--from-key":  # other tests' keys sort after ours: compare our part only
            expected = "\n".join(expected.split("\n")[:4]) + "\n"
            assert ok(kvctl(server1, *args)).startswith(expected)
        else:
            assert ok(kvctl(server1, *args)) == expected, args
    for args in (["get", "-w", "json", ns + "a"], ["get", "-w", "json", "--prefix", ns]):
        assert json.loads(ok(kvctl(server1, *args))) == json.loads(ok(etcdctl(server1, *args)))
    assert ok(kvctl(server1, "get", "--prefix", "--count-only", ns)) == "3\n"
    assert ok(kvctl(server1, "get", "--prefix", ns, subprocess_=True)) == f"{ns}a\n1\n{ns}b\nfrom stdin\n{ns}c\n4\n"
    rev = json.loads(ok(kvctl(server1, "get", "-w", "json", ns + "a")))["kvs"][0]["mod_revision"]
    assert ok(kvctl(server1, "get", "--rev", str(rev), "--prefix", ns)) == f"{ns}a\n1\n"


@requires_etcdctl
def test_del_output_matches_etcdctl(server1: Cluster, ns: str) -> None:
    for side in ("k", "e"):
        for k in ("x", "y1", "y2"):
            ok(kvctl(server1, "put", f"{ns}{side}/{k}", k))
    run = {"k": kvctl, "e": etcdctl}
    outs = {side: ok(run[side](server1, "del", "--prev-kv", f"{ns}{side}/x")) for side in "ke"}
    assert outs["k"] == outs["e"].replace(f"{ns}e/", f"{ns}k/") == f"1\n{ns}k/x\nx\n"
    outs = {side: ok(run[side](server1, "del", "--prefix", f"{ns}{side}/y")) for side in "ke"}
    assert outs["k"] == outs["e"] == "2\n"
    assert ok(kvctl(server1, "del", ns + "nothing")) == ok(etcdctl(server1, "del", ns + "nothing")) == "0\n"


@requires_etcdctl
def test_txn_from_stdin_matches_etcdctl(server1: Cluster, ns: str) -> None:
    def script(side: str) -> str:
        k = f"{ns}{side}"
        return f'version("{k}") = "0"\nmod("{k}") < "1"\n\nput {k} v1\nput {k}2 w\n\nget {k}\ndel {k}2\n\n'

    run = {"k": kvctl, "e": etcdctl}
    first = {side: ok(run[side](server1, "txn", stdin=script(side))) for side in "ke"}
    assert first["k"] == first["e"] == "SUCCESS\n\nOK\n\nOK\n"
    second = {side: ok(run[side](server1, "txn", stdin=script(side))) for side in "ke"}
    assert second["k"] == second["e"].replace(f"{ns}e", f"{ns}k") == f"FAILURE\n\n{ns}k\nv1\n\n1\n"
    interactive = ok(kvctl(server1, "txn", "-i", stdin=f'val("{ns}k") = "v1"\n\nget {ns}k\n\n\n'))
    assert interactive.startswith("compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n")
    assert interactive.endswith(f"SUCCESS\n\n{ns}k\nv1\n")
    res = json.loads(ok(kvctl(server1, "-w", "json", "txn", stdin=f'val("{ns}k") = "v1"\n\nget {ns}k\n\n\n')))
    assert res["succeeded"] is True and res["responses"][0]["response_range"]["count"] == 1
    bad = kvctl(server1, "txn", stdin='nonsense("k") = "1"\n\n\n', subprocess_=True)
    assert bad.returncode != 0 and bad.stderr.startswith("Error:")


@requires_etcdctl
def test_lease_commands(server1: Cluster, ns: str) -> None:
    out = ok(kvctl(server1, "lease", "grant", "60"))
    m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\(60s\)\n", out)
    assert m, out
    lid = m.group(1)
    assert ok(kvctl(server1, "put", "--lease", lid, ns + "leased", "v")) == "OK\n"
    mine = ok(kvctl(server1, "lease", "timetolive", "--keys", lid))
    theirs = ok(etcdctl(server1, "lease", "timetolive", "--keys", lid))
    pattern = rf"lease {lid} granted with TTL\(60s\), remaining\(\d+s\), attached keys\(\[{re.escape(ns)}leased\]\)\n"
    assert re.fullmatch(pattern, mine) and re.fullmatch(pattern, theirs), (mine, theirs)
    ttl_json = json.loads(ok(kvctl(server1, "-w", "json", "lease", "timetolive", lid)))
    assert ttl_json["id"] == int(lid, 16) and ttl_json["granted-ttl"] == 60
    assert lid in ok(kvctl(server1, "lease", "list")).split("\n")
    assert ok(kvctl(server1, "lease", "keep-alive", "--once", lid)) == f"lease {lid} keepalived with TTL(60)\n"
    assert ok(kvctl(server1, "lease", "revoke", lid)) == f"lease {lid} revoked\n"
    assert ok(kvctl(server1, "get", ns + "leased")) == ""
    assert ok(kvctl(server1, "lease", "timetolive", lid)) == ok(etcdctl(server1, "lease", "timetolive", lid))
    again = kvctl(server1, "lease", "revoke", lid, subprocess_=True)
    assert again.returncode == 1 and again.stderr == "Error: etcdserver: requested lease not found\n"
    assert again.stdout == ""


@requires_etcdctl
def test_member_and_endpoint_commands(server1: Cluster) -> None:
    assert ok(kvctl(server1, "member", "list")) == ok(etcdctl(server1, "member", "list"))
    mine = json.loads(ok(kvctl(server1, "member", "list", "-w", "json")))
    theirs = json.loads(ok(etcdctl(server1, "member", "list", "-w", "json")))
    assert mine["members"] == theirs["members"]
    table = ok(kvctl(server1, "member", "list", "-w", "table"))
    assert "| IS LEARNER |" in table and "m1" in table
    # every column but the raft indexes, which move between the two calls
    mine_cols = ok(kvctl(server1, "endpoint", "status")).split(", ")
    theirs_cols = ok(etcdctl(server1, "endpoint", "status")).split(", ")
    assert mine_cols[:7] == theirs_cols[:7]
    status = json.loads(ok(kvctl(server1, "endpoint", "status", "-w", "json")))
    assert status[0]["Endpoint"] == server1.endpoints[0] and status[0]["Status"]["version"]
    assert ok(kvctl(server1, "endpoint", "status", "--cluster")).startswith(server1.endpoints[0] + ", ")
    assert "is healthy" in ok(kvctl(server1, "endpoint", "health"))
    assert json.loads(ok(kvctl(server1, "endpoint", "health", "-w", "json")))[0]["health"] is True


def test_member_add_and_remove(server1: Cluster) -> None:
    out = ok(kvctl(server1, "member", "add", "newbie", "--peer-urls=http://127.0.0.1:2", "--learner"))
    m = re.match(r"Member ([0-9a-f ]{16}) added to cluster ([0-9a-f ]{16})\n", out)
    assert m and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out
    mid = m.group(1).strip()
    promote = kvctl(server1, "member", "promote", mid)
    assert promote.returncode == 1 and promote.stderr.startswith("Error: ")
    assert re.match(rf"Member\s+{mid} removed from cluster", ok(kvctl(server1, "member", "remove", mid)))


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    """A long-running command (a watch) whose output the test reads line by line."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())


@requires_etcdctl
def test_watch_output_matches_etcdctl(server1: Cluster, ns: str) -> None:
    start = json.loads(ok(kvctl(server1, "-w", "json", "put", ns + "seed", "0")))["header"]["revision"] + 1
    ok(kvctl(server1, "put", ns + "w", "1"))
    ok(kvctl(server1, "put", ns + "w", "2"))
    ok(kvctl(server1, "del", ns + "w"))
    expected_lines = 3 + 5 + 5  # PUT k v; PUT prev-k prev-v k v; DELETE prev-k prev-v k (empty)

    def watch(cmd: list[str]) -> list[str]:
        args = ["watch", "--prefix", "--prev-kv", "--rev", str(start), ns + "w"]
        p = _spawn([*cmd, f"--endpoints={server1.endpoints[0]}", *args])
        try:
            assert p.stdout is not None
            return [p.stdout.readline() for _ in range(expected_lines)]
        finally:
            p.kill()
            p.wait()

    mine = watch(KVCTL)
    assert mine == watch(["etcdctl"])
    assert mine[:3] == ["PUT\n", f"{ns}w\n", "1\n"] and mine[8] == "DELETE\n"


@requires_etcdctl
def test_json_watch_output_matches_etcdctl(server1: Cluster, ns: str) -> None:
    """Each line is a WatchResponse as etcdctl prints it. etcdctl prints one line per server response and
    kvctl one per revision, so the two are compared event by event, each with the header it came with."""
    start = json.loads(ok(kvctl(server1, "-w", "json", "put", ns + "jseed", "0")))["header"]["revision"] + 1
    ok(kvctl(server1, "put", ns + "jw", "1"))
    ok(kvctl(server1, "put", ns + "jw", "2"))
    ok(kvctl(server1, "del", ns + "jw"))

    def watch(cmd: list[str]) -> list[tuple[str, str]]:
        args = ["-w", "json", "watch", "--prefix", "--prev-kv", "--rev", str(start), ns + "jw"]
        p = _spawn([*cmd, f"--endpoints={server1.endpoints[0]}", *args])
        flat: list[tuple[str, str]] = []
        try:
            assert p.stdout is not None
            while len(flat) < 3:
                line = json.loads(p.stdout.readline())
                assert set(line) == {"Header", "Events", "CompactRevision", "Canceled", "Created"}
                flat += [(json.dumps(line["Header"]), json.dumps(ev, sort_keys=True)) for ev in line["Events"]]
            return flat
        finally:
            p.kill()
            p.wait()

    mine = watch(KVCTL)
    assert mine == watch(["etcdctl"])
    assert json.loads(mine[2][1])["type"] == 1 and "type" not in json.loads(mine[0][1])


@requires_etcdctl
def test_compaction_errors_and_snapshot(server1: Cluster, ns: str, tmp_path: Path) -> None:
    r1 = json.loads(ok(kvctl(server1, "-w", "json", "put", ns + "k", "1")))["header"]["revision"]
    r2 = json.loads(ok(kvctl(server1, "-w", "json", "put", ns + "k", "2")))["header"]["revision"]
    assert ok(kvctl(server1, "compaction", str(r2))) == f"compacted revision {r2}\n"
    mine = kvctl(server1, "get", "--rev", str(r1), ns + "k")
    theirs = etcdctl(server1, "get", "--rev", str(r1), ns + "k")
    assert mine.returncode == theirs.returncode == 1 and mine.stdout == ""
    assert mine.stderr == theirs.stderr.strip().split("\n")[-1] + "\n"
    assert ok(kvctl(server1, "snapshot", "save", str(tmp_path / "s.db"))) == f"Snapshot saved at {tmp_path / 's.db'}\n"
    assert (tmp_path / "s.db").stat().st_size > 0


def test_env_vars_and_unreachable_endpoint(server1: Cluster, ns: str) -> None:
    env = {"KVCTL_ENDPOINTS": server1.endpoints[0]}
    assert ok(kvctl(server1, "put", ns + "e", "v", env=env, endpoints=False, subprocess_=True)) == "OK\n"
    assert ok(kvctl(server1, "get", ns, env={**env, "KVCTL_PREFIX": "1"}, endpoints=False)) == f"{ns}e\nv\n"
    as_json = ok(kvctl(server1, "get", ns + "e", env={**env, "KVCTL_WRITE_OUT": "json"}, endpoints=False))
    assert json.loads(as_json)["count"] == 1
    dead = kvctl(
        server1, "get", "k", env={"KVCTL_ENDPOINTS": "http://127.0.0.1:1", "KVCTL_COMMAND_TIMEOUT": "0.5"},
        endpoints=False, subprocess_=True,
    )  # fmt: skip
    assert dead.returncode == 1 and dead.stderr.startswith("Error: no endpoint answered") and dead.stdout == ""
    usage = kvctl(server1, "get", subprocess_=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
