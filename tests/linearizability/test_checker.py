"""The checker itself: hand-written histories with known verdicts, and generated ones.

A checker that says "linearizable" to everything is worse than none, so most
of these are histories it must reject, each a distinct way a replicated store
goes wrong (stale read, lost write, phantom value, double CAS, resurrected
indeterminate write), next to near-misses it must accept.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .checker import INITIAL, Op, OpKind, Outcome, State, check, check_key, step

INF = math.inf
K = "k"


def put(v: str, call: float, ret: float, key: str = K) -> Op:
    return Op(key, OpKind.PUT, call, ret, value=v)


def get(v: str | None, call: float, ret: float, version: int | None = None, key: str = K) -> Op:
    return Op(key, OpKind.GET, call, ret, out_value=v, out_version=version)


def cas(
    new: str, call: float, ret: float, ok: bool | None, *, version: int | None = None, value: str | None = None
) -> Op:
    return Op(K, OpKind.CAS, call, ret, value=new, expect_version=version, expect_value=value, ok=ok)


def delete(call: float, ret: float, deleted: int | None = None) -> Op:
    return Op(K, OpKind.DELETE, call, ret, deleted=deleted)


def verdict(*ops: Op) -> Outcome:
    return check(ops).outcome


# -- accepted ------------------------------------------------------------------------------------------


def test_empty_and_sequential() -> None:
    assert verdict() is Outcome.OK
    h = [get(None, 0, 1, 0), put("a", 2, 3), get("a", 4, 5, 1), put("b", 6, 7), get("b", 8, 9, 2)]
    assert verdict(*h) is Outcome.OK


def test_concurrent_ops_fine_in_some_order() -> None:
    # put(a) and put(b) overlap; the reads force b first, then a. Only one of the 2 orders works.
    h = [put("a", 0, 10), put("b", 1, 9), get("b", 2, 3, 1), get("a", 11, 12, 2)]
    assert verdict(*h) is Outcome.OK
    # A read overlapping a write may see either side of it.
    assert verdict(put("a", 0, 1), put("b", 2, 6), get("a", 3, 4), get("b", 5, 7)) is Outcome.OK


def test_touching_intervals_count_as_concurrent() -> None:
    assert verdict(put("a", 0, 1), get(None, 1, 2)) is Outcome.OK


def test_indeterminate_write_that_appears_later() -> None:
    h = [put("a", 0, 1), put("x", 2, INF), get("a", 3, 4, 1), get("x", 10, 11, 2), get("x", 12, 13, 2)]
    assert verdict(*h) is Outcome.OK


def test_indeterminate_write_that_never_appears() -> None:
    h = [put("a", 0, 1), put("x", 2, INF), cas("y", 2.5, INF, None, version=1)]
    h += [get("a", 3, 4, 1), get("a", 100, 101, 1)]
    assert verdict(*h) is Outcome.OK


def test_cas_and_delete_semantics() -> None:
    h = [
        cas("a", 0, 1, True, version=0),  # create-if-absent
        cas("b", 2, 3, False, value="zz"),
        cas("b", 4, 5, True, value="a"),
        get("b", 6, 7, 2),
        delete(8, 9, 1),
        delete(10, 11, 0),
        cas("c", 12, 13, False, value="b"),  # value compare on an absent key fails
        get(None, 14, 15, 0),
        put("d", 16, 17),
        get("d", 18, 19, 1),  # version restarts after a delete
    ]
    assert verdict(*h) is Outcome.OK


# -- rejected ------------------------------------------------------------------------------------------


def test_stale_read() -> None:
    res = check([put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)])
    assert res.outcome is Outcome.ILLEGAL
    kr = res.keys[K]
    assert kr.blocked is not None and kr.blocked.kind is OpKind.GET and kr.blocked.out_value == "a"
    assert [op.value for op in kr.longest_prefix] == ["a", "b"]
    assert "NOT linearizable" in res.explain() and "'k'" in res.explain()


def test_lost_write() -> None:
    assert verdict(put("a", 0, 1), get(None, 2, 3)) is Outcome.ILLEGAL
    assert verdict(put("a", 0, 1), put("b", 2, 3), get("b", 4, 5), get("a", 6, 7)) is Outcome.ILLEGAL


def test_read_of_never_written_value() -> None:
    assert verdict(put("a", 0, 1), get("ghost", 2, 3)) is Outcome.ILLEGAL
    assert verdict(get("ghost", 0, 1)) is Outcome.ILLEGAL


def test_read_before_write_was_called() -> None:
    assert verdict(get("x", 0, 1), put("x", 2, INF)) is Outcome.ILLEGAL


def test_indeterminate_write_cannot_be_undone() -> None:
    # x took effect (it was read), nothing else wrote, yet a later read sees the old value.
    assert verdict(put("a", 0, 1), put("x", 2, INF), get("x", 3, 4), get("a", 5, 6)) is Outcome.ILLEGAL


def test_wrong_version() -> None:
    assert verdict(put("a", 0, 1), put("b", 2, 3), get("b", 4, 5, 1)) is Outcome.ILLEGAL


def test_double_cas_on_same_version() -> None:
    h = [put("a", 0, 1), cas("b", 2, 5, True, version=1), cas("c", 3, 6, True, version=1)]
    assert verdict(*h) is Outcome.ILLEGAL
    # A failed CAS that must have succeeded.
    assert verdict(put("a", 0, 1), cas("b", 2, 3, False, version=1)) is Outcome.ILLEGAL


def test_delete_output_checked() -> None:
    assert verdict(delete(0, 1, 1)) is Outcome.ILLEGAL
    assert verdict(put("a", 0, 1), delete(2, 3, 0)) is Outcome.ILLEGAL


def test_keys_are_checked_independently_and_the_bad_one_is_named() -> None:
    h = [put("a", 0, 1, key="good"), get("a", 2, 3, key="good"), put("a", 0, 1, key="bad"), get(None, 2, 3, key="bad")]
    res = check(h)
    assert res.outcome is Outcome.ILLEGAL
    assert res.keys["good"].outcome is Outcome.OK and res.keys["bad"].outcome is Outcome.ILLEGAL
    assert "'bad'" in res.explain() and "'good'" not in res.explain()


def test_search_budget_gives_unknown_not_a_hang() -> None:
    # 24 fully concurrent writes and then an impossible read: proving it illegal means trying every subset.
    h = [put(f"v{i}", 0, 100) for i in range(24)] + [get("ghost", 200, 201)]
    res = check_key(h, max_steps=5_000)
    assert res.outcome is Outcome.UNKNOWN and res.steps > 5_000


def test_op_validation() -> None:
    import pytest

    with pytest.raises(ValueError):
        get("a", 0, INF)
    with pytest.raises(ValueError):
        cas("a", 0, 1, True)
    with pytest.raises(ValueError):
        put("a", 2, 1)


# -- generated -----------------------------------------------------------------------------------------

KEYS = ("k0", "k1", "k2")


@st.composite
def sequential_histories(draw: st.DrawFn) -> list[Op]:
    """Run random ops sequentially against the model, then give each a random interval around its instant.

    Op i takes effect at instant 10*i; its interval is [10*i - a, 10*i + b] with a, b up to 35, so
    neighbours overlap heavily but the sequential order is always a valid linearization. Some writes
    become indeterminate (return = inf); some indeterminate writes are never applied at all.
    """
    n = draw(st.integers(1, 40))
    states: dict[str, State] = dict.fromkeys(KEYS, INITIAL)
    ops: list[Op] = []
    for i in range(n):
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(list(OpKind)))
        t = 10.0 * i
        call = t - draw(st.integers(0, 35))
        ret = t + draw(st.integers(0, 35))
        value, version = states[key]
        fresh = f"v{i}"
        indeterminate = kind is not OpKind.GET and draw(st.integers(0, 5)) == 0
        if indeterminate and draw(st.booleans()):
            # Never took effect: the state is unchanged and the op never returns.
            if kind is OpKind.CAS:
                ops.append(Op(key, kind, call, INF, value=fresh, expect_version=version))
            else:
                ops.append(Op(key, kind, call, INF, value=fresh if kind is OpKind.PUT else None))
            continue
        r = INF if indeterminate else ret
        if kind is OpKind.GET:
            op = Op(key, kind, call, r, out_value=value, out_version=version if draw(st.booleans()) else None)
        elif kind is OpKind.PUT:
            op = Op(key, kind, call, r, value=fresh)
        elif kind is OpKind.DELETE:
            op = Op(key, kind, call, r, deleted=int(version > 0))
        else:
            if value is not None and draw(st.booleans()):
                expect_version, expect_value = None, value if draw(st.booleans()) else "nope"
            else:
                expect_version, expect_value = draw(st.sampled_from([version, version + 1])), None
            probe = Op(key, kind, call, INF, value=fresh, expect_version=expect_version, expect_value=expect_value)
            ok = step(states[key], probe) != states[key]  # a CAS that holds always bumps the version
            op = Op(key, kind, call, r, value=fresh, expect_version=expect_version, expect_value=expect_value, ok=ok)
        new = step(states[key], op)
        assert new is not None
        states[key] = new
        ops.append(op)
    return ops


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(sequential_histories())
def test_generated_sequential_histories_are_linearizable(h: list[Op]) -> None:
    res = check(h)
    assert res.outcome is Outcome.OK, res.explain()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(sequential_histories(), st.data())
def test_reading_a_never_written_value_is_never_linearizable(h: list[Op], data: st.DataObject) -> None:
    gets = [i for i, op in enumerate(h) if op.kind is OpKind.GET]
    if not gets:
        h = [*h, get("seed", -100, -90, key="k0")]
        gets = [len(h) - 1]
    i = data.draw(st.sampled_from(gets))
    old = h[i]
    h[i] = Op(old.key, OpKind.GET, old.call, old.ret, out_value="never-written", out_version=old.out_version)
    res = check(h)
    assert res.outcome is Outcome.ILLEGAL, res.explain()
    assert res.keys[old.key].outcome is Outcome.ILLEGAL


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Op]:
    """Ops with random intervals and random outputs, linearizable or not, half the writes indeterminate:
    small enough for the plain search to decide every one."""
    ops: list[Op] = []
    values = ["a", "b", "c", "d"]
    for i in range(draw(st.integers(1, 11))):
        kind = draw(st.sampled_from(list(OpKind)))
        call = float(draw(st.integers(0, 40)))
        indeterminate = kind is not OpKind.GET and draw(st.booleans())
        ret = INF if indeterminate else call + draw(st.integers(0, 15))
        if kind is OpKind.GET:
            version = draw(st.one_of(st.none(), st.integers(0, 3)))
            ops.append(Op(K, kind, call, ret, out_value=draw(st.sampled_from([None, *values])), out_version=version))
        elif kind is OpKind.PUT:
            ops.append(Op(K, kind, call, ret, value=draw(st.sampled_from([*values, f"u{i}"]))))
        elif kind is OpKind.DELETE:
            ops.append(Op(K, kind, call, ret, deleted=None if indeterminate else draw(st.sampled_from([None, 0, 1]))))
        else:
            by_version = draw(st.booleans())
            ops.append(
                Op(
                    K,
                    kind,
                    call,
                    ret,
                    value=draw(st.sampled_from([*values, f"u{i}"])),
                    expect_version=draw(st.integers(0, 3)) if by_version else None,
                    expect_value=None if by_version else draw(st.sampled_from(values)),
                    ok=None if indeterminate else draw(st.booleans()),
                )
            )
    return ops


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(arbitrary_histories())
def test_the_memo_reductions_never_change_a_verdict(h: list[Op]) -> None:
    plain = check_key(h, reduce=False, max_steps=10**7)
    reduced = check_key(h, max_steps=10**7)
    assert Outcome.UNKNOWN not in (plain.outcome, reduced.outcome)
    assert reduced.outcome is plain.outcome, "\n".join(op.describe() for op in h)
    assert reduced.steps <= plain.steps


def test_interchangeable_indeterminate_writes_are_searched_once() -> None:
    # 16 concurrent indeterminate writes of values nobody reads, then a read of a version they cannot reach:
    # proving that takes the plain memo every subset of them, the reduced one only how many took effect.
    writes = [put(f"lost{i}", 0, INF) for i in range(16)]
    h = [*writes, put("x", 1, 2), get("x", 3, 4, version=30)]
    assert check_key(h, max_steps=100_000).outcome is Outcome.ILLEGAL
    assert check_key(h, max_steps=100_000, reduce=False).outcome is Outcome.UNKNOWN
    # And where they can: version 9 is 8 of them before x.
    h[-1] = get("x", 3, 4, version=9)
    assert check_key(h, max_steps=100_000).outcome is Outcome.OK
