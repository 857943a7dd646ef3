"""The watch hub: etcd v3 watches over the revisioned store, with bounded memory per watcher.

Why it looks like this
----------------------
A watch must deliver every change of its key range from its start revision, in revision order,
with no gap and no duplicate, and a write transaction's events together in one response. The
apply loop must never wait for a watcher, and a watcher whose client stopped reading must not
make memory grow or slow anyone else. The design is etcd's synced/unsynced watcher groups,
driven only by calls (no timers, no background tasks), so it is deterministic to test:

* The apply loop calls :meth:`WatchHub.notify` after every write that produced events. Each
  *synced* watcher (one that has queued everything up to the last notified revision) whose
  range holds an event gets that revision's matching events appended to its queue as one
  response. Matching costs a dict lookup per event for single-key watchers and a range check
  per range watcher (with a sorted index of the events when a write has many), so a write
  costs nothing for the many single-key watchers it does not touch.
* Each watcher's queue is bounded (``max_queue_events`` and ``max_queue_bytes``). A live
  response that would overflow a non-empty queue is not queued: the watcher becomes
  *unsynced* and stops receiving live events. Its memory is then bounded by its queue, however
  long its client does not read. (A response is always accepted by an empty queue: a revision
  is never split, so one revision may alone exceed the bounds.)
* When the consumer of an unsynced watcher finds its queue empty, the watcher reads the next
  chunk from store history (:meth:`KVStore.iter_events`) starting at its cursor, bounded by
  ``max_response_events`` / ``max_response_bytes`` but ending on a revision boundary, and when
  it reaches the last notified revision it is synced again. History is read only up to the last
  notified revision, and live events are taken only above it, so the seam between catch-up and
  live delivery has no gap and no duplicate even if the store has applied a write whose
  ``notify`` has not come yet.
* A new watcher starts unsynced at its start revision, or synced when that is the next revision
  (or a future one: etcd allows that, events arrive once the revision is reached).
* Compaction is checked lazily, when an unsynced watcher reads history: if its cursor is at or
  below the store's compacted revision, its last response is a cancel carrying
  ``compact_revision``. There is no ``compacted()`` call; a synced watcher is never affected by
  compaction (its cursor is above the store revision).
* :meth:`WatchHub.resync` after a snapshot restore makes every watcher continue from its own
  cursor through history (or be canceled as compacted).
* :meth:`WatchHub.progress` (called by the server's timer, or for a client's request) queues an
  empty response whose revision is a safe resume point, to synced watchers only; a progress
  response waiting at the end of a queue is updated rather than repeated, so it cannot pile up.

Compaction, exactly
-------------------
etcd cancels a watcher when ``start_revision < compactRev`` and reports ``compactRev``. This
store's compaction at ``C`` drops the tombstones at ``C`` and the history entries before the
kept one, so the events *of* revision ``C`` can no longer be rebuilt: a watcher from ``C``
would silently miss deletes at ``C`` (as it can in etcd). Here a watcher whose next revision is
``<= C`` is canceled, with ``compact_revision = C + 1``: the oldest revision from which a new
watcher is served completely (``CompactedError`` messages keep etcd's text). A client that
resumes from ``compact_revision`` is thus never canceled again for the same compaction.

Not done here: the "created" acknowledgement (the server sends it when :meth:`WatchHub.watch`
returns, with :attr:`Watcher.id`), fragmenting large responses, and client-chosen watch ids.
"""

from __future__ import annotations

import asyncio
import itertools
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from kvdisco.mvcc.errors import CompactedError, EmptyKeyError, InvalidArgumentError
from kvdisco.mvcc.kvstore import Event, EventType, KVStore

__all__ = [
    "CANCEL_REASON_COMPACTED",
    "FILTER_NODELETE",
    "FILTER_NOPUT",
    "WatchHub",
    "WatchResponse",
    "WatchStats",
    "Watcher",
]

FILTER_NOPUT = "NOPUT"
FILTER_NODELETE = "NODELETE"
_FILTERS = frozenset({FILTER_NOPUT, FILTER_NODELETE})

#: etcd's cancel reason for a watcher whose next revision was compacted away.
CANCEL_REASON_COMPACTED = CompactedError.default_message

#: Rough per-event overhead in bytes (objects, pointers) added to key and value lengths.
_EVENT_OVERHEAD_BYTES = 200

#: A write with more events than this gets a sorted key index for matching range watchers.
_SORTED_MATCH_MIN_EVENTS = 16


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One response of one watcher, as etcd's ``WatchResponse`` minus the header's other fields.

    * Events: ``events`` non-empty, all revisions complete (a revision is never split), in
      order; ``revision`` is the store revision when the response was made (at least the last
      event's). Resume from the last event's ``mod_revision + 1``.
    * Progress: ``events`` empty and not canceled; everything up to ``revision`` was delivered,
      so ``revision + 1`` is a safe resume point.
    * Cancel: ``canceled`` with ``cancel_reason``; after a compaction ``compact_revision`` is
      the oldest revision a new watcher can start from. It is the watcher's last response.
    """

    watch_id: int
    revision: int
    events: tuple[Event, ...] = ()
    compact_revision: int = 0
    canceled: bool = False
    cancel_reason: str = ""

    @property
    def is_progress_notify(self) -> bool:
        return not self.events and not self.canceled


@dataclass(frozen=True, slots=True)
class WatchStats:
    watchers: int
    unsynced: int
    #: Events and approximate bytes waiting in all watchers' queues.
    queued_events: int
    queued_bytes: int


@dataclass(slots=True)
class _Item:
    resp: WatchResponse
    #: The watcher's cursor before this response: the resume point while it is undelivered.
    first_rev: int
    events: int
    nbytes: int


def _event_bytes(ev: Event) -> int:
    n = _EVENT_OVERHEAD_BYTES + len(ev.kv.key) + len(ev.kv.value)
    if ev.prev_kv is not None:
        n += len(ev.prev_kv.key) + len(ev.prev_kv.value)
    return n


def _strip(ev: Event) -> Event:
    return ev if ev.prev_kv is None else Event(ev.type, ev.kv, None)


class Watcher:
    """One watch. Read it with ``async for resp in watcher`` or ``await watcher.next()``.

    Made by :meth:`WatchHub.watch` only. One consumer at a time is expected.
    """

    def __init__(
        self,
        hub: WatchHub,
        watch_id: int,
        key: bytes,
        range_end: bytes,
        start_rev: int,
        prev_kv: bool,
        filters: frozenset[str],
        progress_notify: bool,
    ) -> None:
        self._hub = hub
        self.id = watch_id
        self.key = key
        self.range_end = range_end
        self.start_revision = start_rev
        self.prev_kv = prev_kv
        self.filters = filters
        self.progress_notify = progress_notify
        self._no_put = FILTER_NOPUT in filters
        self._no_delete = FILTER_NODELETE in filters
        # Unsynced: every revision below _cursor is queued or delivered, and history from
        # _cursor on is still to read. Synced: the same holds for max(_cursor, hub's notified
        # revision + 1), and live events come from notify (_cursor above that: a future start).
        self._cursor = start_rev
        self._synced = False
        #: Removed from the hub; what is left in the queue is still delivered.
        self._done = False
        self._queue: deque[_Item] = deque()
        self._queued_events = 0
        self._queued_bytes = 0
        self._wake = asyncio.Event()

    # --- consumer side -------------------------------------------------------------------

    @property
    def next_revision(self) -> int:
        """The revision the watcher delivers from next: where a client that has read every
        response so far would resume. Revisions before it were all delivered."""
        if self._queue:
            return self._queue[0].first_rev
        if self._synced:
            return max(self._cursor, self._hub.notified_revision + 1)
        return self._cursor

    @property
    def synced(self) -> bool:
        return self._synced and not self._done

    @property
    def ended(self) -> bool:
        """Canceled, closed, or compacted with its cancel response already taken."""
        return self._done and not self._queue

    def poll(self) -> WatchResponse | None:
        """The next response if one is ready now (reading history when unsynced), else None."""
        while True:
            if self._queue:
                item = self._queue.popleft()
                self._queued_events -= item.events
                self._queued_bytes -= item.nbytes
                return item.resp
            if self._done or self._synced:
                return None
            self._hub._catch_up(self)  # queues a response, ends the watcher or syncs it

    async def next(self) -> WatchResponse | None:
        """The next response, waiting for one; None once the watcher has ended."""
        while True:
            resp = self.poll()
            if resp is not None:
                return resp
            if self._done:
                return None
            self._wake.clear()
            await self._wake.wait()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchResponse:
        resp = await self.next()
        if resp is None:
            raise StopAsyncIteration
        return resp

    def cancel(self) -> None:
        """Stop now: queued responses are dropped and iteration ends."""
        self._hub._remove(self)
        self._clear()
        self._wake.set()

    # --- hub side --------------------------------------------------------------------------

    def _clear(self) -> None:
        self._queue.clear()
        self._queued_events = self._queued_bytes = 0

    def _matches(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        return self.key <= key and (self.range_end == b"\0" or key < self.range_end)

    def _wants(self, ev: Event) -> bool:
        return not (self._no_put if ev.type == EventType.PUT else self._no_delete)

    def _push(self, resp: WatchResponse, first_rev: int, nbytes: int) -> None:
        self._queue.append(_Item(resp, first_rev, len(resp.events), nbytes))
        self._queued_events += len(resp.events)
        self._queued_bytes += nbytes
        self._wake.set()

    def _fits(self, events: int, nbytes: int) -> bool:
        hub = self._hub
        return not self._queue or (
            self._queued_events + events <= hub.max_queue_events and self._queued_bytes + nbytes <= hub.max_queue_bytes
        )


class WatchHub:
    """All watchers of one store. Not thread-safe: call it from the event loop's thread."""

    def __init__(
        self,
        store: KVStore,
        *,
        max_queue_events: int = 1024,
        max_queue_bytes: int = 1 << 20,
        max_response_events: int = 256,
        max_response_bytes: int = 128 << 10,
    ) -> None:
        """``max_queue_*`` bound what a watcher holds for its consumer before it falls back to
        reading history; ``max_response_*`` bound one catch-up response from history. Both are
        exceeded only by a single revision that alone is larger (revisions are never split)."""
        if min(max_queue_events, max_queue_bytes, max_response_events, max_response_bytes) < 1:
            raise ValueError("watch hub limits must be positive")
        self.store = store
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.max_response_events = max_response_events
        self.max_response_bytes = max_response_bytes
        self._ids = itertools.count(1)
        self._watchers: dict[int, Watcher] = {}
        self._by_key: dict[bytes, dict[int, Watcher]] = {}
        self._ranges: dict[int, Watcher] = {}
        self._unsynced: dict[int, Watcher] = {}
        self._notified = store.revision
        self._closed = False

    @property
    def notified_revision(self) -> int:
        """The last revision whose events were handed to :meth:`notify` (or read at a resync)."""
        return self._notified

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._watchers)

    def get(self, watch_id: int) -> Watcher | None:
        return self._watchers.get(watch_id)

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[str] = frozenset(),
        progress_notify: bool = False,
    ) -> Watcher:
        """Watch ``key`` (``range_end`` as for ``KVStore.range``) from ``start_revision``, inclusive.

        0 means the next revision (store revision + 1). A future revision is allowed. A start
        revision at or below the compacted revision gives a watcher whose only response is a
        compaction cancel. ``filters`` may hold ``"NOPUT"`` and ``"NODELETE"``.
        """
        if self._closed:
            raise RuntimeError("watch hub is closed")
        if not key:
            raise EmptyKeyError()
        if range_end and range_end != b"\0" and range_end <= key:
            raise InvalidArgumentError("mvcc: watcher range is empty")
        if start_revision < 0:
            raise InvalidArgumentError("etcdserver: start revision must not be negative")
        filter_set = frozenset(filters)
        if not filter_set <= _FILTERS:
            raise InvalidArgumentError(f"etcdserver: unknown watch filter in {sorted(filter_set)!r}")
        start = start_revision or self.store.revision + 1
        w = Watcher(self, next(self._ids), key, range_end, start, prev_kv, filter_set, progress_notify)
        self._watchers[w.id] = w
        if range_end:
            self._ranges[w.id] = w
        else:
            self._by_key.setdefault(key, {})[w.id] = w
        if start > self._notified:
            w._synced = True
        else:
            self._unsynced[w.id] = w
        return w

    def cancel(self, watch_id: int) -> bool:
        """Cancel a watcher by id; False when there is none."""
        w = self._watchers.get(watch_id)
        if w is None:
            return False
        w.cancel()
        return True

    def notify(self, revision: int, events: tuple[Event, ...]) -> None:
        """Deliver the events of the write that made ``revision`` (all of them, in apply order).

        Cost: the single-key watchers of the events' keys, plus a check per range watcher. A
        revision at or below the last notified one is ignored; one that skips revisions (a
        missed notify) sends the synced watchers that needed them to history.
        """
        if revision <= self._notified or self._closed:
            return
        if revision > self._notified + 1:
            for w in list(self._watchers.values()):
                if w._synced and max(w._cursor, self._notified + 1) < revision:
                    self._unsync(w, max(w._cursor, self._notified + 1))
        self._notified = revision
        if not events:
            return
        matched: dict[int, tuple[Watcher, list[Event]]] = {}
        by_key = self._by_key
        if by_key:
            for ev in events:
                ws = by_key.get(ev.kv.key)
                if ws:
                    for w in ws.values():
                        entry = matched.get(w.id)
                        if entry is None:
                            matched[w.id] = (w, [ev])
                        else:
                            entry[1].append(ev)
        if self._ranges:
            self._match_ranges(events, matched)
        stripped: dict[int, Event] = {}
        for w, evs in matched.values():
            if not w._synced or revision < w._cursor:
                continue
            out: list[Event] = []
            nbytes = 0
            for ev in evs:
                if not w._wants(ev):
                    continue
                if not w.prev_kv and ev.prev_kv is not None:
                    s = stripped.get(id(ev))
                    if s is None:
                        s = stripped[id(ev)] = _strip(ev)
                    ev = s
                out.append(ev)
                nbytes += _event_bytes(ev)
            if not out:
                w._cursor = revision + 1
            elif w._fits(len(out), nbytes):
                w._push(WatchResponse(w.id, revision, tuple(out)), revision, nbytes)
                w._cursor = revision + 1
            else:
                self._unsync(w, revision)

    def progress(self, watch_ids: Iterable[int] | None = None) -> tuple[int, ...]:
        """Queue a progress response (no events, ``revision`` = last notified revision).

        Without ids: to the synced watchers that asked for ``progress_notify`` (the server's
        timer). With ids: to those of the given watchers that are synced (a client's request).
        A watcher that is catching up, or whose start is in the future, gets none: its
        revision would not be a safe resume point. Returns the ids that got one.
        """
        rev = self._notified
        if watch_ids is None:
            targets = [w for w in self._watchers.values() if w.progress_notify]
        else:
            targets = [w for i in watch_ids if (w := self._watchers.get(i)) is not None]
        sent: list[int] = []
        for w in targets:
            if not w._synced or w._cursor > rev + 1:
                continue
            resp = WatchResponse(w.id, rev)
            if w._queue and w._queue[-1].resp.is_progress_notify:
                w._queue[-1] = _Item(resp, rev + 1, 0, 0)
            else:
                w._push(resp, rev + 1, 0)
            sent.append(w.id)
        return tuple(sent)

    def resync(self) -> None:
        """The store was replaced (snapshot restore): every watcher continues from its own
        next revision through store history, or is canceled if that was compacted."""
        old = self._notified
        self._notified = self.store.revision
        for w in list(self._watchers.values()):
            cursor = max(w._cursor, old + 1) if w._synced else w._cursor
            if cursor > self._notified:
                w._cursor = cursor
                w._synced = True
                self._unsynced.pop(w.id, None)
            else:
                self._unsync(w, cursor)
            w._wake.set()

    def close(self) -> None:
        """Cancel every watcher; later ``watch`` calls fail."""
        self._closed = True
        for w in list(self._watchers.values()):
            w.cancel()

    def stats(self) -> WatchStats:
        ws = self._watchers.values()
        return WatchStats(
            len(self._watchers),
            len(self._unsynced),
            sum(w._queued_events for w in ws),
            sum(w._queued_bytes for w in ws),
        )

    # --- internals ---------------------------------------------------------------------

    def _match_ranges(self, events: tuple[Event, ...], matched: dict[int, tuple[Watcher, list[Event]]]) -> None:
        if len(events) < _SORTED_MATCH_MIN_EVENTS:
            for w in self._ranges.values():
                if not w._synced:
                    continue
                evs = [ev for ev in events if w._matches(ev.kv.key)]
                if evs:
                    matched[w.id] = (w, evs)
            return
        order = sorted(range(len(events)), key=lambda i: events[i].kv.key)
        keys = [events[i].kv.key for i in order]
        for w in self._ranges.values():
            if not w._synced:
                continue
            lo = bisect_left(keys, w.key)
            hi = len(keys) if w.range_end == b"\0" else bisect_left(keys, w.range_end)
            if lo < hi:
                matched[w.id] = (w, [events[i] for i in sorted(order[lo:hi])])

    def _unsync(self, w: Watcher, cursor: int) -> None:
        w._cursor = cursor
        w._synced = False
        self._unsynced[w.id] = w
        w._wake.set()

    def _remove(self, w: Watcher) -> None:
        if w._done:
            return
        w._done = True
        w._synced = False
        self._watchers.pop(w.id, None)
        self._unsynced.pop(w.id, None)
        if w.range_end:
            self._ranges.pop(w.id, None)
        else:
            ws = self._by_key.get(w.key)
            if ws is not None:
                ws.pop(w.id, None)
                if not ws:
                    del self._by_key[w.key]

    def _catch_up(self, w: Watcher) -> None:
        """Queue the next chunk of history for an unsynced watcher with an empty queue, or sync
        it when there is none, or cancel it when its cursor was compacted."""
        store, end = self.store, self._notified
        if w._cursor > end:
            w._synced = True
            self._unsynced.pop(w.id, None)
            return
        if w._cursor <= store.compact_revision:
            compact = store.compact_revision + 1
            self._remove(w)
            resp = WatchResponse(w.id, end, (), compact, True, CANCEL_REASON_COMPACTED)
            w._push(resp, w._cursor, 0)
            return
        out: list[Event] = []
        nbytes = 0
        last_rev = 0
        next_rev = end + 1
        for ev in store.iter_events(w.key, w.range_end, w._cursor, end):
            rev = ev.kv.mod_revision
            if rev != last_rev:
                if len(out) >= self.max_response_events or nbytes >= self.max_response_bytes:
                    next_rev = rev
                    break
                last_rev = rev
            if not w._wants(ev):
                continue
            if not w.prev_kv:
                ev = _strip(ev)
            out.append(ev)
            nbytes += _event_bytes(ev)
        first = w._cursor
        w._cursor = next_rev
        if out:
            w._push(WatchResponse(w.id, end, tuple(out)), first, nbytes)
        if next_rev > end:
            w._synced = True
            self._unsynced.pop(w.id, None)
