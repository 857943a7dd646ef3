"""A deterministic simulator that runs the real Raft core against a fake clock, disk and network.

Everything that varies comes from one ``random.Random(seed)``: the fault profile, the network's losses,
duplicates, delays and partitions, crashes, pauses, fsync latency, membership changes, leader transfers,
client proposals and reads, and each node's ``Config.seed``. There is no wall clock, no thread and no
asyncio, so a seed replays exactly; a failure raises :class:`SimulationFailure`, whose message ends with the
command that reruns it (``python -m tests.sim.run_seed SEED``).

The driver here follows the Ready contract of ``kvdisco.raft.Ready`` as the real node driver must:

1. ``messages_before_persist`` go on the wire at once (before the fsync);
2. the snapshot, entries and hard state become durable when the simulated fsync completes, which may be
   several ticks later; a crash before then loses the whole Ready;
3. only then are ``messages`` sent, the snapshot restored, the committed entries applied and the read
   states queued; then ``advance``.

Invariants are checked as the run goes (see :class:`Simulator` for the list) and again after a final
settle phase that heals every fault, restarts every crashed node and requires a new write to commit.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kvdisco.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotLeader,
    RaftError,
    RawNode,
    ReadState,
    Ready,
    SnapshotMeta,
    StateRole,
)
from kvdisco.raft._codec import decode_conf_change, decode_message, encode_conf_change, encode_message, pack, unpack

__all__ = [
    "BUGS",
    "Profile",
    "SimNode",
    "SimulationFailure",
    "Simulator",
    "StateMachine",
    "Storage",
    "rerun_command",
    "run_seed",
]

MT = MessageType
LEADER = StateRole.LEADER

#: Deliberate harness bugs, used to prove that the checkers can fail (see test_simulation.py).
#: ``forget_vote``: a restarted node forgets whom it voted for (the raftos bug).
#: ``corrupt_apply``: node 1 applies a flipped byte in one committed command.
#: ``send_before_persist``: ``Ready.messages`` go out before the fsync (a driver breaking the contract).
BUGS = ("forget_vote", "corrupt_apply", "send_before_persist")

#: Rounds of message delivery / fsync completion within one tick before the rest waits for the next tick.
ROUNDS_PER_TICK_MAX = 40
#: How often (ticks) the full cross-node log check runs during the chaos phase.
FULL_CHECK_EVERY_TICKS = 50
#: The settle phase gives up after this many ticks even if it keeps progressing.
SETTLE_TICKS_MAX = 5000
#: Recent events kept for a failure report.
TRACE_EVENTS_MAX = 60
#: Node ids are never reused; at most this many nodes (voters + learners + removed ones) are ever created.
NODES_CREATED_MAX = 12
#: Members (voters + learners) kept in the configuration; voters stay within 1..VOTERS_MAX.
MEMBERS_MAX = 6
VOTERS_MAX = 5
#: Proposals a client keeps outstanding at one node; past this it waits (real clients have bounded concurrency).
CLIENT_INFLIGHT_MAX = 32
#: Keys the clients write to: few, so writes overwrite each other and a stale read would show.
KEYS = 8


def rerun_command(seed: int, steps: int | None = None, bug: str | None = None) -> str:
    cmd = f"python -m tests.sim.run_seed {seed}"
    if steps is not None:
        cmd += f" --steps {steps}"
    if bug is not None:
        cmd += f" --bug {bug}"
    return cmd


class SimulationFailure(AssertionError):
    """An invariant broke. The message names the seed and the command that reruns it."""


# -- the fault profile --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Profile:
    """How hostile one run is. :meth:`random` draws one from the seed; :meth:`calm` has no faults."""

    nodes: int = 3
    #: Ticks of the chaos phase.
    steps: int = 300
    #: The settle phase fails if nothing progresses (no new commit, no member applying more) for this many ticks.
    settle_stall_ticks_max: int = 200
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    msg_bytes_max: int = 1 << 20
    inflight_msgs_max: int = 64
    #: Per-message probabilities.
    loss: float = 0.0
    dup: float = 0.0
    #: Deliver same-tick messages in random order.
    reorder: bool = False
    #: A message takes 0..delay_max ticks; with probability long_delay, up to 3 election timeouts.
    delay_max: int = 0
    long_delay: float = 0.0
    #: An fsync takes 0..fsync_delay_max ticks (0: done in the next delivery round of the same tick).
    fsync_delay_max: int = 0
    #: Call take_early_messages() while a Ready is being persisted, with this probability per round.
    early: float = 1.0
    #: Apply the committed entries that are already durable here while the Ready's fsync runs (as node.py does).
    early_apply: bool = False
    #: Per-tick probabilities of starting each fault.
    crash: float = 0.0
    down_ticks_max: int = 40
    pause: float = 0.0
    partition: float = 0.0
    partition_ticks_max: int = 80
    unreachable_reports: bool = False
    #: A node misses a tick with this probability (clock skew, slow process).
    tick_skip: float = 0.0
    #: Per-tick probabilities of operations.
    conf_change: float = 0.0
    transfer: float = 0.0
    read: float = 0.0
    propose: float = 0.5
    #: A node snapshots and compacts once it applied this many entries past its last snapshot (0: never).
    snapshot_every: int = 0
    #: Copy every message through the wire codec (encode + decode), as the real transport does.
    wire: bool = True

    @classmethod
    def calm(cls, nodes: int = 3, **kw: Any) -> Profile:
        return cls(nodes=nodes, **kw)

    @classmethod
    def random(cls, rng: random.Random) -> Profile:
        r = rng.random
        p = cls()
        p.nodes = rng.choices((1, 2, 3, 4, 5), weights=(8, 4, 50, 6, 32))[0]
        p.steps = rng.randint(150, 350)
        p.election_ticks = rng.choice((8, 10, 12))
        p.heartbeat_ticks = rng.choice((1, 2, 2, 3, 3))
        p.msg_bytes_max = rng.choice((1, 64, 256, 4096, 1 << 20))
        p.inflight_msgs_max = rng.choice((1, 2, 4, 64))
        p.loss = rng.choice((0.0, 0.0, 0.01, 0.05, 0.15, 0.3))
        p.dup = rng.choice((0.0, 0.0, 0.02, 0.1))
        p.reorder = r() < 0.5
        p.delay_max = rng.choice((0, 0, 1, 2, 4))
        p.long_delay = rng.choice((0.0, 0.0, 0.005, 0.02))
        p.fsync_delay_max = rng.choice((0, 0, 1, 3))
        p.early = rng.choice((0.0, 0.5, 1.0))
        p.crash = rng.choice((0.0, 0.005, 0.01, 0.03))
        p.down_ticks_max = rng.choice((5, 20, 60))
        p.pause = rng.choice((0.0, 0.0, 0.005, 0.02))
        p.partition = rng.choice((0.0, 0.01, 0.02, 0.05))
        p.partition_ticks_max = rng.choice((20, 60, 120))
        p.unreachable_reports = r() < 0.5
        p.tick_skip = rng.choice((0.0, 0.0, 0.05, 0.2))
        p.conf_change = rng.choice((0.0, 0.01, 0.03, 0.06))
        p.transfer = rng.choice((0.0, 0.0, 0.01, 0.03))
        p.read = rng.choice((0.0, 0.1, 0.3))
        p.propose = rng.choice((0.2, 0.5, 1.0))
        p.snapshot_every = rng.choice((0, 3, 10, 40))
        p.wire = r() < 0.3
        p.early_apply = r() < 0.5
        return p

    def describe(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__)


# -- per-node durable storage and state machine --------------------------------------------------------------------


def _copy_entry(e: Entry) -> Entry:
    return Entry(e.term, e.index, e.data, e.type)


def _copy_message(m: Message) -> Message:
    """What the receiver gets: its own objects, as if decoded from the wire (cheaper than the codec)."""
    return Message(
        m.type,
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [Entry(e.term, e.index, e.data, e.type) for e in m.entries],
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        m.snapshot,
        m.snapshot_data,
    )


class Storage:
    """One node's disk: what survives a crash. Only a completed fsync writes here."""

    __slots__ = ("entries", "hard_state", "snap_data", "snap_meta", "unsynced_hard_state")

    def __init__(self) -> None:
        self.hard_state = HardState()
        #: A commit-only hard state written without an fsync (Ready.must_sync() False): it becomes durable with
        #: the next fsync, or is lost in a crash.
        self.unsynced_hard_state: HardState | None = None
        self.snap_meta = SnapshotMeta()
        self.snap_data: bytes | None = None
        #: Copies of the entries after ``snap_meta.index``, contiguous.
        self.entries: list[Entry] = []

    def last_index(self) -> int:
        return self.snap_meta.index + len(self.entries)

    def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """A snapshot received from the leader replaces the whole log."""
        self.snap_meta, self.snap_data = meta, data
        self.entries = []

    def compact(self, meta: SnapshotMeta, data: bytes) -> None:
        """The node's own snapshot: keep the entries after it."""
        base = self.snap_meta.index
        k = meta.index - base
        if not 0 < k <= len(self.entries) or self.entries[k - 1].term != meta.term:
            raise SimulationFailure(f"harness: compacting storage to {meta} that it does not hold (base {base})")
        self.snap_meta, self.snap_data = meta, data
        del self.entries[:k]

    def append(self, ents: list[Entry]) -> None:
        """Write entries, truncating the stored log at the first one (WAL semantics)."""
        first = ents[0].index
        base = self.snap_meta.index
        if first <= base or first > self.last_index() + 1:
            raise SimulationFailure(
                f"Ready.entries start at {first}, but the durable log holds {base + 1}..{self.last_index()}"
            )
        del self.entries[first - base - 1 :]
        self.entries.extend(_copy_entry(e) for e in ents)


def _chain(digest: int, index: int, term: int, kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(b"%d/%d/%d" % (index, term, kind), digest))


class StateMachine:
    """A key-value register fed by commands ``c<op>:k<key>=v<op>``, with a running digest of what it applied."""

    __slots__ = ("applied", "digest", "kv")

    def __init__(self) -> None:
        self.applied = 0
        self.digest = 0
        self.kv: dict[bytes, bytes] = {}

    def apply(self, e: Entry) -> None:
        self.applied = e.index
        self.digest = _chain(self.digest, e.index, e.term, e.type, e.data)
        if e.type == EntryType.NORMAL and e.data:
            _, _, kv = e.data.partition(b":")
            k, _, v = kv.partition(b"=")
            self.kv[k] = v

    def snapshot(self) -> bytes:
        return pack([self.applied, self.digest, sorted(self.kv.items())])

    @classmethod
    def restore(cls, data: bytes) -> StateMachine:
        applied, digest, items = unpack(data)
        sm = cls()
        sm.applied, sm.digest = applied, digest
        sm.kv = {k: v for k, v in items}
        return sm


class SimNode:
    """One simulated process: its disk survives crashes, everything else is lost with the process."""

    __slots__ = (
        "alive",
        "fsync_due",
        "id",
        "incarnation",
        "leader_term",
        "paused_until",
        "props",
        "raw",
        "read_states",
        "reads",
        "ready",
        "ready_applied",
        "ready_prev_term",
        "restart_at",
        "retired",
        "sm",
        "snap_every",
        "storage",
    )

    def __init__(self, node_id: int, storage: Storage) -> None:
        self.id = node_id
        self.storage = storage
        self.alive = False
        self.retired = False
        self.incarnation = 0
        self.raw: RawNode = None  # type: ignore[assignment]  # set by start()
        self.sm = StateMachine()
        #: The Ready being persisted, and the tick its fsync completes (None: held by a scenario).
        self.ready: Ready | None = None
        self.fsync_due: int | None = 0
        #: The term of the entry before the Ready's first entry, taken with the Ready.
        self.ready_prev_term = 0
        #: How many of the Ready's committed entries were applied while its fsync ran.
        self.ready_applied = 0
        self.paused_until = 0
        self.restart_at = 0
        #: Proposals made here: index -> (term, data, op id). Acknowledged when applied here.
        self.props: dict[int, tuple[int, bytes, int]] = {}
        #: Reads issued here: context -> highest acknowledged index when issued.
        self.reads: dict[bytes, int] = {}
        self.read_states: list[ReadState] = []
        #: The term in which this incarnation was last seen leading (for per-election checks).
        self.leader_term = 0
        self.snap_every = 0


# -- the simulator -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ack:
    index: int
    term: int
    data: bytes


@dataclass(slots=True)
class _Committed:
    """What the simulator knows was committed, by index (position 0 is a placeholder)."""

    terms: list[int] = field(default_factory=lambda: [0])
    data: list[bytes] = field(default_factory=lambda: [b""])
    kinds: list[int] = field(default_factory=lambda: [0])
    #: The term of the leader that first committed the index.
    commit_terms: list[int] = field(default_factory=lambda: [0])
    #: The state machine digest after applying the index.
    digests: list[int] = field(default_factory=lambda: [0])

    @property
    def max(self) -> int:
        return len(self.terms) - 1


class Simulator:
    """Runs N real :class:`RawNode` cores on a simulated network, disk and clock.

    Checked at every step:

    * election safety: at most one leader per term, over the whole run;
    * log matching: an (index, term) pair names one entry and one predecessor term, across every node's
      log (checked on every Ready's entries and, every few ticks, over every in-memory log);
    * leader completeness: a new leader of term T holds every entry that a leader of a term below T committed
      (unless it compacted it under a snapshot);
    * commit sanity: no node's commit index passes what some leader committed;
    * state machine safety: every applied entry equals the committed entry at its index, applied in order;
      a restored snapshot has the digest of the committed prefix it claims;
    * acknowledged writes are never lost, and a ReadIndex read sees every write acknowledged before it was
      issued;

    and at the end, after healing: a leader is elected, a new write commits, and every member applied it
    (and so every acknowledged write) with the same state.
    """

    def __init__(
        self,
        seed: int,
        *,
        profile: Profile | None = None,
        steps: int | None = None,
        bug: str | None = None,
        chaos: bool | None = None,
        rerun: str | None = None,
        verbose: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.profile = profile if profile is not None else Profile.random(self.rng)
        if steps is not None:
            self.profile.steps = steps
        self.profile_description = self.profile.describe()
        self.bug = bug
        #: How to rerun this simulation; scripted scenarios name their test instead of a seed.
        self.rerun = rerun if rerun is not None else rerun_command(seed, steps, bug)
        self.verbose = verbose
        self._log = log
        self.now = 0
        #: Random faults and client operations; off for scripted scenarios (which pass their own profile).
        self.chaos = profile is None if chaos is None else chaos
        self.nodes: dict[int, SimNode] = {}
        self.next_id = 1
        self._net: list[tuple[int, float, int, Message, int, int]] = []
        self._seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.heal_at = 0
        #: A scenario's hook: sees each message as it is sent; returns it (maybe changed) or None to drop it.
        self.intercept: Callable[[Message], Message | None] | None = None
        self._dirty: dict[int, None] = {}
        #: Nodes with a Ready waiting for its fsync.
        self._syncing: dict[int, None] = {}
        # Checker state.
        self.leaders: dict[int, int] = {}
        self.registry: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self.committed = _Committed()
        self.conf_voters: set[int] = set()
        self.conf_learners: set[int] = set()
        self.removed_at: dict[int, int] = {}
        self.acked: dict[int, _Ack] = {}
        self.acked_max = 0
        self.next_op = 1
        self.next_read = 1
        self.client_guess = 0
        self.reads_served = 0
        self.trace: deque[tuple[int, str]] = deque(maxlen=TRACE_EVENTS_MAX)
        self._corrupted = False
        self._bootstrap(self.profile.nodes)

    # -- reporting ---------------------------------------------------------------------------------------------

    def event(self, text: str) -> None:
        self.trace.append((self.now, text))
        if self.verbose:
            self._log(f"[{self.now:5d}] {text}")

    def fail(self, what: str) -> SimulationFailure:
        lines = [
            f"seed {self.seed} failed at tick {self.now}: {what}",
            f"rerun: {self.rerun}",
            f"profile: {self.profile_description}",
            "nodes: " + "; ".join(self._node_line(n) for n in self.nodes.values()),
            "recent events:",
        ]
        lines += [f"  [{t:5d}] {s}" for t, s in self.trace]
        return SimulationFailure("\n".join(lines))

    def _node_line(self, n: SimNode) -> str:
        if n.retired:
            return f"{n.id}: retired"
        if not n.alive:
            return f"{n.id}: down"
        r = n.raw.raft
        return (
            f"{n.id}: {r.role.name.lower()} term={r.term} vote={r.vote} lead={r.lead} "
            f"commit={r.log.committed} applied={r.log.applied} last={r.log.last_index()} "
            f"snap={r.log.snapshot.index} voters={sorted(r.voters)} learners={sorted(r.learners)}"
        )

    # -- nodes -------------------------------------------------------------------------------------------------

    def _bootstrap(self, n: int) -> None:
        ids = list(range(1, n + 1))
        boot = [
            Entry(1, i, encode_conf_change(ConfChange(ConfChangeType.ADD_VOTER, nid)), EntryType.CONF_CHANGE)
            for i, nid in enumerate(ids, start=1)
        ]
        c = self.committed
        prev = 0
        for e in boot:
            self.registry[(e.index, e.term)] = (e.data, e.type, prev)
            prev = e.term
            self._record_committed(e, commit_term=1)
        for nid in ids:
            st = Storage()
            st.entries = [_copy_entry(e) for e in boot]
            st.hard_state = HardState(term=1, vote=0, commit=n)
            self._add_node(nid, st)
        self.next_id = n + 1
        assert c.max == n

    def _add_node(self, nid: int, storage: Storage) -> SimNode:
        node = SimNode(nid, storage)
        node.snap_every = self.profile.snapshot_every
        if node.snap_every:
            node.snap_every = self.rng.randint(max(1, node.snap_every // 2), node.snap_every * 2)
        self.nodes[nid] = node
        self._start(node)
        return node

    def _config(self, nid: int) -> Config:
        p = self.profile
        return Config(
            nid,
            election_ticks=p.election_ticks,
            heartbeat_ticks=p.heartbeat_ticks,
            msg_bytes_max=p.msg_bytes_max,
            inflight_msgs_max=p.inflight_msgs_max,
            seed=self.rng.getrandbits(32),
        )

    def _start(self, n: SimNode) -> None:
        """Start a process from its disk (boot and restart alike)."""
        st = n.storage
        hs = st.hard_state
        if self.bug == "forget_vote" and n.incarnation > 0:
            hs = replace(hs, vote=0)
        snap = st.snap_meta
        n.raw = RawNode(
            self._config(n.id),
            hard_state=hs,
            snapshot=snap if snap.index else None,
            entries=[_copy_entry(e) for e in st.entries],
        )
        if snap.index:
            if st.snap_data is None:
                raise self.fail(f"node {n.id} has snapshot meta {snap} on disk but no data")
            n.sm = StateMachine.restore(st.snap_data)
            self._check_restored(n, snap)
        else:
            n.sm = StateMachine()
        n.alive = True
        n.incarnation += 1
        n.ready = None
        n.ready_applied = 0
        n.fsync_due = 0
        n.props = {}
        n.reads = {}
        n.read_states = []
        n.leader_term = 0
        self._dirty[n.id] = None
        # The restored log goes through the same checks as a Ready's entries.
        log = n.raw.raft.log
        self._check_entries(n, log.entries, log.snapshot.term)

    def crash(self, nid: int, down_ticks: int = 0) -> None:
        n = self.nodes[nid]
        if not n.alive:
            return
        lost = 0 if n.ready is None else len(n.ready.entries)
        self.event(f"crash {nid} (unpersisted Ready with {lost} entries lost)")
        n.alive = False
        n.storage.unsynced_hard_state = None
        n.raw = None  # type: ignore[assignment]
        n.ready = None
        self._syncing.pop(nid, None)
        n.props = {}
        n.reads = {}
        n.read_states = []
        n.restart_at = self.now + down_ticks
        self._dirty.pop(nid, None)

    def restart(self, nid: int) -> None:
        n = self.nodes[nid]
        if n.alive or n.retired:
            return
        self.event(f"restart {nid} (term={n.storage.hard_state.term} vote={n.storage.hard_state.vote})")
        self._start(n)
        self._observe(n)

    def pause(self, nid: int, ticks: int) -> None:
        self.event(f"pause {nid} for {ticks} ticks")
        self.nodes[nid].paused_until = self.now + ticks

    def hold_fsync(self, nid: int) -> None:
        """A scenario's hook: the node's current and next fsync never complete until release_fsync()."""
        n = self.nodes[nid]
        n.fsync_due = None

    def release_fsync(self, nid: int) -> None:
        self.nodes[nid].fsync_due = self.now

    def _live(self, n: SimNode) -> bool:
        return n.alive and n.paused_until <= self.now

    # -- network -----------------------------------------------------------------------------------------------

    def isolate(self, nid: int) -> None:
        self.partition([nid], [x for x in self.nodes if x != nid])

    def partition(self, side_a: list[int], side_b: list[int], *, one_way: bool = False) -> None:
        """Cut the links from side_a to side_b (and back, unless one_way)."""
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))
        self.event(f"partition {sorted(side_a)} {'->' if one_way else '<->'} {sorted(side_b)}")

    def inject(self, m: Message, src: int) -> None:
        """A scenario's hook: put ``m`` on the wire now, as if node ``src`` had just sent it."""
        self._seq += 1
        heapq.heappush(self._net, (self.now, 0.0, self._seq, m, src, self.nodes[src].incarnation))

    def heal(self) -> None:
        if self.blocked:
            self.event("heal all partitions")
        self.blocked.clear()

    def _delay(self) -> int:
        p = self.profile
        r = self.rng.random
        if p.long_delay and r() < p.long_delay:
            return p.delay_max + int(r() * (3 * p.election_ticks - p.delay_max + 1))
        if p.delay_max:
            return int(r() * (p.delay_max + 1))
        return 0

    def _send(self, n: SimNode, msgs: list[Message]) -> None:
        p = self.profile
        rng = self.rng
        for m in msgs:
            if self.intercept is not None:
                m2 = self.intercept(m)
                if m2 is None:
                    self._dropped(n, m, "intercepted")
                    continue
                m = m2
            if m.type == MT.SNAP:
                st = n.storage
                if m.snapshot != st.snap_meta or st.snap_data is None:
                    # The snapshot the core names is not the one on disk (yet): the transport cannot send it.
                    self._dropped(n, m, "snapshot not on disk")
                    continue
                m.snapshot_data = st.snap_data
            if (n.id, m.to) in self.blocked:
                self._dropped(n, m, "partitioned")
                continue
            if p.loss and rng.random() < p.loss:
                self._dropped(n, m, "lost")
                continue
            copies = 2 if p.dup and rng.random() < p.dup else 1
            for _ in range(copies):
                if p.wire:
                    c = decode_message(encode_message(m))
                    c.snapshot_data = m.snapshot_data
                else:
                    c = _copy_message(m)
                self._seq += 1
                key = rng.random() if p.reorder else 0.0
                heapq.heappush(self._net, (self.now + self._delay(), key, self._seq, c, n.id, n.incarnation))

    def _dropped(self, n: SimNode, m: Message, why: str) -> None:
        if self.verbose:
            self.event(f"drop {why}: {_fmt(m)}")
        if not n.alive:
            return
        if m.type == MT.SNAP:
            n.raw.report_snapshot(m.to, False)
            self._dirty[n.id] = None
        elif why == "partitioned" and self.profile.unreachable_reports:
            n.raw.report_unreachable(m.to)
            self._dirty[n.id] = None

    def _deliver(self, m: Message, src: int, src_inc: int) -> None:
        dst = self.nodes.get(m.to)
        sender = self.nodes.get(src)
        sender_same = sender is not None and sender.alive and sender.incarnation == src_inc
        if dst is None or not dst.alive or (src, m.to) in self.blocked:
            if sender_same and sender is not None:
                self._dropped(sender, m, "undeliverable")
            return
        if dst.paused_until > self.now:
            self._seq += 1
            heapq.heappush(self._net, (dst.paused_until, 0.0, self._seq, m, src, src_inc))
            return
        if self.verbose:
            self.event(f"deliver {_fmt(m)}")
        dst.raw.step(m)
        self._dirty[dst.id] = None
        self._observe(dst)
        if m.type == MT.SNAP and sender_same and sender is not None:
            sender.raw.report_snapshot(dst.id, True)
            self._dirty[src] = None

    # -- the Ready loop ----------------------------------------------------------------------------------------

    def _pump(self, n: SimNode) -> bool:
        raw = n.raw
        if n.ready is not None:
            if self.profile.early and (self.profile.early >= 1.0 or self.rng.random() < self.profile.early):
                msgs = raw.take_early_messages()
                if msgs:
                    self._send(n, msgs)
                    return True
            return False
        if not raw.has_ready():
            return False
        rd = raw.ready()
        if rd.entries:
            first = rd.entries[0].index
            prev = raw.raft.log.term(first - 1)
            if prev is None:
                raise self.fail(f"node {n.id}: Ready.entries start at {first} but the log has no entry before it")
            n.ready_prev_term = prev
        if rd.messages_before_persist:
            self._send(n, rd.messages_before_persist)
        if self.bug == "send_before_persist" and rd.messages:
            self._send(n, rd.messages)
            rd.messages = []
        if rd.must_sync():
            n.ready = rd
            n.ready_applied = 0
            self._syncing[n.id] = None
            if self.profile.early_apply and rd.snapshot is None and rd.committed_entries:
                # Entries durable here before this Ready may be applied while its fsync runs (node.py does).
                stable = raw.raft.log.stable
                for e in rd.committed_entries:
                    if e.index > stable:
                        break
                    self._apply(n, e)
                    n.ready_applied += 1
            if n.fsync_due is not None:
                f = self.profile.fsync_delay_max
                n.fsync_due = self.now + (self.rng.randint(0, f) if f else 0)
        else:
            self._finish_ready(n, rd)
        return True

    def _finish_ready(self, n: SimNode, rd: Ready) -> None:
        """The fsync completed: make it durable, send, apply, advance."""
        st = n.storage
        if rd.must_sync() and st.unsynced_hard_state is not None:
            st.hard_state, st.unsynced_hard_state = st.unsynced_hard_state, None
        if rd.snapshot is not None:
            if rd.snapshot_data is None:
                raise self.fail(f"node {n.id}: Ready.snapshot {rd.snapshot} without snapshot_data")
            st.install_snapshot(rd.snapshot, rd.snapshot_data)
        if rd.entries:
            # Checked as they become durable: entries that die with a crash before their fsync never existed.
            self._check_entries(n, rd.entries, n.ready_prev_term)
            st.append(rd.entries)
        if rd.hard_state is not None:
            if rd.must_sync():
                st.hard_state, st.unsynced_hard_state = rd.hard_state, None
            else:
                st.unsynced_hard_state = rd.hard_state
        n.ready = None
        self._syncing.pop(n.id, None)
        if rd.messages:
            self._send(n, rd.messages)
        if rd.snapshot is not None and rd.snapshot_data is not None:
            n.sm = StateMachine.restore(rd.snapshot_data)
            self._check_restored(n, rd.snapshot)
            for i in [i for i in n.props if i <= rd.snapshot.index]:
                del n.props[i]
            self.event(f"node {n.id} installed snapshot at {rd.snapshot.index}")
        for e in rd.committed_entries[n.ready_applied :]:
            self._apply(n, e)
        n.ready_applied = 0
        for rs in rd.read_states:
            if rs.context in n.reads:
                n.read_states.append(rs)
        n.raw.advance(rd)
        self._dirty[n.id] = None
        self._observe(n)
        if n.read_states:
            self._serve_reads(n)

    def _apply(self, n: SimNode, e: Entry) -> None:
        sm = n.sm
        i = e.index
        if i != sm.applied + 1:
            raise self.fail(f"node {n.id} applies index {i} after {sm.applied}: out of order")
        c = self.committed
        if i > c.max:
            raise self.fail(f"node {n.id} applies index {i}, beyond anything a leader committed ({c.max})")
        if self.bug == "corrupt_apply" and n.id == 1 and e.data and not self._corrupted:
            e = Entry(e.term, e.index, bytes([e.data[0] ^ 1]) + e.data[1:], e.type)
            self._corrupted = True
        if c.terms[i] != e.term or c.data[i] != e.data or c.kinds[i] != e.type:
            raise self.fail(
                f"state machine safety: node {n.id} applies {i}@term{e.term} {e.data[:40]!r}, but the committed "
                f"entry there is {i}@term{c.terms[i]} {c.data[i][:40]!r}"
            )
        sm.apply(e)
        if sm.digest != c.digests[i]:
            raise self.fail(f"state machine safety: node {n.id} digest at {i} differs from the committed prefix")
        prop = n.props.pop(i, None)
        if prop is not None and prop[0] == e.term and prop[1] == e.data:
            self.acked[prop[2]] = _Ack(i, e.term, e.data)
            if i > self.acked_max:
                self.acked_max = i
            if self.verbose:
                self.event(f"ack op {prop[2]} at {i}@{e.term} on node {n.id}")

    def _serve_reads(self, n: SimNode) -> None:
        keep = []
        for rs in n.read_states:
            if rs.context not in n.reads:
                continue
            if n.sm.applied < rs.index:
                keep.append(rs)
                continue
            floor = n.reads.pop(rs.context)
            if rs.index < floor:
                raise self.fail(
                    f"linearizability: node {n.id} serves read {rs.context!r} at read index {rs.index}, but a write "
                    f"at index {floor} was acknowledged before the read was issued"
                )
            self.reads_served += 1
        n.read_states = keep

    def _rounds(self) -> None:
        now = self.now
        net = self._net
        for _ in range(ROUNDS_PER_TICK_MAX):
            moved = False
            if self._syncing:
                for nid in list(self._syncing):
                    n = self.nodes[nid]
                    if n.ready is not None and n.fsync_due is not None and n.fsync_due <= now and self._live(n):
                        self._finish_ready(n, n.ready)
                        moved = True
            if net and net[0][0] <= now:
                batch = []
                while net and net[0][0] <= now:
                    batch.append(heapq.heappop(net))
                for _t, _k, _s, m, src, inc in batch:
                    self._deliver(m, src, inc)
                moved = True
            if self._dirty:
                dirty, self._dirty = self._dirty, {}
                for nid in dirty:
                    n = self.nodes[nid]
                    if self._live(n) and self._pump(n):
                        moved = True
            if not moved:
                return

    def _maybe_snapshot(self, n: SimNode) -> None:
        if not n.snap_every or n.ready is not None or not self._live(n):
            return
        log = n.raw.raft.log
        a = log.applied
        if a - log.snapshot.index < n.snap_every:
            return
        if n.sm.applied != a:
            raise self.fail(f"harness: node {n.id} state machine at {n.sm.applied}, core applied {a}")
        term = log.term(a)
        if term is None:
            raise self.fail(f"node {n.id}: no term for applied index {a}")
        meta = SnapshotMeta(a, term, n.raw.conf_state())
        n.storage.compact(meta, n.sm.snapshot())
        n.raw.compact(meta)
        self._dirty[n.id] = None
        if self.verbose:
            self.event(f"node {n.id} snapshot+compact at {a}")

    # -- checks ------------------------------------------------------------------------------------------------

    def _observe(self, n: SimNode) -> None:
        r = n.raw.raft
        c = self.committed
        if r.role == LEADER:
            t = r.term
            if n.leader_term != t:
                n.leader_term = t
                prev = self.leaders.setdefault(t, n.id)
                if prev != n.id:
                    raise self.fail(f"election safety: term {t} has two leaders, {prev} and {n.id}")
                self.event(f"node {n.id} leads term {t} (last={r.log.last_index()} commit={r.log.committed})")
                self._check_leader_completeness(n)
            if r.log.committed > c.max:
                self._record_leader_commit(n)
        elif r.log.committed > c.max:
            if n.leader_term == r.term:
                # It committed as leader and stepped down within the same input (a removed leader handing over).
                self._record_leader_commit(n)
                return
            raise self.fail(
                f"node {n.id} ({r.role.name}) commit index {r.log.committed} is past anything a leader committed "
                f"({c.max})"
            )

    def _record_committed(self, e: Entry, commit_term: int) -> None:
        c = self.committed
        c.terms.append(e.term)
        c.data.append(e.data)
        c.kinds.append(int(e.type))
        c.commit_terms.append(commit_term)
        c.digests.append(_chain(c.digests[-1], e.index, e.term, e.type, e.data))
        if e.type == EntryType.CONF_CHANGE:
            cc = decode_conf_change(e.data)
            voters, learners = set(self.conf_voters), set(self.conf_learners)
            if cc.type == ConfChangeType.ADD_VOTER:
                learners.discard(cc.node_id)
                voters.add(cc.node_id)
            elif cc.type == ConfChangeType.ADD_LEARNER:
                voters.discard(cc.node_id)
                learners.add(cc.node_id)
            else:
                voters.discard(cc.node_id)
                learners.discard(cc.node_id)
                self.removed_at[cc.node_id] = e.index
            if voters:
                self.conf_voters, self.conf_learners = voters, learners

    def _record_leader_commit(self, n: SimNode) -> None:
        r = n.raw.raft
        log = r.log
        base = log.snapshot.index
        for i in range(self.committed.max + 1, log.committed + 1):
            if i <= base:
                raise self.fail(f"leader {n.id} committed {i} that it has already compacted")
            self._record_committed(log.entries[i - base - 1], commit_term=r.term)

    def _check_leader_completeness(self, n: SimNode) -> None:
        r = n.raw.raft
        log = r.log
        c = self.committed
        base = log.snapshot.index
        if base and base <= c.max and c.terms[base] != log.snapshot.term:
            raise self.fail(
                f"leader completeness: leader {n.id} of term {r.term} has snapshot {base}@{log.snapshot.term}, "
                f"but {base}@{c.terms[base]} was committed"
            )
        for i in range(base + 1, c.max + 1):
            if c.commit_terms[i] >= r.term:
                continue
            t = log.term(i)
            if t != c.terms[i] or log.entries[i - base - 1].data != c.data[i]:
                raise self.fail(
                    f"leader completeness: node {n.id} became leader of term {r.term} without the entry "
                    f"{i}@term{c.terms[i]} committed in term {c.commit_terms[i]} (it has term {t} there)"
                )

    def _check_entries(self, n: SimNode, ents: list[Entry], prev_term: int) -> None:
        reg = self.registry
        for e in ents:
            v = (e.data, int(e.type), prev_term)
            old = reg.setdefault((e.index, e.term), v)
            if old != v:
                raise self.fail(
                    f"log matching: node {n.id} has entry {e.index}@term{e.term} (data {e.data[:40]!r}, previous "
                    f"term {prev_term}) but another log has {e.index}@term{e.term} (data {old[0][:40]!r}, previous "
                    f"term {old[2]})"
                )
            prev_term = e.term

    def _check_restored(self, n: SimNode, meta: SnapshotMeta) -> None:
        c = self.committed
        sm = n.sm
        if sm.applied != meta.index:
            raise self.fail(f"node {n.id}: snapshot meta index {meta.index} but its data is at {sm.applied}")
        if meta.index > c.max or c.terms[meta.index] != meta.term or c.digests[meta.index] != sm.digest:
            raise self.fail(
                f"state machine safety: node {n.id} restores snapshot {meta.index}@term{meta.term} that does not "
                "match the committed prefix"
            )

    def check_logs(self) -> None:
        """The full check over every live node's in-memory log.

        Durable entries join the run-long registry. Entries not yet persisted are compared with it and with
        the other live logs of this instant, but not registered: if their node crashes first they never
        existed (a lone voter that loses its unpersisted term may lead that term again, with other entries).
        """
        c = self.committed
        reg = self.registry
        now: dict[tuple[int, int], tuple[bytes, int, int, int]] = {}
        for n in self.nodes.values():
            if not n.alive:
                continue
            log = n.raw.raft.log
            prev_term = log.snapshot.term
            for e in log.entries:
                key = (e.index, e.term)
                v = (e.data, int(e.type), prev_term)
                old = reg.get(key) if e.index > log.stable else reg.setdefault(key, v)
                if old is None:
                    seen = now.setdefault(key, (*v, n.id))
                    old, other = seen[:3], seen[3]
                else:
                    other = 0
                if old != v:
                    raise self.fail(
                        f"log matching: node {n.id} holds {e.index}@term{e.term} (data {e.data[:40]!r}, previous "
                        f"term {prev_term}), but {f'node {other}' if other else 'a durable log'} holds "
                        f"{e.index}@term{e.term} with data {old[0][:40]!r}, previous term {old[2]}"
                    )
                prev_term = e.term
            base = log.snapshot.index
            if base and base <= c.max and c.terms[base] != log.snapshot.term:
                raise self.fail(f"node {n.id} snapshot {base}@{log.snapshot.term} disagrees with the committed log")
            for i in range(base + 1, min(log.committed, c.max) + 1):
                e = log.entries[i - base - 1]
                if e.term != c.terms[i] or e.data != c.data[i]:
                    raise self.fail(
                        f"node {n.id} holds {i}@term{e.term} below its commit index, but {i}@term{c.terms[i]} "
                        "was committed"
                    )
            if n.sm.applied != log.applied and n.ready is None:
                raise self.fail(f"harness: node {n.id} state machine at {n.sm.applied}, core applied {log.applied}")
        self.check_durability()

    def check_durability(self) -> None:
        """A leader's ``match`` for a peer of its term never exceeds what that peer holds on disk.

        A peer acknowledges entries only once they are durable, and in one term only that term's leader can
        make it truncate, so a lower disk means a peer acknowledged what it had not persisted.
        """
        for lead in self.nodes.values():
            if not lead.alive or lead.raw.role != LEADER:
                continue
            r = lead.raw.raft
            for pid, pr in r.prs.items():
                peer = self.nodes.get(pid)
                if pid == lead.id or peer is None or not peer.alive or peer.raw.raft.term != r.term:
                    continue
                if pr.match > peer.storage.last_index():
                    raise self.fail(
                        f"durability: leader {lead.id} of term {r.term} counts {pid} as holding up to {pr.match}, "
                        f"but its disk holds only up to {peer.storage.last_index()}"
                    )

    # -- client operations -------------------------------------------------------------------------------------

    def _pick_alive(self) -> SimNode | None:
        alive = [n for n in self.nodes.values() if n.alive]
        return self.rng.choice(alive) if alive else None

    def leader(self) -> SimNode | None:
        """The live node that leads the highest term, if any."""
        best = None
        for n in self.nodes.values():
            if n.alive and n.raw.role == LEADER and (best is None or n.raw.raft.term > best.raw.raft.term):
                best = n
        return best

    def propose(self, nid: int, data: bytes | None = None) -> tuple[int, int, int] | None:
        """Propose a unique write at node ``nid``; returns (index, term, op id) or None if refused."""
        n = self.nodes[nid]
        if not n.alive:
            return None
        op = self.next_op
        self.next_op += 1
        if data is None:
            data = b"c%d:k%d=v%d" % (op, self.rng.randrange(KEYS), op)
        try:
            index, term = n.raw.propose(data)
        except NotLeader as exc:
            self.client_guess = exc.leader_hint
            return None
        except RaftError:
            return None
        n.props[index] = (term, data, op)
        self._dirty[nid] = None
        return index, term, op

    def read(self, nid: int) -> bytes | None:
        n = self.nodes[nid]
        if not n.alive:
            return None
        ctx = b"read-%d" % self.next_read
        self.next_read += 1
        try:
            n.raw.read_index(ctx)
        except RaftError:
            return None
        n.reads[ctx] = self.acked_max
        self._dirty[nid] = None
        self._observe(n)
        return ctx

    def conf_change(self, nid: int, cc: ConfChange) -> tuple[int, int] | None:
        """Propose a membership change at ``nid``; returns (index, term) or None if refused.

        Adding a node id not seen before starts a new, empty node, as an operator would.
        """
        n = self.nodes[nid]
        if not n.alive:
            return None
        if cc.node_id not in self.nodes and len(self.nodes) >= NODES_CREATED_MAX:
            return None
        try:
            got = n.raw.propose_conf_change(cc)
        except RaftError:
            return None
        self.event(f"node {nid} proposes {cc.type.name} {cc.node_id}")
        self._dirty[nid] = None
        if cc.node_id not in self.nodes:
            self._add_node(cc.node_id, Storage())
            self.next_id = max(self.next_id, cc.node_id + 1)
        return got

    def transfer(self, nid: int, target: int) -> None:
        n = self.nodes[nid]
        if not n.alive:
            return
        try:
            n.raw.transfer_leader(target)
        except RaftError:
            return
        self.event(f"transfer leadership {nid} -> {target}")
        self._dirty[nid] = None
        self._observe(n)

    def _client_ops(self) -> None:
        p = self.profile
        rng = self.rng
        r = rng.random
        if r() < p.propose:
            for _ in range(rng.randint(1, 3)):
                g = self.nodes.get(self.client_guess)
                if g is None or not g.alive or r() < 0.2:
                    g = self._pick_alive()
                if g is None:
                    break
                if len(g.props) < CLIENT_INFLIGHT_MAX:
                    self.propose(g.id)
        if p.read and r() < p.read:
            g = self._pick_alive()
            if g is not None:
                self.read(g.id)

    # -- faults ------------------------------------------------------------------------------------------------

    def _chaos_ops(self) -> None:
        p = self.profile
        rng = self.rng
        r = rng.random
        now = self.now
        for node in self.nodes.values():
            if not node.alive and not node.retired and node.restart_at <= now:
                self.restart(node.id)
        if p.crash and r() < p.crash:
            alive = [n for n in self.nodes.values() if n.alive]
            if len(alive) > 1:
                self.crash(rng.choice(alive).id, rng.randint(1, p.down_ticks_max))
        if p.pause and r() < p.pause:
            n = self._pick_alive()
            if n is not None:
                self.pause(n.id, rng.randint(2, 3 * p.election_ticks))
        if self.blocked and now >= self.heal_at:
            self.heal()
        elif not self.blocked and p.partition and r() < p.partition:
            self._random_partition()
            self.heal_at = now + rng.randint(5, p.partition_ticks_max)
        if p.conf_change and r() < p.conf_change:
            self._random_conf_change()
        if p.transfer and r() < p.transfer:
            n = self._pick_alive()
            if n is not None:
                voters = sorted(n.raw.raft.voters)
                if voters:
                    self.transfer(n.id, rng.choice(voters))

    def _random_partition(self) -> None:
        rng = self.rng
        ids = [nid for nid, n in self.nodes.items() if not n.retired]
        if len(ids) < 2:
            return
        kind = rng.randrange(4)
        if kind == 0:
            self.isolate(rng.choice(ids))
        elif kind == 1:
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) // 2)
            self.partition(ids[:cut], ids[cut:])
        elif kind == 2:
            a, b = rng.sample(ids, 2)
            self.partition([a], [b], one_way=True)
        else:
            # One node can send but not hear (or hear but not send).
            x = rng.choice(ids)
            others = [y for y in ids if y != x]
            if rng.random() < 0.5:
                self.partition(others, [x], one_way=True)
            else:
                self.partition([x], others, one_way=True)

    def _random_conf_change(self) -> None:
        rng = self.rng
        lead = self.leader()
        if lead is None:
            return
        r = lead.raw.raft
        voters, learners = sorted(r.voters), sorted(r.learners)
        options: list[ConfChange] = []
        if len(voters) + len(learners) < MEMBERS_MAX and len(self.nodes) < NODES_CREATED_MAX:
            options.append(ConfChange(ConfChangeType.ADD_LEARNER, self.next_id))
        if learners and len(voters) < VOTERS_MAX:
            options.append(ConfChange(ConfChangeType.ADD_VOTER, rng.choice(learners)))
        if len(voters) > 1:
            options.append(ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(voters)))
            options.append(ConfChange(ConfChangeType.ADD_LEARNER, rng.choice(voters)))  # demote
        if learners:
            options.append(ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(learners)))
        if options:
            self.conf_change(lead.id, rng.choice(options))

    def _retire_removed(self) -> None:
        """Stop a removed node once every voter of the configuration holds its removal as committed, durably.

        (Applied is not enough: a commit index written without an fsync is lost in a crash, and a voter that
        forgets the removal committed may still need the removed node's vote.)
        """
        for nid, index in self.removed_at.items():
            n = self.nodes.get(nid)
            if n is None or n.retired or nid in self.conf_voters or nid in self.conf_learners:
                continue
            if all(_durable_commit(self.nodes[v].storage) >= index for v in self.conf_voters):
                self.event(f"retire removed node {nid}")
                self.crash(nid)
                n.retired = True

    # -- running -----------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One tick of simulated time: faults and clients (in chaos), node clocks, then message rounds."""
        self.now += 1
        if self.chaos:
            self._chaos_ops()
        skip = self.profile.tick_skip
        rng = self.rng
        for n in self.nodes.values():
            if self._live(n) and not (skip and rng.random() < skip):
                n.raw.tick()
                self._dirty[n.id] = None
                self._observe(n)
        if self.chaos:
            self._client_ops()
        self._rounds()
        for n in self.nodes.values():
            if n.alive:
                self._maybe_snapshot(n)
                if n.read_states:
                    self._serve_reads(n)
        if self.now % 10 == 0:
            self._retire_removed()
        if self.now % FULL_CHECK_EVERY_TICKS == 0:
            self.check_logs()

    def run_ticks(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def run_until(self, pred: Callable[[], bool], ticks_max: int) -> bool:
        for _ in range(ticks_max):
            if pred():
                return True
            self.tick()
        return pred()

    def settle(self) -> None:
        """Heal every fault, restart every node, and require a leader and a new committed write everywhere."""
        self.chaos = False
        self.intercept = None
        self.heal()
        p = self.profile
        p.loss = p.dup = 0.0
        p.long_delay = 0.0
        p.delay_max = min(p.delay_max, 1)
        p.fsync_delay_max = min(p.fsync_delay_max, 1)
        p.tick_skip = 0.0
        for n in self.nodes.values():
            n.paused_until = 0
            if n.fsync_due is None:
                n.fsync_due = self.now
            if not n.alive and not n.retired:
                self.restart(n.id)
        self.event("settle: all faults healed, all nodes up")
        final: tuple[int, int, int] | None = None
        proposed_by = (0, 0)
        progress = (-1, -1)
        progress_at = self.now
        start = self.now
        while self.now - progress_at < p.settle_stall_ticks_max and self.now - start < SETTLE_TICKS_MAX:
            self.tick()
            members = self.conf_voters | self.conf_learners
            now_progress = (
                self.committed.max,
                sum(n.sm.applied + n.raw.raft.log.stable for n in self.nodes.values() if n.alive),
            )
            if now_progress != progress:
                progress, progress_at = now_progress, self.now
            if final is not None and final[2] in self.acked:
                index = final[0]
                if all(self.nodes[m].alive and self.nodes[m].sm.applied >= index for m in members):
                    self.event(f"settle: final write at {index} applied on members {sorted(members)}")
                    return
                continue
            lead = self.leader()
            if lead is not None and (lead.id, lead.raw.raft.term) != proposed_by:
                # (Proposed again only when leadership moved: the old proposal may be lost, a new one not.)
                got = self.propose(lead.id, b"final:k-final=v%d" % self.now)
                if got is not None:
                    final, proposed_by = got, (lead.id, lead.raw.raft.term)
        what = "no write was acknowledged" if final is None or final[2] not in self.acked else "not every member"
        raise self.fail(
            f"liveness: {self.now - start} ticks after healing ({self.now - progress_at} without progress), "
            f"{what} applied a final write"
        )

    def final_checks(self) -> None:
        self.check_logs()
        c = self.committed
        members = self.conf_voters | self.conf_learners
        for op, ack in self.acked.items():
            if ack.index > c.max or c.terms[ack.index] != ack.term or c.data[ack.index] != ack.data:
                raise self.fail(f"acknowledged write op {op} at {ack.index}@term{ack.term} is not committed there")
        expected_at: dict[int, dict[bytes, bytes]] = {}
        for m in sorted(members):
            n = self.nodes[m]
            a = n.sm.applied
            if a < self.acked_max:
                raise self.fail(f"member {m} applied only up to {a}, below acknowledged index {self.acked_max}")
            if n.sm.digest != c.digests[a]:
                raise self.fail(f"member {m} state digest at {a} differs from the committed prefix")
            if a not in expected_at:
                expected_at[a] = _replay(c, a)
            if n.sm.kv != expected_at[a]:
                raise self.fail(f"member {m} key-value state at {a} differs from a replay of the committed log")

    def run(self) -> Simulator:
        """The whole run: chaos for ``profile.steps`` ticks, then settle and final checks."""
        try:
            self.event(f"start: {self.profile.nodes} nodes")
            self.run_ticks(self.profile.steps)
            self.settle()
            self.final_checks()
        except SimulationFailure:
            raise
        except Exception as exc:
            raise self.fail(f"unexpected {type(exc).__name__}: {exc}") from exc
        return self

    def summary(self) -> str:
        return (
            f"seed {self.seed}: ok after {self.now} ticks; {self.committed.max} entries committed, "
            f"{len(self.acked)} writes acknowledged, {self.reads_served} reads served, "
            f"{len(self.leaders)} terms with a leader, {len(self.nodes)} nodes created"
        )


def _durable_commit(st: Storage) -> int:
    return max(st.hard_state.commit, st.snap_meta.index)


def _replay(c: _Committed, upto: int) -> dict[bytes, bytes]:
    sm = StateMachine()
    for i in range(1, upto + 1):
        sm.apply(Entry(c.terms[i], i, c.data[i], EntryType(c.kinds[i])))
    return sm.kv


def _fmt(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.type in (MT.APP, MT.APP_RESP, MT.VOTE, MT.PRE_VOTE):
        s += f" i{m.index} lt{m.log_term}"
    if m.entries:
        s += f" ents={m.entries[0].index}..{m.entries[-1].index}"
    if m.commit:
        s += f" c{m.commit}"
    if m.reject:
        s += f" reject(hint {m.reject_hint})"
    if m.snapshot is not None:
        s += f" snap={m.snapshot.index}@{m.snapshot.term}"
    return s


def run_seed(seed: int, *, steps: int | None = None, bug: str | None = None, verbose: bool = False) -> Simulator:
    """Run one seed end to end; raises SimulationFailure if an invariant breaks."""
    return Simulator(seed, steps=steps, bug=bug, verbose=verbose).run()
