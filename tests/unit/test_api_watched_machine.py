"""WatchedMachine hands a write's events to the watch hub only when the node publishes.

The node applies a batch, sends what the other members wait on, then publishes; watchers made
in between must still see every revision exactly once, in order.
"""

from __future__ import annotations

from kvdisco.api.backend import WatchedMachine
from kvdisco.mvcc.commands import RequestPut, encode_command
from kvdisco.mvcc.lease_clock import LeaseClock
from kvdisco.mvcc.machine import KVMachine
from kvdisco.mvcc.watch import Watcher, WatchHub


def machine() -> WatchedMachine:
    kv = KVMachine()
    return WatchedMachine(kv, WatchHub(kv.store), LeaseClock(kv.lessor, extend_s=1.0))


def put(sm: WatchedMachine, index: int, key: bytes) -> None:
    sm.apply(index, encode_command(RequestPut(key, b"v")))


def revisions(w: Watcher) -> list[int]:
    out = []
    while (resp := w.poll()) is not None or w.catching_up:
        if resp is not None:
            out.extend(ev.kv.mod_revision for ev in resp.events)
    return out


def test_events_reach_the_hub_at_publish_in_order() -> None:
    sm = machine()
    w = sm.hub.watch(b"k", b"l")
    put(sm, 1, b"k1")
    put(sm, 2, b"k2")
    assert w.poll() is None and sm.hub.notified_revision == 1  # applied, not yet told
    sm.publish()
    assert revisions(w) == [2, 3] and sm.hub.notified_revision == 3
    sm.publish()  # nothing new: nothing twice
    assert revisions(w) == []


def test_watchers_made_between_apply_and_publish_see_each_revision_once() -> None:
    sm = machine()
    put(sm, 1, b"k1")
    sm.publish()
    put(sm, 2, b"k2")  # revision 3, applied, not yet published
    from_now = sm.hub.watch(b"k", b"l")  # starts after the store's revision: 4
    from_three = sm.hub.watch(b"k", b"l", start_revision=3)  # the unpublished revision
    from_two = sm.hub.watch(b"k", b"l", start_revision=2)  # history, then live
    sm.publish()
    put(sm, 3, b"k3")
    sm.publish()
    assert revisions(from_now) == [4]
    assert revisions(from_three) == [3, 4]
    assert revisions(from_two) == [2, 3, 4]


def test_a_restore_drops_what_was_not_published_and_watchers_read_it_from_history() -> None:
    source = machine()
    for i in range(1, 4):
        put(source, i, b"k%d" % i)
    image = b"".join(source.snapshot())  # the pieces a member writes to its snapshot file
    sm = machine()
    w = sm.hub.watch(b"k", b"l", start_revision=2)
    put(sm, 1, b"k1")  # unpublished when the snapshot replaces the state
    sm.restore(image)
    sm.publish()
    assert revisions(w) == [2, 3, 4]


def test_with_no_watchers_a_publish_moves_the_notified_revision_and_later_watchers_miss_nothing() -> None:
    sm = machine()
    for i in range(1, 4):
        put(sm, i, b"k%d" % i)
    sm.publish()  # nobody watches: the hub takes only the last revision
    assert sm.hub.notified_revision == 4
    live = sm.hub.watch(b"k", b"l")  # from revision 5
    from_two = sm.hub.watch(b"k", b"l", start_revision=2)  # history, then live
    put(sm, 4, b"k4")
    sm.publish()
    assert revisions(live) == [5]
    assert revisions(from_two) == [2, 3, 4, 5]


def test_a_closed_hub_takes_no_more_revisions() -> None:
    sm = machine()
    put(sm, 1, b"k1")
    sm.publish()
    sm.hub.close()
    put(sm, 2, b"k2")
    sm.publish()
    assert sm.hub.notified_revision == 2  # as notify() leaves it once closed
