"""A deterministic, in-memory interaction harness for the Raft core (after etcd-io/raft's rafttest).

Nodes are :class:`~kvdisco.raft.RawNode` instances keyed by id, each with a
simulated durable store (hard state, snapshot, entries) and a toy state
machine (the list of applied NORMAL payloads). Nothing happens unless a
command makes it happen: time advances only on ``tick``, a Ready is handled
only on ``process-ready``, and a message moves only on ``deliver-msgs``.

Commands (one per line; ``Harness.run`` returns their transcript)::

    bootstrap 1 2 3 [election=10 heartbeat=1 prevote=true checkquorum=true
                     inflight=256 inflight-bytes=N msg-bytes=N uncommitted=N seed=0]
    add-node 4                      an empty node: no config, term 0
    campaign 1
    tick 1 [n] | tick-heartbeat 1 | tick-election 1
    process-ready [ids...]          persist, send, apply, advance
    take-early 1                    send the leader's messages_before_persist now
    deliver-msgs [filters] | drop-msgs [filters]
                                    filters: N (to N), A->B, from=A, to=B, type=APP,HEARTBEAT
    stabilize [ids...]              process-ready and deliver until nothing moves
    propose 1 data
    propose-conf-change 1 add-voter|add-learner|remove 4
    transfer-leader 1 2 | read-index 1 ctx
    partition 1 / 2 3 | isolate 1 | heal
    crash 1 | restart 1              crash drops what is in flight to it
    compact 1 index
    report-unreachable 1 2 | report-snapshot 1 2 ok|fail
    status [ids...] | log 1 | sm 1

Messages cross the "network" through the wire codec (encode/decode), so no
object is ever shared between two nodes. A delivered SNAP is reported to its
sender as sent (``report_snapshot(ok=True)``); a dropped one as failed.

Output conventions: entries are ``term/index`` followed by their payload,
messages ``from->to TYPE term=T ...``, and a role/term/leader change of any
node is printed as ``~ 2 follower term=3 lead=1`` right after the step that
caused it. N back-to-back repeats of a block of lines (a leader's heartbeats
over many ticks) print once, each line ending ``(xN)``.

Scripts (tests/unit/testdata/*.txt) hold ``> command`` lines, each followed by
its expected output; see :func:`run_script`. ``KVDISCO_REWRITE=1`` rewrites
the expected output.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kvdisco.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RaftError,
    RawNode,
    Ready,
    SnapshotMeta,
    StateRole,
)
from kvdisco.raft._codec import decode_conf_change, decode_message, encode_conf_change, encode_message

__all__ = ["Harness", "Script", "fmt_entry", "fmt_msg", "run_script"]

MT = MessageType

#: Bound on stabilize rounds: a script that never goes quiet is a bug, not a long test.
STABILIZE_ROUNDS_MAX = 200

_CC_NAMES = {
    ConfChangeType.ADD_VOTER: "add-voter",
    ConfChangeType.ADD_LEARNER: "add-learner",
    ConfChangeType.REMOVE_NODE: "remove",
}
_CC_BY_NAME = {v: k for k, v in _CC_NAMES.items()}


# -- formatting ----------------------------------------------------------------------------------------------------


def _fmt_bytes(b: bytes) -> str:
    if len(b) > 24:
        return f"<{len(b)} bytes>"
    return repr(b.decode("utf-8", "backslashreplace"))


def fmt_entry(e: Entry) -> str:
    if e.type == EntryType.CONF_CHANGE:
        cc = decode_conf_change(e.data)
        return f"{e.term}/{e.index} {_CC_NAMES[cc.type]}({cc.node_id})"
    return f"{e.term}/{e.index} {_fmt_bytes(e.data)}"


def _fmt_ids(ids: Iterable[int]) -> str:
    return "[" + ",".join(str(i) for i in sorted(ids)) + "]"


def _fmt_snap(s: SnapshotMeta) -> str:
    cs = s.conf_state
    out = f"{s.term}/{s.index} voters={_fmt_ids(cs.voters)}"
    if cs.learners:
        out += f" learners={_fmt_ids(cs.learners)}"
    return out


def fmt_msg(m: Message) -> str:
    t = m.type
    parts = [f"{m.frm}->{m.to} {t.name} term={m.term}"]
    if t == MT.APP:
        parts.append(f"log={m.log_term}/{m.index} commit={m.commit}")
    elif t in (MT.VOTE, MT.PRE_VOTE):
        parts.append(f"last={m.log_term}/{m.index}")
    elif t == MT.APP_RESP:
        parts.append(f"index={m.index}")
        if m.reject:
            parts.append(f"reject hint={m.log_term}/{m.reject_hint}")
    else:
        if m.index:
            parts.append(f"index={m.index}")
        if m.log_term:
            parts.append(f"log_term={m.log_term}")
    if (m.commit and t != MT.APP) or t == MT.HEARTBEAT:
        parts.append(f"commit={m.commit}")
    if m.reject and t != MT.APP_RESP:
        parts.append("reject")
    if m.reject_hint and t != MT.APP_RESP:
        parts.append(f"reject_hint={m.reject_hint}")
    if m.entries:
        parts.append("entries=[" + ", ".join(fmt_entry(e) for e in m.entries) + "]")
    if m.context:
        parts.append(f"ctx={_fmt_bytes(m.context)}")
    if m.snapshot is not None:
        parts.append(f"snap={_fmt_snap(m.snapshot)}")
    return " ".join(parts)


def _fmt_hs(hs: HardState) -> str:
    return f"term={hs.term} vote={hs.vote} commit={hs.commit}"


# -- nodes ---------------------------------------------------------------------------------------------------------


@dataclass
class Store:
    """What survives a crash: exactly what the Ready contract told the driver to persist."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)


def _encode_sm(items: list[str]) -> bytes:
    return json.dumps(items).encode()


def _decode_sm(data: bytes) -> list[str]:
    return list(json.loads(data)) if data else []


def _apply_cc(cs: ConfState, cc: ConfChange) -> ConfState:
    """The harness's own model of a membership change, checked against the core's after every Ready."""
    voters, learners = set(cs.voters), set(cs.learners)
    if cc.type == ConfChangeType.ADD_VOTER:
        learners.discard(cc.node_id)
        voters.add(cc.node_id)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        voters.discard(cc.node_id)
        learners.add(cc.node_id)
    else:
        voters.discard(cc.node_id)
        learners.discard(cc.node_id)
    if not voters:
        return cs
    return ConfState(frozenset(voters), frozenset(learners))


@dataclass
class Node:
    id: int
    cfg: Config
    store: Store
    rn: RawNode | None = None
    #: The state machine: applied NORMAL payloads, in order.
    sm: list[str] = field(default_factory=list)
    applied: int = 0
    conf: ConfState = field(default_factory=ConfState)
    #: applied index -> (membership, len(sm)) at that index, for taking snapshots at any applied index.
    history: dict[int, tuple[ConfState, int]] = field(default_factory=dict)
    #: Every ReadState this node's driver received.
    read_states: list[tuple[int, str]] = field(default_factory=list)
    readies: int = 0

    def start(self) -> None:
        st = self.store
        self.rn = RawNode(self.cfg, hard_state=st.hard_state, snapshot=st.snapshot, entries=list(st.entries))
        self.sm = _decode_sm(st.snapshot_data)
        self.applied = st.snapshot.index
        self.conf = st.snapshot.conf_state
        self.history = {self.applied: (self.conf, len(self.sm))}

    @property
    def raw(self) -> RawNode:
        if self.rn is None:
            raise RaftError(f"node {self.id} is down")
        return self.rn


def _collapse(lines: list[str], period_max: int = 8) -> list[str]:
    """Fold N back-to-back repeats of a block of lines (a leader's heartbeats over many ticks) into one.

    The block is printed once, each of its lines ending ``(xN)``.
    """
    out: list[str] = []
    k = 0
    while k < len(lines):
        for p in range(1, period_max + 1):
            block = lines[k : k + p]
            n = 1
            while lines[k + n * p : k + (n + 1) * p] == block:
                n += 1
            if n > 1:
                out += [f"{line} (x{n})" for line in block]
                k += n * p
                break
        else:
            out.append(lines[k])
            k += 1
    return out


def _parse_ids(args: list[str]) -> list[int]:
    return [int(a) for a in args]


class Harness:
    """Drives a set of RawNodes deterministically; every command appends to a transcript."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        #: Messages in flight, in the order they were sent.
        self.net: list[Message] = []
        #: Partition groups; None means everyone can talk to everyone.
        self.groups: list[frozenset[int]] | None = None
        self.opts: dict[str, str] = {}
        self._out: list[str] = []
        self._seen: dict[int, tuple[StateRole, int, int]] = {}
        #: Every message stepped into a node, in order: lets tests count round trips.
        self.delivered: list[Message] = []

    # -- plumbing ----------------------------------------------------------------------------------------------------

    def p(self, line: str) -> None:
        self._out.append(line)

    def run(self, line: str) -> str:
        """Run one command line; return its transcript (no trailing newline)."""
        self._out = []
        args = shlex.split(line)
        if not args:
            return ""
        name, rest = args[0], args[1:]
        fn: Callable[[list[str]], None] | None = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if fn is None:
            raise ValueError(f"unknown harness command {name!r}")
        try:
            fn(rest)
        except RaftError as exc:  # a typed refusal is behaviour worth recording; anything else is a failure
            self.p(f"error: {type(exc).__name__}: {exc}")
        self._note_changes()
        return "\n".join(_collapse(self._out))

    def node(self, nid: int) -> Node:
        if nid not in self.nodes:
            raise ValueError(f"no node {nid}")
        return self.nodes[nid]

    def rn(self, nid: int) -> RawNode:
        return self.node(nid).raw

    def live(self) -> list[int]:
        return sorted(n for n, nd in self.nodes.items() if nd.rn is not None)

    def _note_changes(self) -> None:
        for nid in sorted(self.nodes):
            rn = self.nodes[nid].rn
            if rn is None:
                continue
            cur = (rn.role, rn.raft.term, rn.leader_id)
            if self._seen.get(nid) != cur:
                self._seen[nid] = cur
                self.p(f"~ {nid} {rn.role.name.lower()} term={cur[1]} lead={cur[2]}")

    def _mark_seen(self, nid: int) -> None:
        rn = self.rn(nid)
        self._seen[nid] = (rn.role, rn.raft.term, rn.leader_id)

    def _config(self, nid: int) -> Config:
        o = self.opts

        def get(k: str, default: int) -> int:
            return int(o.get(k, default))

        def flag(k: str) -> bool:
            return o.get(k, "true").lower() in ("1", "true", "yes")

        kw: dict[str, int | bool] = {
            "election_ticks": get("election", 10),
            "heartbeat_ticks": get("heartbeat", 1),
            "pre_vote": flag("prevote"),
            "check_quorum": flag("checkquorum"),
            "seed": get("seed", 0),
        }
        for k, attr in (
            ("inflight", "inflight_msgs_max"),
            ("inflight-bytes", "inflight_bytes_max"),
            ("msg-bytes", "msg_bytes_max"),
            ("uncommitted", "uncommitted_bytes_max"),
            ("proposal-bytes", "proposal_bytes_max"),
            ("apply-bytes", "apply_batch_bytes_max"),
        ):
            if k in o:
                kw[attr] = int(o[k])
        return Config(nid, **kw)  # type: ignore[arg-type]

    def _reachable(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    # -- cluster setup -----------------------------------------------------------------------------------------------

    def cmd_bootstrap(self, args: list[str]) -> None:
        ids = [int(a) for a in args if "=" not in a]
        self.opts.update(a.split("=", 1) for a in args if "=" in a)  # type: ignore[misc]
        boot = [
            Entry(1, i, encode_conf_change(ConfChange(ConfChangeType.ADD_VOTER, nid)), EntryType.CONF_CHANGE)
            for i, nid in enumerate(sorted(ids), start=1)
        ]
        for nid in ids:
            store = Store(HardState(1, 0, len(boot)), entries=[replace(e) for e in boot])
            nd = self.nodes[nid] = Node(nid, self._config(nid), store)
            nd.start()
            # The driver's first Ready applies the bootstrap membership; it sends nothing.
            rd = nd.raw.ready()
            if rd.messages or rd.messages_before_persist:
                raise AssertionError(f"bootstrap Ready of {nid} has messages")
            self._handle_ready(nd, rd, quiet=True)
            rn = nd.raw
            self._mark_seen(nid)
            self.p(
                f"{nid}: term={rn.raft.term} commit={rn.raft.log.committed} applied={rn.raft.log.applied} "
                f"voters={_fmt_ids(rn.conf_state().voters)}"
            )

    def cmd_add_node(self, args: list[str]) -> None:
        for nid in _parse_ids(args):
            nd = self.nodes[nid] = Node(nid, self._config(nid), Store())
            nd.start()
            self._mark_seen(nid)
            self.p(f"{nid}: empty node, term=0 voters=[]")

    def cmd_crash(self, args: list[str]) -> None:
        for nid in _parse_ids(args):
            nd = self.node(nid)
            nd.rn = None
            self._seen.pop(nid, None)
            self.p(f"{nid} crashed: unpersisted state lost")
            # Its connections die with it: whatever was on the way to it is lost.
            self.cmd_drop_msgs([f"to={nid}"])

    def cmd_restart(self, args: list[str]) -> None:
        for nid in _parse_ids(args):
            nd = self.node(nid)
            if nd.rn is not None:
                raise ValueError(f"node {nid} is running")
            nd.start()
            self._mark_seen(nid)
            st = nd.store
            self.p(
                f"{nid} restarted: {_fmt_hs(st.hard_state)} snap={st.snapshot.term}/{st.snapshot.index} "
                f"last={nd.raw.raft.log.last_index()}"
            )

    # -- time and input ----------------------------------------------------------------------------------------------

    def cmd_tick(self, args: list[str]) -> None:
        nid = int(args[0])
        n = int(args[1]) if len(args) > 1 else 1
        self.tick(nid, n)

    def tick(self, nid: int, n: int = 1) -> None:
        rn = self.rn(nid)
        for _ in range(n):
            rn.tick()
            self._note_changes()

    def cmd_tick_heartbeat(self, args: list[str]) -> None:
        for nid in _parse_ids(args):
            self.tick(nid, self.rn(nid).raft.cfg.heartbeat_ticks)

    def cmd_tick_election(self, args: list[str]) -> None:
        for nid in _parse_ids(args):
            self.tick(nid, self.election_ticks_left(nid))

    def election_ticks_left(self, nid: int) -> int:
        r = self.rn(nid).raft
        if r.role == StateRole.LEADER:
            return max(r.cfg.election_ticks - r.election_elapsed, 1)
        return max(r.randomized_election_timeout - r.election_elapsed, 1)

    def cmd_campaign(self, args: list[str]) -> None:
        self.rn(int(args[0])).campaign()

    def cmd_propose(self, args: list[str]) -> None:
        nid = int(args[0])
        for data in args[1:]:
            idx, term = self.rn(nid).propose(data.encode())
            self.p(f"proposed {term}/{idx}")

    def cmd_propose_conf_change(self, args: list[str]) -> None:
        nid, kind, target = int(args[0]), _CC_BY_NAME[args[1]], int(args[2])
        idx, term = self.rn(nid).propose_conf_change(ConfChange(kind, target))
        self.p(f"proposed {term}/{idx} {args[1]}({target})")

    def cmd_transfer_leader(self, args: list[str]) -> None:
        self.rn(int(args[0])).transfer_leader(int(args[1]))

    def cmd_read_index(self, args: list[str]) -> None:
        self.rn(int(args[0])).read_index(args[1].encode())

    def cmd_report_unreachable(self, args: list[str]) -> None:
        self.rn(int(args[0])).report_unreachable(int(args[1]))

    def cmd_report_snapshot(self, args: list[str]) -> None:
        self.rn(int(args[0])).report_snapshot(int(args[1]), args[2] == "ok")

    def cmd_compact(self, args: list[str]) -> None:
        nid, index = int(args[0]), int(args[1])
        nd = self.node(nid)
        self.compact(nd, index)
        self.p(f"{nid} compacted to {_fmt_snap(nd.store.snapshot)}")

    def compact(self, nd: Node, index: int) -> None:
        """Take a snapshot of ``nd``'s state machine at applied ``index``, persist it, then truncate the log."""
        rn = nd.raw
        if index not in nd.history:
            raise ValueError(f"node {nd.id} has no applied state at {index} (applied {nd.applied})")
        conf, n = nd.history[index]
        term = rn.raft.log.term(index)
        if term is None:
            raise ValueError(f"index {index} is not in node {nd.id}'s log")
        meta = SnapshotMeta(index, term, conf)
        nd.store.snapshot = meta
        nd.store.snapshot_data = _encode_sm(nd.sm[:n])
        nd.store.entries = [e for e in nd.store.entries if e.index > index]
        rn.compact(meta)

    # -- network -----------------------------------------------------------------------------------------------------

    def cmd_partition(self, args: list[str]) -> None:
        groups: list[set[int]] = [set()]
        for a in args:
            if a == "/":
                groups.append(set())
            else:
                groups[-1].add(int(a))
        listed = set().union(*groups)
        groups += [{n} for n in self.nodes if n not in listed]
        self.groups = [frozenset(g) for g in groups if g]
        self.p("partition: " + " / ".join(" ".join(map(str, sorted(g))) for g in sorted(self.groups, key=min)))

    def cmd_isolate(self, args: list[str]) -> None:
        nid = int(args[0])
        self.cmd_partition([str(nid), "/", *(str(n) for n in sorted(self.nodes) if n != nid)])

    def cmd_heal(self, args: list[str]) -> None:
        self.groups = None
        self.p("healed")

    def _filter(self, args: list[str]) -> Callable[[Message], bool]:
        frm: set[int] = set()
        to: set[int] = set()
        types: set[MessageType] = set()
        for a in args:
            if "->" in a:
                f, t = a.split("->")
                frm.add(int(f))
                to.add(int(t))
            elif a.startswith("from="):
                frm.update(int(x) for x in a[5:].split(","))
            elif a.startswith("to="):
                to.update(int(x) for x in a[3:].split(","))
            elif a.startswith("type="):
                types.update(MT[x] for x in a[5:].split(","))
            else:
                to.add(int(a))

        def match(m: Message) -> bool:
            return (not frm or m.frm in frm) and (not to or m.to in to) and (not types or m.type in types)

        return match

    def cmd_deliver_msgs(self, args: list[str]) -> None:
        self.deliver(self._filter(args))

    def cmd_drop_msgs(self, args: list[str]) -> None:
        match = self._filter(args)
        keep = []
        for m in self.net:
            if match(m):
                self.p(f"drop {fmt_msg(m)}")
                self._snap_lost(m)
            else:
                keep.append(m)
        self.net = keep

    def _snap_lost(self, m: Message) -> None:
        if m.type == MT.SNAP and self.nodes[m.frm].rn is not None:
            self.nodes[m.frm].raw.report_snapshot(m.to, False)
            self.p(f"  {m.frm} told: snapshot to {m.to} failed")
            self._note_changes()

    def deliver(self, match: Callable[[Message], bool] | None = None) -> int:
        """Step every queued message that matches into its receiver, in send order. Returns how many."""
        todo: list[Message] = []
        keep: list[Message] = []
        for m in self.net:  # one call per message: the filter may be random
            (todo if match is None or match(m) else keep).append(m)
        self.net = keep
        n = 0
        for m in todo:
            dst = self.nodes.get(m.to)
            if dst is None or dst.rn is None:
                self.p(f"drop {fmt_msg(m)} (down)")
                self._snap_lost(m)
                continue
            if not self._reachable(m.frm, m.to):
                self.p(f"drop {fmt_msg(m)} (partition)")
                self._snap_lost(m)
                continue
            self.p(f"deliver {fmt_msg(m)}")
            if not dst.raw.step(m):
                raise AssertionError(f"RawNode refused a message a peer may send: {fmt_msg(m)}")
            self.delivered.append(m)
            n += 1
            if m.type == MT.SNAP and self.nodes[m.frm].rn is not None:
                self.nodes[m.frm].raw.report_snapshot(m.to, True)
            self._note_changes()
        return n

    def _send(self, nd: Node, m: Message, tag: str) -> None:
        if m.frm != nd.id:
            raise AssertionError(f"node {nd.id} sent a message from {m.frm}: {fmt_msg(m)}")
        # Through the wire codec, so sender and receiver share no objects.
        wire = decode_message(encode_message(m))
        if m.type == MT.SNAP:
            snap = nd.store.snapshot
            if m.snapshot is None or m.snapshot.index != snap.index or m.snapshot.term != snap.term:
                # Compacted again since the core built the message: its bytes are gone (as the node driver does).
                self.p(f"  {tag} {fmt_msg(m)} (snapshot replaced: reported failed)")
                nd.raw.report_snapshot(m.to, False)
                return
            wire.snapshot_data = nd.store.snapshot_data
        if not self._reachable(m.frm, m.to):
            self.p(f"  {tag} {fmt_msg(m)} (partition)")
            self._snap_lost(wire)
            return
        self.p(f"  {tag} {fmt_msg(m)}")
        self.net.append(wire)

    # -- Ready handling ----------------------------------------------------------------------------------------------

    def cmd_process_ready(self, args: list[str]) -> None:
        for nid in _parse_ids(args) or self.live():
            self.process_ready(nid)

    def process_ready(self, nid: int) -> Ready | None:
        nd = self.node(nid)
        rn = nd.raw
        if not rn.has_ready():
            self.p(f"ready {nid}: <empty>")
            return None
        rd = rn.ready()
        self._handle_ready(nd, rd)
        return rd

    def _handle_ready(self, nd: Node, rd: Ready, quiet: bool = False) -> None:
        """Carry out the Ready contract: persist, send, apply, advance (kvdisco.raft.Ready)."""
        nd.readies += 1
        p = (lambda s: None) if quiet else self.p
        p(f"ready {nd.id}:")
        st = nd.store
        # 1. Persist: snapshot, then entries (truncating first), then hard state.
        if rd.snapshot is not None:
            if rd.snapshot_data is None:
                raise AssertionError("Ready has a snapshot without its data")
            p(f"  Snapshot {_fmt_snap(rd.snapshot)}")
            st.snapshot = rd.snapshot
            st.snapshot_data = rd.snapshot_data
            st.entries = []
        if rd.entries:
            first = rd.entries[0].index
            st.entries = [e for e in st.entries if e.index < first]
            expect = (st.entries[-1].index if st.entries else st.snapshot.index) + 1
            if first != expect:
                raise AssertionError(f"Ready entries start at {first}, durable log expects {expect}")
            st.entries.extend(replace(e) for e in rd.entries)
            p("  Entries " + " ".join(fmt_entry(e) for e in rd.entries))
        if rd.hard_state is not None:
            if rd.hard_state.term < st.hard_state.term:
                raise AssertionError(f"hard state term went back: {st.hard_state} -> {rd.hard_state}")
            st.hard_state = rd.hard_state
            p(f"  HardState {_fmt_hs(rd.hard_state)}")
        # 2. Send (messages_before_persist could have gone earlier; order them first).
        for m in rd.messages_before_persist:
            self._send(nd, m, "early")
        for m in rd.messages:
            self._send(nd, m, "send")
        # 3. Apply: the snapshot, then committed entries.
        if rd.snapshot is not None:
            nd.sm = _decode_sm(rd.snapshot_data or b"")
            nd.applied = rd.snapshot.index
            nd.conf = rd.snapshot.conf_state
            nd.history = {nd.applied: (nd.conf, len(nd.sm))}
        if rd.committed_entries:
            p("  Apply " + " ".join(fmt_entry(e) for e in rd.committed_entries))
        for e in rd.committed_entries:
            if e.index != nd.applied + 1:
                raise AssertionError(f"node {nd.id} applies {e.index} after {nd.applied}")
            if e.type == EntryType.CONF_CHANGE:
                nd.conf = _apply_cc(nd.conf, decode_conf_change(e.data))
            elif e.data:
                nd.sm.append(e.data.decode("utf-8", "backslashreplace"))
            nd.applied = e.index
            nd.history[e.index] = (nd.conf, len(nd.sm))
        for rs in rd.read_states:
            p(f"  ReadState index={rs.index} ctx={_fmt_bytes(rs.context)}")
            nd.read_states.append((rs.index, rs.context.decode()))
        # 4. Advance.
        if (
            not quiet
            and not (rd.snapshot or rd.entries or rd.hard_state or rd.messages_before_persist or rd.messages)
            and not (rd.committed_entries or rd.read_states)
        ):
            p("  (soft state only)")
        nd.raw.advance(rd)
        if nd.raw.conf_state() != nd.conf and nd.raw.raft.log.pending_snapshot is None:
            raise AssertionError(f"node {nd.id}: core membership {nd.raw.conf_state()} != applied {nd.conf}")

    def cmd_take_early(self, args: list[str]) -> None:
        for nid in _parse_ids(args):
            nd = self.node(nid)
            for m in nd.raw.take_early_messages():
                self._send(nd, m, "early")

    def cmd_stabilize(self, args: list[str]) -> None:
        self.stabilize(_parse_ids(args) or None)

    def stabilize(self, ids: list[int] | None = None) -> int:
        """Handle Readies and deliver messages until nothing moves. Returns the number of rounds."""
        for rounds in range(STABILIZE_ROUNDS_MAX):
            nodes = [n for n in (ids or self.live()) if self.nodes[n].rn is not None]
            moved = False
            for nid in nodes:
                if self.rn(nid).has_ready():
                    self.process_ready(nid)
                    moved = True
            allowed = frozenset(nodes)

            def to_allowed(m: Message, allowed: frozenset[int] = allowed) -> bool:
                return m.to in allowed

            if self.deliver(to_allowed if ids else None):
                moved = True
            if not moved:
                return rounds
        raise AssertionError(f"no quiescence after {STABILIZE_ROUNDS_MAX} rounds")

    # -- inspection --------------------------------------------------------------------------------------------------

    def cmd_status(self, args: list[str]) -> None:
        for nid in _parse_ids(args) or sorted(self.nodes):
            nd = self.node(nid)
            if nd.rn is None:
                self.p(f"{nid}: down")
                continue
            r = nd.rn.raft
            log = r.log
            line = (
                f"{nid}: {r.role.name.lower()} term={r.term} vote={r.vote} lead={r.lead} "
                f"last={log.last_index()} commit={log.committed} applied={log.applied}"
            )
            if log.snapshot.index:
                line += f" snap={log.snapshot.term}/{log.snapshot.index}"
            line += f" voters={_fmt_ids(r.voters)}"
            if r.learners:
                line += f" learners={_fmt_ids(r.learners)}"
            self.p(line)
            if r.role == StateRole.LEADER:
                for pid, pr in sorted(r.prs.items()):
                    if pid == nid:
                        continue
                    s = f"  {pid}: {pr.state.name.lower()} match={pr.match} next={pr.next}"
                    if pr.inflights.count():
                        s += f" inflight={pr.inflights.count()}"
                    if pr.paused:
                        s += " paused"
                    if pr.is_learner:
                        s += " learner"
                    self.p(s)

    def cmd_log(self, args: list[str]) -> None:
        nid = int(args[0])
        log = self.rn(nid).raft.log
        self.p(f"{nid}: snap={log.snapshot.term}/{log.snapshot.index} commit={log.committed}")
        for e in log.entries:
            self.p(f"  {fmt_entry(e)}")

    def cmd_sm(self, args: list[str]) -> None:
        for nid in _parse_ids(args) or sorted(self.nodes):
            nd = self.node(nid)
            self.p(f"{nid}: applied={nd.applied} sm={nd.sm}")


# -- scripts -------------------------------------------------------------------------------------------------------


def elected(cmd: str = "bootstrap 1 2 3", h: Harness | None = None) -> Harness:
    """A cluster where node 1 won the first election and everything is delivered."""
    h = h or Harness()
    h.run(cmd)
    h.run("campaign 1")
    h.stabilize()
    assert h.rn(1).role == StateRole.LEADER
    return h


@dataclass
class Script:
    """A testdata file: text lines, commands (``> cmd``) and the output expected after each command.

    The expected output of a command is the run of lines right after it that
    are neither blank, nor a comment (``#``), nor another command.
    """

    lines: list[str]

    @classmethod
    def load(cls, path: Path) -> Script:
        return cls(path.read_text().splitlines())

    def blocks(self) -> list[tuple[int, str, list[str]]]:
        """(line number of the command, command, expected output lines)."""
        out = []
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            if line.startswith("> "):
                j = i + 1
                while j < len(self.lines) and _is_output(self.lines[j]):
                    j += 1
                out.append((i, line[2:], self.lines[i + 1 : j]))
                i = j
            else:
                i += 1
        return out


def _is_output(line: str) -> bool:
    return bool(line.strip()) and not line.startswith(("> ", "#"))


def run_script(path: Path, rewrite: bool = False) -> list[str]:
    """Run the script at ``path``. Returns mismatch descriptions; with ``rewrite`` fixes the file instead."""
    script = Script.load(path)
    h = Harness()
    errors: list[str] = []
    new_lines: list[str] = []
    prev_end = 0
    for lineno, cmd, expected in script.blocks():
        got = h.run(cmd).splitlines()
        for g in got:
            if not _is_output(g):
                raise AssertionError(f"{path.name}:{lineno + 1}: output line would not parse back: {g!r}")
        new_lines += script.lines[prev_end : lineno + 1]
        new_lines += got
        prev_end = lineno + 1 + len(expected)
        if prev_end < len(script.lines) and script.lines[prev_end].startswith("> "):
            new_lines.append("")  # keep commands visually apart
        if got != expected:
            diff = "\n".join(["expected:", *expected, "got:", *got])
            errors.append(f"{path.name}:{lineno + 1}: > {cmd}\n{diff}")
    new_lines += script.lines[prev_end:]
    if rewrite:
        path.write_text("\n".join(new_lines) + "\n")
    return errors
