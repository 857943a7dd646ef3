"""Raft rules checked one by one, each citing where the Raft paper or Ongaro's thesis states it.

The scripts in testdata/ show whole interactions; these tests pin single
rules down with assertions (after etcd-io/raft's raft_paper_test.go).
"Paper" is "In Search of an Understandable Consensus Algorithm" (2014),
"thesis" is "Consensus: Bridging Theory and Practice" (2014).
"""

from __future__ import annotations

import pytest
from raft_harness import Harness, Node, elected

from kvdisco.raft import (
    Config,
    Entry,
    HardState,
    Message,
    MessageTooLarge,
    MessageType,
    NotLeader,
    ProposalDropped,
    RawNode,
    Ready,
    StateRole,
)
from kvdisco.raft._core import CAMPAIGN_TRANSFER

MT = MessageType

#: Messages a node may send before its Ready is durable: they only carry the leader's own log (thesis §10.2.1).
EARLY_OK = {MT.APP, MT.HEARTBEAT, MT.SNAP}


class RecordingHarness(Harness):
    """A harness that keeps every Ready it handled, per node."""

    def __init__(self) -> None:
        super().__init__()
        self.readies: list[tuple[int, Ready]] = []

    def _handle_ready(self, nd: Node, rd: Ready, quiet: bool = False) -> None:
        self.readies.append((nd.id, rd))
        super()._handle_ready(nd, rd, quiet)


def leaders(h: Harness) -> dict[int, int]:
    return {nid: h.rn(nid).raft.term for nid in h.live() if h.rn(nid).role == StateRole.LEADER}


# -- §5.2 leader election ------------------------------------------------------------------------------------------


def test_randomized_election_timeouts_differ_per_node_and_per_election() -> None:
    # Paper §5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed interval".
    h = Harness()
    h.run("bootstrap 1 2 3 4 5")
    timeouts = {nid: h.rn(nid).raft.randomized_election_timeout for nid in h.nodes}
    assert all(10 <= t < 20 for t in timeouts.values())
    assert len(set(timeouts.values())) > 1
    r = h.rn(2).raft
    seen = set()
    for _ in range(30):
        r.become_follower(r.term, 0)
        seen.add(r.randomized_election_timeout)
    assert len(seen) >= 5  # a fresh draw at each reset, so repeated split votes do not repeat


def test_follower_campaigns_only_after_its_election_timeout() -> None:
    # Paper §5.2: "If a follower receives no communication over a period of time called the election timeout,
    # then it ... begins an election".
    h = Harness()
    h.run("bootstrap 1 2 3")
    t = h.rn(2).raft.randomized_election_timeout
    h.tick(2, t - 1)
    assert h.rn(2).role == StateRole.FOLLOWER
    h.tick(2, 1)
    assert h.rn(2).role == StateRole.PRE_CANDIDATE


def test_election_elects_one_leader_and_everyone_follows_it() -> None:
    # Paper §5.2: a candidate wins with votes from a majority; others learn of it from its AppendEntries.
    h = elected("bootstrap 1 2 3 4 5")
    assert leaders(h) == {1: 2}
    assert {h.rn(n).leader_id for n in h.nodes} == {1}
    assert {h.rn(n).raft.term for n in h.nodes} == {2}


def test_each_node_votes_once_per_term() -> None:
    # Paper §5.2: "each server will vote for at most one candidate in a given term, on a first-come-first-served basis".
    h = Harness()
    h.run("bootstrap 1 2 3 prevote=false")
    h.run("campaign 1")
    h.run("campaign 3")
    h.process_ready(1)
    h.process_ready(3)
    h.deliver(lambda m: m.to == 2)  # 2 hears 1's VOTE first, then 3's, both for term 2
    rd = h.process_ready(2)
    assert rd is not None
    resps = [(m.to, m.reject) for m in rd.messages if m.type == MT.VOTE_RESP]
    assert resps == [(1, False), (3, True)]
    assert h.node(2).store.hard_state.vote == 1


def test_vote_refused_to_a_candidate_with_a_less_up_to_date_log() -> None:
    # Paper §5.4.1: a voter denies its vote if its own log is more up-to-date than the candidate's.
    h = elected()
    h.run("isolate 3")
    h.run("propose 1 a")
    h.stabilize()
    h.run("heal")
    r3 = h.rn(3)
    r2 = h.rn(2)
    # Step a VOTE from 3 (behind) straight into 2, with a lease-breaking context so only the log rule applies.
    r2.step(
        Message(MT.VOTE, to=2, frm=3, term=5, index=r3.raft.log.last_index(), log_term=2, context=CAMPAIGN_TRANSFER)
    )
    rd = r2.ready()
    assert [(m.type, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, True)]
    assert r2.raft.term == 5 and r2.raft.vote == 0


def test_candidate_steps_down_on_append_from_leader_of_its_term() -> None:
    # Paper §5.2: "If the AppendEntries RPC is from another server claiming to be leader ... [with term] at least
    # as large as the candidate's current term, then the candidate ... returns to follower state."
    h = elected()
    r3 = h.rn(3)
    r3.raft._become_candidate()  # term 3, no one else knows
    r3.step(Message(MT.APP, to=3, frm=2, term=3, index=4, log_term=2, commit=4))
    assert r3.role == StateRole.FOLLOWER and r3.leader_id == 2 and r3.raft.term == 3


def test_stale_term_message_is_answered_with_the_newer_term() -> None:
    # Paper §5.1: "If a server receives a request with a stale term number, it rejects the request", and the
    # sender, seeing a larger term, "immediately reverts to follower state".
    h = elected()
    r2 = h.rn(2)
    r2.raft.become_follower(7, 0)
    r2.step(Message(MT.APP, to=2, frm=1, term=2, index=4, log_term=2, commit=4))
    rd = r2.ready()
    assert [(m.type, m.term) for m in rd.messages] == [(MT.APP_RESP, 7)]


# -- §9.6 PreVote, §6.2 CheckQuorum ------------------------------------------------------------------------------


def test_prevote_partitioned_node_keeps_its_term() -> None:
    # Thesis §9.6: a pre-candidate increments its term only if a majority would vote for it.
    h = elected()
    h.run("isolate 3")
    for _ in range(5):
        h.run("tick-election 3")
        h.stabilize()
    assert h.rn(3).raft.term == 2
    h.run("heal")
    h.run("tick-election 3")
    h.stabilize()
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert leaders(h) == {1: 2}
    assert h.rn(3).leader_id == 1


def test_prevote_rejoining_node_does_not_disrupt_even_without_check_quorum() -> None:
    # Thesis §9.6: without leases, PreVote alone stops a node with a stale log from raising the term.
    h = elected("bootstrap 1 2 3 checkquorum=false")
    h.run("isolate 3")
    h.run("propose 1 a")
    h.stabilize()
    h.run("heal")
    for _ in range(3):
        h.run("tick-election 3")
        h.stabilize()
    assert {h.rn(n).raft.term for n in h.nodes} == {2}
    assert leaders(h) == {1: 2}


def test_without_prevote_a_rejoining_node_disrupts() -> None:
    # Thesis §9.6 motivation (and §4.2.3): a plain candidate's higher term deposes a working leader.
    h = elected("bootstrap 1 2 3 prevote=false checkquorum=false")
    h.run("isolate 3")
    h.run("tick-election 3")
    h.stabilize()
    h.run("heal")
    h.run("tick-election 3")  # its next timeout: a VOTE at term 4 that everyone must heed
    h.stabilize()
    assert h.rn(1).raft.term == 4
    assert 1 not in leaders(h)


def test_check_quorum_leader_steps_down_without_a_quorum() -> None:
    # Thesis §6.2: "a leader steps down if an election timeout elapses without a successful round of heartbeats to
    # a majority of its cluster".
    h = elected()
    h.run("isolate 1")
    h.run("tick-election 1")  # the replies of the last round still count once
    assert h.rn(1).role == StateRole.LEADER
    h.run("tick-election 1")
    assert h.rn(1).role == StateRole.FOLLOWER and h.rn(1).raft.term == 2


def test_check_quorum_leader_stays_with_a_quorum() -> None:
    h = elected("bootstrap 1 2 3 4 5")
    h.run("partition 1 2 3 / 4 5")
    for _ in range(4):
        for _ in range(10):
            h.run("tick 1")
            h.stabilize()
    assert h.rn(1).role == StateRole.LEADER


def test_follower_in_lease_ignores_vote_and_prevote() -> None:
    # Thesis §4.2.3 / §6.2: a server that heard from a current leader within the minimum election timeout
    # does not grant votes (nor update its term).
    h = elected()
    r2 = h.rn(2)
    for kind in (MT.PRE_VOTE, MT.VOTE):
        r2.step(Message(kind, to=2, frm=3, term=9, index=100, log_term=9))
        assert r2.raft.term == 2 and r2.leader_id == 1
        assert not r2.has_ready()
    # The lease ends with the election timeout; then the same request is heard.
    h.tick(2, 10)
    r2.step(Message(MT.PRE_VOTE, to=2, frm=3, term=9, index=100, log_term=9))
    assert r2.has_ready()
    rd = r2.ready()
    assert [(m.type, m.reject) for m in rd.messages] == [(MT.PRE_VOTE_RESP, False)]
    assert r2.raft.term == 2  # a pre-vote never changes the voter's term


def test_node_at_term_zero_answers_prevote_without_crashing() -> None:
    # A new member (term 0, empty log, no config) must be able to answer a pre-vote and a vote.
    rn = RawNode(Config(4))
    assert rn.raft.term == 0
    rn.step(Message(MT.PRE_VOTE, to=4, frm=1, term=3, index=5, log_term=2))
    rd = rn.ready()
    assert [(m.type, m.term, m.reject) for m in rd.messages] == [(MT.PRE_VOTE_RESP, 3, False)]
    assert rn.raft.term == 0
    rn.advance(rd)
    rn.step(Message(MT.VOTE, to=4, frm=1, term=3, index=5, log_term=2))
    rd = rn.ready()
    assert rd.hard_state == HardState(3, 1, 0)
    assert [(m.type, m.term, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, 3, False)]
    rn.advance(rd)
    # And a pre-vote from an empty-log candidate too.
    rn2 = RawNode(Config(5))
    rn2.step(Message(MT.PRE_VOTE, to=5, frm=1, term=1, index=0, log_term=0))
    assert [m.reject for m in rn2.ready().messages] == [False]


def test_term_zero_member_of_config_answers_prevote_in_cluster() -> None:
    # The same through the harness: 4 is a voter in 2's config but has never heard from anyone.
    h = elected()
    h.run("add-node 4")
    h.run("partition 1 2 3 / 4")
    h.run("propose-conf-change 1 add-voter 4")
    h.stabilize()
    assert h.rn(4).raft.term == 0
    h.run("heal")
    h.run("crash 1")
    h.delivered.clear()
    h.run("tick-election 2")
    h.stabilize()  # 2's pre-vote reaches 3 (in lease: silent) and 4 (term 0: grants)
    assert h.rn(4).raft.term == 0
    assert [(m.frm, m.type, m.reject) for m in h.delivered if m.to == 2] == [(4, MT.PRE_VOTE_RESP, False)]


# -- §5.3 log replication ----------------------------------------------------------------------------------------


def test_leader_appends_noop_at_term_start() -> None:
    # Thesis §6.4 / paper §8: "each leader commit a blank no-op entry into the log at the start of its term".
    h = elected()
    log = h.rn(1).raft.log
    assert (log.entries[-1].term, log.entries[-1].index, log.entries[-1].data) == (2, 4, b"")
    assert log.committed == 4


def test_replication_commits_and_applies_everywhere_in_order() -> None:
    # Paper §5.3: once an entry is committed, the leader applies it and followers apply it in log order.
    h = elected("bootstrap 1 2 3 4 5")
    for k in range(10):
        h.run(f"propose 1 v{k}")
        if k % 3 == 0:
            h.stabilize()
    h.stabilize()
    h.run("tick-heartbeat 1")
    h.stabilize()
    for nid in h.nodes:
        assert h.node(nid).sm == [f"v{k}" for k in range(10)]


def test_proposals_batch_into_one_app_per_follower() -> None:
    # Many proposals before one Ready travel together (etcd's lazy broadcast; thesis §10.2.2 batching).
    h = RecordingHarness()
    elected(h=h)
    for k in range(100):
        h.rn(1).propose(b"p%d" % k)
    rd = h.process_ready(1)
    assert rd is not None
    apps = [m for m in rd.messages_before_persist if m.type == MT.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(len(m.entries) == 100 for m in apps)


def test_app_respects_message_size_limit() -> None:
    # etcd's MaxSizePerMsg: one APP carries at most msg_bytes_max of entry data (but at least one entry).
    h = RecordingHarness()
    elected("bootstrap 1 2 3 msg-bytes=25", h=h)
    h.run("isolate 3")
    for k in range(10):
        h.run(f"propose 1 {'x' * 10}{k}")  # 11 bytes each
    h.stabilize()
    h.run("heal")
    h.readies.clear()
    h.delivered.clear()
    h.run("tick-heartbeat 1")
    h.stabilize()
    apps = [m for m in h.delivered if m.type == MT.APP and m.to == 3 and m.entries]
    assert apps
    assert all(sum(len(e.data) for e in m.entries) <= 25 for m in apps)
    assert h.node(3).sm == h.node(1).sm


def test_proposal_to_follower_raises_not_leader_with_hint() -> None:
    h = elected()
    with pytest.raises(NotLeader) as ei:
        h.rn(2).propose(b"x")
    assert ei.value.leader_hint == 1
    h.run("isolate 2")
    h.run("tick-election 2")
    with pytest.raises(NotLeader) as ei:
        h.rn(2).propose(b"x")
    assert ei.value.leader_hint == 0


def test_proposal_size_limit() -> None:
    h = elected("bootstrap 1 2 3 proposal-bytes=8")
    h.rn(1).propose(b"12345678")
    with pytest.raises(MessageTooLarge):
        h.rn(1).propose(b"123456789")


def test_uncommitted_bytes_limit_refuses_then_recovers() -> None:
    # etcd's MaxUncommittedEntriesSize: a leader cut off from its followers stops accepting proposals.
    h = elected("bootstrap 1 2 3 uncommitted=10")
    h.run("isolate 1")
    h.rn(1).propose(b"aaaaaa")
    with pytest.raises(ProposalDropped):
        h.rn(1).propose(b"bbbbbb")
    h.rn(1).propose(b"cccc")  # still fits: 10 bytes uncommitted
    with pytest.raises(ProposalDropped):
        h.rn(1).propose(b"d")
    h.run("heal")
    h.stabilize()
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert h.rn(1).raft.uncommitted_bytes == 0
    h.rn(1).propose(b"bbbbbb")
    # A single proposal larger than the limit is still accepted when nothing is pending (else it never could be).
    h.stabilize()
    h.rn(1).propose(b"z" * 50)


def test_leader_commit_needs_its_own_persist() -> None:
    # Thesis §10.2.1: the leader may send before writing to its disk, but counts itself only once durable.
    h = elected()
    h.rn(1).propose(b"e")
    h.run("take-early 1")  # APPs leave before the leader's fsync
    h.deliver(lambda m: m.to == 2)
    h.process_ready(2)
    h.deliver(lambda m: m.to == 1)
    r = h.rn(1).raft
    assert r.log.last_index() == 5 and r.log.stable == 4
    assert r.log.committed == 4  # 2's copy + the leader's unpersisted one is not a quorum
    h.process_ready(1)  # persist + advance
    assert r.log.committed == 5


def test_single_node_commits_only_after_persist() -> None:
    h = Harness()
    h.run("bootstrap 1")
    h.run("campaign 1")
    rn = h.rn(1)
    assert rn.role == StateRole.LEADER
    rd = rn.ready()
    assert [e.index for e in rd.entries] == [2] and not rd.committed_entries
    assert rn.raft.log.committed == 1
    h._handle_ready(h.node(1), rd)
    assert rn.raft.log.committed == 2
    rd = rn.ready()
    assert [e.index for e in rd.committed_entries] == [2]


def test_durability_ordering_of_every_ready() -> None:
    # Ready contract: vote grants and append acks only after the fsync (paper Figure 2 "persistent state ... updated
    # on stable storage before responding to RPCs"); only the leader's APP/HEARTBEAT/SNAP may go early.
    h = RecordingHarness()
    elected("bootstrap 1 2 3 4 5", h=h)
    h.run("propose 1 a b c")
    h.run("read-index 2 r")
    h.stabilize()
    h.run("transfer-leader 1 3")
    h.stabilize()
    h.run("isolate 3")
    h.run("tick-election 1")
    h.run("tick-election 2")
    h.stabilize()
    h.run("heal")
    h.run("tick-heartbeat 3")
    h.stabilize()
    kinds_early = set()
    kinds_late = set()
    for _nid, rd in h.readies:
        for m in rd.messages_before_persist:
            kinds_early.add(m.type)
            assert m.type in EARLY_OK, m
        for m in rd.messages:
            kinds_late.add(m.type)
    assert kinds_early == EARLY_OK - {MT.SNAP}
    assert {MT.VOTE_RESP, MT.PRE_VOTE_RESP, MT.APP_RESP, MT.HEARTBEAT_RESP} <= kinds_late


def test_leader_whose_term_is_not_durable_sends_nothing_early() -> None:
    # A single voter wins at once; until its new term and self-vote are durable, even its APPs to a learner
    # wait (otherwise, after a crash, it could vote again in that term).
    h = Harness()
    h.run("bootstrap 1")
    h.run("campaign 1")
    h.stabilize()
    h.run("add-node 2")
    h.run("propose-conf-change 1 add-learner 2")
    h.stabilize()
    h.run("crash 1")
    h.run("restart 1")
    h.stabilize()  # applies the membership again
    h.run("campaign 1")
    rn = h.rn(1)
    assert rn.role == StateRole.LEADER
    rd = rn.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 3
    assert not rd.messages_before_persist
    assert [m.type for m in rd.messages] == [MT.APP]
    assert rn.take_early_messages() == []


def test_take_early_messages_waits_for_a_durable_term() -> None:
    # Regression: take_early_messages() handed out a new single-voter leader's APPs before its term was durable.
    # A crash then let it reuse the term for different entries at the same indexes: its learner kept 3/5 'x'
    # while the leader committed 3/5 'y' (Log Matching broken, state machines diverge).
    h = Harness()
    h.run("bootstrap 1")
    h.run("campaign 1")
    h.stabilize()
    h.run("add-node 2")
    h.run("propose-conf-change 1 add-learner 2")
    h.stabilize()
    h.run("crash 1")
    h.run("restart 1")
    h.stabilize()
    h.run("campaign 1")  # leader of term 3 at once; term 3 is not durable yet
    h.run("propose 1 x")
    h.run("take-early 1")
    h.deliver()
    h.stabilize(ids=[2])
    h.run("crash 1")  # before its Ready was persisted
    h.run("restart 1")
    h.stabilize()
    h.run("campaign 1")
    h.run("propose 1 y")
    h.stabilize()
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert h.node(1).sm == ["y"]
    assert h.node(2).sm == h.node(1).sm


def test_vote_lost_in_a_crash_before_persist_is_never_sent() -> None:
    # Paper Figure 2: votedFor is persistent; a grant that was not made durable must not reach the candidate.
    h = Harness()
    h.run("bootstrap 1 2 3 prevote=false")
    h.run("campaign 1")
    h.process_ready(1)
    h.deliver(lambda m: m.to == 2)
    assert h.rn(2).raft.vote == 1
    h.run("crash 2")  # its VOTE_RESP sat in the unpersisted Ready
    h.run("restart 2")
    assert h.rn(2).raft.vote == 0 and h.rn(2).raft.term == 1
    assert not any(m.frm == 2 for m in h.net)


def test_fast_backtracking_fixes_long_divergent_tail_in_few_round_trips() -> None:
    # Paper §5.3 (end): "the follower can include the term of the conflicting entry and the first index it stores
    # for that term"; with etcd's refinement a whole divergent term is skipped per round trip (thesis §5.3).
    h = elected("bootstrap 1 2 3 checkquorum=false")
    h.run("isolate 1")
    for k in range(60):
        h.rn(1).propose(b"old%d" % k)  # 60 entries of term 2 that never commit
    h.stabilize()
    h.run("campaign 2")
    h.stabilize()
    assert h.rn(2).role == StateRole.LEADER
    for k in range(30):
        h.rn(2).propose(b"new%d" % k)
    h.stabilize()
    assert h.rn(1).raft.log.last_index() == 64 and h.rn(2).raft.log.last_index() == 35
    h.run("heal")
    h.delivered.clear()
    h.run("tick-heartbeat 2")
    h.stabilize()
    rejects = [m for m in h.delivered if m.type == MT.APP_RESP and m.frm == 1 and m.reject]
    apps = [m for m in h.delivered if m.type == MT.APP and m.to == 1]
    assert len(rejects) <= 2, rejects
    assert len(apps) <= 4, apps
    assert h.rn(1).raft.log.last_index() == 35
    assert h.node(1).sm == h.node(2).sm == [f"new{k}" for k in range(30)]


def _set_durable_log(h: Harness, nid: int, terms: list[int], term: int) -> None:
    """Crash ``nid`` and give it a durable log: the bootstrap entries, then one entry per term in ``terms``."""
    nd = h.node(nid)
    h.run(f"crash {nid}")
    boot = nd.store.entries[:3]
    nd.store.entries = boot + [Entry(t, 4 + k, b"t%d" % t) for k, t in enumerate(terms)]
    nd.store.hard_state = HardState(term, 0, 3)
    h.run(f"restart {nid}")


def test_fast_backtracking_figure7_case_f() -> None:
    # Paper Figure 7 (f): the follower holds entries of terms 2 and 3 that no leader ever committed; the leader's
    # log has terms 4, 5, 6 there. Naive backtracking takes one round trip per entry (7 here); the follower's
    # hint (its term at the probe, §5.3) lets the leader skip all of it at once.
    h = Harness()
    h.run("bootstrap 1 2 3")
    leader_terms = [4, 4, 5, 5, 6, 6, 6]
    for nid in (1, 2):
        _set_durable_log(h, nid, leader_terms, 6)
    _set_durable_log(h, 3, [2, 2, 2, 3, 3, 3, 3, 3], 3)
    h.stabilize()  # apply the bootstrap membership
    h.run("campaign 1")
    h.stabilize(ids=[1, 2])
    assert h.rn(1).role == StateRole.LEADER and h.rn(1).raft.term == 7
    h.delivered.clear()
    h.run("tick-heartbeat 1")
    h.stabilize()
    rejects = [m for m in h.delivered if m.type == MT.APP_RESP and m.frm == 3 and m.reject]
    assert len(rejects) == 1, rejects
    assert [(e.term, e.index) for e in h.rn(3).raft.log.entries] == [
        (e.term, e.index) for e in h.rn(1).raft.log.entries
    ]
    assert h.node(3).sm == h.node(1).sm
