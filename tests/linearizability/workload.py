"""Record a concurrent history against an etcd-v3-gateway cluster under faults, then judge it.

Why: a Raft store can pass every single-client test and still serve stale
reads from a deposed leader, lose acknowledged writes across a crash, or
skip/duplicate watch events when a member restarts. Those bugs only show in
a concurrent history taken while members die and stall. This module:

1. opens one watcher per member (from the starting revision, resuming from
   last-seen + 1 on any failure);
2. runs N clients, each sending random put / linearizable get / CAS (txn on
   version or value) / delete requests for a small key set to a random member,
   with a per-request timeout, recording call and return times. Every written
   value is unique (client id + counter), so a read names the write it saw;
3. runs a fault driver at the same time (kill -9 + restart, SIGSTOP + SIGCONT,
   and on a cluster that supports it a peer partition of one member, or a cut
   of one peer link, while clients still reach every member; aimed at the
   leader half of the time, one fault at a time so a quorum stays up), and
   heals everything at the end;
4. does a final linearizable read of every key and judges:
   (a) the history (plus the final reads) is linearizable per key;
   (b) no acknowledged write is lost: the final value of each key comes from a
       write that no acknowledged write strictly follows in real time;
   (c) each watcher delivered every revision from start+1 to the final
       revision exactly once, in order, agreeing with the other watchers and
       with the revisions the writers were told, and replaying the events
       reproduces the final read.

Outcome rules for requests (what the client knows):
- connection refused, or an answer of code 14 "etcdserver: no leader" (given before proposing, by
  etcd and kvdisco alike): the write never happened, so the op is dropped;
- any other error, timeout or non-200 answer to a write: indeterminate
  (return time +inf: it may take effect at any later time, or never);
- a read that failed had no effect, so it is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .checker import CheckResult, Op, OpKind, check
from .clusters import Cluster, Partitionable

__all__ = [
    "FaultDriver",
    "Recorder",
    "Report",
    "Stats",
    "WatchEvent",
    "Watcher",
    "WorkloadConfig",
    "lost_writes",
    "run_pipeline",
    "verify",
    "watch_problems",
]

#: Key prefix for everything the workload writes; the watch covers exactly [PREFIX, PREFIX+1).
PREFIX = "lin/"
#: Watch line buffer cap: a catch-up batch after a restart can be large, but not unboundedly.
WATCH_LINE_BYTES_MAX = 16 * 1024 * 1024


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


@dataclass
class WorkloadConfig:
    clients: int = 6
    keys: int = 4
    duration_s: float = 15.0
    #: Per-request timeout; a write that times out is indeterminate. Above etcd's commit latency under fsync,
    #: well below the fault durations so paused members produce indeterminate ops rather than stall a client.
    request_timeout_s: float = 1.0
    think_s_max: float = 0.02
    #: Op mix weights: get, put, cas, delete.
    mix: tuple[int, int, int, int] = (40, 30, 20, 10)
    seed: int = 0
    faults: bool = True
    #: Faults stop this long before the workload ends, so the tail of the history runs on a healthy cluster.
    settle_s: float = 2.0
    fault_min_s: float = 0.5
    fault_max_s: float = 2.0
    #: Relative weights of the fault kinds; "partition" (cut a member off from its peers, clients still reach
    #: it) and "bridge" (cut one peer link, a third member still talks to both) only on a `Partitionable` cluster.
    fault_weights: tuple[tuple[str, float], ...] = (("kill9", 1.0), ("pause", 1.0), ("partition", 1.0), ("bridge", 0.5))
    #: Partitions and bridges last this long (longer than kills: an election has to happen on the majority side).
    partition_min_s: float = 1.0
    partition_max_s: float = 3.0
    #: Kinds of the first faults, in order, each aimed at the leader (then the choice is random by weight);
    #: a test that must exercise a kind says so here instead of hoping the dice cooperate.
    first_faults: tuple[str, ...] = ()
    watch_catchup_s: float = 15.0

    @property
    def key_names(self) -> list[str]:
        return [f"{PREFIX}k{i}" for i in range(self.keys)]


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    indeterminate: int = 0
    dropped_reads: int = 0
    refused: int = 0


class Refused(Exception):
    """The request never reached the server (connect failed): it cannot have taken effect."""


class Failed(Exception):
    """The request may or may not have reached the server; nothing is known about its effect."""


def _not_applied(text: str) -> bool:
    """etcd and kvdisco both answer "no leader" (code 14) only before proposing: such a write never happened."""
    try:
        err = json.loads(text)
    except ValueError:
        return False
    return isinstance(err, dict) and err.get("code") == 14 and err.get("message") == "etcdserver: no leader"


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            text = await r.text()
            if r.status != 200:
                if _not_applied(text):
                    raise Refused(f"HTTP {r.status}: {text[:200]}")
                raise Failed(f"HTTP {r.status}: {text[:200]}")
            out: dict[str, Any] = json.loads(text)
            return out
    except aiohttp.ClientConnectorError as e:
        raise Refused(str(e)) from e
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
        raise Failed(repr(e)) from e


class Recorder:
    """N concurrent clients issuing random ops; the result is `history` (checker ops) plus `stats`."""

    def __init__(self, endpoints: list[str], cfg: WorkloadConfig) -> None:
        self.endpoints = endpoints
        self.cfg = cfg
        self.history: list[Op] = []
        self.stats = Stats()

    async def run(self) -> None:
        end = time.monotonic() + self.cfg.duration_s
        await asyncio.gather(*(self._client(c, end) for c in range(self.cfg.clients)))

    async def _client(self, cid: int, end: float) -> None:
        rng = random.Random(self.cfg.seed * 1000 + cid)
        seen: dict[str, tuple[str | None, int]] = {}  # last (value, version) this client read, to aim CAS well
        counter = 0
        kinds = [OpKind.GET, OpKind.PUT, OpKind.CAS, OpKind.DELETE]
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                counter += 1
                key = rng.choice(self.cfg.key_names)
                kind = rng.choices(kinds, weights=self.cfg.mix)[0]
                url = rng.choice(self.endpoints)
                value = f"c{cid}-{counter}"
                await self._one(session, url, cid, key, kind, value, seen, rng)
                await asyncio.sleep(rng.uniform(0, self.cfg.think_s_max))

    async def _one(
        self,
        session: aiohttp.ClientSession,
        url: str,
        cid: int,
        key: str,
        kind: OpKind,
        value: str,
        seen: dict[str, tuple[str | None, int]],
        rng: random.Random,
    ) -> None:
        k = b64(key)
        expect_version: int | None = None
        expect_value: str | None = None
        if kind is OpKind.GET:
            path, body = "/v3/kv/range", {"key": k}
        elif kind is OpKind.PUT:
            path, body = "/v3/kv/put", {"key": k, "value": b64(value)}
        elif kind is OpKind.DELETE:
            path, body = "/v3/kv/deleterange", {"key": k}
        else:
            last_value, last_version = seen.get(key, (None, 0))
            if last_value is not None and rng.random() < 0.5:
                expect_value = last_value
                cmp = {"key": k, "target": "VALUE", "result": "EQUAL", "value": b64(last_value)}
            else:
                expect_version = last_version
                cmp = {"key": k, "target": "VERSION", "result": "EQUAL", "version": str(last_version)}
            path = "/v3/kv/txn"
            body = {"compare": [cmp], "success": [{"request_put": {"key": k, "value": b64(value)}}]}
        self.stats.sent += 1
        call = time.monotonic()
        try:
            resp = await _post(session, url + path, body, self.cfg.request_timeout_s)
        except Refused:
            self.stats.refused += 1
            return
        except Failed:
            if kind is OpKind.GET:
                self.stats.dropped_reads += 1
                return
            self.stats.indeterminate += 1
            self.history.append(
                Op(
                    key,
                    kind,
                    call,
                    math.inf,
                    value=None if kind is OpKind.DELETE else value,
                    expect_version=expect_version,
                    expect_value=expect_value,
                    client=cid,
                )
            )
            return
        ret = time.monotonic()
        self.stats.ok += 1
        rev = int(resp["header"]["revision"])
        if kind is OpKind.GET:
            kvs = resp.get("kvs") or []
            got_value = unb64(kvs[0].get("value", "")) if kvs else None
            got_version = int(kvs[0]["version"]) if kvs else 0
            seen[key] = (got_value, got_version)
            op = Op(key, kind, call, ret, out_value=got_value, out_version=got_version, client=cid)
        elif kind is OpKind.PUT:
            op = Op(key, kind, call, ret, value=value, client=cid, revision=rev)
        elif kind is OpKind.DELETE:
            deleted = int(resp.get("deleted", "0"))
            op = Op(key, kind, call, ret, deleted=deleted, client=cid, revision=rev if deleted else None)
        else:
            ok = bool(resp.get("succeeded", False))
            op = Op(
                key,
                kind,
                call,
                ret,
                value=value,
                expect_version=expect_version,
                expect_value=expect_value,
                ok=ok,
                client=cid,
                revision=rev if ok else None,
            )
        self.history.append(op)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    revision: int
    key: str
    value: str | None  # None for DELETE
    version: int


@dataclass
class Watcher:
    """One watch stream on one member, resumed from last revision + 1 after any failure."""

    endpoint: str
    start_revision: int
    events: list[WatchEvent] = field(default_factory=list)
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    created: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_revision(self) -> int:
        return self.events[-1].revision if self.events else self.start_revision - 1

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                body = {
                    "create_request": {
                        "key": b64(PREFIX),
                        "range_end": b64(PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)),
                        "start_revision": str(self.last_revision + 1),
                    }
                }
                try:
                    async with session.post(self.endpoint + "/v3/watch", json=body) as r:
                        if r.status != 200:
                            raise Failed(f"HTTP {r.status}")
                        buf = b""
                        async for chunk in r.content.iter_any():
                            buf += chunk
                            if len(buf) > WATCH_LINE_BYTES_MAX:
                                raise Failed("watch line too long")
                            *lines, buf = buf.split(b"\n")
                            for line in lines:
                                if line.strip():
                                    self._on_message(json.loads(line))
                    raise Failed("watch stream ended")
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError, Failed):
                    self.reconnects += 1
                    await asyncio.sleep(0.1)

    def _on_message(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            raise Failed(f"watch error: {msg['error']}")
        res = msg.get("result", {})
        if res.get("created"):
            self.created.set()
        if res.get("canceled"):
            self.errors.append(f"watch canceled: {res}")
            raise Failed("watch canceled")
        for ev in res.get("events", []):
            kv = ev["kv"]
            is_delete = ev.get("type") == "DELETE"
            self.events.append(
                WatchEvent(
                    revision=int(kv["mod_revision"]),
                    key=unb64(kv["key"]),
                    value=None if is_delete else unb64(kv.get("value", "")),
                    version=0 if is_delete else int(kv.get("version", "0")),
                )
            )


class FaultDriver:
    """One fault at a time, on the leader half the time, each healed before the next one.

    Faults: kill -9 then restart; SIGSTOP then SIGCONT; and on a `Partitionable` cluster "partition" (the
    victim is cut off from every peer while clients still reach it: a leader victim is an old leader in the
    minority) and "bridge" (only the victim's link to one other member is cut; the third member still talks
    to both). Every partition is healed when the driver stops, however it stops.
    """

    def __init__(self, cluster: Cluster, cfg: WorkloadConfig) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.rng = random.Random(cfg.seed + 7)
        self.log: list[str] = []
        self.partitionable: Partitionable | None = cluster if isinstance(cluster, Partitionable) else None
        kinds = {"kill9", "pause"} | ({"partition", "bridge"} if self.partitionable else set())
        self.kinds = [(k, w) for k, w in cfg.fault_weights if k in kinds and w > 0]
        if not self.kinds:
            raise ValueError(f"no usable fault kind in {cfg.fault_weights} for {type(cluster).__name__}")
        #: How many faults of each kind were injected.
        self.counts: dict[str, int] = dict.fromkeys(kinds, 0)

    async def run(self, until: float) -> None:
        try:
            await self._run(until)
        finally:
            if self.partitionable is not None:
                await self.partitionable.heal_partitions()

    async def _run(self, until: float) -> None:
        t0 = time.monotonic()
        n = len(self.cluster.endpoints)
        forced = [k for k in self.cfg.first_faults if k in self.counts]
        while time.monotonic() < until:
            aim_leader = self.rng.random() < 0.5
            if forced:
                what, aim_leader = forced.pop(0), True
            else:
                what = self.rng.choices([k for k, _ in self.kinds], weights=[w for _, w in self.kinds])[0]
            victim = await self._leader() if aim_leader else None
            role = "leader" if victim is not None else "random"
            if victim is None:
                victim = self.rng.randrange(n)
            if what in ("partition", "bridge"):
                hold = self.rng.uniform(self.cfg.partition_min_s, self.cfg.partition_max_s)
            else:
                hold = self.rng.uniform(self.cfg.fault_min_s, self.cfg.fault_max_s)
            hold = max(0.0, min(hold, until - time.monotonic()))
            other = self.rng.choice([j for j in range(n) if j != victim])
            target = f"m{victim}-m{other}" if what == "bridge" else f"m{victim}"
            self.log.append(f"{time.monotonic() - t0:.2f}s {what} {target} ({role}) for {hold:.2f}s")
            self.counts[what] += 1
            if what == "kill9":
                await self.cluster.kill9(victim)
                try:
                    await asyncio.sleep(hold)
                finally:
                    await self.cluster.restart(victim)
            elif what == "pause":
                await self.cluster.pause(victim)
                try:
                    await asyncio.sleep(hold)
                finally:
                    await self.cluster.resume(victim)
            elif what == "partition":
                assert self.partitionable is not None
                try:
                    await self.partitionable.partition(victim)
                    await asyncio.sleep(hold)
                finally:
                    await self.partitionable.heal_partition(victim)
            else:
                assert self.partitionable is not None
                try:
                    await self.partitionable.cut(victim, other)
                    await asyncio.sleep(hold)
                finally:
                    await self.partitionable.uncut(victim, other)
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))

    async def _leader(self) -> int | None:
        """Index of the member that the members agree is leader, via /v3/maintenance/status."""
        async with aiohttp.ClientSession() as s:
            for url in self.cluster.endpoints:
                with contextlib.suppress(Failed, Refused):
                    st = await _post(s, url + "/v3/maintenance/status", {}, 0.5)
                    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                        return self.cluster.endpoints.index(url)
        return None


async def wait_all_ready(endpoints: list[str], timeout_s: float = 30.0) -> None:
    """Every member answers a linearizable read (after faults: resumed and restarted members caught up)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        for url in endpoints:
            while True:
                try:
                    await _post(s, url + "/v3/kv/range", {"key": "AA=="}, 2.0)
                    break
                except (Failed, Refused):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)


@dataclass
class Report:
    history: list[Op]
    final: dict[str, tuple[str | None, int]]
    final_revision: int
    start_revision: int
    watchers: list[Watcher]
    stats: Stats
    faults: list[str]
    check: CheckResult | None = None
    #: Faults injected, by kind.
    fault_counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def indeterminate_outcomes(self) -> str:
        """How many indeterminate puts/CAS did take effect, by the watch streams' ground truth."""
        pending = [op for op in self.history if op.indeterminate and op.kind in (OpKind.PUT, OpKind.CAS)]
        seen = {(e.key, e.value) for w in self.watchers for e in w.events}
        applied = sum((op.key, op.value) in seen for op in pending)
        return f"indeterminate puts/CAS that took effect (seen by a watcher): {applied} of {len(pending)}"

    def summary(self) -> str:
        s = self.stats
        lines = [
            f"ops sent={s.sent} ok={s.ok} indeterminate={s.indeterminate} dropped_reads={s.dropped_reads} "
            f"refused={s.refused}; revisions {self.start_revision}->{self.final_revision}; "
            f"watch reconnects={[w.reconnects for w in self.watchers]}; "
            f"check {self.check.outcome.value if self.check else '-'} in "
            f"{self.check.elapsed_s if self.check else 0:.2f}s; total {self.elapsed_s:.1f}s",
            self.indeterminate_outcomes(),
            "faults: " + "; ".join(self.faults),
        ]
        return "\n".join(lines + [f"PROBLEM: {p}" for p in self.problems])


Snapshot = dict[str, tuple[str | None, int]]


async def _final_read(endpoints: list[str], keys: list[str]) -> tuple[Snapshot, int, float, float]:
    """A linearizable range over the whole prefix (retried until a member answers)."""
    body = {"key": b64(PREFIX), "range_end": b64(PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1))}
    async with aiohttp.ClientSession() as s:
        for _attempt in range(50):
            for url in endpoints:
                call = time.monotonic()
                try:
                    resp = await _post(s, url + "/v3/kv/range", body, 2.0)
                except (Failed, Refused):
                    continue
                ret = time.monotonic()
                final: dict[str, tuple[str | None, int]] = dict.fromkeys(keys, (None, 0))
                for kv in resp.get("kvs", []):
                    final[unb64(kv["key"])] = (unb64(kv.get("value", "")), int(kv["version"]))
                return final, int(resp["header"]["revision"]), call, ret
            await asyncio.sleep(0.2)
    raise TimeoutError("no member answered the final read")


async def run_pipeline(cluster: Cluster, cfg: WorkloadConfig) -> Report:
    """Watchers + clients + faults, heal, final read, wait for watchers, verify. The cluster must be started."""
    t0 = time.monotonic()
    endpoints = cluster.endpoints
    await wait_all_ready(endpoints)
    initial, start_rev, _, _ = await _final_read(endpoints, cfg.key_names)
    if any(v != (None, 0) for v in initial.values()):
        raise RuntimeError(f"the checker assumes absent keys at the start; found {initial}")
    watchers = [Watcher(url, start_rev + 1) for url in endpoints]
    watch_tasks = [asyncio.create_task(w.run()) for w in watchers]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.created.wait() for w in watchers)), 10)
        recorder = Recorder(endpoints, cfg)
        driver = FaultDriver(cluster, cfg)
        tasks = [recorder.run()]
        if cfg.faults:
            tasks.append(driver.run(time.monotonic() + cfg.duration_s - cfg.settle_s))
        await asyncio.gather(*tasks)
        await wait_all_ready(endpoints)
        final, final_rev, fcall, fret = await _final_read(endpoints, cfg.key_names)
        deadline = time.monotonic() + cfg.watch_catchup_s
        while time.monotonic() < deadline and any(w.last_revision < final_rev for w in watchers):
            await asyncio.sleep(0.05)
    finally:
        for t in watch_tasks:
            t.cancel()
        for t in watch_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    history = list(recorder.history)
    history += [Op(k, OpKind.GET, fcall, fret, out_value=v, out_version=ver) for k, (v, ver) in final.items()]
    report = Report(
        history, final, final_rev, start_rev, watchers, recorder.stats, driver.log, fault_counts=driver.counts
    )
    verify(report)
    report.elapsed_s = time.monotonic() - t0
    return report


def verify(report: Report, *, checker: Callable[[list[Op]], CheckResult] = check) -> None:
    """Fill report.check and report.problems with (a) linearizability, (b) lost writes, (c) watch integrity."""
    report.check = checker(report.history)
    if not report.check.ok:
        report.problems.append(f"(a) {report.check.explain()}")
    report.problems += lost_writes(report.history, report.final)
    report.problems += watch_problems(report)


def lost_writes(history: list[Op], final: dict[str, tuple[str | None, int]]) -> list[str]:
    """(b): the final value of each key must come from a write that no acknowledged write strictly follows.

    "Acknowledged write" = a put, a successful CAS, or a delete that the client got an answer for.
    If such a write A began after write W returned, A is ordered after W, so the final state cannot be
    W's (nor the initial state, if any acknowledged write exists and the key was never deleted).
    """
    problems = []
    for key, (value, _ver) in final.items():
        writes = [
            op
            for op in history
            if op.key == key and op.kind is not OpKind.GET and not (op.kind is OpKind.CAS and op.ok is False)
        ]
        acked = [op for op in writes if not op.indeterminate]
        if value is None:
            sources = [op for op in writes if op.kind is OpKind.DELETE]
            if not sources and acked:
                problems.append(
                    f"(b) {key}: final read finds no key, but it was written and never deleted: {acked[-1].describe()}"
                )
                continue
        else:
            sources = [op for op in writes if op.kind is not OpKind.DELETE and op.value == value]
            if not sources:
                problems.append(f"(b) {key}: final value {value!r} was never written")
                continue
        if not sources:
            continue
        # The most favourable candidate source is the one that returned last.
        latest_ret = max(op.ret for op in sources)
        after = [op for op in acked if op.call > latest_ret]
        if after:
            problems.append(
                f"(b) {key}: final value {value!r} but acknowledged write(s) began after its source "
                f"returned, e.g. {after[-1].describe()}"
            )
    return problems


def watch_problems(report: Report) -> list[str]:
    """(c): each watcher saw revisions start..final exactly once, in order, consistent with everything else."""
    problems: list[str] = []
    expected = list(range(report.start_revision + 1, report.final_revision + 1))
    writes_by_rev = {op.revision: op for op in report.history if op.revision is not None}
    written = {(op.key, op.value) for op in report.history if op.kind in (OpKind.PUT, OpKind.CAS)}
    reference: dict[int, WatchEvent] = {}
    for i, w in enumerate(report.watchers):
        revs = [e.revision for e in w.events]
        if w.errors:
            problems.append(f"(c) watcher m{i}: {w.errors[:3]}")
        dup_or_back = [(a, b) for a, b in itertools.pairwise(revs) if b <= a]
        if dup_or_back:
            problems.append(f"(c) watcher m{i}: revisions not strictly increasing (dup/reorder) at {dup_or_back[:5]}")
        if sorted(set(revs)) != expected:
            missing = sorted(set(expected) - set(revs))
            extra = sorted(set(revs) - set(expected))
            problems.append(
                f"(c) watcher m{i}: missing revisions {missing[:10]} (of {len(missing)}), unexpected {extra[:10]}"
            )
        for e in w.events:
            ref = reference.setdefault(e.revision, e)
            if ref != e:
                problems.append(f"(c) watcher m{i}: revision {e.revision} is {e}, another watcher saw {ref}")
                break
    # Events against the history: the revision a writer was told carries that write; nothing is invented.
    for rev, e in sorted(reference.items()):
        op = writes_by_rev.get(rev)
        if op is not None:
            want_value = None if op.kind is OpKind.DELETE else op.value
            if (e.key, e.value) != (op.key, want_value):
                problems.append(f"(c) revision {rev}: watch says {e}, the writer was told {op.describe()}")
        if e.value is not None and (e.key, e.value) not in written:
            problems.append(f"(c) revision {rev}: watch delivered a value nobody wrote: {e}")
    missing_acked = sorted(r for r in writes_by_rev if r not in reference)
    if missing_acked:
        problems.append(f"(c) acknowledged write revisions never seen by any watcher: {missing_acked[:10]}")
    # Replaying the events (ordered by revision) must give the versions they carry and the final read.
    state: dict[str, tuple[str | None, int]] = {}
    for rev, e in sorted(reference.items()):
        _, ver = state.get(e.key, (None, 0))
        if e.value is not None and e.version != ver + 1:
            problems.append(f"(c) revision {rev}: version {e.version} after version {ver}")
        state[e.key] = (e.value, e.version)
    for key, (value, ver) in report.final.items():
        if key in state and state[key] != (value, ver):
            problems.append(f"(c) {key}: replayed watch events end at {state[key]}, final read says {(value, ver)}")
    return problems
