"""Deterministic simulation of the Raft core: a seed sweep, scripted scenarios, and proof the checkers can fail.

* ``test_random_seeds`` runs ``KVDISCO_SIM_SEEDS`` seeds (default 2,000, from ``KVDISCO_SIM_FIRST_SEED``,
  default 0) in chunks of 100, each a full run with faults drawn from the seed (see
  tests/sim/simulator.py). A failure message starts with the seed and the command that reruns it.
* The scripted scenarios drive a calm cluster by hand: partitions, crashes, held fsyncs and a message hook
  (``Simulator.intercept``) recreate the classic cases, and the simulator's invariant checks run throughout.
* ``test_checker_catches_*`` inject deliberate driver bugs and require the checkers to notice.

docs/raft-simulation.md explains the harness and how to rerun a seed.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from kvdisco.raft import ConfChange, ConfChangeType, Message, MessageType, StateRole
from kvdisco.raft._core import Raft
from tests.sim.simulator import Profile, SimNode, SimulationFailure, Simulator, rerun_command

MT = MessageType

SEEDS = int(os.environ.get("KVDISCO_SIM_SEEDS", "2000"))
FIRST_SEED = int(os.environ.get("KVDISCO_SIM_FIRST_SEED", "0"))
#: Seeds per test, so that progress shows and a failure names a small range.
CHUNK = 100
CHUNKS = [(FIRST_SEED + lo, FIRST_SEED + min(lo + CHUNK, SEEDS)) for lo in range(0, SEEDS, CHUNK)]


@pytest.mark.parametrize(("lo", "hi"), CHUNKS, ids=[f"seeds-{lo}-{hi - 1}" for lo, hi in CHUNKS])
def test_random_seeds(lo: int, hi: int) -> None:
    for seed in range(lo, hi):
        Simulator(seed).run()


def test_runs_are_deterministic() -> None:
    a, b = Simulator(7).run(), Simulator(7).run()
    assert a.summary() == b.summary()
    assert a.committed.digests == b.committed.digests
    assert list(a.trace) == list(b.trace)


# -- scripted scenarios --------------------------------------------------------------------------------------------


def _this_test() -> str:
    node_id = os.environ.get("PYTEST_CURRENT_TEST", "tests/sim/test_simulation.py").split(" (")[0]
    return f"pytest '{node_id}'"


def _calm(seed: int, nodes: int, bug: str | None = None) -> Simulator:
    return Simulator(seed, profile=Profile.calm(nodes), bug=bug, rerun=_this_test())


def _elect(sim: Simulator) -> SimNode:
    assert sim.run_until(lambda: sim.leader() is not None, 200), "no leader elected"
    lead = sim.leader()
    assert lead is not None
    return lead


def _write(sim: Simulator, nid: int) -> tuple[int, int, int]:
    got = sim.propose(nid)
    assert got is not None, f"node {nid} refused a proposal"
    assert sim.run_until(lambda: got[2] in sim.acked, 100), f"write {got} was not acknowledged"
    return got


def _finish(sim: Simulator) -> None:
    sim.settle()
    sim.final_checks()


def test_partitioned_old_leader_cannot_commit() -> None:
    sim = _calm(11, 5)
    old = _elect(sim)
    old_term = old.raw.raft.term
    _write(sim, old.id)
    sim.isolate(old.id)
    stale = sim.propose(old.id, b"c-stale:k0=stale")
    assert stale is not None
    index, term, op = stale
    sim.run_ticks(60)
    new = sim.leader()
    assert new is not None and new.id != old.id and new.raw.raft.term > old_term
    # The isolated leader never committed its entry, and stepped down (CheckQuorum).
    assert old.raw.raft.log.committed < index
    assert old.raw.role != StateRole.LEADER
    assert op not in sim.acked
    # The majority goes on committing.
    _write(sim, new.id)
    sim.heal()
    sim.run_ticks(60)
    # Back in the cluster, the old leader's uncommitted entry was replaced by the new leader's log.
    assert old.raw.raft.log.term(index) != term
    assert sim.committed.terms[index] != term or sim.committed.data[index] != b"c-stale:k0=stale"
    assert op not in sim.acked
    _finish(sim)


def test_minority_partition_cannot_elect_and_does_not_inflate_terms() -> None:
    sim = _calm(12, 5)
    lead = _elect(sim)
    term = lead.raw.raft.term
    minority = [nid for nid in sim.nodes if nid != lead.id][:2]
    majority = [nid for nid in sim.nodes if nid not in minority]
    sim.partition(minority, majority)
    for _ in range(200):
        sim.tick()
        for nid in minority:
            raft = sim.nodes[nid].raw.raft
            assert raft.role != StateRole.LEADER
            assert raft.term == term, f"PreVote should keep isolated node {nid} at term {term}, it is at {raft.term}"
    assert sim.leader() is lead and lead.raw.raft.term == term
    _write(sim, lead.id)
    # Rejoining does not disrupt the leader either.
    sim.heal()
    sim.run_ticks(50)
    assert sim.leader() is lead and lead.raw.raft.term == term
    assert max(sim.leaders) == term
    _finish(sim)


def test_figure8_old_term_entry_is_not_committed_by_counting() -> None:
    """Raft paper Figure 8: an entry from an earlier term on a majority is not committed by counting replicas."""
    sim = _calm(13, 5)
    s1 = _elect(sim).id
    s2, s3, s4, s5 = (nid for nid in sorted(sim.nodes) if nid != s1)
    t1 = sim.nodes[s1].raw.raft.term

    # (a) S1 leads term t1 and replicates entry X at index k to S2 only.
    sim.intercept = lambda m: None if m.type == MT.APP and m.frm == s1 and m.to in (s3, s4, s5) else m
    x = sim.propose(s1, b"c-x:k0=x")
    assert x is not None
    k = x[0]
    assert sim.run_until(lambda: sim.nodes[s2].raw.raft.log.term(k) == t1, 20)
    assert sim.committed.max < k

    # (b) S1 crashes; S5 is elected (votes of S3, S4) and appends its no-op at index k, then crashes too.
    sim.crash(s1)

    def only_s5_campaigns(m: Message) -> Message | None:
        if m.type in (MT.PRE_VOTE, MT.VOTE) and m.frm != s5:
            return None
        if m.frm == s5 and m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            return None
        return m

    sim.intercept = only_s5_campaigns
    n5 = sim.nodes[s5]
    assert sim.run_until(lambda: n5.raw.role == StateRole.LEADER and n5.raw.raft.log.stable >= k, 200)
    t2 = n5.raw.raft.term
    assert n5.raw.raft.log.term(k) == t2 > t1
    sim.crash(s5)

    # (c) S1 restarts and is elected in term t3; it gets X (index k, term t1) onto S2 and S3, a majority,
    # but never its own no-op at k + 1 (each APP is trimmed to end at k, and S4 hears nothing).
    sim.restart(s1)

    def only_s1_campaigns_and_trim(m: Message) -> Message | None:
        if m.type in (MT.PRE_VOTE, MT.VOTE) and m.frm != s1:
            return None
        if m.type == MT.APP and m.frm == s1:
            if m.to == s4:
                return None
            return replace(m, entries=[e for e in m.entries if e.index <= k])
        return m

    sim.intercept = only_s1_campaigns_and_trim
    n1 = sim.nodes[s1]
    assert sim.run_until(lambda: n1.raw.role == StateRole.LEADER, 200)
    t3 = n1.raw.raft.term
    assert t3 > t2
    prs = n1.raw.raft.prs
    assert sim.run_until(lambda: prs[s2].match >= k and prs[s3].match >= k, 50)
    for _ in range(50):
        sim.tick()
        assert n1.raw.raft.log.committed < k, "S1 committed an entry of an earlier term by counting replicas"
    assert sim.committed.max < k

    # (d) S1 crashes; S5 (last entry k@t2, newer than X's k@t1) is elected and overwrites X everywhere.
    sim.crash(s1)
    sim.restart(s5)
    sim.intercept = lambda m: None if m.type in (MT.PRE_VOTE, MT.VOTE) and m.frm != s5 else m
    assert sim.run_until(lambda: n5.raw.role == StateRole.LEADER, 300)
    sim.intercept = None
    assert sim.run_until(lambda: sim.committed.max >= k, 100)
    assert sim.committed.terms[k] == t2
    assert x[2] not in sim.acked
    sim.restart(s1)
    _finish(sim)
    assert all(n.raw.raft.log.term(k) == t2 for n in sim.nodes.values() if n.raw.raft.log.snapshot.index < k)


@pytest.mark.parametrize("nodes", [1, 3])
def test_crash_before_fsync_loses_only_unacknowledged_entries(nodes: int) -> None:
    sim = _calm(14, nodes)
    lead = _elect(sim)
    acked = [_write(sim, lead.id) for _ in range(3)]
    sim.hold_fsync(lead.id)
    pending = [sim.propose(lead.id) for _ in range(3)]
    sim.run_ticks(5)
    assert lead.ready is not None, "the leader should be waiting on its fsync"
    assert all(p is not None and p[2] not in sim.acked for p in pending)
    assert all(p is not None and lead.storage.last_index() < p[0] for p in pending)
    sim.crash(lead.id)
    sim.restart(lead.id)
    first = pending[0]
    assert first is not None
    if nodes == 1:
        # Nothing else held them: the restarted log ends before the first unpersisted entry.
        assert lead.raw.raft.log.last_index() < first[0]
    _finish(sim)
    for _index, _term, op in acked:
        assert op in sim.acked
    for p in pending:
        assert p is not None and p[2] not in sim.acked, "a write whose leader never persisted it was acknowledged"


# -- regression scenarios for core bugs the sweep found ------------------------------------------------------------


@pytest.mark.parametrize("change", [ConfChangeType.REMOVE_NODE, ConfChangeType.ADD_LEARNER])
def test_leader_removing_itself_from_two_voters_hands_over(change: ConfChangeType) -> None:
    """Seeds 102, 211 and 33: a leader that removed or demoted itself stepped down at once, while the one
    voter left neither knew the change had committed nor held the leader's tail, so it could never win
    the old leader's vote: no leader, forever. The leader now hands over (transfer) before stepping down, and
    takes no proposals after proposing its own removal, so it holds no tail the other voter lacks."""
    sim = _calm(15, 2)
    lead = _elect(sim)
    other = next(nid for nid in sim.nodes if nid != lead.id)
    _write(sim, lead.id)
    got = sim.conf_change(lead.id, ConfChange(change, lead.id))
    assert got is not None
    k = got[0]
    assert [sim.propose(lead.id) for _ in range(2)] == [None, None], "a leaving leader must refuse proposals"

    def starve_other(m: Message) -> Message | None:
        # The other voter gets the conf change, but not word that it committed.
        if m.frm == lead.id and m.to == other and m.type in (MT.APP, MT.HEARTBEAT):
            return replace(m, entries=[e for e in m.entries if e.index <= k], commit=min(m.commit, k - 1))
        return m

    sim.intercept = starve_other
    assert sim.run_until(lambda: lead.sm.applied >= k, 50)
    assert lead.id not in lead.raw.raft.voters
    sim.intercept = None
    _finish(sim)
    new = sim.leader()
    assert new is not None and new.id == other


def test_lone_voter_read_after_restart_waits_for_its_commit_index() -> None:
    """Seed 255: a single-voter leader answered ReadIndex with its commit index before committing an entry
    of its term. After a restart that commit index can be stale (a commit-only hard state needs no fsync),
    so a read missed a write acknowledged before it was issued."""
    sim = _calm(16, 1)
    lead = _elect(sim)
    w = _write(sim, lead.id)
    assert lead.storage.unsynced_hard_state is not None, "precondition: the commit of the write is not durable"
    assert lead.storage.hard_state.commit < w[0]
    sim.crash(lead.id)
    sim.restart(lead.id)
    lead = sim.nodes[lead.id]
    sim.hold_fsync(lead.id)  # the new leader's no-op cannot become durable, so it cannot commit yet
    assert sim.run_until(lambda: lead.raw.role == StateRole.LEADER, 100)
    assert lead.raw.raft.log.committed < w[0]
    ctx = sim.read(lead.id)
    assert ctx is not None
    sim.run_ticks(5)
    sim.release_fsync(lead.id)
    # The read is served only once the commit index covers the acknowledged write (the simulator checks it).
    assert sim.run_until(lambda: ctx not in lead.reads, 50)
    assert sim.reads_served == 1
    _finish(sim)


# -- the checkers can fail -----------------------------------------------------------------------------------------


def _first_failure(bug: str, seeds: range) -> tuple[int, str]:
    for seed in seeds:
        try:
            Simulator(seed, bug=bug).run()
        except SimulationFailure as exc:
            return seed, str(exc)
    raise AssertionError(f"no seed in {seeds} caught the injected bug {bug!r}")


def test_checker_catches_state_machine_divergence() -> None:
    seed, msg = _first_failure("corrupt_apply", range(20))
    assert "state machine safety" in msg.splitlines()[0]
    assert f"rerun: {rerun_command(seed, bug='corrupt_apply')}" in msg


@pytest.mark.parametrize("bug", [None, "forget_vote"])
def test_checker_catches_forgotten_vote(bug: str | None) -> None:
    """raftos forgets its vote on restart. Two candidates A and B share term 2; C votes for A, crashes and
    restarts, then B's vote request arrives. With the bug C votes again and the election-safety check sees
    two leaders of term 2; without it C refuses and the same script passes."""
    sim = _calm(19, 3, bug=bug)
    a, b, c = 1, 2, 3
    held: list[Message] = []

    def hold_b_to_c(m: Message) -> Message | None:
        if m.type == MT.VOTE and m.frm == b and m.to == c:
            held.append(m)
            return None
        if m.frm == a and m.type not in (MT.PRE_VOTE, MT.VOTE):
            return None  # nobody hears of A's victory: B keeps campaigning, C's log stays as short as B's
        if m.type == MT.VOTE and {m.frm, m.to} == {a, b}:
            return None
        return m

    sim.intercept = hold_b_to_c
    sim.tick()  # apply the bootstrap configuration
    sim.nodes[a].raw.campaign()
    sim.nodes[b].raw.campaign()
    sim._dirty.update({a: None, b: None})
    assert sim.run_until(lambda: sim.nodes[a].raw.role == StateRole.LEADER and bool(held), 5)
    assert sim.nodes[b].raw.role == StateRole.CANDIDATE and sim.nodes[b].raw.raft.term == 2
    assert sim.nodes[c].storage.hard_state == replace(sim.nodes[c].storage.hard_state, term=2, vote=a)
    sim.crash(c)
    sim.restart(c)
    sim.inject(held[0], src=b)
    if bug is None:
        sim.run_ticks(3)
        assert sim.nodes[b].raw.role != StateRole.LEADER
        sim.intercept = None
        _finish(sim)
        return
    with pytest.raises(SimulationFailure, match="election safety: term 2 has two leaders") as info:
        sim.run_ticks(3)
    assert "rerun: pytest " in str(info.value)


def test_checker_catches_messages_sent_before_fsync() -> None:
    """A driver that sends votes and acks before they are durable breaks the Ready contract."""
    seed, msg = _first_failure("send_before_persist", range(100))
    assert "durability" in msg.splitlines()[0], msg
    assert f"rerun: {rerun_command(seed, bug='send_before_persist')}" in msg


def test_core_module_is_the_real_one() -> None:
    # The simulator must drive the production core, not a copy.
    sim = _calm(17, 3)
    assert all(isinstance(n.raw.raft, Raft) for n in sim.nodes.values())


def test_lone_voter_sends_nothing_before_its_term_is_durable() -> None:
    """Seed 4710: a lone voter elects itself in one step, so its new term is not durable yet. Entries it
    sent early (take_early_messages) could reach a learner; after a crash it led the same term again with
    other entries at the same indexes, and the learner, seeing matching terms, kept the old ones."""
    sim = _calm(18, 1)
    lead = _elect(sim)
    got = sim.conf_change(lead.id, ConfChange(ConfChangeType.ADD_LEARNER, 2))
    assert got is not None
    learner = sim.nodes[2]
    assert sim.run_until(lambda: learner.sm.applied >= got[0], 100)
    _write(sim, lead.id)
    sim.crash(lead.id)
    sim.restart(lead.id)
    sim.hold_fsync(lead.id)  # the term it is about to win never becomes durable
    assert sim.run_until(lambda: lead.raw.role == StateRole.LEADER, 100)
    term = lead.raw.raft.term
    x = sim.propose(lead.id, b"c-x:k0=x")
    assert x is not None
    sim.run_ticks(5)
    assert learner.raw.raft.log.last_index() < x[0], "an entry left before its leader's term was durable"
    sim.crash(lead.id)
    sim.restart(lead.id)
    assert sim.run_until(lambda: lead.raw.role == StateRole.LEADER, 100)
    assert lead.raw.raft.term == term  # the same term again: only the fsync order keeps the logs apart
    y = sim.propose(lead.id, b"c-y:k0=y")
    assert y is not None and y[0] == x[0]
    _finish(sim)
    assert y[2] in sim.acked and sim.committed.data[y[0]] == b"c-y:k0=y"


def test_removed_leader_crashing_mid_handover_does_not_strand_the_last_voter() -> None:
    """Seeds 20671 and 21882 (with --steps 600) once stranded a 2 -> 1 voter cluster. A membership change takes
    effect when applied, so the voter left may not know the change committed and still needs the removed
    member's vote. The removed leader used to keep taking proposals after proposing its own removal; if it
    crashed holding a tail the last voter lacked, it restarted knowing it was out (it cannot campaign) and
    refused its vote to the shorter log, so no leader could ever be elected. A leader that proposes its own
    removal now takes no more proposals, so it never holds a tail beyond the removal."""
    sim = _calm(20, 2)
    lead = _elect(sim)
    other = next(nid for nid in sim.nodes if nid != lead.id)
    _write(sim, lead.id)
    sim.hold_fsync(lead.id)
    got = sim.conf_change(lead.id, ConfChange(ConfChangeType.REMOVE_NODE, lead.id))
    assert got is not None
    k = got[0]

    def starve_other(m: Message) -> Message | None:
        if m.frm == lead.id and m.to == other and m.type in (MT.APP, MT.HEARTBEAT):
            return replace(m, entries=[e for e in m.entries if e.index <= k], commit=min(m.commit, k - 1))
        return m

    sim.intercept = starve_other
    sim.tick()  # the Ready with entry k is out, its fsync held
    assert [sim.propose(lead.id) for _ in range(2)] == [None, None], "a leaving leader must refuse proposals"
    sim.release_fsync(lead.id)
    assert sim.run_until(lambda: lead.sm.applied >= k and lead.storage.hard_state.commit >= k, 20)
    sim.crash(lead.id)
    sim.restart(lead.id)
    sim.intercept = None
    _finish(sim)
