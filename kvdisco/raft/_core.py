"""The Raft algorithm as a pure state machine (sans-I/O).

Nothing here touches a clock, a socket, a thread or a random source: time
arrives as :meth:`Raft.tick`, the network as :meth:`Raft.step`, and the
output accumulates in ``msgs``/``msgs_early``/``read_states`` for the
:class:`~kvdisco.raft.RawNode` to hand out in a ``Ready``. Each role has its
own step function (``_step_leader`` and friends), swapped on role change, as
in etcd-io/raft. Section numbers refer to the Raft paper and Ongaro's thesis.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import limits
from ._codec import decode_conf_change
from ._log import RaftLog
from ._messages import (
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    SnapshotMeta,
    StateRole,
)
from ._progress import Inflights, Progress, ProgressState
from .errors import InvariantViolation, MessageTooLarge, NotLeader, ProposalDropped, RaftError

__all__ = ["Config", "ConfChangeError", "Raft"]

MT = MessageType

#: Context of a campaign started by a leader transfer: voters ignore their leader lease for it.
CAMPAIGN_TRANSFER = b"transfer"

#: Messages the leader may send before its own fsync: they only carry its log outward (thesis §10.2.1).
_EARLY_TYPES = frozenset({MT.APP, MT.HEARTBEAT, MT.SNAP})
#: The context of an APP that only carries a new commit index to a follower the leader knows to hold every
#: entry: the follower applies it and does not answer (an answer would tell the leader nothing). Followers
#: that do not know the mark answer as usual, so the two versions interoperate.
COMMIT_NOTICE = b"commit"

#: What a removed member may still tell us. Local messages are our own driver's. TIMEOUT_NOW is how a removed
#: leader hands over (see apply_conf_change): its target holds the leader's whole log, and the voters that have
#: applied the removal ignore its heartbeats, so without it they would wait out an election timeout.
_FROM_REMOVED_TYPES = LOCAL_MESSAGES | {MT.TIMEOUT_NOW}


def conf_after(cs: ConfState, cc: ConfChange) -> ConfState:
    """The membership once ``cc`` is applied to ``cs`` (a voter may become a learner and back).

    A removal records the id as removed for good. The leader never proposes adding a removed id (see
    :meth:`Raft.propose_conf_change`); should a committed entry do so anyway (a log written by an earlier
    version, which did not refuse it), it is applied as written, so that every member, whatever snapshot
    it started from, still computes the same membership from the same log.
    """
    voters, learners, removed = set(cs.voters), set(cs.learners), set(cs.removed)
    voters.discard(cc.node_id)
    learners.discard(cc.node_id)
    if cc.type == ConfChangeType.ADD_VOTER:
        voters.add(cc.node_id)
        removed.discard(cc.node_id)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        learners.add(cc.node_id)
        removed.discard(cc.node_id)
    else:
        removed.add(cc.node_id)
    return ConfState(frozenset(voters), frozenset(learners), frozenset(removed))


class ConfChangeError(RaftError):
    """A membership change that is refused (it would leave no voter, or another one is pending)."""


@dataclass(frozen=True, slots=True)
class Config:
    """Per-node settings. Ticks are logical; the driver decides their wall time."""

    id: int
    election_ticks: int = limits.ELECTION_TICKS
    heartbeat_ticks: int = limits.HEARTBEAT_TICKS
    pre_vote: bool = True
    check_quorum: bool = True
    msg_bytes_max: int = limits.MSG_BYTES_MAX
    inflight_msgs_max: int = limits.INFLIGHT_MSGS_MAX
    inflight_bytes_max: int = limits.INFLIGHT_BYTES_MAX
    uncommitted_bytes_max: int = limits.UNCOMMITTED_BYTES_MAX
    proposal_bytes_max: int = limits.PROPOSAL_BYTES_MAX
    apply_batch_bytes_max: int = limits.APPLY_BATCH_BYTES_MAX
    #: Seeds the randomized election timeout; give each node a different one.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.id == NONE:
            raise ValueError("node id must be >= 1")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if self.inflight_msgs_max < 1 or self.msg_bytes_max < 1:
            raise ValueError("flow control limits must be positive")


class _Rand:
    """SplitMix64: a tiny deterministic generator, so the core needs no ``random`` module."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & 0xFFFFFFFFFFFFFFFF

    def below(self, n: int) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return (z ^ (z >> 31)) % n


@dataclass(slots=True)
class _PendingRead:
    index: int
    requester: int  # NONE or our own id: answer locally; else send READ_INDEX_RESP
    acks: set[int]
    context: bytes = b""  # the requester's context

    @property
    def request(self) -> bytes:
        """What names the request: each node numbers its own reads, so the requester is part of it."""
        return _read_request(self.requester, self.context)


def _read_request(requester: int, context: bytes) -> bytes:
    return b"%d:%s" % (requester, context)


class Raft:
    """One Raft peer's protocol state. Not thread-safe; drive it from one place."""

    def __init__(
        self,
        config: Config,
        *,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        self.id = config.id
        self.cfg = config
        self._rand = _Rand(config.seed * 1_000_003 + config.id)
        self.log = RaftLog(snapshot, entries)
        hs = hard_state or HardState()
        if hs.commit > self.log.last_index():
            raise InvariantViolation(
                f"hard state commit {hs.commit} beyond last log index {self.log.last_index()}. "
                "Was the raft log corrupted, truncated, or lost?"
            )
        self.term = hs.term
        self.vote = hs.vote
        self.log.commit_to(max(hs.commit, self.log.snapshot.index))
        self.lead = NONE
        self.role = StateRole.FOLLOWER
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        #: Ids removed from the cluster for good: never added again, their messages dropped (see ConfState).
        self.removed: frozenset[int] = frozenset()
        self.prs: dict[int, Progress] = {}
        self._set_conf(self.log.snapshot.conf_state)
        #: Outgoing messages to send after the Ready's persistence, and those that may go before it.
        self.msgs: list[Message] = []
        self.msgs_early: list[Message] = []
        self.read_states: list[ReadState] = []
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = NONE
        #: Index of the latest conf change proposed; no new one until it is applied (one change at a time).
        self.pending_conf_index = 0
        #: Leader only: we proposed our own removal or demotion, so we take no more proposals.
        self.leaving = False
        self.uncommitted_bytes = 0
        self._reads: dict[bytes, _PendingRead] = {}
        self._read_queue: list[bytes] = []
        #: The requests (requester and its context) of the pending rounds, and how many rounds were started.
        self._read_requests: set[bytes] = set()
        self._read_rounds = 0
        self._reads_waiting_commit: list[Message] = []
        #: Set when new entries should be broadcast; flushed lazily so many proposals share one APP.
        self._bcast_pending = False
        self._step_role = self._step_follower
        self._tick_role = self._tick_election
        self.become_follower(self.term, NONE)

    # -- membership --------------------------------------------------------------------------------------------------

    def conf_state(self) -> ConfState:
        return ConfState(frozenset(self.voters), frozenset(self.learners), self.removed)

    def _new_progress(self, is_learner: bool) -> Progress:
        cfg = self.cfg
        pr = Progress(self.log.last_index() + 1, Inflights(cfg.inflight_msgs_max, cfg.inflight_bytes_max))
        pr.is_learner = is_learner
        return pr

    def _set_conf(self, cs: ConfState) -> None:
        self.voters = set(cs.voters)
        self.learners = set(cs.learners)
        self.removed = cs.removed
        for nid in list(self.prs):
            if nid not in self.voters and nid not in self.learners:
                del self.prs[nid]
        for nid in self.voters | self.learners:
            pr = self.prs.get(nid)
            if pr is None:
                pr = self.prs[nid] = self._new_progress(nid in self.learners)
                if nid == self.id:
                    pr.match = self.log.stable
            pr.is_learner = nid in self.learners

    def promotable(self) -> bool:
        return self.id in self.voters and self.log.pending_snapshot is None

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed membership change (called as its entry is applied)."""
        after = conf_after(self.conf_state(), cc)
        if not after.voters:
            # The leader refuses such a proposal; one can only come from a misbehaving leader. Ignore it.
            return self.conf_state()
        self._set_conf(after)
        if self.role == StateRole.LEADER:
            if self.lead_transferee and self.lead_transferee not in self.voters:
                self.lead_transferee = NONE
            if not self._maybe_commit():
                self._bcast_pending = True
            if self.id not in self.voters:
                # Removed or demoted. Stepping down at once can strand the voters left: they may not know this
                # change committed nor hold our tail, so none can win an election without our vote (2 -> 1 voters
                # deadlocks). Keep leading (refusing proposals) until a voter holds our whole log, then hand over
                # to it and step down (see _send_timeout_now); retried each election timeout.
                self._transfer_to_best_voter()
        elif self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE) and self.id not in self.voters:
            self.become_follower(self.term, NONE)
        return self.conf_state()

    # -- sending -----------------------------------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        m.frm = self.id
        if m.type not in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            # Forwarded READ_INDEX/TRANSFER_LEADER keep term 0: the receiver treats them as local requests.
            if m.type not in (MT.READ_INDEX, MT.TRANSFER_LEADER):
                m.term = self.term
        elif m.term == 0:
            raise InvariantViolation(f"{m.type.name} must carry a term")
        if self.role == StateRole.LEADER and m.type in _EARLY_TYPES:
            self.msgs_early.append(m)
        else:
            self.msgs.append(m)

    def _send_append(self, to: int, send_if_empty: bool = True, *, broadcast: bool = False) -> bool:
        pr = self.prs.get(to)
        if pr is None or pr.is_paused():
            return False
        log = self.log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            if prev < log.snapshot.index:
                return self._send_snapshot(to, pr)
            raise InvariantViolation(f"progress next {pr.next} for {to} beyond last index {log.last_index()}")
        ents = log.slice(pr.next, log.last_index() + 1, self.cfg.msg_bytes_max)
        if not ents and not send_if_empty:
            return False
        # Without entries, an APP only says what is committed when the follower is known to hold all of ours, or
        # when it is a broadcast and everything is in flight to it (its ack for the entries will say the same;
        # should they be lost, the notice does not match its log and it answers with a reject).
        notice = not ents and pr.state == ProgressState.REPLICATE and (broadcast or pr.match == prev)
        self._send(
            Message(
                MT.APP,
                to=to,
                index=prev,
                log_term=prev_term,
                entries=ents,
                commit=log.committed,
                context=COMMIT_NOTICE if notice else b"",
            )
        )
        if ents:
            if pr.state == ProgressState.REPLICATE:
                last = ents[-1].index
                pr.next = last + 1
                pr.inflights.add(last, sum(len(e.data) for e in ents))
            elif pr.state == ProgressState.PROBE:
                pr.paused = True
        elif pr.state == ProgressState.PROBE:
            pr.paused = True
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snap = self.log.snapshot
        pr.become_snapshot(snap.index)
        self._send(Message(MT.SNAP, to=to, snapshot=snap))
        return True

    def _send_heartbeat(self, to: int, ctx: bytes) -> None:
        pr = self.prs[to]
        # Never tell a follower to commit beyond what it is known to hold.
        commit = min(pr.match, self.log.committed)
        self._send(Message(MT.HEARTBEAT, to=to, commit=commit, context=ctx))

    def _bcast_append(self) -> None:
        for nid in self.prs:
            if nid != self.id:
                self._send_append(nid, broadcast=True)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        for nid in self.prs:
            if nid != self.id:
                self._send_heartbeat(nid, ctx)

    def flush(self) -> None:
        """Send APPs for entries appended since the last flush (batched proposals)."""
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role == StateRole.LEADER:
                self._bcast_append()

    # -- role changes ------------------------------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_ticks + self._rand.below(self.cfg.election_ticks)
        self.lead_transferee = NONE
        self.votes = {}
        for nid, pr in self.prs.items():
            fresh = self._new_progress(pr.is_learner)
            if nid == self.id:
                fresh.match = self.log.stable
            self.prs[nid] = fresh
        self.pending_conf_index = 0
        self.leaving = False
        self.uncommitted_bytes = 0
        self._reads.clear()
        self._read_requests.clear()
        self._read_queue.clear()
        self._reads_waiting_commit.clear()
        self._bcast_pending = False

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = StateRole.FOLLOWER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _become_pre_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise InvariantViolation("leader cannot become pre-candidate")
        # Term and vote are untouched: a pre-vote must not disturb anyone (thesis §9.6).
        self.votes = {}
        self.lead = NONE
        self.role = StateRole.PRE_CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise InvariantViolation("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = StateRole.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        if self.role == StateRole.FOLLOWER:
            raise InvariantViolation("follower cannot become leader without an election")
        self._reset(self.term)
        self.lead = self.id
        self.role = StateRole.LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        for nid, pr in self.prs.items():
            if nid != self.id:
                pr.recent_active = True
        self.prs[self.id].become_replicate()
        self.prs[self.id].match = self.log.stable
        # Conf changes in our uncommitted tail may be pending: allow none until all of it is applied (it commits
        # with the no-op). As in etcd, a fully applied log allows one at once: configurations take effect when
        # applied, never on append, so Ongaro's 2015 single-server bug (which needs append-time ones) cannot occur.
        self.pending_conf_index = self.log.last_index()
        # A no-op of our own term, so earlier entries can commit by counting it (Figure 8).
        self._append([Entry(self.term, self.log.last_index() + 1)])

    # -- campaigning -------------------------------------------------------------------------------------------------

    def _has_unapplied_conf_change(self) -> bool:
        log = self.log
        if log.committed <= log.applied:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in log.slice(log.applied + 1, log.committed + 1, 1 << 62))

    def _hup(self, transfer: bool) -> None:
        if self.role == StateRole.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            return  # campaign once the membership we'd run under is known
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            kind, term = MT.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            kind, term = MT.VOTE, self.term
        if self._poll(self.id, True) == "won":
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.voters):
            if nid != self.id:
                self._send(
                    Message(
                        kind, to=nid, term=term, index=self.log.last_index(), log_term=self.log.last_term(), context=ctx
                    )
                )

    def _poll(self, nid: int, granted: bool) -> str:
        if nid in self.voters:
            self.votes.setdefault(nid, granted)
        yes = sum(1 for v, g in self.votes.items() if g and v in self.voters)
        no = sum(1 for v, g in self.votes.items() if not g and v in self.voters)
        if yes >= self.quorum():
            return "won"
        if len(self.voters) - no < self.quorum():
            return "lost"
        return "pending"

    # -- ticking -----------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        self._tick_role()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and self.id in self.voters:
                # (A removed leader still handing over keeps at it: stepping down could strand the voters.)
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            if self.role == StateRole.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer did not finish within an election timeout
            if self.role == StateRole.LEADER and self.id not in self.voters:
                self._transfer_to_best_voter()  # removed or demoted: keep handing over until a voter takes over
        if self.role != StateRole.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    # -- stepping ----------------------------------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Feed one message (from a peer, or a local one with term 0)."""
        if m.frm in self.removed and m.type not in _FROM_REMOVED_TYPES:
            # A removed member that does not know it (it was down) would campaign forever and could push our term
            # up; nothing it says matters any more. (Checked before the term: a removed id never rejoins.)
            return
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum and self.lead != NONE and self.election_elapsed < self.cfg.election_ticks
                )
                if not force and in_lease:
                    return  # we heard from a live leader recently: do not let a partitioned node disrupt it
            if m.type == MT.PRE_VOTE:
                pass  # never change term for a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # our pre-vote succeeded at the future term; the real campaign will raise the term
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader that cannot hear our elections: tell it our term so it steps down.
                self._send(Message(MT.APP_RESP, to=m.frm))
            elif m.type == MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type == MT.HUP:
            self._hup(transfer=False)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (m.type == MT.PRE_VOTE and m.term > self.term)
            )
            resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self._send(Message(resp, to=m.frm, term=m.term))
                if m.type == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            elif self.term:
                # (A node still at term 0 has nothing to teach the candidate; it stays silent.)
                self._send(Message(resp, to=m.frm, term=self.term, reject=True))
        else:
            self._step_role(m)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self._bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            active = sum(1 for nid in self.voters if nid == self.id or self.prs[nid].recent_active)
            for nid, peer in self.prs.items():
                if nid != self.id:
                    peer.recent_active = False
            if active < self.quorum():
                self.become_follower(self.term, NONE)
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MT.TRANSFER_LEADER:
            target = m.frm
            if m.context:
                try:
                    target = int(m.context)
                except ValueError:
                    return  # a peer's garbage: ignore it
            self._leader_transfer(target)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            was_paused = pr.is_paused()
            if pr.maybe_update(m.index):
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state == ProgressState.REPLICATE:
                    pr.inflights.free_le(m.index)
                if self._maybe_commit():
                    self._bcast_append()
                elif was_paused:
                    self._send_append(m.frm)
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                    self._send_timeout_now(m.frm)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.paused = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._read_ack(m.frm, m.context)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            pr.paused = True  # wait for a heartbeat reply before probing again
        elif t == MT.UNREACHABLE and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        mine = MT.PRE_VOTE_RESP if self.role == StateRole.PRE_CANDIDATE else MT.VOTE_RESP
        if t == mine:
            result = self._poll(m.frm, not m.reject)
            if result == "won":
                if self.role == StateRole.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
            elif result == "lost":
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            if self.lead != NONE:
                m.to = self.lead
                self._send(m)
        elif t == MT.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MT.READ_INDEX:
            # A peer took us for the leader. Do not forward: the transport stamps us as the sender, so the
            # answer would come back to us, not to the requester (who retries once it learns the leader).
            pass
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(Message(MT.APP_RESP, to=m.frm, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if m.context != COMMIT_NOTICE or m.entries:
                self._send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self._send(
            Message(MT.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint_index, log_term=hint_term)
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        log = self.log
        if snap.index > log.committed and log.match_term(snap.index, snap.term):
            log.commit_to(snap.index)  # we already hold it: fast-forward
        elif snap.index > log.committed:
            if m.snapshot_data is None:
                raise InvariantViolation("SNAP message without snapshot data reached the core")
            log.restore(snap, m.snapshot_data)
            self.pending_conf_index = 0
            self._set_conf(snap.conf_state)
            self._send(Message(MT.APP_RESP, to=m.frm, index=log.last_index()))
            return
        self._send(Message(MT.APP_RESP, to=m.frm, index=log.committed))

    # -- commit ------------------------------------------------------------------------------------------------------

    def _maybe_commit(self) -> bool:
        matches = sorted((self.prs[nid].match for nid in self.voters if nid in self.prs), reverse=True)
        if len(matches) < self.quorum():
            return False
        index = matches[self.quorum() - 1]
        before = self.log.committed
        if not self.log.maybe_commit(index, self.term):
            return False
        for e in self.log.slice(before + 1, index + 1, 1 << 62):
            self.uncommitted_bytes -= len(e.data)
        self.uncommitted_bytes = max(self.uncommitted_bytes, 0)
        if self._reads_waiting_commit:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for req in waiting:
                self._leader_read_index(req)
        return True

    def on_persisted(self) -> None:
        """The driver made the log durable up to ``log.stable``: the leader may now count itself."""
        if self.role != StateRole.LEADER:
            return
        me = self.prs.get(self.id)
        if me is not None and me.maybe_update(self.log.stable) and self._maybe_commit():
            self._bcast_pending = True

    # -- proposals ---------------------------------------------------------------------------------------------------

    def _append(self, ents: list[Entry]) -> None:
        self.log.append(ents)
        self._bcast_pending = True

    def propose(self, data: bytes, kind: EntryType = EntryType.NORMAL) -> tuple[int, int]:
        """Append a proposal to the leader's log. Returns (index, term) to match against applied entries."""
        if self.role != StateRole.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress")
        if self.leaving:
            # Once our removal applies we cannot lead; a tail only we hold could then keep the voters left
            # from electing anyone (2 -> 1 voters: the last one would need our vote and our log is longer).
            raise ProposalDropped("this leader is leaving the cluster; retry with the next leader")
        if len(data) > self.cfg.proposal_bytes_max:
            raise MessageTooLarge(f"proposal of {len(data)} bytes exceeds {self.cfg.proposal_bytes_max}")
        if self.uncommitted_bytes and self.uncommitted_bytes + len(data) > self.cfg.uncommitted_bytes_max:
            raise ProposalDropped("too many uncommitted bytes; retry later")
        index = self.log.last_index() + 1
        self.uncommitted_bytes += len(data)
        self._append([Entry(self.term, index, data, kind)])
        return index, self.term

    def propose_conf_change(self, cc: ConfChange, data: bytes) -> tuple[int, int]:
        """Propose one membership change (``data`` is its encoding). One at a time, never the last voter."""
        if self.role != StateRole.LEADER:
            raise NotLeader(self.lead)
        if self.pending_conf_index > self.log.applied:
            raise ConfChangeError("a membership change is already in progress; retry when it is applied")
        if not conf_after(self.conf_state(), cc).voters:
            raise ConfChangeError("refusing a membership change that leaves no voter")
        if cc.type == ConfChangeType.ADD_VOTER and cc.node_id in self.voters:
            raise ConfChangeError(f"node {cc.node_id} is already a voter")
        if cc.type == ConfChangeType.ADD_LEARNER and cc.node_id in self.learners:
            raise ConfChangeError(f"node {cc.node_id} is already a learner")
        if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id not in self.voters | self.learners:
            raise ConfChangeError(f"node {cc.node_id} is not a member")
        if cc.type != ConfChangeType.REMOVE_NODE and cc.node_id in self.removed:
            # The id may come back on a node that has forgotten its votes and log: two leaders could win one term.
            raise ConfChangeError(f"node {cc.node_id} was removed from the cluster and can never be added again")
        index, term = self.propose(data, EntryType.CONF_CHANGE)
        self.pending_conf_index = index
        if cc.node_id == self.id and cc.type != ConfChangeType.ADD_VOTER:
            self.leaving = True
        return index, term

    def applied_conf_entries(self, ents: list[Entry]) -> None:
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                try:
                    cc = decode_conf_change(e.data)
                except ValueError as exc:
                    raise InvariantViolation(f"committed conf change at {e.index} does not decode: {exc}") from exc
                self.apply_conf_change(cc)

    # -- reads -------------------------------------------------------------------------------------------------------

    def read_index(self, ctx: bytes) -> None:
        """Ask for a ReadIndex; the answer arrives as a ReadState with this ``ctx`` (§6.4)."""
        if self.role == StateRole.LEADER:
            self._leader_read_index(Message(MT.READ_INDEX, frm=self.id, context=ctx))
        elif self.lead != NONE:
            self._send(Message(MT.READ_INDEX, to=self.lead, context=ctx))
        else:
            raise NotLeader(NONE)

    def _committed_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _leader_read_index(self, m: Message) -> None:
        requester = m.frm
        if not self._committed_in_current_term():
            # Our commit index may lag until our own no-op commits (§6.4 step 1). This holds for a lone voter
            # too: it counts itself only once its no-op is durable, and a restart may have lost its commit index.
            self._reads_waiting_commit.append(m)
            return
        if len(self.voters) == 1 and self.id in self.voters:
            self._answer_read(requester, self.log.committed, m.context)
            return
        # A duplicate of a pending request joins it.
        request = _read_request(requester, m.context)
        if request in self._read_requests:
            return
        # Each round gets a name of its own for its heartbeats. Named after the request, a round could count
        # an acknowledgement left over from an earlier round for the same request (a duplicated READ_INDEX): a
        # deposed leader would then answer with its stale commit index.
        self._read_rounds += 1
        ctx = b"%d.%d" % (self.term, self._read_rounds)
        self._read_requests.add(request)
        self._reads[ctx] = _PendingRead(self.log.committed, requester, {self.id}, m.context)
        self._read_queue.append(ctx)
        self._bcast_heartbeat(ctx)

    def _read_ack(self, frm: int, ctx: bytes) -> None:
        pr = self._reads.get(ctx)
        if pr is None:
            return
        pr.acks.add(frm)
        if sum(1 for a in pr.acks if a in self.voters) < self.quorum():
            return
        # Confirmed leadership at this point also confirms every earlier pending read.
        n = self._read_queue.index(ctx) + 1
        done, self._read_queue = self._read_queue[:n], self._read_queue[n:]
        for c in done:
            r = self._reads.pop(c)
            self._read_requests.discard(r.request)
            self._answer_read(r.requester, r.index, r.context)

    def _answer_read(self, requester: int, index: int, ctx: bytes) -> None:
        if requester in (NONE, self.id):
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MT.READ_INDEX_RESP, to=requester, index=index, context=ctx))

    # -- leader transfer ---------------------------------------------------------------------------------------------

    def transfer_leader(self, target: int) -> None:
        if self.role == StateRole.LEADER:
            self._leader_transfer(target)
        elif self.lead != NONE:
            self._send(Message(MT.TRANSFER_LEADER, to=self.lead, context=str(target).encode()))
        else:
            raise NotLeader(NONE)

    def _send_timeout_now(self, target: int) -> None:
        self._send(Message(MT.TIMEOUT_NOW, to=target))
        if self.id not in self.voters:
            # A removed or demoted leader has handed over: the target holds our whole log, so our vote cannot
            # block its election any more.
            self.become_follower(self.term, NONE)

    def _transfer_to_best_voter(self) -> None:
        self._leader_transfer(max(sorted(self.voters), key=lambda v: self.prs[v].match))

    def _leader_transfer(self, target: int) -> None:
        if target == self.id or target not in self.voters:
            return
        if self.lead_transferee == target:
            return
        self.election_elapsed = 0
        self.lead_transferee = target
        if self.prs[target].match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    # -- durable state -----------------------------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)
