"""The end-of-run audits (b) lost acknowledged writes and (c) watch integrity, on hand-built reports.

These audits run after every fault test; a silent audit would let a database
that drops writes or watch events through, so each failure shape is shown here.
"""

from __future__ import annotations

import math

from .checker import Op, OpKind
from .workload import Report, Stats, Watcher, WatchEvent, lost_writes, verify, watch_problems

K = "lin/k0"


def put(v: str, call: float, ret: float, rev: int | None) -> Op:
    return Op(K, OpKind.PUT, call, ret, value=v, revision=rev)


def ev(rev: int, value: str | None, version: int) -> WatchEvent:
    return WatchEvent(rev, K, value, version)


def report(history: list[Op], final: tuple[str | None, int], final_rev: int, *streams: list[WatchEvent]) -> Report:
    watchers = [Watcher(f"http://m{i}", 2, events=list(s)) for i, s in enumerate(streams)]
    get = Op(K, OpKind.GET, 100, 101, out_value=final[0], out_version=final[1])
    return Report([*history, get], {K: final}, final_rev, 1, watchers, Stats(), [])


HISTORY = [put("a", 0, 1, 2), put("b", 2, 3, 3), put("x", 4, math.inf, None)]
GOOD_STREAM = [ev(2, "a", 1), ev(3, "b", 2), ev(4, "x", 3)]


def test_clean_report_has_no_problems() -> None:
    r = report(HISTORY, ("x", 3), 4, GOOD_STREAM, GOOD_STREAM)
    verify(r)
    assert r.problems == [], r.summary()
    assert "1 of 1" in r.indeterminate_outcomes()


def test_lost_acknowledged_write() -> None:
    assert lost_writes(HISTORY, {K: ("a", 1)}) != []  # b was acknowledged after a returned
    assert lost_writes(HISTORY, {K: (None, 0)}) != []  # written, never deleted, yet absent
    assert lost_writes(HISTORY, {K: ("zzz", 1)}) != []  # never written at all
    assert lost_writes(HISTORY, {K: ("b", 2)}) == []  # the indeterminate x may never have happened


def test_watch_gap_duplicate_and_disagreement() -> None:
    gap = [ev(2, "a", 1), ev(4, "x", 3)]
    assert any("missing revisions [3]" in p for p in watch_problems(report(HISTORY, ("x", 3), 4, gap)))
    dup = [ev(2, "a", 1), ev(3, "b", 2), ev(3, "b", 2), ev(4, "x", 3)]
    assert any("not strictly increasing" in p for p in watch_problems(report(HISTORY, ("x", 3), 4, dup)))
    other = [ev(2, "a", 1), ev(3, "x", 2), ev(4, "b", 3)]
    problems = watch_problems(report(HISTORY, ("x", 3), 4, GOOD_STREAM, other))
    assert any("another watcher saw" in p for p in problems)


def test_watch_against_history() -> None:
    wrong = [ev(2, "a", 1), ev(3, "x", 2), ev(4, "b", 3)]  # revision 3 was told to the writer of b
    assert any("the writer was told" in p for p in watch_problems(report(HISTORY, ("b", 3), 4, wrong)))
    phantom = [ev(2, "a", 1), ev(3, "b", 2), ev(4, "ghost", 3)]
    assert any("nobody wrote" in p for p in watch_problems(report(HISTORY, ("ghost", 3), 4, phantom)))
    short = [ev(2, "a", 1)]
    assert any("never seen by any watcher" in p for p in watch_problems(report(HISTORY, ("b", 2), 3, short)))
    bad_version = [ev(2, "a", 1), ev(3, "b", 5), ev(4, "x", 6)]
    assert any("version 5 after version 1" in p for p in watch_problems(report(HISTORY, ("x", 6), 4, bad_version)))
    assert any("final read says" in p for p in watch_problems(report(HISTORY, ("b", 2), 4, GOOD_STREAM)))
