"""The garbage collector policy of a member (kvdisco/cli/heap.py) and its pause metrics."""

from __future__ import annotations

import gc

from kvdisco.api.metrics import GcPauses
from kvdisco.cli.heap import FreezeAfterSlowCollections


def test_a_slow_full_collection_freezes_its_survivors_and_cycles_made_later_are_still_collected() -> None:
    policy = FreezeAfterSlowCollections(threshold_s=0.0).install()
    try:
        kept = [[i] for i in range(10_000)]
        gc.collect()
        assert policy.freezes >= 1 and gc.get_freeze_count() >= len(kept)

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect(0) + gc.collect(1) + gc.collect(2) >= 2  # the new cycle is not frozen
    finally:
        policy.uninstall()
        gc.unfreeze()


def test_a_fast_full_collection_freezes_nothing() -> None:
    policy = FreezeAfterSlowCollections(threshold_s=3600.0).install()
    try:
        gc.collect()
        assert policy.freezes == 0
    finally:
        policy.uninstall()


def test_pauses_are_counted_by_generation() -> None:
    pauses = GcPauses()
    gc.callbacks.append(pauses.on_gc)
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses.on_gc)
    assert pauses.collections[0] >= 1 and pauses.collections[2] >= 1
    assert pauses.seconds[2] > 0 and pauses.longest[2] <= pauses.seconds[2]
    names = {m.name for m in pauses.collect()}
    assert names == {
        "kvdisco_gc_pause_seconds",
        "kvdisco_gc_collections",
        "kvdisco_gc_pause_longest_seconds",
        "kvdisco_gc_freezes",
    }
