"""A removed member is removed for good: its id is recorded in the membership, never added again, and its
messages are dropped (etcd's "ID removed").

A member's id is derived from its name, so a node that came back under a removed name with an empty data
directory would be a voter that has forgotten its votes and its log. The record of removed ids lives in the
replicated configuration (``ConfState.removed``): every member computes it from the same log, and it travels
in snapshot metadata, so it survives compaction, restarts and snapshots sent to a lagging follower.
"""

from __future__ import annotations

import json

import msgpack
import pytest
from raft_harness import Harness, elected

from kvdisco.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RawNode,
    SnapshotMeta,
    StateRole,
)
from kvdisco.raft._codec import decode_message, decode_snapshot_meta, encode_conf_change, encode_message
from kvdisco.raft._codec import encode_snapshot_meta as encode_meta

MT = MessageType
ADD, ADD_LEARNER, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE


def removed(h: Harness, nid: int) -> frozenset[int]:
    return h.rn(nid).conf_state().removed


def compact_at_applied(h: Harness, nid: int) -> SnapshotMeta:
    """Snapshot ``nid`` at its applied index with the core's own membership (as the node driver does).

    The harness's ``compact`` takes the membership from its own model, which knows voters and learners only.
    """
    nd = h.node(nid)
    rn = nd.raw
    index = rn.raft.log.applied
    term = rn.raft.log.term(index)
    assert term is not None
    meta = SnapshotMeta(index, term, rn.conf_state())
    _, n = nd.history[index]
    nd.store.snapshot = meta
    nd.store.snapshot_data = json.dumps(nd.sm[:n]).encode()  # the harness's state machine encoding
    nd.store.entries = [e for e in nd.store.entries if e.index > index]
    rn.compact(meta)
    return meta


# -- recording and refusing --------------------------------------------------------------------------------------


def test_every_member_records_a_removed_id() -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    for nid in (1, 2, 3):  # the removed node too: it applied its own removal
        assert removed(h, nid) == {3}
        assert h.rn(nid).conf_state().voters == {1, 2}


@pytest.mark.parametrize("kind", [ADD, ADD_LEARNER])
def test_the_leader_refuses_to_add_a_removed_id(kind: ConfChangeType) -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    last = h.rn(1).raft.log.last_index()
    with pytest.raises(ConfChangeError, match="node 3 was removed from the cluster and can never be added again"):
        h.rn(1).propose_conf_change(ConfChange(kind, 3))
    assert h.rn(1).raft.log.last_index() == last  # nothing reached the log
    assert h.rn(1).raft.pending_conf_index <= h.rn(1).raft.log.applied  # and no change is left pending
    h.run("add-node 4")
    h.rn(1).propose_conf_change(ConfChange(kind, 4))  # a new id is welcome
    h.stabilize()
    assert 4 in h.rn(1).conf_state().voters | h.rn(1).conf_state().learners


def test_a_removed_id_is_not_a_member_to_remove_again() -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    with pytest.raises(ConfChangeError, match="not a member"):
        h.rn(1).propose_conf_change(ConfChange(REMOVE, 3))


def test_a_demoted_voter_is_not_removed() -> None:
    # ADD_LEARNER on a voter demotes it: it stays a member and may be promoted again.
    h = elected()
    h.run("propose-conf-change 1 add-learner 3")
    h.stabilize()
    assert removed(h, 1) == frozenset() and h.rn(1).conf_state().learners == {3}
    h.run("propose-conf-change 1 add-voter 3")
    h.stabilize()
    assert h.rn(1).conf_state().voters == {1, 2, 3}


def test_a_new_leader_refuses_too() -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    h.run("transfer-leader 1 2")
    h.stabilize()
    assert h.rn(2).role == StateRole.LEADER
    with pytest.raises(ConfChangeError, match="removed"):
        h.rn(2).propose_conf_change(ConfChange(ADD, 3))


# -- surviving restarts and snapshots ----------------------------------------------------------------------------


def test_removed_ids_survive_a_restart_from_the_log() -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    h.run("crash 2")
    h.run("restart 2")
    h.stabilize()  # the restarted node replays its committed log, the removal with it
    assert removed(h, 2) == {3}


def test_removed_ids_survive_compaction_and_a_restart_from_the_snapshot() -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.run("propose 1 a")
    h.stabilize()
    meta = compact_at_applied(h, 1)
    assert meta.conf_state.removed == {3}
    assert all(e.type != EntryType.CONF_CHANGE for e in h.node(1).store.entries)  # the removal is compacted away
    h.run("crash 1")
    h.run("restart 1")
    assert removed(h, 1) == {3}  # from the snapshot metadata alone
    h.stabilize()
    assert removed(h, 1) == {3}


def test_a_snapshot_carries_removed_ids_to_a_lagging_follower() -> None:
    # 3 misses the removal of 5 and the entries after it; the leader compacts and catches 3 up with a snapshot.
    h = elected("bootstrap 1 2 3 4 5")
    h.run("isolate 3")
    h.run("propose-conf-change 1 remove 5")
    h.stabilize()
    h.run("propose 1 a")
    h.stabilize()
    compact_at_applied(h, 1)
    h.run("heal")
    h.run("tick-heartbeat 1")
    h.stabilize()
    assert h.node(3).store.snapshot.index > 0  # it was caught up by a snapshot, not by the log
    assert removed(h, 3) == {5}
    h.run("crash 3")
    h.run("restart 3")
    assert removed(h, 3) == {5}


def test_snapshot_meta_encoding_keeps_removed_ids_and_reads_the_old_layout() -> None:
    cs = ConfState(frozenset({1, 2}), frozenset({4}), frozenset({3, 9}))
    meta = SnapshotMeta(10, 2, cs)
    back = decode_snapshot_meta(encode_meta(meta))
    assert back.conf_state.removed == {3, 9} and back == meta
    # Nothing removed: the layout of earlier versions, byte for byte, so they can still read it.
    plain = SnapshotMeta(10, 2, ConfState(frozenset({1, 2}), frozenset({4})))
    assert encode_meta(plain) == msgpack.packb([10, 2, [[1, 2], [4]]], use_bin_type=True)
    assert decode_snapshot_meta(encode_meta(plain)).conf_state.removed == frozenset()
    # The same for a SNAP message on the wire.
    m = Message(MT.SNAP, to=2, frm=1, term=3, snapshot=meta)
    got = decode_message(encode_message(m)).snapshot
    assert got is not None and got.conf_state.removed == {3, 9}


@pytest.mark.parametrize(
    "conf",
    [
        [[1], [], [1]],  # removed and a voter
        [[1], [2], [2]],  # removed and a learner
        [[1], [], ["x"]],
        [[1], [], 3],
        [[1], [], [], []],
        [[1]],
    ],
)
def test_bad_conf_states_do_not_decode(conf: list[object]) -> None:
    with pytest.raises(ValueError):
        decode_snapshot_meta(msgpack.packb([10, 2, conf], use_bin_type=True))


def test_conf_state_keeps_removed_ids_apart_from_members() -> None:
    with pytest.raises(ValueError, match="removed"):
        ConfState(frozenset({1, 2}), frozenset(), frozenset({2}))
    # Equality is the membership in force; the removed ids are its history.
    assert ConfState(frozenset({1})) == ConfState(frozenset({1}), removed=frozenset({2}))


# -- dropping a removed member's messages ------------------------------------------------------------------------


def test_a_removed_member_that_missed_its_removal_cannot_disrupt_the_cluster() -> None:
    # Without pre-vote or leases, a vote request at a higher term deposes a leader (Raft §5.1). A removed node
    # that was away during its removal campaigns forever; the members drop what it sends, so the term stays.
    h = elected("bootstrap 1 2 3 prevote=false checkquorum=false")
    h.run("isolate 3")
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    assert removed(h, 1) == removed(h, 2) == {3}
    assert removed(h, 3) == frozenset()  # it never heard
    term = h.rn(1).raft.term
    h.run("heal")
    h.run("tick-election 3")
    assert h.rn(3).role == StateRole.CANDIDATE
    h.stabilize([3])
    h.stabilize()
    assert [m for m in h.delivered if m.frm == 3 and m.type == MT.VOTE]  # its votes were delivered...
    assert h.rn(1).role == StateRole.LEADER  # ...and ignored
    assert h.rn(1).raft.term == h.rn(2).raft.term == term
    h.run("propose 1 after")
    h.stabilize()
    assert h.node(1).sm[-1] == h.node(2).sm[-1] == "after"


def test_the_same_vote_from_a_member_does_depose_the_leader() -> None:
    # The control for the test above: it is the removal that makes the difference.
    h = elected("bootstrap 1 2 3 prevote=false checkquorum=false")
    term = h.rn(1).raft.term
    h.run("isolate 3")
    h.run("tick-election 3")
    h.run("heal")
    h.stabilize()
    assert h.rn(1).raft.term > term


def test_a_removed_leader_still_hands_over_with_timeout_now() -> None:
    # The voters that applied the leader's removal ignore its heartbeats, but not its TIMEOUT_NOW: the handover
    # needs no election timeout (nobody ticks here).
    h = elected()
    h.run("propose-conf-change 1 remove 1")
    h.stabilize()
    leaders = [n for n in (2, 3) if h.rn(n).role == StateRole.LEADER]
    assert len(leaders) == 1
    assert removed(h, leaders[0]) == {1}
    assert any(m.type == MT.TIMEOUT_NOW and m.frm == 1 for m in h.delivered)


def test_messages_from_a_removed_id_change_nothing() -> None:
    h = elected()
    h.run("propose-conf-change 1 remove 3")
    h.stabilize()
    r2 = h.rn(2).raft
    before = (r2.term, r2.vote, r2.lead, r2.log.last_index(), r2.log.committed)
    big = r2.term + 5
    entries = [Entry(big, r2.log.last_index() + 1, b"x")]
    for m in (
        Message(MT.VOTE, to=2, frm=3, term=big, index=99, log_term=big),
        Message(MT.APP, to=2, frm=3, term=big, index=r2.log.last_index(), log_term=r2.log.last_term(), entries=entries),
        Message(MT.HEARTBEAT, to=2, frm=3, term=big, commit=99),
    ):
        assert h.rn(2).step(m)  # well-formed, so taken; the core ignores it
    assert (r2.term, r2.vote, r2.lead, r2.log.last_index(), r2.log.committed) == before
    assert not r2.msgs and not r2.msgs_early


# -- logs written before removals were refused -------------------------------------------------------------------


def _cc(index: int, kind: ConfChangeType, nid: int) -> Entry:
    return Entry(1, index, encode_conf_change(ConfChange(kind, nid)), EntryType.CONF_CHANGE)


def _applied_conf(entries: list[Entry], snapshot: SnapshotMeta | None = None) -> ConfState:
    last = entries[-1].index
    rn = RawNode(Config(1), hard_state=HardState(1, 0, last), snapshot=snapshot, entries=entries)
    rd = rn.ready()
    rn.advance(rd)
    return rn.conf_state()


def test_an_old_log_that_re_added_a_removed_id_replays_as_written() -> None:
    # An earlier version let a removed name be added again. Replaying such a log must give the membership it
    # gave then, whatever snapshot a member starts from, or members would disagree on who votes.
    log = [_cc(1, ADD, 1), _cc(2, ADD, 2), _cc(3, REMOVE, 2), _cc(4, ADD, 2)]
    whole = _applied_conf(log)
    assert whole.voters == {1, 2} and whole.removed == frozenset()
    # A member whose snapshot (taken by the earlier version: no removed ids) lies past the re-add agrees.
    old_snap = SnapshotMeta(4, 1, ConfState(frozenset({1, 2})))
    assert RawNode(Config(1), hard_state=HardState(1, 0, 4), snapshot=old_snap).conf_state().voters == whole.voters
    # And so does one whose snapshot lies between the removal and the re-add.
    mid = SnapshotMeta(3, 1, ConfState(frozenset({1}), removed=frozenset({2})))
    assert _applied_conf([log[3]], mid).voters == whole.voters
