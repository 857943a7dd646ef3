"""``kvctl``: an etcdctl-like command line over ``kvdisco.client``.

Commands, flags and the ``simple`` output follow etcdctl 3.4 so that scripts and habits carry
over; ``-w json`` prints etcdctl-style JSON (int64 as numbers, keys and values base64, zero values
left out); ``-w table`` draws tables for member list and endpoint status/health. Every flag can
also come from the environment as ``KVCTL_<FLAG>`` (``KVCTL_ENDPOINTS``, ``KVCTL_WRITE_OUT``,
``KVCTL_PREFIX=1``...); a flag on the command line wins. Errors go to stderr as ``Error: ...``
with exit status 1; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from kvdisco.client import (
    DEFAULT_ENDPOINT,
    Client,
    Compare,
    DeleteResult,
    Event,
    GetResult,
    Header,
    KeyValue,
    KvdiscoError,
    LeaseNotFoundError,
    Member,
    Op,
    PutResult,
    Status,
    TxnResult,
    WatchBatch,
)

__all__ = ["main"]

EXIT_ERROR = 1

JSON = dict[str, Any]


# --- output helpers ------------------------------------------------------------------------------


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _omit_zero(d: JSON) -> JSON:
    """Protobuf JSON leaves zero values out; so does etcdctl -w json."""
    return {k: v for k, v in d.items() if v not in (0, "", False, None, [], {})}


def header_json(h: Header) -> JSON:
    return _omit_zero(
        {"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision, "raft_term": h.raft_term}
    )


def kv_json(kv: KeyValue) -> JSON:
    return _omit_zero(
        {
            "key": _b64(kv.key),
            "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision,
            "version": kv.version,
            "value": _b64(kv.value),
            "lease": kv.lease,
        }
    )


def get_json(r: GetResult) -> JSON:
    return _omit_zero(
        {"header": header_json(r.header), "kvs": [kv_json(kv) for kv in r.kvs], "more": r.more, "count": r.count}
    )


def put_json(r: PutResult) -> JSON:
    return _omit_zero({"header": header_json(r.header), "prev_kv": kv_json(r.prev_kv) if r.prev_kv else None})


def del_json(r: DeleteResult) -> JSON:
    return _omit_zero(
        {"header": header_json(r.header), "deleted": r.deleted, "prev_kvs": [kv_json(kv) for kv in r.prev_kvs]}
    )


def txn_json(r: TxnResult) -> JSON:
    responses: list[JSON] = []
    for sub in r.responses:
        if isinstance(sub, GetResult):
            responses.append({"response_range": get_json(sub)})
        elif isinstance(sub, PutResult):
            responses.append({"response_put": put_json(sub)})
        elif isinstance(sub, DeleteResult):
            responses.append({"response_delete_range": del_json(sub)})
        else:
            responses.append({"response_txn": txn_json(sub)})
    return _omit_zero({"header": header_json(r.header), "succeeded": r.succeeded, "responses": responses})


def member_json(m: Member) -> JSON:
    return _omit_zero(
        {
            "ID": m.id,
            "name": m.name,
            "peerURLs": list(m.peer_urls),
            "clientURLs": list(m.client_urls),
            "isLearner": m.is_learner,
        }
    )


def status_json(s: Status) -> JSON:
    return {
        "Endpoint": s.endpoint,
        "Status": _omit_zero(
            {
                "header": header_json(s.header),
                "version": s.version,
                "dbSize": s.db_size,
                "leader": s.leader,
                "raftIndex": s.raft_index,
                "raftTerm": s.raft_term,
                "raftAppliedIndex": s.raft_applied_index,
                "errors": list(s.errors),
                "dbSizeInUse": s.db_size_in_use,
                "isLearner": s.is_learner,
            }
        ),
    }


def humanize_bytes(n: int) -> str:
    """go-humanize's ``Bytes`` (SI units), as etcdctl prints DB sizes."""
    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = 0
    val = float(n)
    while val >= 1000 and e < len(units) - 1:
        val /= 1000
        e += 1
    val = int(val * 10 + 0.5) / 10
    return f"{val:.1f} {units[e]}" if val < 10 else f"{val:.0f} {units[e]}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An ASCII table like etcdctl's (tablewriter) for -w table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:^{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([sep, line(headers), sep, *(line(r) for r in rows), sep])


class Printer:
    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out

    def line(self, s: str = "") -> None:
        self.out.write(s + "\n")

    def json(self, obj: Any) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def kvs(self, kvs: Sequence[KeyValue], *, keys_only: bool = False, value_only: bool = False) -> None:
        for kv in kvs:
            if not value_only:
                self.line(_text(kv.key))
            if not keys_only:
                self.line(_text(kv.value))
            elif not value_only:
                self.line()


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


# --- commands ------------------------------------------------------------------------------------


def _parse_lease_id(s: str) -> int:
    try:
        return int(s, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad lease ID {s!r}: expected hex, as printed by `lease grant`") from None


def _parse_member_id(s: str) -> int:
    try:
        return int(s, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad member ID {s!r}: expected hex, as printed by `member list`") from None


async def cmd_get(c: Client, a: argparse.Namespace, p: Printer) -> int:
    r = await c.get(
        a.key,
        prefix=a.prefix,
        from_key=a.from_key,
        range_end=a.range_end,
        revision=a.rev,
        limit=a.limit,
        keys_only=a.keys_only,
        count_only=a.count_only,
    )
    if p.fmt == "json":
        p.json(get_json(r))
    elif a.count_only:
        p.line(str(r.count))
    else:
        p.kvs(r.kvs, keys_only=a.keys_only, value_only=a.print_value_only)
    return 0


async def cmd_put(c: Client, a: argparse.Namespace, p: Printer) -> int:
    value = a.value
    if value is None and not a.ignore_value:
        value = sys.stdin.read()
    r = await c.put(
        a.key, value or "", lease=a.lease, prev_kv=a.prev_kv, ignore_value=a.ignore_value, ignore_lease=a.ignore_lease
    )
    if p.fmt == "json":
        p.json(put_json(r))
        return 0
    p.line("OK")
    if a.prev_kv and r.prev_kv is not None:
        p.kvs([r.prev_kv])
    return 0


async def cmd_del(c: Client, a: argparse.Namespace, p: Printer) -> int:
    r = await c.delete(a.key, prefix=a.prefix, from_key=a.from_key, range_end=a.range_end, prev_kv=a.prev_kv)
    if p.fmt == "json":
        p.json(del_json(r))
        return 0
    p.line(str(r.deleted))
    if a.prev_kv:
        p.kvs(r.prev_kvs)
    return 0


def event_json(ev: Event) -> JSON:
    """As etcdctl prints an mvccpb.Event: the type only when it is not PUT (0), as a number."""
    body: JSON = {"type": 1} if ev.type.value == "DELETE" else {}
    body["kv"] = kv_json(ev.kv)
    if ev.prev_kv is not None:
        body["prev_kv"] = kv_json(ev.prev_kv)
    return body


def watch_json(batch: WatchBatch) -> JSON:
    """etcdctl -w json prints each watch response as Go's encoding/json shows clientv3.WatchResponse."""
    header = batch.header or Header(0, 0, batch.revision, 0)
    return {
        "Header": header_json(header),
        "Events": [event_json(ev) for ev in batch.events],
        "CompactRevision": 0,
        "Canceled": False,
        "Created": False,
    }


def print_event(p: Printer, ev: Event) -> None:
    p.line(ev.type.value)
    if ev.prev_kv is not None:
        p.kvs([ev.prev_kv])
    p.kvs([ev.kv])


async def cmd_watch(c: Client, a: argparse.Namespace, p: Printer) -> int:
    async with c.watch(a.key, prefix=a.prefix, range_end=a.range_end, start_revision=a.rev, prev_kv=a.prev_kv) as w:
        async for batch in w.batches():
            if p.fmt == "json":
                p.json(watch_json(batch))
            else:
                for ev in batch.events:
                    print_event(p, ev)
            p.out.flush()
    return 0


# etcdctl's txn grammar: compares are `<target>("<key>") <op> "<value>"`; ops are get/put/del lines.
_TARGETS = {
    "c": Compare.create, "create": Compare.create,
    "m": Compare.mod, "mod": Compare.mod,
    "val": Compare.value, "value": Compare.value,
    "ver": Compare.version, "version": Compare.version,
    "lease": Compare.lease,
}  # fmt: skip


class TxnSyntaxError(ValueError):
    pass


def parse_compare(line: str) -> Compare:
    paren = line.find("(")
    close = line.find(")", paren)
    if paren <= 0 or close < 0:
        raise TxnSyntaxError(f"malformed comparison: {line!r}")
    target_name = line[:paren].strip()
    if target_name not in _TARGETS:
        raise TxnSyntaxError(f"unknown compare target {target_name!r} in {line!r}")
    key = _unquote(line[paren + 1 : close].strip())
    rest = shlex.split(line[close + 1 :])
    if len(rest) != 2:
        raise TxnSyntaxError(f"malformed comparison: {line!r}")
    op, operand = rest
    target = _TARGETS[target_name](key)
    rhs: int | str
    if target.target == "VALUE":
        rhs = operand
    elif target.target == "LEASE":
        rhs = _int(operand, line, base=16)  # lease IDs are hex everywhere in the CLI
    else:
        rhs = _int(operand, line)
    methods = {"=": target.eq, "==": target.eq, "!=": target.ne, "<": target.lt, ">": target.gt}
    if op not in methods:
        raise TxnSyntaxError(f"unknown operator {op!r} in {line!r}")
    return methods[op](rhs)


def _unquote(s: str) -> str:
    parts = shlex.split(s)
    if len(parts) != 1:
        raise TxnSyntaxError(f"bad key {s!r}")
    return parts[0]


def _int(s: str, line: str, base: int = 10) -> int:
    try:
        return int(s, base)
    except ValueError:
        raise TxnSyntaxError(f"expected an integer in {line!r}") from None


def _request_parser() -> argparse.ArgumentParser:
    rp = argparse.ArgumentParser(prog="txn-request", add_help=False, exit_on_error=False)
    rp.add_argument("op", choices=["get", "put", "del"])
    rp.add_argument("key")
    rp.add_argument("arg", nargs="?")
    rp.add_argument("--prefix", action="store_true")
    rp.add_argument("--from-key", action="store_true")
    rp.add_argument("--prev-kv", action="store_true")
    rp.add_argument("--lease", type=_parse_lease_id, default=0)
    rp.add_argument("--limit", type=int, default=0)
    rp.add_argument("--rev", type=int, default=0)
    rp.add_argument("--keys-only", action="store_true")
    return rp


def parse_request(line: str) -> Op:
    try:
        r = _request_parser().parse_args(shlex.split(line))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise TxnSyntaxError(f"bad request {line!r}: {exc}") from None
    if r.op == "put":
        if r.arg is None:
            raise TxnSyntaxError(f"put needs a value: {line!r}")
        return Op.put(r.key, r.arg, lease=r.lease, prev_kv=r.prev_kv)
    if r.op == "get":
        return Op.get(
            r.key, prefix=r.prefix, from_key=r.from_key, range_end=r.arg, limit=r.limit, revision=r.rev,
            keys_only=r.keys_only,
        )  # fmt: skip
    return Op.delete(r.key, prefix=r.prefix, from_key=r.from_key, range_end=r.arg, prev_kv=r.prev_kv)


def read_txn(stream: TextIO, interactive: bool, out: TextIO) -> tuple[list[Compare], list[Op], list[Op]]:
    """Three blank-line-terminated sections: compares, success requests, failure requests."""
    prompts = ["compares:", "success requests (get, put, del):", "failure requests (get, put, del):"]
    sections: list[list[str]] = [[], [], []]
    for i in range(3):
        if interactive:
            out.write(prompts[i] + "\n")
            out.flush()
        for raw in stream:
            line = raw.strip()
            if not line:
                break
            sections[i].append(line)
    return (
        [parse_compare(x) for x in sections[0]],
        [parse_request(x) for x in sections[1]],
        [parse_request(x) for x in sections[2]],
    )


def print_txn(p: Printer, r: TxnResult) -> None:
    p.line("SUCCESS" if r.succeeded else "FAILURE")
    for sub in r.responses:
        p.line()
        if isinstance(sub, GetResult):
            p.kvs(sub.kvs)
        elif isinstance(sub, PutResult):
            p.line("OK")
        elif isinstance(sub, DeleteResult):
            p.line(str(sub.deleted))
        else:
            print_txn(p, sub)


async def cmd_txn(c: Client, a: argparse.Namespace, p: Printer) -> int:
    compares, success, failure = read_txn(sys.stdin, a.interactive, p.out)
    r = await c.txn().if_(*compares).then(*success).else_(*failure).commit()
    if p.fmt == "json":
        p.json(txn_json(r))
    else:
        print_txn(p, r)
    return 0


async def cmd_compaction(c: Client, a: argparse.Namespace, p: Printer) -> int:
    h = await c.compact(a.revision, physical=a.physical)
    if p.fmt == "json":
        p.json({"header": header_json(h)})
    else:
        p.line(f"compacted revision {a.revision}")
    return 0


async def cmd_lease_grant(c: Client, a: argparse.Namespace, p: Printer) -> int:
    g = await c.lease_grant(a.ttl)
    if p.fmt == "json":
        p.json({**header_json(g.header), "ID": g.id, "TTL": g.ttl})
    else:
        p.line(f"lease {g.id:016x} granted with TTL({g.ttl}s)")
    return 0


async def cmd_lease_revoke(c: Client, a: argparse.Namespace, p: Printer) -> int:
    h = await c.lease_revoke(a.lease_id)
    if p.fmt == "json":
        p.json({"header": header_json(h)})
    else:
        p.line(f"lease {a.lease_id:016x} revoked")
    return 0


async def cmd_lease_timetolive(c: Client, a: argparse.Namespace, p: Printer) -> int:
    t = await c.lease_time_to_live(a.lease_id, keys=a.keys)
    if p.fmt == "json":
        body = {**header_json(t.header), "id": t.id, "ttl": t.ttl, "granted-ttl": t.granted_ttl}
        if t.keys:
            body["keys"] = [_b64(k) for k in t.keys]
        p.json(body)
    elif t.ttl == -1:
        p.line(f"lease {a.lease_id:016x} already expired")
    else:
        s = f"lease {t.id:016x} granted with TTL({t.granted_ttl}s), remaining({t.ttl}s)"
        if a.keys:
            s += ", attached keys([" + " ".join(_text(k) for k in t.keys) + "])"
        p.line(s)
    return 0


async def cmd_lease_list(c: Client, a: argparse.Namespace, p: Printer) -> int:
    ids = await c.leases()
    if p.fmt == "json":
        p.json({"leases": [{"id": i} for i in ids]})
    else:
        p.line(f"found {len(ids)} leases")
        for i in ids:
            p.line(f"{i:016x}")
    return 0


async def cmd_lease_keepalive(c: Client, a: argparse.Namespace, p: Printer) -> int:
    while True:
        try:
            ka = await c.lease_keepalive_once(a.lease_id)
        except LeaseNotFoundError:
            p.line(f"lease {a.lease_id:016x} expired or revoked.")
            return EXIT_ERROR
        if p.fmt == "json":
            p.json({**header_json(ka.header), "ID": ka.id, "TTL": ka.ttl})
        else:
            p.line(f"lease {ka.id:016x} keepalived with TTL({ka.ttl})")
        p.out.flush()
        if a.once:
            return 0
        await asyncio.sleep(max(ka.ttl / 3, 0.5))


def _member_rows(members: Sequence[Member]) -> list[list[str]]:
    return [
        [
            f"{m.id:x}",
            "started" if m.name else "unstarted",
            m.name,
            ",".join(m.peer_urls),
            ",".join(m.client_urls),
            str(m.is_learner).lower(),
        ]
        for m in members
    ]


async def cmd_member_list(c: Client, a: argparse.Namespace, p: Printer) -> int:
    members = await c.member_list()
    if p.fmt == "json":
        st = await c.status()
        p.json({"header": header_json(st.header), "members": [member_json(m) for m in members]})
    elif p.fmt == "table":
        p.line(table(["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"], _member_rows(members)))
    else:
        for row in _member_rows(members):
            p.line(", ".join(row))
    return 0


async def cmd_member_add(c: Client, a: argparse.Namespace, p: Printer) -> int:
    urls = [u for u in a.peer_urls.split(",") if u]
    r = await c.member_add(urls, learner=a.learner, name=a.name)
    if p.fmt == "json":
        p.json({"header": header_json(r.header), "member": member_json(r.member),
                "members": [member_json(m) for m in r.members]})  # fmt: skip
        return 0
    p.line(f"Member {r.member.id:16x} added to cluster {r.header.cluster_id:16x}")
    p.line()
    conf: list[str] = []
    for m in r.members:
        name = a.name if m.id == r.member.id else m.name
        conf.extend(f"{name}={u}" for u in m.peer_urls)
    p.line(f'ETCD_NAME="{a.name}"')
    p.line(f'ETCD_INITIAL_CLUSTER="{",".join(conf)}"')
    p.line(f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{",".join(urls)}"')
    p.line('ETCD_INITIAL_CLUSTER_STATE="existing"')
    return 0


async def cmd_member_remove(c: Client, a: argparse.Namespace, p: Printer) -> int:
    await c.member_remove(a.member_id)
    st = await c.status()
    p.line(f"Member {a.member_id:16x} removed from cluster {st.header.cluster_id:16x}")
    return 0


async def cmd_member_promote(c: Client, a: argparse.Namespace, p: Printer) -> int:
    await c.member_promote(a.member_id)
    st = await c.status()
    p.line(f"Member {a.member_id:16x} promoted in cluster {st.header.cluster_id:16x}")
    return 0


async def _target_endpoints(c: Client, a: argparse.Namespace) -> list[str]:
    if not a.cluster:
        return list(c.endpoints)
    return [u for m in await c.member_list() for u in m.client_urls]


async def cmd_endpoint_status(c: Client, a: argparse.Namespace, p: Printer) -> int:
    statuses: list[Status] = []
    failed = False
    for ep in await _target_endpoints(c, a):
        try:
            statuses.append(await c.status(ep))
        except KvdiscoError as exc:
            print(f"Failed to get the status of endpoint {ep} ({exc.message})", file=sys.stderr)
            failed = True
    rows = [
        [
            s.endpoint,
            f"{s.header.member_id:x}",
            s.version,
            humanize_bytes(s.db_size),
            str(s.leader == s.header.member_id).lower(),
            str(s.is_learner).lower(),
            str(s.raft_term),
            str(s.raft_index),
            str(s.raft_applied_index),
            ", ".join(s.errors),
        ]
        for s in statuses
    ]
    if p.fmt == "json":
        p.json([status_json(s) for s in statuses])
    elif p.fmt == "table":
        heads = ["ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER", "RAFT TERM", "RAFT INDEX",
                 "RAFT APPLIED INDEX", "ERRORS"]  # fmt: skip
        p.line(table(heads, rows))
    else:
        for row in rows:
            p.line(", ".join(row))
    return EXIT_ERROR if failed else 0


async def cmd_endpoint_health(c: Client, a: argparse.Namespace, p: Printer) -> int:
    results: list[JSON] = []
    for ep in await _target_endpoints(c, a):
        start = time.monotonic()
        async with Client([ep], request_timeout_s=c.request_timeout_s, retry_deadline_s=0.01) as one:
            try:
                await one.get("health")
                err = ""
            except KvdiscoError as exc:
                err = exc.message
        took = f"{(time.monotonic() - start) * 1000:.6f}ms"
        results.append({"endpoint": ep, "health": not err, "took": took, **({"error": err} if err else {})})
    if p.fmt == "json":
        p.json(results)
    elif p.fmt == "table":
        rows = [[r["endpoint"], str(r["health"]).lower(), r["took"], r.get("error", "")] for r in results]
        p.line(table(["ENDPOINT", "HEALTH", "TOOK", "ERROR"], rows))
    else:
        for r in results:
            if r["health"]:
                p.line(f"{r['endpoint']} is healthy: successfully committed proposal: took = {r['took']}")
            else:
                p.line(f"{r['endpoint']} is unhealthy: failed to commit proposal: {r['error']}")
    return 0 if all(r["health"] for r in results) else EXIT_ERROR


async def cmd_snapshot_save(c: Client, a: argparse.Namespace, p: Printer) -> int:
    size = await c.snapshot_save(a.path)
    p.line(f"Snapshot saved at {a.path}" if p.fmt != "json" else json.dumps({"path": a.path, "size": size}))
    return 0


# --- argument parsing ----------------------------------------------------------------------------

Handler = Callable[[Client, argparse.Namespace, Printer], Coroutine[Any, Any, int]]


@dataclass(frozen=True)
class _Env:
    """The env var a flag reads when it is not given on the command line."""

    prefix: str = "KVCTL_"

    def name(self, action: argparse.Action) -> str:
        return self.prefix + action.dest.upper()


_TRUE = {"1", "true", "yes", "on"}


def _apply_env_defaults(parser: argparse.ArgumentParser, env: _Env = _Env()) -> None:
    """Make every optional flag default to ``KVCTL_<DEST>`` when that variable is set."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _apply_env_defaults(sub, env)
            continue
        if not action.option_strings or action.dest in ("help", argparse.SUPPRESS):
            continue
        if action.default is argparse.SUPPRESS:
            continue  # a global flag repeated on a subcommand: the top-level parser reads the env
        raw = os.environ.get(env.name(action))
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = raw.strip().lower() in _TRUE
        elif action.type is not None and callable(action.type):
            action.default = action.type(raw)
        else:
            action.default = raw
        if action.help is not None and action.help != argparse.SUPPRESS:
            action.help += f" (from ${env.name(action)})"


def _add_global_flags(ap: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global flags; on subcommands (``suppress``) they have no default, so that etcdctl's
    ``kvctl get k -w json`` works without clobbering a value given before the subcommand."""

    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    ap.add_argument("--endpoints", default=d(DEFAULT_ENDPOINT), help="comma-separated client URLs")
    ap.add_argument("-w", "--write-out", default=d("simple"), choices=["simple", "json", "table"], help="output format")
    ap.add_argument("--command-timeout", type=float, default=d(5.0), help="seconds for one command, retries included")
    ap.add_argument("--dial-timeout", type=float, default=d(2.0), help="seconds to connect to one endpoint")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kvctl", description="etcdctl-like client for kvdisco (and etcd). Flags also read KVCTL_<FLAG>."
    )
    _add_global_flags(ap, suppress=False)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, helptext: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=helptext, description=helptext)
        sp.set_defaults(handler=handler)
        _add_global_flags(sp, suppress=True)
        return sp

    g = add("get", cmd_get, "get a key or a range of keys")
    g.add_argument("key")
    g.add_argument("range_end", nargs="?")
    g.add_argument("--prefix", action="store_true", help="get keys with the prefix")
    g.add_argument("--from-key", action="store_true", help="get keys >= key")
    g.add_argument("--rev", type=int, default=0, help="revision to read at")
    g.add_argument("--limit", type=int, default=0, help="maximum number of results")
    g.add_argument("--keys-only", action="store_true", help="only keys")
    g.add_argument("--count-only", action="store_true", help="only the count")
    g.add_argument("--print-value-only", action="store_true", help="only values")

    p = add("put", cmd_put, "put a key (value from stdin when omitted)")
    p.add_argument("key")
    p.add_argument("value", nargs="?")
    p.add_argument("--lease", type=_parse_lease_id, default=0, help="lease ID (hex) to attach")
    p.add_argument("--prev-kv", action="store_true", help="print the previous key-value")
    p.add_argument("--ignore-value", action="store_true", help="keep the current value")
    p.add_argument("--ignore-lease", action="store_true", help="keep the current lease")

    d = add("del", cmd_del, "delete a key or a range of keys")
    d.add_argument("key")
    d.add_argument("range_end", nargs="?")
    d.add_argument("--prefix", action="store_true", help="delete keys with the prefix")
    d.add_argument("--from-key", action="store_true", help="delete keys >= key")
    d.add_argument("--prev-kv", action="store_true", help="print the deleted key-values")

    w = add("watch", cmd_watch, "watch a key or range (until interrupted)")
    w.add_argument("key")
    w.add_argument("range_end", nargs="?")
    w.add_argument("--prefix", action="store_true", help="watch keys with the prefix")
    w.add_argument("--rev", type=int, default=0, help="revision to start watching from")
    w.add_argument("--prev-kv", action="store_true", help="include previous key-values")

    t = add("txn", cmd_txn, "run a txn read from stdin (compares, success, failure; blank-line separated)")
    t.add_argument("-i", "--interactive", action="store_true", help="print prompts")

    cp = add("compaction", cmd_compaction, "compact the history up to a revision")
    cp.add_argument("revision", type=int)
    cp.add_argument("--physical", action="store_true", help="wait until the compaction is physically applied")

    lease = add("lease", cmd_lease_list, "lease commands").add_subparsers(dest="lease_command", required=True)
    lg = add("grant", cmd_lease_grant, "grant a lease", lease)
    lg.add_argument("ttl", type=int)
    lr = add("revoke", cmd_lease_revoke, "revoke a lease and delete its keys", lease)
    lr.add_argument("lease_id", type=_parse_lease_id)
    lt = add("timetolive", cmd_lease_timetolive, "remaining TTL of a lease", lease)
    lt.add_argument("lease_id", type=_parse_lease_id)
    lt.add_argument("--keys", action="store_true", help="list the attached keys")
    add("list", cmd_lease_list, "list leases", lease)
    lk = add("keep-alive", cmd_lease_keepalive, "keep a lease alive", lease)
    lk.add_argument("lease_id", type=_parse_lease_id)
    lk.add_argument("--once", action="store_true", help="renew once and exit")

    member = add("member", cmd_member_list, "member commands").add_subparsers(dest="member_command", required=True)
    add("list", cmd_member_list, "list members", member)
    ma = add("add", cmd_member_add, "add a member", member)
    ma.add_argument("name")
    ma.add_argument("--peer-urls", required=True, help="comma-separated peer URLs of the new member")
    ma.add_argument("--learner", action="store_true", help="add as a non-voting learner")
    mr = add("remove", cmd_member_remove, "remove a member", member)
    mr.add_argument("member_id", type=_parse_member_id)
    mp = add("promote", cmd_member_promote, "promote a learner to voting member", member)
    mp.add_argument("member_id", type=_parse_member_id)

    ep = add("endpoint", cmd_endpoint_status, "endpoint commands").add_subparsers(dest="ep_command", required=True)
    es = add("status", cmd_endpoint_status, "status of each endpoint", ep)
    es.add_argument("--cluster", action="store_true", help="every member's client URLs, not just --endpoints")
    eh = add("health", cmd_endpoint_health, "health of each endpoint", ep)
    eh.add_argument("--cluster", action="store_true", help="every member's client URLs, not just --endpoints")

    snap = add("snapshot", cmd_snapshot_save, "snapshot commands").add_subparsers(dest="snap_command", required=True)
    ss = add("save", cmd_snapshot_save, "save a backend snapshot to a file", snap)
    ss.add_argument("path")

    _apply_env_defaults(ap)
    return ap


async def _run(args: argparse.Namespace) -> int:
    endpoints = [e for e in args.endpoints.split(",") if e.strip()]
    async with Client(
        endpoints,
        request_timeout_s=args.command_timeout,
        connect_timeout_s=args.dial_timeout,
        retry_deadline_s=args.command_timeout,
    ) as c:
        handler: Handler = args.handler
        return await handler(c, args, Printer(args.write_out, sys.stdout))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KvdiscoError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except (TxnSyntaxError, ValueError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
