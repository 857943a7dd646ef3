"""Random command sequences through the interaction harness, checked against Raft's safety properties.

A light cousin of tests/sim: the harness handles each Ready atomically, but
it cross-checks every Ready against the contract (durable log contiguous,
membership model equal to the core's) and every message crosses the wire
codec. One seed drives everything; a failure names the seed to rerun with
``run_random(seed)``. Properties (paper Figure 3): Election Safety, State
Machine Safety (as prefix agreement of applied entries), committed entries
never change, Leader Completeness, and ReadIndex linearizability.
"""

from __future__ import annotations

import random

import pytest
from raft_harness import Harness

from kvdisco.raft import RaftError, StateRole

SEEDS = range(40)
STEPS = 300


class Checker:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.leaders: dict[int, int] = {}  # term -> leader
        self.committed: dict[int, int] = {}  # index -> term of every entry seen committed anywhere
        self.commit_term: dict[int, int] = {}  # index -> highest term in the cluster when first seen committed
        self.reads: dict[tuple[int, str], int] = {}  # (node, ctx) -> commit index anywhere at issue time

    def fail(self, what: str) -> None:
        pytest.fail(f"seed {self.seed}: {what} (rerun: run_random({self.seed}))")

    def check(self, h: Harness) -> None:
        live = h.live()
        for nid in live:
            r = h.rn(nid).raft
            if r.role == StateRole.LEADER and self.leaders.setdefault(r.term, nid) != nid:
                self.fail(f"two leaders in term {r.term}: {self.leaders[r.term]} and {nid}")
        sms = [h.node(n).sm for n in h.nodes]
        longest = max(sms, key=len)
        for sm in sms:
            if longest[: len(sm)] != sm:
                self.fail(f"state machines diverge: {sm} vs {longest}")
        top = max(h.rn(n).raft.term for n in live)
        for nid in live:
            log = h.rn(nid).raft.log
            for i in range(log.snapshot.index + 1, log.committed + 1):
                t = log.term(i)
                self.commit_term.setdefault(i, top)
                if self.committed.setdefault(i, t or 0) != t:
                    self.fail(f"committed entry {i} changed on {nid}")
        for nid in live:
            r = h.rn(nid).raft
            if r.role != StateRole.LEADER:
                continue
            for i, t in self.committed.items():
                have = r.log.term(i)
                if self.commit_term[i] < r.term and i > r.log.snapshot.index and have != t:
                    self.fail(f"leader {nid} of term {r.term} lacks committed {t}/{i}")
        for nid in h.nodes:
            for idx, ctx in h.node(nid).read_states:
                floor = self.reads.get((nid, ctx))
                if floor is not None and idx < floor:
                    self.fail(f"stale read {ctx} on {nid}: index {idx} < {floor}")


def run_random(seed: int, steps: int = STEPS) -> Harness:
    rnd = random.Random(seed)
    h = Harness()
    n = rnd.choice([1, 3, 3, 5])
    opts = rnd.choice(["", "prevote=false", "checkquorum=false", "inflight=2 msg-bytes=5"])
    h.run(f"bootstrap {' '.join(str(i) for i in range(1, n + 1))} seed={seed} {opts}")
    chk = Checker(seed)
    k = 0

    def leaders() -> list[int]:
        return [x for x in h.live() if h.rn(x).role == StateRole.LEADER]

    for step in range(steps):
        live = h.live()
        op = rnd.random()
        try:
            if op < 0.25:
                h.run(f"tick {rnd.choice(live)} {rnd.randint(1, 6)}")
            elif op < 0.45:
                for nid in live:
                    if rnd.random() < 0.7 and h.rn(nid).has_ready():
                        h.process_ready(nid)
            elif op < 0.60:
                h.deliver(lambda m: rnd.random() < 0.8)
            elif op < 0.615:
                h.run(f"take-early {rnd.choice(live)}")
            elif op < 0.63:
                h.run("drop-msgs")
            elif op < 0.66 and len(h.nodes) > 1:
                g = list(h.nodes)
                rnd.shuffle(g)
                cut = rnd.randint(1, len(g) - 1)
                h.run("partition " + " ".join(map(str, g[:cut])) + " / " + " ".join(map(str, g[cut:])))
            elif op < 0.70:
                h.run("heal")
            elif op < 0.72 and len(live) > 1:
                h.run(f"crash {rnd.choice(live)}")
            elif op < 0.76:
                down = [x for x in h.nodes if h.nodes[x].rn is None]
                if down:
                    h.run(f"restart {rnd.choice(down)}")
            elif op < 0.86 and leaders():
                k += 1
                h.run(f"propose {rnd.choice(leaders())} v{k}")
            elif op < 0.89 and leaders():
                lead = rnd.choice(leaders())
                others = [x for x in h.nodes if x != lead]
                if others:
                    kind = rnd.choice(["add-learner", "add-voter", "remove"])
                    target = rnd.choice(others)
                    if not (kind == "remove" and len(h.rn(lead).raft.voters) <= 2):
                        h.run(f"propose-conf-change {lead} {kind} {target}")
            elif op < 0.90:
                if n + 1 not in h.nodes:
                    h.run(f"add-node {n + 1}")
            elif op < 0.92 and leaders():
                h.run(f"transfer-leader {leaders()[0]} {rnd.randint(1, n)}")
            elif op < 0.95:
                nid = rnd.choice(live)
                ctx = f"r{step}"
                floor = max(h.rn(x).raft.log.committed for x in h.live())
                h.rn(nid).read_index(ctx.encode())
                chk.reads[(nid, ctx)] = floor
            elif op < 0.97:
                nid = rnd.choice(live)
                idx = rnd.choice(sorted(h.node(nid).history))
                if idx > h.rn(nid).raft.log.snapshot.index:
                    h.run(f"compact {nid} {idx}")
            else:
                h.run(f"campaign {rnd.choice(live)}")
        except RaftError:
            pass
        chk.check(h)
    # Heal everything and check the cluster still makes progress.
    for nid in list(h.nodes):
        if h.nodes[nid].rn is None:
            h.run(f"restart {nid}")
    h.run("heal")
    # One tick at a time, so randomized timeouts separate the candidates (coarse ticks cause split votes).
    for _ in range(100):
        for nid in h.live():
            h.tick(nid, 1)
        h.stabilize()
        chk.check(h)
    # A member removed while cut off never learns it and may campaign at ever higher terms; the members ignore
    # it (leader lease). So look for the newest leader and require its members to follow it.
    lead = sorted(leaders(), key=lambda x: h.rn(x).raft.term)[-1:]
    if not lead:
        chk.fail(f"no leader after healing: {h.run('status')}")
    members = h.rn(lead[0]).raft.voters | h.rn(lead[0]).raft.learners
    if any(h.rn(x).leader_id != lead[0] for x in members):
        chk.fail(f"members do not follow leader {lead[0]} after healing: {h.run('status')}")
    h.run(f"propose {lead[0]} final")
    for _ in range(3):
        h.tick(lead[0], 1)
        h.stabilize()
    chk.check(h)
    for nid in members:
        if h.node(nid).sm[-1:] != ["final"]:
            chk.fail(f"member {nid} did not apply the final write: {h.run('status')}")
    return h


@pytest.mark.parametrize("seed", SEEDS)
def test_random_schedule_keeps_raft_safety(seed: int) -> None:
    run_random(seed)
