"""The /v3 watch stream's response encoder: byte for byte what the codec builds, once per write."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kvdisco.api import v3_codec as codec
from kvdisco.api.v3 import response_header
from kvdisco.api.v3_watch import EventJsonCache, ResponseEncoder
from kvdisco.api.watch_flush import Flusher
from kvdisco.mvcc import Event, EventType, KeyValue, WatchResponse
from kvdisco.mvcc.watch import CANCEL_REASON_COMPACTED, _live_response


def backend(term: int = 3) -> Any:
    return SimpleNamespace(cluster_id=0xC1, member_id=0xAB, raft_term=term, revision=9)


PUT = Event(EventType.PUT, KeyValue(b"k/1", 5, 8, 2, b"new", 0), KeyValue(b"k/1", 5, 7, 1, b"old", 0))
DELETE = Event(EventType.DELETE, KeyValue(b"k/2", 0, 8, 0, b""), KeyValue(b"k/2", 6, 6, 1, b"gone", 7))


def expected(b: Any, wid: int, wr: WatchResponse, prev_kv: bool) -> bytes:
    result = codec.watch_response(
        response_header(b, wr.revision),
        wid,
        wr.events,
        prev_kv=prev_kv,
        canceled=wr.canceled,
        compact_revision=wr.compact_revision,
        cancel_reason=wr.cancel_reason,
    )
    return codec.dumps(result) + b"\n"


@pytest.mark.parametrize("wid", [0, 1, 12345, 2**62])
@pytest.mark.parametrize("prev_kv", [False, True])
@pytest.mark.parametrize("live", [False, True])
def test_lines_are_the_codec_s_bytes(wid: int, prev_kv: bool, live: bool) -> None:
    b = backend()
    enc = ResponseEncoder(b, EventJsonCache(), Flusher())
    events = (PUT, DELETE)
    wr = _live_response(1, 8, events, 1.0) if live else WatchResponse(1, 8, events)
    assert enc.line(wid, wr, prev_kv) == expected(b, wid, wr, prev_kv)
    assert enc.line(wid + 1, wr, prev_kv) == expected(b, wid + 1, wr, prev_kv)  # from the cache when live


@pytest.mark.parametrize(
    "wr",
    [
        WatchResponse(1, 9),  # progress
        WatchResponse(1, 9, (), 8, True, CANCEL_REASON_COMPACTED),
        WatchResponse(1, 9, (), 0, True, "etcdserver: mvcc: required revision is a future revision"),
    ],
)
def test_progress_and_cancel_lines_are_the_codec_s_bytes(wr: WatchResponse) -> None:
    b = backend()
    enc = ResponseEncoder(b, EventJsonCache(), Flusher())
    for wid in (0, 4):
        assert enc.line(wid, wr, False) == expected(b, wid, wr, False)


def test_one_events_tuple_is_encoded_once_for_all_watchers() -> None:
    b = backend()
    events_json = EventJsonCache()
    calls: list[Event] = []
    real = events_json.encode

    def counting(ev: Event, prev_kv: bool) -> dict[str, Any]:
        calls.append(ev)
        return real(ev, prev_kv)

    events_json.encode = counting  # type: ignore[method-assign]
    flusher = Flusher()
    enc = ResponseEncoder(b, events_json, flusher)
    shared = (PUT,)
    lines = {enc.line(wid, _live_response(wid, 8, shared, 1.0), False) for wid in range(1, 101)}
    assert len(lines) == 100 and len(calls) == 1
    assert lines == {expected(b, wid, _live_response(wid, 8, shared, 1.0), False) for wid in range(1, 101)}
    # A new term is a new header: encoded again, with the new term. (The term changes only
    # between two of the flusher's slices, the span of the encoder's last-line memo.)
    b.raft_term = 4
    flusher.slices += 1
    line = enc.line(1, _live_response(1, 8, shared, 1.0), False)
    assert b'"raft_term":"4"' in line and len(calls) == 2
    # History responses are per watcher: not kept.
    enc.line(1, WatchResponse(1, 8, (DELETE,)), False)
    enc.line(2, WatchResponse(2, 8, (DELETE,)), False)
    assert len(calls) == 4
