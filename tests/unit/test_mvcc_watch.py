"""The watch hub (kvdisco.mvcc.watch) and the store's history reads it uses."""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdisco.mvcc import (
    CompactedError,
    EmptyKeyError,
    Event,
    EventType,
    InvalidArgumentError,
    KeyValue,
    KVStore,
    Lessor,
    MvccError,
    RequestDeleteRange,
    RequestPut,
    Watcher,
    WatchHub,
    WatchResponse,
)
from kvdisco.mvcc.watch import CANCEL_REASON_COMPACTED, prefix_end

# --- helpers ---------------------------------------------------------------------------------


def drain(w: Watcher) -> list[WatchResponse]:
    out: list[WatchResponse] = []
    while True:
        resp = w.poll()
        if resp is not None:
            out.append(resp)
        elif not w.catching_up:
            return out


def events_of(resps: list[WatchResponse]) -> list[Event]:
    return [ev for r in resps for ev in r.events]


def in_range(key: bytes, lo: bytes, hi: bytes) -> bool:
    if not hi:
        return key == lo
    return key >= lo and (hi == b"\0" or key < hi)


def strip(ev: Event) -> Event:
    return ev._replace(prev_kv=None)


class Log:
    """A store, a hub told of every write, and the events of every write, kept independently."""

    def __init__(self, **limits: int) -> None:
        self.store = KVStore(Lessor(1))
        self.hub = WatchHub(self.store, **limits)
        self.events: list[tuple[int, tuple[Event, ...]]] = []

    def record(self, events: tuple[Event, ...], notify: bool = True) -> None:
        if events:
            self.events.append((self.store.revision, events))
            if notify:
                self.hub.notify(self.store.revision, events)

    def put(self, key: bytes, value: bytes = b"v", *, lease: int = 0, notify: bool = True) -> int:
        self.record(self.store.put(key, value, lease=lease).events, notify)
        return self.store.revision

    def delete(self, key: bytes, range_end: bytes = b"", notify: bool = True) -> int:
        self.record(self.store.delete_range(key, range_end).events, notify)
        return self.store.revision

    def txn(self, *ops: RequestPut | RequestDeleteRange) -> int:
        self.record(self.store.txn((), ops, ()).events)
        return self.store.revision

    def expected(
        self,
        key: bytes,
        range_end: bytes = b"",
        start: int = 1,
        prev_kv: bool = False,
        filters: frozenset[str] = frozenset(),
        until: int | None = None,
    ) -> list[Event]:
        out = []
        for rev, evs in self.events:
            if rev < start or (until is not None and rev >= until):
                continue
            for ev in evs:
                if not in_range(ev.kv.key, key, range_end):
                    continue
                if ("NOPUT" if ev.type == EventType.PUT else "NODELETE") in filters:
                    continue
                out.append(ev if prev_kv else strip(ev))
        return out


def revisions_whole(resps: list[WatchResponse]) -> bool:
    """Every revision's events sit in a single response, and responses ascend."""
    last = 0
    for r in resps:
        revs = [ev.kv.mod_revision for ev in r.events]
        if revs != sorted(revs) or (revs and revs[0] <= last):
            return False
        if revs:
            last = revs[-1]
    return True


# --- store history reads ---------------------------------------------------------------------


def test_events_between_rebuilds_the_events_writes_returned() -> None:
    log = Log()
    log.put(b"a", b"1")
    log.put(b"b", b"1")
    log.txn(RequestPut(b"a", b"2"), RequestPut(b"c", b"1"), RequestDeleteRange(b"b"))
    log.delete(b"a", b"\0")
    log.put(b"a", b"3")
    s = log.store
    all_events = [ev for _, evs in log.events for ev in evs]
    assert s.events_between(b"\0", b"\0", 1, 100) == all_events
    assert s.events_between(b"a", b"", 1, s.revision) == [ev for ev in all_events if ev.kv.key == b"a"]
    assert s.events_between(b"b", b"c", 4, 4) == [ev for ev in all_events if ev.kv.key == b"b"][-1:]
    assert s.events_between(b"a", b"\0", 5, 1) == []
    # a limit stops on a revision boundary only
    assert [ev.kv.mod_revision for ev in s.events_between(b"a", b"\0", 1, 100, limit=3)] == [2, 3, 4, 4, 4]
    assert all_events[2].prev_kv == KeyValue(b"a", 2, 2, 1, b"1")
    assert all_events[4].type == EventType.DELETE and all_events[4].kv == KeyValue(b"b", mod_revision=4)


def test_events_between_refuses_compacted_revisions_and_prunes_its_log() -> None:
    log = Log()
    for i in range(5):
        log.put(b"k%d" % (i % 2), b"%d" % i)
    log.delete(b"k1")
    log.store.compact(7)
    with pytest.raises(CompactedError):
        log.store.events_between(b"k0", b"", 7, 10)
    assert log.store.events_between(b"k", b"l", 8, 10) == []
    assert len(log.store._log_keys) == 0
    log.put(b"k1", b"x")
    assert log.store.events_between(b"k", b"l", 8, 10) == log.expected(b"k", b"l", 8, prev_kv=True)


def test_wide_and_narrow_ranges_read_the_same_events_either_way() -> None:
    log = Log()
    for i in range(200):
        log.put(b"k%03d" % (i % 50), b"%d" % i)
        if i % 7 == 0:
            log.delete(b"k%03d" % ((i * 3) % 50))
    s = log.store
    for lo, hi, a, b in [(b"k000", b"k010", 1, 300), (b"k010", b"\0", 50, 60), (b"k005", b"", 1, 300)]:
        want = log.expected(lo, hi, a, prev_kv=True, until=b + 1)
        assert s.events_between(lo, hi, a, b) == want
        keys = [k for k in s._keys if in_range(k, lo, hi or lo + b"\0")]
        if hi:
            assert list(s._merge_events(keys, a, b)) == want
            i = bisect_left(s._log_revs, a)
            assert list(s._log_events(lo, hi, i, bisect_right(s._log_revs, b))) == want


# --- the hub: delivery -----------------------------------------------------------------------


def test_live_events_of_a_single_key_and_unique_ids() -> None:
    log = Log()
    w = log.hub.watch(b"a")
    other = log.hub.watch(b"b")
    assert w.id != other.id
    r = log.put(b"a", b"1")
    log.put(b"c")
    resps = drain(w)
    assert resps == [WatchResponse(w.id, r, (Event(EventType.PUT, KeyValue(b"a", r, r, 1, b"1"), None),))]
    assert drain(other) == []
    assert w.next_revision == log.store.revision + 1


@pytest.mark.parametrize(
    ("key", "range_end", "want"),
    [
        (b"b", b"", [b"b"]),
        (b"b", b"d", [b"b", b"bb", b"c"]),
        (b"b", b"\0", [b"b", b"bb", b"c", b"d"]),
        (b"\0", b"\0", [b"a", b"b", b"bb", b"c", b"d"]),
    ],
)
def test_range_semantics(key: bytes, range_end: bytes, want: list[bytes]) -> None:
    log = Log()
    live = log.hub.watch(key, range_end)
    for k in (b"a", b"b", b"bb", b"c", b"d"):
        log.put(k)
    old = log.hub.watch(key, range_end, start_revision=1)
    assert [ev.kv.key for ev in events_of(drain(live))] == want
    assert [ev.kv.key for ev in events_of(drain(old))] == want


def test_prefix_end() -> None:
    assert prefix_end(b"abc") == b"abd"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


@pytest.mark.parametrize("txn", [False, True])
def test_prefix_watches_of_several_lengths(txn: bool) -> None:
    log = Log()
    prefixes = [b"a", b"ab", b"abc", b"b", b"a\xff", b"\xff"]
    ws = [log.hub.watch(p, prefix_end(p)) for p in prefixes]
    gone = log.hub.watch(b"zz", prefix_end(b"zz"))
    twin = log.hub.watch(b"ab", prefix_end(b"ab"), prev_kv=True)
    gone.cancel()
    keys = [b"a", b"ab", b"abc", b"abcd", b"abd", b"a\xff", b"a\xff\x01", b"b", b"ba", b"c", b"\xff", b"\xff\xff"]
    if txn:
        log.txn(*[RequestPut(k, k) for k in keys])
    else:
        for k in keys:
            log.put(k, k)
    for w, p in zip(ws, prefixes, strict=True):
        got = [ev.kv.key for ev in events_of(drain(w))]
        assert got == [k for k in keys if k.startswith(p)], p
    assert events_of(drain(twin)) == log.expected(b"ab", b"ac", prev_kv=True)
    assert log.hub._prefix_lens == [1, 2, 3]


def test_a_write_touching_many_keys_matches_range_watchers_by_sorted_index() -> None:
    log = Log()
    for i in range(40):
        log.put(b"k%02d" % i)
    ws = [log.hub.watch(b"k%02d" % i, b"k%02d" % (i + 7)) for i in range(0, 40, 5)]
    single = log.hub.watch(b"k13")
    log.delete(b"k", b"l")
    for w in [*ws, single]:
        assert events_of(drain(w)) == log.expected(w.key, w.range_end, log.store.revision)


def test_start_revision_zero_means_next_revision() -> None:
    log = Log()
    log.put(b"a", b"old")
    w = log.hub.watch(b"a")
    assert w.start_revision == log.store.revision + 1 == w.next_revision
    log.put(b"a", b"new")
    assert [ev.kv.value for ev in events_of(drain(w))] == [b"new"]


def test_catch_up_from_history_then_live_without_gap_or_duplicate() -> None:
    log = Log(max_response_events=2)
    for i in range(7):
        log.put(b"a", b"%d" % i)
    w = log.hub.watch(b"a", start_revision=3)
    assert not w.synced
    first = w.poll()
    assert first is not None and len(first.events) == 2 and first.revision == log.store.revision
    log.put(b"a", b"live1")  # arrives while the watcher is still reading history
    rest = drain(w)
    log.put(b"a", b"live2")
    rest += drain(w)
    got = events_of([first, *rest])
    assert got == log.expected(b"a", start=3)
    assert w.synced and revisions_whole([first, *rest])


def test_future_start_revision_waits_for_that_revision() -> None:
    log = Log()
    w = log.hub.watch(b"a", start_revision=4)
    assert log.put(b"a") == 2
    assert log.hub.progress([w.id]) == ()  # revision 2 is no resume point for a watch from 4
    assert log.put(b"a") == 3
    assert drain(w) == []
    assert log.put(b"a") == 4
    assert [ev.kv.mod_revision for ev in events_of(drain(w))] == [4]
    assert log.hub.progress([w.id]) == (w.id,)


def test_compacted_start_revision_is_canceled_with_the_oldest_available_revision() -> None:
    log = Log()
    for _ in range(5):
        log.put(b"a")
    log.delete(b"a")  # rev 7: a tombstone at the compacted revision, dropped by compaction
    log.store.compact(7)
    for start in (1, 6, 7):
        w = log.hub.watch(b"a", start_revision=start)
        resp = w.poll()
        assert resp == WatchResponse(w.id, 7, (), 8, True, CANCEL_REASON_COMPACTED)
        assert w.poll() is None and w.ended
        assert log.hub.get(w.id) is None
    # the advertised compact revision is served, so a client resuming from it is not canceled again
    ok = log.hub.watch(b"a", start_revision=8)
    log.put(b"a")
    assert [ev.kv.mod_revision for ev in events_of(drain(ok))] == [8]


def test_events_of_one_txn_are_never_split() -> None:
    log = Log(max_response_events=1, max_queue_events=1, max_response_bytes=1, max_queue_bytes=1)
    live = log.hub.watch(b"\0", b"\0")
    log.txn(RequestPut(b"a"), RequestPut(b"b"), RequestPut(b"c"))
    log.txn(RequestPut(b"d"), RequestPut(b"e"))
    hist = log.hub.watch(b"\0", b"\0", start_revision=1)
    for w in (live, hist):
        resps = drain(w)
        assert [len(r.events) for r in resps] == [3, 2]
        assert events_of(resps) == log.expected(b"\0", b"\0")


def test_lease_revoke_deletes_arrive_as_one_revision() -> None:
    log = Log()
    lease = log.store.lease_grant(0, 10).id
    log.put(b"x", lease=lease)
    log.put(b"y", lease=lease)
    w = log.hub.watch(b"\0", b"\0")
    log.record(log.store.lease_revoke(lease).events)
    (resp,) = drain(w)
    assert [(ev.type, ev.kv.key) for ev in resp.events] == [(EventType.DELETE, b"x"), (EventType.DELETE, b"y")]


@pytest.mark.parametrize("start", [0, 1])
def test_prev_kv_only_when_asked(start: int) -> None:
    log = Log()
    log.put(b"a", b"1")
    with_prev = log.hub.watch(b"a", prev_kv=True, start_revision=start)
    without = log.hub.watch(b"a", start_revision=start)
    log.put(b"a", b"2")
    log.delete(b"a")
    got = events_of(drain(with_prev))
    assert got == log.expected(b"a", start=start or 3, prev_kv=True)
    assert [ev.prev_kv.value if ev.prev_kv else None for ev in got][-2:] == [b"1", b"2"]
    assert all(ev.prev_kv is None for ev in events_of(drain(without)))


@pytest.mark.parametrize("filters", [frozenset({"NOPUT"}), frozenset({"NODELETE"}), frozenset({"NOPUT", "NODELETE"})])
@pytest.mark.parametrize("start", [0, 1])
def test_filters(filters: frozenset[str], start: int) -> None:
    log = Log()
    w = log.hub.watch(b"a", b"\0", filters=filters, start_revision=start)
    log.put(b"a")
    log.put(b"b")
    log.delete(b"a", b"c")
    assert events_of(drain(w)) == log.expected(b"a", b"\0", filters=filters)
    assert w.next_revision == log.store.revision + 1


async def test_a_filtered_catch_up_reads_history_in_bounded_steps() -> None:
    log = Log(max_scan_events=2)
    for i in range(10):
        log.put(b"a", b"%d" % i)
    log.delete(b"a")
    w = log.hub.watch(b"a", filters=frozenset({"NOPUT"}), start_revision=1)
    assert w.poll() is None and w.catching_up  # two puts read, nothing to send
    assert w.next_revision == 4
    resp = await asyncio.wait_for(w.next(), 1)
    assert resp is not None and events_of([resp]) == log.expected(b"a", filters=frozenset({"NOPUT"}))
    assert w.synced


def test_bad_watch_requests() -> None:
    hub = WatchHub(KVStore())
    with pytest.raises(EmptyKeyError):
        hub.watch(b"")
    with pytest.raises(InvalidArgumentError):
        hub.watch(b"b", b"a")
    with pytest.raises(InvalidArgumentError):
        hub.watch(b"a", start_revision=-1)
    with pytest.raises(InvalidArgumentError):
        hub.watch(b"a", filters=frozenset({"NOPE"}))
    with pytest.raises(ValueError):
        WatchHub(KVStore(), max_queue_events=0)
    assert len(hub) == 0


# --- slow watchers ---------------------------------------------------------------------------


def test_a_slow_watcher_is_bounded_and_does_not_hold_back_others() -> None:
    log = Log(max_queue_events=4, max_response_events=3)
    slow = log.hub.watch(b"k", b"l")
    fast = log.hub.watch(b"k", b"l")
    for i in range(100):
        log.put(b"k%d" % (i % 10), b"%d" % i)
        assert len(drain(fast)) == 1
        assert slow._queued_events <= 4
    assert not slow.synced and fast.synced
    stats = log.hub.stats()
    assert (stats.watchers, stats.unsynced, stats.queued_events) == (2, 1, 4)
    resps = drain(slow)
    assert events_of(resps) == log.expected(b"k", b"l")
    assert revisions_whole(resps)
    assert max(len(r.events) for r in resps) <= 3
    assert slow.synced and log.hub.stats().unsynced == 0


def test_a_byte_bound_sends_a_watcher_to_history_too() -> None:
    log = Log(max_queue_bytes=1000)
    w = log.hub.watch(b"a")
    log.put(b"a", b"x" * 600)
    log.put(b"a", b"y" * 600)
    assert not w.synced and w._queued_bytes < 1000
    assert events_of(drain(w)) == log.expected(b"a")


def test_a_slow_watcher_is_canceled_when_its_next_revision_is_compacted() -> None:
    log = Log(max_queue_events=2)
    w = log.hub.watch(b"a")
    for _ in range(6):
        log.put(b"a")
    assert not w.synced
    log.store.compact(log.store.revision - 1)
    resps = drain(w)
    assert resps[-1].canceled and resps[-1].compact_revision == log.store.compact_revision + 1
    assert events_of(resps[:-1]) == log.expected(b"a", until=w.next_revision)
    assert w.next_revision <= log.store.compact_revision
    assert w.ended and log.hub.stats().watchers == 0


def test_resuming_from_next_revision_gets_exactly_the_rest() -> None:
    log = Log(max_queue_events=3, max_response_events=2)
    w = log.hub.watch(b"a", b"c", start_revision=1)
    for i in range(10):
        log.put(b"ab"[i % 2 : i % 2 + 1], b"%d" % i)
    first, second = w.poll(), w.poll()
    assert first is not None and second is not None
    seen = events_of([first, second])
    resume = w.next_revision
    assert resume == seen[-1].kv.mod_revision + 1
    w.cancel()
    assert w.poll() is None
    log.put(b"b", b"more")
    again = log.hub.watch(b"a", b"c", start_revision=resume)
    assert seen + events_of(drain(again)) == log.expected(b"a", b"c")


# --- listeners and shared responses ----------------------------------------------------------


def test_a_listener_is_told_of_each_response_and_poll_takes_them_in_order() -> None:
    log = Log()
    w = log.hub.watch(b"a", b"c")
    told: list[int] = []
    w.set_listener(lambda: told.append(len(told)))
    revs = [log.put(b"a"), log.put(b"b"), log.put(b"z")]
    assert len(told) == 2  # b"z" is outside the range
    assert [r.revision for r in drain(w)] == revs[:2]
    w.cancel()
    assert len(told) == 3 and w.ended and w.poll() is None


def test_a_listener_is_told_when_its_watcher_falls_back_to_history() -> None:
    log = Log(max_queue_events=2)
    w = log.hub.watch(b"a")
    told: list[None] = []
    w.set_listener(lambda: told.append(None))
    for _ in range(3):
        log.put(b"a")
    assert not w.synced and len(told) == 3  # two responses queued, then the fall back
    assert events_of(drain(w)) == log.expected(b"a")
    log.hub.resync()
    assert len(told) >= 4
    w.set_listener(None)
    log.put(b"a")
    assert len(told) >= 4 and len(drain(w)) == 1


def test_watchers_with_the_same_options_share_one_events_tuple() -> None:
    log = Log()
    a = log.hub.watch(b"k", prefix_end(b"k"))
    b = log.hub.watch(b"k", prefix_end(b"k"))
    with_prev = log.hub.watch(b"k", prefix_end(b"k"), prev_kv=True)
    no_put = log.hub.watch(b"k", prefix_end(b"k"), filters=frozenset({"NOPUT"}))
    log.put(b"k1", b"one")
    log.put(b"k1", b"two")
    ra, rb, rp = drain(a), drain(b), drain(with_prev)
    assert [r.events for r in ra] == [r.events for r in rb] == [tuple(map(strip, r.events)) for r in rp]
    assert all(x.events is y.events for x, y in zip(ra, rb, strict=True))
    assert rp[1].events[0].prev_kv is not None and rp[1].events[0].prev_kv.value == b"one"
    assert ra[1].events[0].prev_kv is None
    assert drain(no_put) == []
    assert {r.watch_id for r in ra} == {a.id} and {r.watch_id for r in rb} == {b.id}


def test_a_progress_after_a_queued_live_write_comes_after_it() -> None:
    """A live write's queue item is shared by its watchers; a progress response queued behind it is the
    watcher's own, and each watcher still reads its own responses, in order."""
    log = Log()
    a = log.hub.watch(b"k", prefix_end(b"k"), progress_notify=True)
    b = log.hub.watch(b"k", prefix_end(b"k"), progress_notify=True)
    log.put(b"k1", b"one")
    assert sorted(log.hub.progress()) == sorted([a.id, b.id])
    assert sorted(log.hub.progress()) == sorted([a.id, b.id])  # replaces the last progress, not the write
    for w in (a, b):
        got = drain(w)
        assert [(r.watch_id, len(r.events)) for r in got] == [(w.id, 1), (w.id, 0)]
        assert got[0].revision == got[1].revision


def test_a_live_response_is_the_constructed_one() -> None:
    from dataclasses import FrozenInstanceError

    from kvdisco.mvcc.watch import _live_response

    ev = Event(EventType.PUT, KeyValue(b"a", 2, 2, 1, b"v"), None)
    fast = _live_response(7, 2, (ev,), 1.5)
    assert fast == WatchResponse(7, 2, (ev,), made_at=1.5)
    assert (fast.made_at, fast.compact_revision, fast.canceled, fast.cancel_reason) == (1.5, 0, False, "")
    assert hash(fast) == hash(WatchResponse(7, 2, (ev,)))
    with pytest.raises(FrozenInstanceError):
        fast.revision = 3  # type: ignore[misc]


# --- progress, resync, notify oddities -------------------------------------------------------


def test_progress_goes_to_synced_watchers_only() -> None:
    log = Log(max_queue_events=1)
    asked = log.hub.watch(b"a", progress_notify=True)
    quiet = log.hub.watch(b"a")
    behind = log.hub.watch(b"b", progress_notify=True, start_revision=1)
    log.put(b"b")
    assert log.hub.progress() == (asked.id,)
    assert log.hub.progress() == (asked.id,)  # updates the waiting one instead of piling up
    assert drain(asked) == [WatchResponse(asked.id, log.store.revision)]
    assert drain(asked) == []
    assert log.hub.progress([quiet.id, behind.id, 999]) == (quiet.id,)
    assert drain(quiet)[0].is_progress_notify
    assert len(drain(behind)) == 1
    assert log.hub.progress([behind.id]) == (behind.id,)


def test_progress_revision_is_a_safe_resume_point() -> None:
    log = Log()
    w = log.hub.watch(b"a", progress_notify=True)
    log.put(b"a")
    log.put(b"zz")
    log.hub.progress()
    resps = drain(w)
    assert resps[-1].is_progress_notify and resps[-1].revision == log.store.revision
    assert w.next_revision == resps[-1].revision + 1


def test_resync_after_restore_continues_from_each_watchers_revision() -> None:
    log = Log()
    synced = log.hub.watch(b"a", prev_kv=True)
    log.put(b"a", b"1")
    seen = events_of(drain(synced))
    # a snapshot brings the store forward without notify
    for i in range(3):
        log.put(b"a", b"s%d" % i, notify=False)
    fresh = KVStore(Lessor(1))
    fresh.restore(log.store.snapshot())
    log.store.restore(fresh.snapshot())
    log.hub.resync()
    log.put(b"a", b"after")
    assert seen + events_of(drain(synced)) == log.expected(b"a", prev_kv=True)


def test_resync_cancels_watchers_whose_revision_the_snapshot_compacted() -> None:
    log = Log()
    w = log.hub.watch(b"a")
    log.put(b"a", notify=False)
    log.put(b"a", notify=False)
    log.store.compact(log.store.revision)
    log.store.restore(log.store.snapshot())
    log.hub.resync()
    (resp,) = drain(w)
    assert resp.canceled and resp.compact_revision == log.store.revision + 1


def test_resync_does_not_cancel_a_synced_watcher_that_saw_no_events() -> None:
    log = Log()
    w = log.hub.watch(b"a")
    for _ in range(5):
        log.put(b"other")
    log.store.compact(log.store.revision)
    log.put(b"other", notify=False)
    log.store.restore(log.store.snapshot())
    log.hub.resync()
    assert drain(w) == [] and w.synced
    log.put(b"a")
    assert events_of(drain(w)) == log.expected(b"a")


def test_notify_ignores_old_revisions_and_repairs_a_skipped_one() -> None:
    log = Log()
    w = log.hub.watch(b"a")
    log.put(b"a", b"1", notify=False)  # its notify never comes
    log.put(b"a", b"2")
    log.hub.notify(2, log.events[0][1])  # late: ignored
    assert events_of(drain(w)) == log.expected(b"a")


# --- async consumers, cancel, close ----------------------------------------------------------


async def test_async_iteration_receives_writes_made_while_it_waits() -> None:
    log = Log()
    w = log.hub.watch(b"a")
    got: list[WatchResponse] = []

    async def consume() -> None:
        async for resp in w:
            got.append(resp)
            if len(got) == 3:
                w.cancel()

    task = asyncio.create_task(consume())
    for i in range(3):
        await asyncio.sleep(0)
        log.put(b"a", b"%d" % i)
    await asyncio.wait_for(task, 1)
    assert events_of(got) == log.expected(b"a")
    assert await w.next() is None


async def test_cancel_and_close_wake_waiting_consumers() -> None:
    log = Log()
    a, b = log.hub.watch(b"a"), log.hub.watch(b"b")
    ta, tb = asyncio.create_task(a.next()), asyncio.create_task(b.next())
    await asyncio.sleep(0)
    assert log.hub.cancel(a.id) and not log.hub.cancel(a.id)
    log.put(b"b")
    resp = await asyncio.wait_for(tb, 1)
    assert resp is not None and resp.events
    tb = asyncio.create_task(b.next())
    await asyncio.sleep(0)
    log.hub.close()
    assert await asyncio.wait_for(ta, 1) is None
    assert await asyncio.wait_for(tb, 1) is None
    assert log.hub.closed and len(log.hub) == 0
    with pytest.raises(RuntimeError):
        log.hub.watch(b"a")


async def test_a_waiting_consumer_of_a_resynced_watcher_reads_history() -> None:
    log = Log()
    w = log.hub.watch(b"a")
    task = asyncio.create_task(w.next())
    await asyncio.sleep(0)
    log.put(b"a", notify=False)
    log.hub.resync()
    resp = await asyncio.wait_for(task, 1)
    assert resp is not None and events_of([resp]) == log.expected(b"a")


# --- the property: every watcher's stream is exactly the write log from its start ------------

KEYS = [b"a", b"b", b"c", b"d"]
keys_st = st.sampled_from(KEYS)
ranges_st = st.sampled_from([(b"a", b""), (b"b", b""), (b"a", b"c"), (b"b", b"\0"), (b"\0", b"\0"), (b"c", b"d")])

put_st = st.tuples(st.just("put"), keys_st, st.booleans())
txn_st = st.tuples(st.just("txn"), st.lists(keys_st, min_size=1, max_size=3, unique=True), keys_st)
watch_st = st.tuples(
    st.just("watch"),
    ranges_st,
    st.integers(-8, 3),
    st.booleans(),
    st.sampled_from([frozenset(), frozenset({"NOPUT"}), frozenset({"NODELETE"})]),
)
drain_st = st.tuples(st.just("drain"), st.integers(0, 20), st.integers(0, 3))
ops_st = st.lists(
    st.one_of(
        put_st,
        put_st,
        txn_st,
        watch_st,
        drain_st,
        st.tuples(st.just("delete"), ranges_st),
        st.tuples(st.just("compact"), st.integers(0, 6)),
        st.tuples(st.just("lease")),
        st.tuples(st.just("revoke")),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("progress")),
        st.tuples(st.just("restore"), st.integers(0, 3)),
    ),
    min_size=10,
    max_size=80,
)


@dataclass
class Tracked:
    w: Watcher
    key: bytes
    range_end: bytes
    start: int
    prev_kv: bool
    filters: frozenset[str]
    resps: list[WatchResponse] = field(default_factory=list)
    canceled_by_user: bool = False
    #: The store revision when the consumer last found nothing to read: all before it was delivered.
    caught_up_to: int = 0


def take(log: Log, t: Tracked, n: int) -> None:
    for _ in range(n):
        resp = t.w.poll()
        if resp is None:
            if t.w.catching_up:
                continue
            t.caught_up_to = log.store.revision
            return
        assert resp.watch_id == t.w.id
        assert resp.revision <= log.store.revision
        assert all(ev.kv.mod_revision <= resp.revision for ev in resp.events)
        if resp.canceled:
            # canceled exactly when the next needed revision is gone
            assert t.w.next_revision <= log.store.compact_revision
            assert resp.compact_revision == log.store.compact_revision + 1
            assert t.caught_up_to < log.store.compact_revision
        t.resps.append(resp)


def check(log: Log, t: Tracked) -> None:
    resps = t.resps
    assert revisions_whole(resps)
    assert not any(r.canceled for r in resps[:-1])
    got = events_of(resps)
    if resps and resps[-1].canceled:
        until = t.w.next_revision
        assert got == log.expected(t.key, t.range_end, t.start, t.prev_kv, t.filters, until=until)
    elif t.canceled_by_user:
        assert got == log.expected(t.key, t.range_end, t.start, t.prev_kv, t.filters, until=t.w.next_revision)
    else:
        assert got == log.expected(t.key, t.range_end, t.start, t.prev_kv, t.filters)
        assert t.w.next_revision == max(t.start, log.store.revision + 1)
    for i, r in enumerate(resps):
        if r.is_progress_notify:
            # everything up to a progress revision was delivered before it
            before = events_of(resps[:i])
            want = log.expected(t.key, t.range_end, t.start, t.prev_kv, t.filters, until=r.revision + 1)
            assert before == want


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops_st,
    q_events=st.integers(1, 4),
    r_events=st.integers(1, 3),
    q_bytes=st.sampled_from([1, 500, 1 << 20]),
    scan=st.integers(1, 4),
)
def test_every_stream_is_the_write_log_from_its_start(
    ops: list[tuple[object, ...]], q_events: int, r_events: int, q_bytes: int, scan: int
) -> None:
    log = Log(max_queue_events=q_events, max_response_events=r_events, max_queue_bytes=q_bytes, max_scan_events=scan)
    store = log.store
    tracked: list[Tracked] = []
    leases: list[int] = []
    for op in ops:
        kind = op[0]
        try:
            if kind == "put":
                _, key, with_lease = op
                assert isinstance(key, bytes)
                log.put(key, b"v%d" % store.revision, lease=leases[-1] if with_lease and leases else 0)
            elif kind == "delete":
                lo, hi = op[1]  # type: ignore[misc]
                log.delete(lo, hi)
            elif kind == "txn":
                _, puts, dele = op
                assert isinstance(puts, list) and isinstance(dele, bytes)
                ops_: list[RequestPut | RequestDeleteRange] = [RequestPut(k, b"t") for k in puts]
                if dele not in puts:
                    ops_.append(RequestDeleteRange(dele))
                log.txn(*ops_)
            elif kind == "compact":
                gap = op[1]
                assert isinstance(gap, int)
                target = store.revision - gap
                if target > store.compact_revision:
                    store.compact(target)
            elif kind == "lease":
                leases.append(store.lease_grant(0, 10).id)
            elif kind == "revoke" and leases:
                log.record(store.lease_revoke(leases.pop(0)).events)
            elif kind == "watch":
                _, (lo, hi), rel, prev, filters = op  # type: ignore[misc]
                start = 0 if rel == 3 else max(1, store.revision + 1 + rel)
                w = log.hub.watch(lo, hi, start_revision=start, prev_kv=prev, filters=filters)
                tracked.append(Tracked(w, lo, hi, w.start_revision, prev, filters))
            elif kind == "drain" and tracked:
                _, i, n = op
                assert isinstance(i, int) and isinstance(n, int)
                take(log, tracked[i % len(tracked)], n)
            elif kind == "cancel" and tracked:
                t = tracked[op[1] % len(tracked)]  # type: ignore[operator]
                if not t.w.ended:
                    t.canceled_by_user = not (t.resps and t.resps[-1].canceled)
                    t.w.cancel()
            elif kind == "progress":
                log.hub.progress()
                log.hub.progress([t.w.id for t in tracked])
            elif kind == "restore":
                for _ in range(op[1]):  # type: ignore[call-overload]
                    log.put(KEYS[store.revision % 4], b"r", notify=False)
                copy = KVStore(Lessor(1))
                copy.restore(store.snapshot())
                store.restore(copy.snapshot())
                log.hub.resync()
        except MvccError:
            pass
        for t in tracked:
            # a queue holds at most its bound, or a single response that alone exceeds it
            queued = [item.events for item in t.w._queue]
            assert sum(queued) <= max(q_events, queued[0] if queued else 0)
    for t in tracked:
        take(log, t, 10_000)
        check(log, t)
        assert t.w.ended or t.w.synced
    stats = log.hub.stats()
    assert stats.unsynced == 0 and stats.queued_events == 0
