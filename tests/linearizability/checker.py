"""A WGL / porcupine-style linearizability checker for a per-key versioned register.

Why this exists: "every acknowledged write survives" is too weak a property
for a Raft-backed store. Stale reads from a deposed leader, reads of writes
that later vanish, and CAS that succeed against an old version are only
visible when the whole concurrent history is checked against a sequential
model. This module does that check, offline, on a recorded history.

Model (what one etcd key does): state is ``(value, version)``; ``version`` is 0
when the key is absent, 1 after the first put, +1 per put, and back to 0 after a
delete (the next put starts at 1 again). Operations:

- ``put(value)``: always succeeds.
- ``get() -> (value | None, version | None)``: a version of ``None`` means "not checked".
- ``cas(expect_version=v | expect_value=x, value) -> ok``: compare-and-set;
  comparing a value on an absent key always fails (as etcd does).
- ``delete() -> deleted``: ``deleted`` is 1 when the key existed, else 0 (``None``: not checked).

An operation the client got no answer for is *indeterminate*: its return time
is +infinity and its output is unknown. It may take effect at any moment after
its call or never (placing it after everything else is the same as never).
Indeterminate reads have no effect and should be dropped by the recorder.

Algorithm: the history is split by key (linearizability is compositional, so
each key is checked on its own), then each key is searched with the
Wing-Gong-Lowe algorithm with Lowe's memoisation of (linearized-set bitmask,
model state), exactly as porcupine does. Each search has a step budget; when
it runs out the verdict is ``UNKNOWN`` rather than a hang.

Indeterminate writes make that search exponential: every subset of the ones
pending at a point is a distinct memo entry. Two reductions keep it small, both
sound: a value that no read and no compare ever mentions is written as one
placeholder (no operation can tell such values apart), and indeterminate ops
with the same effect (same kind, written value after that, compare) are
interchangeable once called, so the memo counts how many of each such class are
linearized instead of which. (A fake cluster under faults left ~18 indeterminate
writes on one key; the plain memo ran out of a million steps on 1 history in 8.)

On failure the result names the key, the longest linearizable prefix found
(as a sequence of operations, with the model state at its end) and the
operation whose return could not be preceded by its own linearization point.
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "DEFAULT_MAX_STEPS_PER_KEY",
    "CheckResult",
    "KeyResult",
    "Op",
    "OpKind",
    "Outcome",
    "State",
    "check",
    "check_key",
    "step",
]

#: Search steps (one candidate tried or one backtrack) per key before giving up with UNKNOWN.
#: A linearizable etcd history of ~500 ops per key with ~25 indeterminate writes needs ~10^3 steps;
#: the budget only matters for pathological or non-linearizable histories with many indeterminate
#: writes. About 0.5 M steps/s in CPython, and the memo set grows by at most one entry per step
#: (~200 bytes at 500 ops), so this caps one key at ~2 s and ~200 MB.
DEFAULT_MAX_STEPS_PER_KEY = 1_000_000

#: What a value that no read and no compare mentions is written as (see check_key).
UNOBSERVED = "\x00unobserved value"

#: Register state: (value, version). Absent key is (None, 0).
State = tuple[str | None, int]
INITIAL: State = (None, 0)


class OpKind(enum.Enum):
    PUT = "put"
    GET = "get"
    CAS = "cas"
    DELETE = "delete"


class Outcome(enum.Enum):
    OK = "linearizable"
    ILLEGAL = "not linearizable"
    UNKNOWN = "unknown (search budget exhausted)"


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key, with wall-clock (monotonic) call and return times."""

    key: str
    kind: OpKind
    call: float
    ret: float  # math.inf when indeterminate
    #: put/cas: the value written.
    value: str | None = None
    #: cas: compare on version (``expect_version``) or on value (``expect_value``); exactly one is set.
    expect_version: int | None = None
    expect_value: str | None = None
    #: get output: the value read (None: key absent) and its version (None: not checked).
    out_value: str | None = None
    out_version: int | None = None
    #: cas output.
    ok: bool | None = None
    #: delete output: number of keys deleted (None: not checked).
    deleted: int | None = None
    #: Informational: who issued it, and the store revision the server reported for a write.
    client: int = -1
    revision: int | None = None

    def __post_init__(self) -> None:
        if self.ret < self.call:
            raise ValueError(f"op returns before it is called: {self}")
        if self.kind is OpKind.GET and self.indeterminate:
            raise ValueError("an indeterminate get has no effect; drop it from the history")
        if self.kind is OpKind.CAS and (self.expect_version is None) == (self.expect_value is None):
            raise ValueError("cas needs exactly one of expect_version / expect_value")
        if self.kind in (OpKind.PUT, OpKind.CAS) and self.value is None:
            raise ValueError(f"{self.kind.value} needs a value")
        if self.kind is OpKind.CAS and not self.indeterminate and self.ok is None:
            raise ValueError("a determinate cas needs its ok output")

    @property
    def indeterminate(self) -> bool:
        return self.ret == math.inf

    def describe(self) -> str:
        ret = "inf" if self.indeterminate else f"{self.ret:.4f}"
        span = f"[{self.call:.4f}, {ret}] c{self.client}"
        if self.kind is OpKind.PUT:
            body = f"put({self.value!r})"
        elif self.kind is OpKind.GET:
            ver = "" if self.out_version is None else f" v{self.out_version}"
            body = f"get() -> {self.out_value!r}{ver}"
        elif self.kind is OpKind.CAS:
            if self.expect_version is not None:
                cond = f"version=={self.expect_version}"
            else:
                cond = f"value=={self.expect_value!r}"
            body = f"cas({cond}, {self.value!r})" + ("" if self.indeterminate else f" -> {self.ok}")
        else:
            body = "delete()" + ("" if self.indeterminate or self.deleted is None else f" -> {self.deleted}")
        if self.indeterminate:
            body += " -> ?"
        if self.revision is not None:
            body += f" @rev{self.revision}"
        return f"{span} {self.key}: {body}"


def step(state: State, op: Op) -> State | None:
    """Apply op to state; None if op's recorded output is impossible from this state."""
    value, version = state
    if op.kind is OpKind.GET:
        if op.out_value != value:
            return None
        if op.out_version is not None and op.out_version != version:
            return None
        return state
    if op.kind is OpKind.PUT:
        return (op.value, version + 1)
    if op.kind is OpKind.DELETE:
        existed = version > 0
        if not op.indeterminate and op.deleted is not None and op.deleted != int(existed):
            return None
        return INITIAL
    # CAS
    by_version = op.expect_version is not None
    holds = version == op.expect_version if by_version else (version > 0 and value == op.expect_value)
    if not op.indeterminate and op.ok != holds:
        return None
    return (op.value, version + 1) if holds else state


@dataclass
class KeyResult:
    key: str
    outcome: Outcome
    ops: int
    steps: int
    #: Longest linearizable prefix found: ops in linearization order, and the state after them.
    longest_prefix: list[Op] = field(default_factory=list)
    prefix_state: State = INITIAL
    #: The op whose return was reached before any valid place for it was found, at the deepest point.
    blocked: Op | None = None
    #: Ops that were pending (called, not yet linearized) at that point: the ones that could not be placed.
    unplaced: list[Op] = field(default_factory=list)

    def explain(self, tail: int = 12) -> str:
        if self.outcome is Outcome.OK:
            return f"{self.key}: linearizable ({self.ops} ops, {self.steps} steps)"
        if self.outcome is Outcome.UNKNOWN:
            return f"{self.key}: UNKNOWN after {self.steps} steps ({self.ops} ops)"
        lines = [
            f"key {self.key!r}: NOT linearizable ({self.ops} ops, {self.steps} steps)",
            f"  longest linearizable prefix: {len(self.longest_prefix)} ops; "
            f"last {min(tail, len(self.longest_prefix))}:",
        ]
        lines += [f"    {op.describe()}" for op in self.longest_prefix[-tail:]]
        value = "(a value no read saw)" if self.prefix_state[0] == UNOBSERVED else repr(self.prefix_state[0])
        lines.append(f"  state after prefix: value={value} version={self.prefix_state[1]}")
        if self.blocked is not None:
            lines.append(f"  cannot be placed (returned before a legal linearization point): {self.blocked.describe()}")
        if self.unplaced:
            lines.append("  other ops already called at that point (none of them could be placed next either):")
            lines += [f"    {op.describe()}" for op in self.unplaced[:tail]]
        return "\n".join(lines)


@dataclass
class CheckResult:
    outcome: Outcome
    keys: dict[str, KeyResult]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def explain(self) -> str:
        bad = [r for r in self.keys.values() if r.outcome is not Outcome.OK]
        head = f"{self.outcome.value}: {len(self.keys)} keys, {sum(r.ops for r in self.keys.values())} ops"
        return "\n".join([head, *(r.explain() for r in bad)])


def check(history: Iterable[Op], *, max_steps_per_key: int = DEFAULT_MAX_STEPS_PER_KEY) -> CheckResult:
    """Check a whole history: split by key (P-compositionality), check each key on its own."""
    t0 = time.monotonic()
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    results = {k: check_key(ops, max_steps=max_steps_per_key) for k, ops in sorted(by_key.items())}
    outcomes = {r.outcome for r in results.values()}
    if Outcome.ILLEGAL in outcomes:
        outcome = Outcome.ILLEGAL
    elif Outcome.UNKNOWN in outcomes:
        outcome = Outcome.UNKNOWN
    else:
        outcome = Outcome.OK
    return CheckResult(outcome, results, time.monotonic() - t0)


def _memo_weights(ops: Sequence[Op]) -> tuple[list[Op], list[int]]:
    """The ops as the search steps them (unobserved values written as UNOBSERVED), and each op's weight in
    the memo key: its own bit, or for an indeterminate op with interchangeable twins, one unit of its
    class's counter (mixed radix above the n op bits), so that which twins are linearized does not matter,
    only how many.

    Why twins are interchangeable: the ops of a class have the same effect on any state, and each may be
    linearized at any point after its call (no return bounds it). A node of the search has linearized
    only ops called before its first pending return, so two nodes that differ only in which k twins they
    linearized have the same state and isomorphic futures.
    """
    observed = {op.out_value for op in ops if op.kind is OpKind.GET}
    observed |= {op.expect_value for op in ops if op.kind is OpKind.CAS and op.expect_value is not None}
    stepped = list(ops)
    if UNOBSERVED not in observed:  # else a read saw the placeholder itself: leave values as they are
        stepped = [
            replace(op, value=UNOBSERVED) if op.value is not None and op.value not in observed else op for op in ops
        ]
    n = len(ops)
    classes: dict[tuple[object, ...], list[int]] = {}
    for i, op in enumerate(stepped):
        if op.indeterminate:
            classes.setdefault((op.kind, op.value, op.expect_version, op.expect_value), []).append(i)
    weights = [1 << i for i in range(n)]
    unit = 1 << n
    for members in classes.values():
        if len(members) > 1:
            for i in members:
                weights[i] = unit
            unit *= len(members) + 1
    return stepped, weights


def check_key(
    ops: Sequence[Op], *, max_steps: int = DEFAULT_MAX_STEPS_PER_KEY, init: State = INITIAL, reduce: bool = True
) -> KeyResult:
    """WGL search with memoisation over one key's operations.

    Entries (calls and returns) are kept in a doubly linked list ordered by
    time, calls before returns at equal times (touching intervals overlap).
    The search walks the list: at a call it tries to linearize that op now
    (lifting its call and return out of the list); at a return it has met an
    op that had to be linearized already, so it backtracks. ``cache`` holds
    every (bitmask, state) already explored, which keeps the search
    polynomial for the common shapes. ``reduce`` applies the reductions of
    :func:`_memo_weights` to that memo (off: the plain algorithm, which tests
    compare it with).
    """
    key = ops[0].key if ops else ""
    n = len(ops)
    if n == 0:
        return KeyResult(key, Outcome.OK, 0, 0)
    # Entry e < n is op e's call, entry n + e its return. Ties: calls first.
    order = sorted(range(2 * n), key=lambda e: (ops[e].call, 0) if e < n else (ops[e - n].ret, 1))
    head, tail = 2 * n, 2 * n + 1
    nxt = [0] * (2 * n + 2)
    prv = [0] * (2 * n + 2)
    chain = [head, *order, tail]
    for a, b in itertools.pairwise(chain):
        nxt[a] = b
        prv[b] = a

    def lift(e: int) -> None:
        for x in (e, e + n):
            nxt[prv[x]] = nxt[x]
            prv[nxt[x]] = prv[x]

    def unlift(e: int) -> None:
        for x in (e + n, e):
            nxt[prv[x]] = x
            prv[nxt[x]] = x

    stepped, weights = _memo_weights(ops) if reduce else (list(ops), [1 << i for i in range(n)])
    state: State = init
    linearized = 0  # the memo key's linearized part: the sum of the weights of the ops linearized
    cache: set[tuple[int, State]] = set()
    calls: list[tuple[int, State]] = []  # (op id, state before it)
    steps = 0
    best_depth = -1
    best: tuple[list[int], State, int | None, list[int]] = ([], init, None, [])

    def pending(upto: int) -> list[int]:
        """Ops called before entry `upto` and not yet linearized: the candidates at the point of failure."""
        out, x = [], nxt[head]
        while x not in (upto, tail):
            if x < n:
                out.append(x)
            x = nxt[x]
        return out

    entry = nxt[head]
    while nxt[head] != tail:
        steps += 1
        if steps > max_steps:
            return KeyResult(key, Outcome.UNKNOWN, n, steps)
        if entry < n:  # a call: try to linearize this op here
            new_state = step(state, stepped[entry])
            if new_state is not None:
                new_lin = linearized + weights[entry]
                if (new_lin, new_state) not in cache:
                    cache.add((new_lin, new_state))
                    calls.append((entry, state))
                    state, linearized = new_state, new_lin
                    lift(entry)
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:  # a return: its op is not linearized yet, so this branch is dead
            if len(calls) > best_depth:
                best_depth = len(calls)
                best = ([c for c, _ in calls], state, entry - n, pending(entry))
            if not calls:
                break
            top, state = calls.pop()
            linearized -= weights[top]
            unlift(top)
            entry = nxt[top]
    else:
        return KeyResult(key, Outcome.OK, n, steps)
    seq, st, blocked, pend = best
    return KeyResult(
        key,
        Outcome.ILLEGAL,
        n,
        steps,
        longest_prefix=[ops[i] for i in seq],
        prefix_state=st,
        blocked=ops[blocked] if blocked is not None else None,
        unplaced=[ops[i] for i in pend if i != blocked],
    )
