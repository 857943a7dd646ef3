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
  response. Watchers with the same key and range are matched as one group. Per event, finding
  them costs a dict lookup for single-key watches, one lookup per distinct prefix length for
  prefix watches (``range_end == prefix_end(key)``, the usual range watch), and a comparison
  per distinct other range (from-key, all keys, arbitrary ranges; with a sorted index of the
  events when one write has many). So a write costs nothing for watchers it does not touch,
  however many single-key and prefix watchers there are. The watchers of a group with the same
  options share one events tuple, so a server encodes it once for all of them.
* A consumer either waits in :meth:`Watcher.next` or, serving many watchers, registers a
  listener (:meth:`Watcher.set_listener`) that the hub calls when a watcher may have something
  for it, and takes responses with :meth:`Watcher.poll`: no task per watcher.
* Each watcher's queue is bounded (``max_queue_events`` and ``max_queue_bytes``). A live
  response that would overflow a non-empty queue is not queued: the watcher becomes
  *unsynced* and stops receiving live events. Its memory is then bounded by its queue, however
  long its client does not read. (A response is always accepted by an empty queue: a revision
  is never split, so one revision may alone exceed the bounds.)
* When the consumer of an unsynced watcher finds its queue empty, the watcher reads the next
  chunk from store history (:meth:`KVStore.iter_events`) starting at its cursor, bounded by
  ``max_response_events`` / ``max_response_bytes`` but ending on a revision boundary (a step
  also stops after ``max_scan_events`` events, filtered out or not, so it never holds the event
  loop long), and when it reaches the last notified revision it is synced again. History is read only up to the last
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
import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

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
    "prefix_end",
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

#: Watchers with the same key and range end, by id: matched once per event for all of them.
_Group = dict[int, "Watcher"]


def prefix_end(prefix: bytes) -> bytes:
    """The range end of all keys starting with ``prefix`` (etcd's ``GetPrefixRangeEnd``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


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
    #: ``time.perf_counter()`` when a live response was made from a just-applied write (0 for
    #: history, progress and cancels): the server measures apply-to-delivery latency from it.
    made_at: float = field(default=0.0, compare=False)

    @property
    def is_progress_notify(self) -> bool:
        return not self.events and not self.canceled


#: WatchResponse's fields, in order: _live_response sets each of them (checked at import).
_RESPONSE_FIELDS = ("watch_id", "revision", "events", "compact_revision", "canceled", "cancel_reason", "made_at")
_new_object = object.__new__
if tuple(f.name for f in fields(WatchResponse)) != _RESPONSE_FIELDS:
    raise RuntimeError("_live_response sets every field of WatchResponse: keep the two in step")
_SET_WATCH_ID, _SET_REVISION, _SET_EVENTS, _SET_COMPACT_REVISION, _SET_CANCELED, _SET_CANCEL_REASON, _SET_MADE_AT = (
    WatchResponse.__dict__[name].__set__ for name in _RESPONSE_FIELDS
)


def _live_response(watch_id: int, revision: int, events: tuple[Event, ...], made_at: float) -> WatchResponse:
    """``WatchResponse(watch_id, revision, events, made_at=made_at)`` at a third of the cost.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` per field (about 2 us);
    :meth:`Watcher.poll` makes one response per watcher per live write, so at a thousand watchers
    that is milliseconds per write. The slots are set directly instead; a unit test checks the
    result equals the one the constructor makes.
    """
    r: WatchResponse = _new_object(WatchResponse)
    _SET_WATCH_ID(r, watch_id)
    _SET_REVISION(r, revision)
    _SET_EVENTS(r, events)
    _SET_COMPACT_REVISION(r, 0)
    _SET_CANCELED(r, False)
    _SET_CANCEL_REASON(r, "")
    _SET_MADE_AT(r, made_at)
    return r


@dataclass(frozen=True, slots=True)
class WatchStats:
    watchers: int
    unsynced: int
    #: Events and approximate bytes waiting in all watchers' queues.
    queued_events: int
    queued_bytes: int


@dataclass(slots=True)
class _Item:
    #: None for a live write's item, one for all the watchers of a group with the same options:
    #: :meth:`Watcher.poll` makes each watcher's response from ``live`` and ``made_at``.
    resp: WatchResponse | None
    #: The watcher's cursor before this response: the resume point while it is undelivered.
    first_rev: int
    events: int
    nbytes: int
    live: tuple[Event, ...] = ()
    made_at: float = 0.0


def _event_bytes(ev: Event) -> int:
    n = _EVENT_OVERHEAD_BYTES + len(ev.kv.key) + len(ev.kv.value)
    if ev.prev_kv is not None:
        n += len(ev.prev_kv.key) + len(ev.prev_kv.value)
    return n


def _strip(ev: Event) -> Event:
    return ev if ev.prev_kv is None else Event(ev.type, ev.kv, None)


def _select(w: Watcher, evs: list[Event], stripped: dict[int, Event]) -> tuple[tuple[Event, ...], int]:
    """The events of ``evs`` that ``w`` wants (previous values dropped unless it asked for them),
    and their approximate size; ``stripped`` keeps one stripped copy per event for all watchers."""
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
    return tuple(out), nbytes


def _hit(hits: dict[int, tuple[_Group, list[Event]]], group: _Group, ev: Event) -> None:
    entry = hits.get(id(group))
    if entry is None:
        hits[id(group)] = (group, [ev])
    else:
        entry[1].append(ev)


class Watcher:
    """One watch. Read it with ``async for resp in watcher`` or ``await watcher.next()``.

    Made by :meth:`WatchHub.watch` only. One consumer at a time is expected.
    """

    # Slots: a write touches every matching watcher, and at a thousand of them the fan-out is bound
    # by memory, not instructions; attributes held in the object itself save a lookup table each.
    __slots__ = (
        "_cursor",
        "_done",
        "_hub",
        "_listener",
        "_no_delete",
        "_no_put",
        "_options",
        "_queue",
        "_queued_bytes",
        "_queued_events",
        "_synced",
        "_wake",
        "filters",
        "id",
        "key",
        "prev_kv",
        "progress_notify",
        "range_end",
        "start_revision",
    )

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
        #: Watchers of one group with the same options share a write's queue item (see WatchHub.notify).
        self._options = (prev_kv, self._no_put, self._no_delete)
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
        #: Told, synchronously, when something may be ready for the consumer (see set_listener).
        self._listener: Callable[[], None] | None = None

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

    @property
    def catching_up(self) -> bool:
        """Reading history: :meth:`poll` may return None and still have more to read."""
        return not self._synced and not self._done

    def poll(self) -> WatchResponse | None:
        """The next response if one is ready now, else None. An unsynced watcher reads one step
        of history here: None then means "poll again" while :attr:`catching_up` holds (a step
        of only filtered-out events queues nothing)."""
        queue = self._queue
        if not queue:
            if self._synced or self._done:  # not catching up: nothing to read
                return None
            self._hub._catch_up(self)
            if not queue:
                return None
        item = queue.popleft()
        self._queued_events -= item.events
        self._queued_bytes -= item.nbytes
        resp = item.resp
        return _live_response(self.id, item.first_rev, item.live, item.made_at) if resp is None else resp

    async def next(self) -> WatchResponse | None:
        """The next response, waiting for one; None once the watcher has ended."""
        while True:
            resp = self.poll()
            if resp is not None:
                return resp
            if self._done:
                return None
            if self._synced:
                self._wake.clear()
                await self._wake.wait()
            else:
                await asyncio.sleep(0)  # a history step found nothing to send: let others run

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        """Have ``listener`` called each time this watcher may have something new for its consumer
        (a response queued, a fall back to history, its end), so that the consumer takes it with
        :meth:`poll` on its own schedule instead of a task waiting in :meth:`next`.

        A watch stream serving many watchers thus needs no task (and no task wake-up) per watcher
        per write; while a listener is set, :meth:`next` is not woken. The listener is called
        from inside the hub (:meth:`WatchHub.notify`, :meth:`poll` itself): it must be cheap and
        must not call back into the hub.
        """
        self._listener = listener

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchResponse:
        resp = await self.next()
        if resp is None:
            raise StopAsyncIteration
        return resp

    def cancel(self) -> None:
        """Stop now: queued responses are dropped and iteration ends. :attr:`next_revision`
        stays where the consumer would resume."""
        self._hub._remove(self)
        if self._queue:
            self._cursor = self._queue[0].first_rev
        self._clear()
        self._signal()

    # --- hub side --------------------------------------------------------------------------

    def _clear(self) -> None:
        self._queue.clear()
        self._queued_events = self._queued_bytes = 0

    def _wants(self, ev: Event) -> bool:
        return not (self._no_put if ev.type == EventType.PUT else self._no_delete)

    def _push(self, resp: WatchResponse, first_rev: int, nbytes: int) -> None:
        self._push_item(_Item(resp, first_rev, len(resp.events), nbytes))

    def _push_item(self, item: _Item) -> None:
        self._queue.append(item)
        self._queued_events += item.events
        self._queued_bytes += item.nbytes
        self._signal()

    def _signal(self) -> None:
        # A consumer with a listener takes responses with poll: no task waits in next() to wake.
        listener = self._listener
        if listener is None:
            self._wake.set()
        else:
            listener()

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
        max_scan_events: int = 10_000,
    ) -> None:
        """``max_queue_*`` bound what a watcher holds for its consumer before it falls back to
        reading history; ``max_response_*`` bound one catch-up response from history, and
        ``max_scan_events`` the events (filtered out or not) one history step reads, so that a
        step never holds the event loop long. All are exceeded only by a single revision that
        alone is larger (revisions are never split)."""
        if min(max_queue_events, max_queue_bytes, max_response_events, max_response_bytes, max_scan_events) < 1:
            raise ValueError("watch hub limits must be positive")
        self.store = store
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self.max_response_events = max_response_events
        self.max_response_bytes = max_response_bytes
        self.max_scan_events = max_scan_events
        self._ids = itertools.count(1)
        self._watchers: dict[int, Watcher] = {}
        # Where notify finds watchers: single keys by key, prefix ranges by prefix (an event key
        # is looked up under each prefix length in use), other ranges by (key, range_end).
        self._by_key: dict[bytes, _Group] = {}
        self._by_prefix: dict[bytes, _Group] = {}
        self._prefix_lens: list[int] = []
        self._by_range: dict[tuple[bytes, bytes], _Group] = {}
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
        self._index_of(w).setdefault(self._index_key(w), {})[w.id] = w
        if self._is_prefix(w) and len(key) not in self._prefix_lens:
            insort(self._prefix_lens, len(key))
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

    def notify_writes(self, writes: Sequence[tuple[int, tuple[Event, ...]]]) -> None:
        """:meth:`notify` each (revision, events) of ``writes``, in order.

        With no watchers at all that comes down to the last revision being notified, done here at
        once: a member applies and publishes every write whether anyone watches or not, and a
        restart's replay publishes tens of thousands in one go (3 us each through notify).
        """
        if not writes:
            return
        if not self._watchers:
            if not self._closed:
                self._notified = max(self._notified, writes[-1][0])
            return
        for revision, events in writes:
            self.notify(revision, events)

    def notify(self, revision: int, events: tuple[Event, ...]) -> None:
        """Deliver the events of the write that made ``revision`` (all of them, in apply order).

        Cost per event: a dict lookup, one per prefix length in use, and a comparison per
        distinct other range, plus the work for the watchers it matches. A revision at or
        below the last notified one is ignored; one that skips revisions (a missed notify)
        sends the synced watchers that needed them to history.
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
        hits: dict[int, tuple[_Group, list[Event]]] = {}
        by_key, by_prefix, lens = self._by_key, self._by_prefix, self._prefix_lens
        for ev in events:
            k = ev.kv.key
            group = by_key.get(k)
            if group is not None:
                _hit(hits, group, ev)
            for n in lens:
                if n > len(k):
                    break
                group = by_prefix.get(k[:n])
                if group is not None:
                    _hit(hits, group, ev)
        if self._by_range:
            self._match_ranges(events, hits)
        made_at = time.perf_counter()
        stripped: dict[int, Event] = {}
        for group, evs in hits.values():
            # One queue item per options, shared by the group's watchers that have them: one events
            # tuple for all (a consumer encodes it once), and no object per watcher per write.
            shared: dict[tuple[bool, bool, bool], _Item | None] = {}
            for w in group.values():
                if w._synced and revision >= w._cursor:
                    options = w._options
                    if options in shared:
                        item = shared[options]
                    else:
                        out, nbytes = _select(w, evs, stripped)
                        item = shared[options] = _Item(None, revision, len(out), nbytes, out, made_at) if out else None
                    if item is None:  # nothing it wants in this write
                        w._cursor = revision + 1
                    elif not w._queue or w._fits(item.events, item.nbytes):
                        w._push_item(item)
                        w._cursor = revision + 1
                    else:  # it does not keep up: it reads history from here
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
            last = w._queue[-1].resp if w._queue else None
            if last is not None and last.is_progress_notify:
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
            w._signal()

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

    def _match_ranges(self, events: tuple[Event, ...], hits: dict[int, tuple[_Group, list[Event]]]) -> None:
        if len(events) < _SORTED_MATCH_MIN_EVENTS:
            for ev in events:
                k = ev.kv.key
                for (lo, hi), group in self._by_range.items():
                    if lo <= k and (hi == b"\0" or k < hi):
                        _hit(hits, group, ev)
            return
        order = sorted(range(len(events)), key=lambda i: events[i].kv.key)
        keys = [events[i].kv.key for i in order]
        for (lo, hi), group in self._by_range.items():
            a = bisect_left(keys, lo)
            b = len(keys) if hi == b"\0" else bisect_left(keys, hi)
            if a < b:
                hits[id(group)] = (group, [events[i] for i in sorted(order[a:b])])

    @staticmethod
    def _is_prefix(w: Watcher) -> bool:
        return bool(w.range_end) and w.range_end != b"\0" and w.range_end == prefix_end(w.key)

    def _index_of(self, w: Watcher) -> dict[Any, _Group]:
        if not w.range_end:
            return self._by_key
        return self._by_prefix if self._is_prefix(w) else self._by_range

    @staticmethod
    def _index_key(w: Watcher) -> Any:
        return (w.key, w.range_end) if w.range_end and not WatchHub._is_prefix(w) else w.key

    def _unsync(self, w: Watcher, cursor: int) -> None:
        w._cursor = cursor
        w._synced = False
        self._unsynced[w.id] = w
        w._signal()

    def _remove(self, w: Watcher) -> None:
        if w._done:
            return
        if w._synced:
            w._cursor = max(w._cursor, self._notified + 1)
        w._done = True
        w._synced = False
        self._watchers.pop(w.id, None)
        self._unsynced.pop(w.id, None)
        index, key = self._index_of(w), self._index_key(w)
        group = index[key]
        del group[w.id]
        if not group:
            del index[key]
            if index is self._by_prefix and not any(len(p) == len(w.key) for p in index):
                self._prefix_lens.remove(len(w.key))

    def _catch_up(self, w: Watcher) -> None:
        """One history step of an unsynced watcher with an empty queue: queue the next chunk
        (if any events pass its filters), sync it when it reaches the notified revision, or
        cancel it when its cursor was compacted."""
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
        nbytes = scanned = last_rev = 0
        next_rev = end + 1
        for ev in store.iter_events(w.key, w.range_end, w._cursor, end):
            rev = ev.kv.mod_revision
            if rev != last_rev:
                if (
                    len(out) >= self.max_response_events
                    or nbytes >= self.max_response_bytes
                    or scanned >= self.max_scan_events
                ):
                    next_rev = rev
                    break
                last_rev = rev
            scanned += 1
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
