"""Keeping Python's garbage collector from stopping a member for seconds.

A member holds millions of long-lived objects: a history list per key, and until they survive their
first collection a ``KeyValue`` and a history entry (tuples of bytes and ints, which the collector
then stops tracking). A full (generation 2) collection walks every one of them while nothing else
runs, up to 2 s at a million keys, long enough for the followers to start an election; and Python
runs one each time the heap has grown by a quarter, so loading a million keys paid for about
thirty of them. Right after a full collection every object still tracked is reachable, so the
member then moves them all to the permanent generation (``gc.freeze``); later collections walk
only what was allocated since. Frozen objects are still freed by reference counting when they are
dropped (an overwritten value, a compacted revision); only a frozen object that later becomes part
of a garbage cycle is never reclaimed. Freezing only after a slow full collection keeps that rare:
it happens when the heap has grown by a large amount, not in a steady state.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from kvdisco.api.metrics import gc_pauses

__all__ = ["FREEZE_AFTER_S", "FreezeAfterSlowCollections"]

#: A full collection that took at least this long freezes what survived it.
FREEZE_AFTER_S = 0.05


class FreezeAfterSlowCollections:
    """A ``gc.callbacks`` hook: after a slow full collection, freeze the survivors."""

    def __init__(self, threshold_s: float = FREEZE_AFTER_S) -> None:
        self.threshold_s = threshold_s
        self.freezes = 0
        self._started = 0.0

    def install(self) -> FreezeAfterSlowCollections:
        gc.callbacks.append(self.on_gc)
        return self

    def uninstall(self) -> None:
        gc.callbacks.remove(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif info.get("generation") == 2 and time.perf_counter() - self._started >= self.threshold_s:
            gc.freeze()
            self.freezes += 1
            gc_pauses().note_freeze()
