"""The member-wide watch flusher (its turns and slices) and /v1's watch lines."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from kvdisco.api import v1, watch_flush
from kvdisco.api.watch_flush import Flusher
from kvdisco.mvcc import Event, EventType, KeyValue, WatchResponse
from kvdisco.mvcc.watch import CANCEL_REASON_COMPACTED, _live_response


class FakeStream:
    """Records its flushes; ``more`` says how many times it still has more to send."""

    def __init__(self, name: str, log: list[str], more: int = 0) -> None:
        self.name = name
        self.log = log
        self.more = more

    def flush(self) -> bool:
        self.log.append(self.name)
        if self.more:
            self.more -= 1
            return True
        return False


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_one_callback_flushes_each_marked_stream_once_in_order() -> None:
    f, log = Flusher(), []
    a, b = FakeStream("a", log), FakeStream("b", log)
    f.mark(a)  # type: ignore[arg-type]
    f.mark(b)  # type: ignore[arg-type]
    f.mark(a)  # type: ignore[arg-type]
    assert log == []  # nothing is written inside the hub's call: the flush is a later callback
    await asyncio.sleep(0)
    assert log == []  # nor in the next turn: what was ready first (the Raft loop's messages) goes first
    await turns()
    assert log == ["a", "b"]


async def test_a_stream_with_more_to_send_comes_again_after_the_others() -> None:
    f, log = Flusher(), []
    a, b = FakeStream("a", log, more=2), FakeStream("b", log)
    f.mark(a)  # type: ignore[arg-type]
    f.mark(b)  # type: ignore[arg-type]
    await turns()
    assert log == ["a", "b", "a", "a"]


async def test_a_slice_ends_at_its_deadline_and_the_rest_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_flush, "FLUSH_SLICE_S", -1.0)  # every slice is over after one stream
    f, log = Flusher(), []
    streams = [FakeStream(name, log) for name in "abc"]
    for s in streams:
        f.mark(s)  # type: ignore[arg-type]
    await turns(2)  # the first slice starts a turn late (see Flusher._start)
    assert log == ["a"]
    f.mark(streams[0])  # type: ignore[arg-type]  # marked again meanwhile: after those still waiting
    await turns()
    assert log == ["a", "b", "c", "a"]


PUT = Event(EventType.PUT, KeyValue(b"k/1", 5, 8, 2, b"new", 0), KeyValue(b"k/1", 5, 7, 1, b"old", 0))
DELETE = Event(EventType.DELETE, KeyValue(b"k/2", 0, 8, 0, b""), None)
BINARY = Event(EventType.PUT, KeyValue(b"k/\xff", 9, 9, 1, b"\x00\xff", 4), None)


def old_line(wr: WatchResponse) -> bytes:
    """/v1's line as it was built per watcher before the shared flusher."""
    line: dict[str, Any] = {"revision": wr.revision}
    if wr.events:
        line["events"] = [v1.event_json(ev) for ev in wr.events]
    if wr.canceled:
        line.update(canceled=True, reason=wr.cancel_reason)
        if wr.compact_revision:
            line["compact_revision"] = wr.compact_revision
    return orjson.dumps(line) + b"\n"


@pytest.mark.parametrize(
    "wr",
    [
        _live_response(1, 8, (PUT, DELETE), 1.0),
        WatchResponse(1, 9, (PUT, DELETE, BINARY)),
        WatchResponse(1, 9),
        WatchResponse(1, 9, (), 8, True, CANCEL_REASON_COMPACTED),
    ],
)
def test_v1_lines_are_unchanged(wr: WatchResponse) -> None:
    assert v1._WatchLines().line(wr) == old_line(wr)


def test_v1_live_line_is_built_once_per_shared_events_tuple() -> None:
    lines = v1._WatchLines()
    shared = (PUT,)
    first = lines.line(_live_response(1, 8, shared, 1.0))
    assert lines.line(_live_response(2, 8, shared, 1.0)) is first
    # Another tuple with equal events, or a history response, is built on its own.
    assert lines.line(_live_response(3, 8, (PUT,), 1.0)) == first
    assert lines.line(WatchResponse(4, 8, shared)) is not first
