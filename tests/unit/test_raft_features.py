"""The extensions beyond the basic algorithm, each with the section of Ongaro's thesis it follows.

ReadIndex (§6.4), leadership transfer (§3.10), learners (§4.2.1),
single-server membership changes (§4.1-§4.2), snapshots (§5), and etcd's
flow control. testdata/*.txt shows the same features as transcripts.
"""

from __future__ import annotations

import pytest
from raft_harness import Harness, elected

from kvdisco.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    SnapshotMeta,
    StateRole,
)
from kvdisco.raft._progress import ProgressState

MT = MessageType


def reads(h: Harness, nid: int) -> list[tuple[int, str]]:
    return h.node(nid).read_states


# -- ReadIndex (thesis §6.4) -------------------------------------------------------------------------------------


def test_read_index_answers_after_a_quorum_of_heartbeat_acks() -> None:
    # §6.4 steps 1-3: record commitIndex, confirm leadership with a heartbeat round, then answer.
    h = elected("bootstrap 1 2 3 4 5")
    h.run("read-index 1 r")
    h.process_ready(1)
    h.deliver(lambda m: m.to == 2)
    h.process_ready(2)
    h.deliver(lambda m: m.to == 1)
    assert not h.rn(1).has_ready()  # 1 + 2 of 5: not yet
    h.deliver(lambda m: m.to == 3)
    h.process_ready(3)
    h.deliver(lambda m: m.to == 1)
    h.process_ready(1)
    assert reads(h, 1) == [(6, "r")]


def test_read_index_confirms_all_earlier_pending_reads() -> None:
    h = elected()
    h.run("read-index 1 a")
    h.run("read-index 1 b")
    h.process_ready(1)
    second = [m for m in h.net if m.to == 2 and m.type == MT.HEARTBEAT][-1]
    h.deliver(lambda m: m is second)  # only the second round's heartbeat arrives
    h.process_ready(2)
    h.deliver(lambda m: m.to == 1)
    h.process_ready(1)
    assert reads(h, 1) == [(4, "a"), (4, "b")]


def test_read_index_from_follower_is_forwarded_and_answered() -> None:
    h = elected()
    h.run("propose 1 x")
    h.stabilize()
    h.run("read-index 3 r")
    h.stabilize()
    assert reads(h, 3) == [(5, "r")]
    assert h.node(3).applied >= 5


def test_read_index_same_context_from_different_nodes() -> None:
    # Regression: pending reads were keyed by context alone, and the node driver numbers reads per node, so
    # two followers' first reads (same context) collided and the second was silently dropped.
    h = elected()
    h.run("read-index 2 k")
    h.run("read-index 3 k")
    h.run("read-index 1 k")
    h.stabilize()
    assert reads(h, 1) == reads(h, 2) == reads(h, 3) == [(4, "k")]


def test_read_index_sent_to_a_deposed_leader_is_not_answered_to_it() -> None:
    # Regression: a follower forwarded a peer's READ_INDEX under its own id (the transport stamps the sender), so
    # the answer came back to it: it got a ReadState it never asked for, which the driver could match to its own
    # read with the same context and serve at an index from before that read was issued.
    h = Harness()
    h.run("bootstrap 1 2 3")
    h.run("campaign 2")
    h.stabilize()
    h.run("isolate 3")
    h.run("transfer-leader 2 1")
    h.stabilize()
    h.run("heal")
    assert h.rn(3).leader_id == 2 and h.rn(1).role == StateRole.LEADER
    h.run("read-index 3 k")  # goes to 2, no longer the leader
    h.stabilize()
    assert reads(h, 2) == []
    assert reads(h, 3) == []  # lost: 3's driver retries; now that it follows 1, it works
    h.run("tick-heartbeat 1")
    h.stabilize()
    h.run("read-index 3 k")
    h.stabilize()
    assert reads(h, 3) == [(5, "k")]


def test_read_index_on_follower_without_leader_raises() -> None:
    h = Harness()
    h.run("bootstrap 1 2 3")
    with pytest.raises(NotLeader):
        h.rn(2).read_index(b"r")


def test_read_index_waits_for_the_new_leaders_first_commit() -> None:
    # §6.4 step 1: "If the leader has not yet marked an entry from its current term committed, it waits until it
    # has done so."
    h = elected()
    h.run("transfer-leader 1 2")
    h.process_ready(1)
    h.deliver(lambda m: m.to == 2)  # TIMEOUT_NOW
    h.process_ready(2)
    h.deliver(lambda m: m.to == 1)  # VOTE
    h.process_ready(1)
    h.deliver(lambda m: m.to == 2)  # VOTE_RESP: 2 leads term 3, its no-op not even persisted
    r2 = h.rn(2)
    assert r2.role == StateRole.LEADER
    h.run("read-index 2 r")
    rd = h.process_ready(2)
    assert rd is not None and not any(m.type == MT.HEARTBEAT for m in rd.messages_before_persist)
    h.stabilize()
    assert reads(h, 2) == [(5, "r")]
    assert r2.raft.log.term(5) == 3


def test_read_index_deposed_leader_cannot_answer() -> None:
    # §6.4: the heartbeat round is what prevents a deposed leader from serving stale data.
    h = elected()
    h.run("isolate 1")
    h.run("read-index 1 stale")
    h.process_ready(1)
    # Meanwhile 2 becomes leader and commits a write that 1 does not have.
    h.run("tick-election 2")
    h.tick(3, 10)
    h.stabilize()
    assert h.rn(2).role == StateRole.LEADER or h.rn(3).role == StateRole.LEADER
    new = 2 if h.rn(2).role == StateRole.LEADER else 3
    h.run(f"propose {new} fresh")
    h.stabilize()
    h.run("heal")
    h.run(f"tick-heartbeat {new}")
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert reads(h, 1) == []
    assert h.rn(1).role == StateRole.FOLLOWER
    assert h.rn(1).raft._reads == {}


def test_read_index_single_voter_answers_at_once() -> None:
    h = elected("bootstrap 1")
    h.run("read-index 1 r")
    h.stabilize()
    assert reads(h, 1) == [(2, "r")]


# -- leadership transfer (thesis §3.10) --------------------------------------------------------------------------


def test_transfer_to_up_to_date_follower() -> None:
    h = elected()
    h.run("transfer-leader 1 3")
    h.stabilize()
    assert h.rn(3).role == StateRole.LEADER and h.rn(3).raft.term == 3
    assert h.rn(1).role == StateRole.FOLLOWER and h.rn(1).leader_id == 3


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    # §3.10 step 2: "the prior leader ... bring[s] the target server's log up to date", then TimeoutNow.
    h = elected()
    h.run("isolate 3")
    h.run("propose 1 a b c")
    h.stabilize()
    h.run("heal")
    h.delivered.clear()
    h.run("transfer-leader 1 3")
    with pytest.raises(ProposalDropped):
        h.rn(1).propose(b"refused")  # §3.10: the leader stops accepting client requests meanwhile
    h.stabilize()
    kinds = [m.type for m in h.delivered if m.frm == 1 and m.to == 3]
    assert MT.APP in kinds and MT.TIMEOUT_NOW in kinds
    assert kinds.index(MT.APP) < kinds.index(MT.TIMEOUT_NOW)
    assert h.rn(3).role == StateRole.LEADER
    assert h.node(3).sm == ["a", "b", "c"]


def test_transfer_aborted_after_an_election_timeout() -> None:
    # §3.10: "If the transfer does not complete within an election timeout, the prior leader aborts the transfer
    # and resumes accepting client requests."
    h = elected()
    h.run("crash 3")
    h.run("transfer-leader 1 3")
    with pytest.raises(ProposalDropped):
        h.rn(1).propose(b"x")
    h.tick(1, 9)
    with pytest.raises(ProposalDropped):
        h.rn(1).propose(b"x")
    h.tick(1, 1)
    assert h.rn(1).raft.lead_transferee == 0
    h.rn(1).propose(b"x")
    assert h.rn(1).role == StateRole.LEADER


def test_transfer_via_follower_is_forwarded() -> None:
    h = elected()
    h.run("transfer-leader 2 2")
    h.stabilize()
    assert h.rn(2).role == StateRole.LEADER


def test_transfer_campaign_overrides_leader_lease() -> None:
    # §3.10 / §4.2.3: a vote caused by a transfer must not be ignored by voters in their lease.
    h = elected()
    h.run("transfer-leader 1 2")
    h.stabilize()
    assert h.rn(2).role == StateRole.LEADER
    assert h.rn(3).leader_id == 2  # 3 had heard from 1 a moment ago, yet voted


def test_timeout_now_ignored_by_learner_and_candidate() -> None:
    h = elected()
    h.run("add-node 4")
    h.run("propose-conf-change 1 add-learner 4")
    h.stabilize()
    r4 = h.rn(4)
    r4.step(Message(MT.TIMEOUT_NOW, to=4, frm=1, term=2))
    assert r4.role == StateRole.FOLLOWER and r4.raft.term == 2


# -- learners (thesis §4.2.1) ------------------------------------------------------------------------------------


def learner_cluster() -> Harness:
    h = elected()
    h.run("add-node 4")
    h.run("propose-conf-change 1 add-learner 4")
    h.stabilize()
    assert h.rn(1).raft.learners == {4}
    return h


def test_learner_receives_entries_but_does_not_count_for_commit() -> None:
    h = learner_cluster()
    h.run("partition 1 4 / 2 3")
    h.run("propose 1 a")
    h.stabilize()
    assert h.rn(4).raft.log.last_index() == h.rn(1).raft.log.last_index() == 6
    assert h.rn(1).raft.log.committed == 5
    h.run("heal")
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert h.node(4).sm == ["a"]


def test_learner_never_campaigns() -> None:
    h = learner_cluster()
    for _ in range(3):
        h.run("tick-election 4")
    h.run("campaign 4")
    assert h.rn(4).role == StateRole.FOLLOWER
    assert not h.rn(4).has_ready()


def test_learner_vote_is_not_counted() -> None:
    # Only voters' votes count (a learner is outside the configuration's voter set).
    h = learner_cluster()
    h.run("isolate 2")
    h.run("campaign 2")
    r2 = h.rn(2)
    r2.ready()  # discard the pre-votes
    r2.step(Message(MT.PRE_VOTE_RESP, to=2, frm=4, term=3))
    assert r2.role == StateRole.PRE_CANDIDATE
    r2.step(Message(MT.PRE_VOTE_RESP, to=2, frm=3, term=3))
    assert r2.role == StateRole.CANDIDATE


def test_learner_promoted_then_counts() -> None:
    h = learner_cluster()
    h.run("propose-conf-change 1 add-voter 4")
    h.stabilize()
    assert h.rn(1).raft.voters == {1, 2, 3, 4} and not h.rn(1).raft.learners
    h.run("partition 1 4 / 2 3")
    h.run("propose 1 a")
    h.stabilize()
    assert h.rn(1).raft.log.committed == 6  # 2 of 4 is not a quorum


# -- membership changes (thesis §4.1) ----------------------------------------------------------------------------


def test_second_conf_change_refused_while_one_is_pending() -> None:
    # §4.1: "the leader ... does not start a new configuration change until the previous one has committed".
    h = elected()
    h.run("add-node 4 5")
    h.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ConfChangeError):
        h.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    h.stabilize()
    h.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))


def test_new_leader_refuses_conf_change_until_its_inherited_tail_is_applied() -> None:
    # §4.1: one change at a time. A new leader cannot know whether entries of earlier terms in its log (maybe a
    # membership change) are committed until its no-op commits, so it accepts no change before they are applied.
    h = elected()
    h.run("add-node 4")
    h.run("propose-conf-change 1 add-learner 4")
    h.process_ready(1)
    h.deliver(lambda m: m.to == 2)
    h.process_ready(2)
    h.run("drop-msgs")  # 1 never learns 2 has it: uncommitted
    h.run("crash 1")
    h.tick(3, 10)  # out of 1's lease
    h.run("tick-election 2")
    for _ in range(2):  # pre-vote round, then vote round
        h.process_ready(2)
        h.deliver(lambda m: m.to == 3)
        h.process_ready(3)
        h.deliver(lambda m: m.to == 2)
    r2 = h.rn(2)
    assert r2.role == StateRole.LEADER and r2.raft.log.applied < r2.raft.log.last_index() - 1
    cc = ConfChange(ConfChangeType.ADD_VOTER, 4)
    with pytest.raises(ConfChangeError):
        r2.propose_conf_change(cc)
    h.stabilize(ids=[2, 3])
    assert r2.raft.learners == {4}  # the inherited change committed with the no-op, and is now applied
    r2.propose_conf_change(cc)


def test_new_leader_with_fully_applied_log_may_change_membership_at_once() -> None:
    # Like etcd: configurations take effect when applied, so a leader whose whole log is applied (hence
    # committed) has nothing pending, even before its no-op commits.
    h = elected()
    h.run("transfer-leader 1 2")
    h.process_ready(1)
    h.deliver()
    h.process_ready(2)
    h.deliver(lambda m: m.to == 1)
    h.process_ready(1)
    h.deliver(lambda m: m.to == 2)
    r2 = h.rn(2)
    assert r2.role == StateRole.LEADER and r2.raft.log.applied == 4 < r2.raft.log.last_index()
    r2.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    h.stabilize()
    assert r2.raft.voters == {1, 2}


def test_conf_change_applies_on_apply_not_on_append() -> None:
    h = elected()
    h.run("add-node 4")
    h.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    h.process_ready(1)
    assert h.rn(1).raft.voters == {1, 2, 3}
    h.stabilize()
    assert h.rn(1).raft.voters == {1, 2, 3, 4}
    assert h.rn(4).raft.voters == {1, 2, 3, 4}


def test_remove_follower_then_quorum_shrinks() -> None:
    h = elected("bootstrap 1 2 3 4")
    h.run("propose-conf-change 1 remove 4")
    h.stabilize()
    assert h.rn(1).raft.voters == {1, 2, 3}
    assert 4 not in h.rn(1).raft.prs
    h.run("partition 1 2 / 3 4")
    h.run("propose 1 a")
    h.stabilize()
    assert h.node(1).sm == ["a"]  # 2 of 3


def test_removed_leader_gives_up_leadership() -> None:
    # §4.2.2: a leader that is removed steps aside once the new configuration is committed.
    h = elected()
    h.run("propose-conf-change 1 remove 1")
    for _ in range(3):
        h.stabilize()
        h.run("tick-heartbeat 1")
    h.stabilize()
    lead = [n for n in (2, 3) if h.rn(n).role == StateRole.LEADER]
    assert len(lead) == 1
    assert h.rn(1).role != StateRole.LEADER
    h.run(f"propose {lead[0]} after")
    h.stabilize()
    assert h.node(2).sm == h.node(3).sm == ["after"]


def test_conf_change_refusals() -> None:
    h = elected()
    r = h.rn(1)
    with pytest.raises(ConfChangeError):
        r.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 2))
    with pytest.raises(ConfChangeError):
        r.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 9))
    with pytest.raises(NotLeader):
        h.rn(2).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    single = elected("bootstrap 1")
    with pytest.raises(ConfChangeError):
        single.rn(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    with pytest.raises(ConfChangeError):
        single.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 1))


def test_campaign_waits_for_pending_conf_change_to_apply() -> None:
    # Like etcd: do not campaign while a committed membership change is unapplied (we might not be a voter).
    h = Harness()
    h.run("bootstrap 1 2 3")
    rn = h.rn(1)
    rn.raft.log.applied = 2  # pretend the third bootstrap entry is committed but not yet applied
    rn.campaign()
    assert rn.role == StateRole.FOLLOWER


# -- snapshots (thesis §5) ---------------------------------------------------------------------------------------


def behind_and_compacted() -> Harness:
    h = elected()
    h.run("isolate 3")
    h.run("propose 1 a b c")
    h.stabilize()
    h.run("compact 1 7")
    h.run("heal")
    return h


def test_follower_too_far_behind_gets_snapshot_and_resumes() -> None:
    h = behind_and_compacted()
    h.delivered.clear()
    h.run("tick-heartbeat 1")
    h.stabilize()
    snaps = [m for m in h.delivered if m.type == MT.SNAP]
    assert len(snaps) == 1
    meta = snaps[0].snapshot
    assert meta is not None and (meta.index, meta.term) == (7, 2)
    assert meta.conf_state.voters == frozenset({1, 2, 3})
    assert snaps[0].snapshot_data is not None
    assert h.node(3).sm == ["a", "b", "c"]
    h.run("propose 1 d")
    h.stabilize()
    assert h.node(3).sm == ["a", "b", "c", "d"]
    pr = h.rn(1).raft.prs[3]
    assert pr.state == ProgressState.REPLICATE and pr.match == 8


def test_snapshot_status_failure_returns_to_probe() -> None:
    h = behind_and_compacted()
    h.run("tick-heartbeat 1")
    for _ in range(3):
        h.process_ready(1)
        h.deliver(lambda m: m.type != MT.SNAP)
        h.process_ready(2)
        h.process_ready(3)
        h.deliver(lambda m: m.type != MT.SNAP)
    assert h.rn(1).raft.prs[3].state == ProgressState.SNAPSHOT
    h.run("drop-msgs type=SNAP")  # reports the failure to 1
    pr = h.rn(1).raft.prs[3]
    assert pr.state == ProgressState.PROBE and pr.paused and pr.pending_snapshot == 0
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert h.node(3).sm == ["a", "b", "c"]


def test_snapshot_without_data_is_refused_by_rawnode() -> None:
    h = behind_and_compacted()
    m = Message(MT.SNAP, to=3, frm=1, term=2, snapshot=SnapshotMeta(7, 2))
    assert h.rn(3).step(m) is False


def test_stale_snapshot_is_answered_with_commit() -> None:
    h = elected()
    h.run("propose 1 a")
    h.stabilize()
    r2 = h.rn(2)
    r2.step(Message(MT.SNAP, to=2, frm=1, term=2, snapshot=SnapshotMeta(3, 1), snapshot_data=b"[]"))
    rd = r2.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.messages] == [(MT.APP_RESP, 5)]


def test_restart_from_snapshot_restores_state() -> None:
    h = behind_and_compacted()
    h.run("tick-heartbeat 1")
    h.stabilize()
    h.run("crash 3")
    h.run("restart 3")
    assert h.node(3).sm == ["a", "b", "c"]
    assert h.rn(3).raft.log.snapshot.index == 7


def test_compact_beyond_applied_is_an_invariant_violation() -> None:
    h = elected()
    from kvdisco.raft import InvariantViolation

    with pytest.raises(InvariantViolation):
        h.rn(1).compact(SnapshotMeta(9, 2))


# -- flow control (etcd's Inflights) -----------------------------------------------------------------------------


def test_inflight_message_window() -> None:
    h = elected("bootstrap 1 2 3 inflight=3")
    for k in range(10):
        h.rn(1).propose(b"e%d" % k)
        h.process_ready(1)
    to3 = [m for m in h.net if m.to == 3 and m.type == MT.APP]
    assert len(to3) == 3
    pr = h.rn(1).raft.prs[3]
    assert pr.inflights.full() and pr.is_paused()
    # Acks reopen the window and the rest goes out (in one APP: it fits in msg_bytes_max).
    h.stabilize()
    assert h.node(3).sm == [f"e{k}" for k in range(10)]
    assert h.rn(1).raft.prs[3].inflights.count() == 0


def test_inflight_bytes_window() -> None:
    h = elected("bootstrap 1 2 3 inflight=100 inflight-bytes=20")
    for k in range(6):
        h.rn(1).propose(b"x" * 9 + b"%d" % k)  # 10 bytes each
        h.process_ready(1)
    to3 = [m for m in h.net if m.to == 3 and m.type == MT.APP]
    assert len(to3) == 2  # 20 bytes in flight: full
    assert h.rn(1).raft.prs[3].inflights.bytes == 20
    h.stabilize()
    assert len(h.node(3).sm) == 6


def test_heartbeat_reply_frees_a_slot_when_acks_are_lost() -> None:
    h = elected("bootstrap 1 2 3 inflight=1")
    h.rn(1).propose(b"a")
    h.process_ready(1)
    h.rn(1).propose(b"b")
    h.process_ready(1)
    h.run("drop-msgs")
    assert h.rn(1).raft.prs[3].is_paused()
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert h.node(3).sm == ["a", "b"]


def test_unreachable_follower_goes_back_to_probe() -> None:
    h = elected()
    h.run("report-unreachable 1 3")
    assert h.rn(1).raft.prs[3].state == ProgressState.PROBE
    h.run("propose 1 a")
    h.stabilize()
    assert h.rn(1).raft.prs[3].state == ProgressState.REPLICATE
    assert h.node(3).sm == ["a"]


def test_probe_sends_one_app_at_a_time() -> None:
    h = elected()
    h.run("isolate 3")
    h.run("report-unreachable 1 3")
    for k in range(5):
        h.rn(1).propose(b"%d" % k)
        h.process_ready(1)
    # Partition drops are counted at send time: only the first probe was even attempted.
    pr = h.rn(1).raft.prs[3]
    assert pr.state == ProgressState.PROBE and pr.paused


# -- Commit notices: an APP that only moves the commit index needs no answer -------------------------------------


def _commit_only_apps(h: Harness, to: int) -> list[Message]:
    return [m for m in h.net if m.type == MT.APP and m.to == to and not m.entries]


def test_commit_notice_to_an_up_to_date_follower_is_not_answered() -> None:
    from kvdisco.raft._core import COMMIT_NOTICE

    h = elected()
    h.run("propose 1 a")
    h.process_ready(1)
    h.deliver(lambda m: m.to in (2, 3))
    h.process_ready(2)
    h.process_ready(3)
    h.deliver(lambda m: m.to == 1)
    h.process_ready(1)  # commits 'a' on 2's ack and tells the followers
    # 2's ack was counted: the leader knows 2 holds everything. 3's is still on its way (the core takes one
    # message at a time), but 'a' is in flight to 3, and the ack for it will tell the leader what an answer
    # to the commit would: both get a notice.
    assert [m.context for m in _commit_only_apps(h, 2)] == [COMMIT_NOTICE]
    assert [m.context for m in _commit_only_apps(h, 3)] == [COMMIT_NOTICE]
    h.deliver(lambda m: m.to in (2, 3))
    for nid in (2, 3):
        rd = h.process_ready(nid)
        assert rd is not None and not rd.messages  # applied, and nothing to say
    assert h.node(2).sm == h.node(3).sm == ["a"]
    last = h.rn(1).raft.log.last_index()
    assert h.rn(1).raft.prs[2].match == h.rn(1).raft.prs[3].match == last


def test_commit_only_app_to_a_follower_not_known_to_hold_everything_asks_for_an_answer() -> None:
    # A probe (or a follower whose ack is still on its way) must answer: the leader learns its match from it.
    h = elected()
    h.run("report-unreachable 1 3")
    h.rn(1).raft._send_append(3)  # what a commit broadcast sends 3 now
    h.process_ready(1)
    probes = _commit_only_apps(h, 3)
    assert probes and all(m.context == b"" for m in probes)
    h.deliver(lambda m: m.to == 3)
    rd = h.process_ready(3)
    assert rd is not None and any(m.type == MT.APP_RESP for m in rd.messages)


def test_commit_notice_that_does_not_match_the_log_is_rejected_as_usual() -> None:
    from kvdisco.raft._core import COMMIT_NOTICE

    h = elected()
    leader = h.rn(1).raft
    last = leader.log.last_index()
    bogus = Message(
        MT.APP, to=2, frm=1, term=leader.term, index=last + 5, log_term=leader.term, commit=last, context=COMMIT_NOTICE
    )
    h.rn(2).step(bogus)
    rd = h.process_ready(2)
    assert rd is not None
    assert [m.reject for m in rd.messages if m.type == MT.APP_RESP] == [True]


def test_a_ready_that_applies_a_conf_change_must_be_synced() -> None:
    # A member that forgot it committed a conf change (the commit index is otherwise written without an fsync)
    # could wait after a restart for the vote of a member that no longer counts itself a voter.
    h = elected()
    h.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    h.process_ready(1)
    h.deliver(lambda m: m.to in (2, 3))
    h.process_ready(2)
    h.process_ready(3)
    h.deliver(lambda m: m.to == 1)
    rd = h.process_ready(1)
    assert rd is not None and rd.committed_entries and rd.commits_conf_change and rd.must_sync()
    h.run("propose 1 a")
    h.stabilize()
    h.run("propose 1 b")
    h.process_ready(1)
    h.deliver(lambda m: m.to in (2, 3))
    h.process_ready(2)
    h.deliver(lambda m: m.to == 1)
    rd = h.process_ready(1)
    assert rd is not None and rd.committed_entries and not rd.commits_conf_change
    assert not rd.entries and not rd.must_sync()  # a commit alone still needs no fsync


def test_leader_sends_the_commit_of_a_conf_change_only_once_it_is_durable() -> None:
    # Followers apply a conf change when told it is committed. Had the leader told them before writing the
    # commit index, a crash could bring it back under the old membership while they run the new one.
    h = elected()
    h.run("add-node 4")
    h.rn(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    h.process_ready(1)
    h.deliver(lambda m: m.to in (2, 3))
    h.process_ready(2)
    h.process_ready(3)
    h.deliver(lambda m: m.to == 1)  # committed now, in memory only
    assert h.rn(1).take_early_messages() == []
    rd = h.process_ready(1)
    assert rd is not None and rd.must_sync() and rd.hard_state is not None
    assert rd.messages_before_persist == []
    assert {m.to for m in rd.messages if m.type == MT.APP and m.commit == rd.hard_state.commit} == {2, 3}
    # Once written, commits go out early again.
    h.stabilize()
    h.rn(1).propose(b"x")
    assert [m.type for m in h.rn(1).take_early_messages()] == [MT.APP, MT.APP, MT.APP]


def test_read_round_does_not_count_an_ack_left_from_an_earlier_round_for_the_same_request() -> None:
    # A duplicated READ_INDEX starts a second round for the same request. An acknowledgement of the first
    # round arriving late must not confirm the second: by then this leader may have been deposed, and it would
    # answer reads with a stale commit index.
    h = elected()
    forwarded = Message(MT.READ_INDEX, to=1, frm=2, context=b"r")
    h.rn(1).step(forwarded)
    h.process_ready(1)
    h.deliver(lambda m: m.type == MT.HEARTBEAT)
    h.process_ready(2)
    h.process_ready(3)
    late = [m for m in h.net if m.type == MT.HEARTBEAT_RESP and m.frm == 3]
    h.net = [m for m in h.net if m not in late]
    h.deliver(lambda m: m.to == 1)  # 2's ack confirms the first round
    h.process_ready(1)
    assert [m.type for m in h.net if m.to == 2] == [MT.READ_INDEX_RESP]
    h.net.clear()
    h.rn(1).step(Message(MT.READ_INDEX, to=1, frm=2, context=b"r"))  # the duplicate: a new round
    h.process_ready(1)
    h.net = [m for m in h.net if m.type != MT.HEARTBEAT] + late  # its heartbeats are lost; the old ack lands
    h.deliver(lambda m: m.to == 1)
    h.process_ready(1)
    assert not [m for m in h.net if m.type == MT.READ_INDEX_RESP]
