"""The store's column-oriented snapshot (format 2): exact round trips at a few thousand keys, and
refusal of anything else with a clear error and no change."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from kvdisco.mvcc import kvstore
from kvdisco.mvcc.errors import SnapshotError
from kvdisco.mvcc.kvstore import KVStore, RequestPut
from kvdisco.mvcc.lessor import Lessor
from kvdisco.mvcc.machine import KVMachine


def busy_store(keys: int = 3000, seed: int = 7) -> KVStore:
    """Keys with long histories, tombstones, leases (some revoked), a compaction, and writes after it."""
    rng = random.Random(seed)
    s = KVStore(Lessor())
    for lease_id in (1, 2, 3):
        s.lease_grant(lease_id, 60)
    s.lease_checkpoint([(2, 17)])
    names = [b"k/%05d" % i for i in range(keys)]
    for i in range(0, keys, 100):
        s.txn([], [RequestPut(k, b"v0-" + k, lease=rng.choice((0, 0, 1, 2))) for k in names[i : i + 100]])
    for n in range(4 * keys):
        k = rng.choice(names)
        r = rng.random()
        if r < 0.1:
            s.delete_range(k)
        elif r < 0.12:
            s.delete_range(k, k + b"\xff")  # a range delete: several keys in one revision
        else:
            s.put(k, rng.randbytes(rng.randrange(0, 40)), lease=rng.choice((0, 0, 0, 1, 3)))
        if n == 2 * keys:
            s.compact(s.revision - keys // 2)
    s.lease_revoke(3)
    s.put(b"\x00", b"lowest key")
    s.put(b"\xff" * 8, b"highest key", lease=1)
    return s


def state_of(s: KVStore) -> tuple[object, ...]:
    """Everything a restore must reproduce, internals included."""
    lessor = s._lessor
    leases = None
    if lessor is not None:
        leases = (lessor.next_id, [(lid, s.lease_ttl_info(lid)) for lid in lessor.ids()])
    return (
        s.revision,
        s.compact_revision,
        list(s._keys),
        dict(s._history),
        list(s._log_revs),
        list(s._log_subs),
        list(s._log_keys),
        leases,
    )


@pytest.mark.parametrize("page_keys", [kvstore.SNAPSHOT_PAGE_KEYS, 7, 1])
def test_round_trip_reproduces_the_state_exactly(monkeypatch: pytest.MonkeyPatch, page_keys: int) -> None:
    monkeypatch.setattr(kvstore, "SNAPSHOT_PAGE_KEYS", page_keys)
    s = busy_store()
    assert s.compact_revision > 0 and any(kv is None for h in s._history.values() for _, _, kv in h)
    data = s.snapshot()
    t = KVStore(Lessor())
    t.restore(data)
    assert state_of(t) == state_of(s)
    assert t.snapshot() == data  # deterministic: the same bytes on every replica
    # The restored store keeps working as the original does, watch history included.
    lo = s.compact_revision + 1
    assert t.events_between(b"\0", b"\0", lo, t.revision) == s.events_between(b"\0", b"\0", lo, s.revision)
    for store in (s, t):
        store.put(b"k/00001", b"after", lease=2)
        store.compact(store.revision - 10)
        store.lease_revoke(1)
    assert state_of(t) == state_of(s)


def test_restored_values_share_revision_ints() -> None:
    """mod_revision and a new key's create_revision are the entry's main revision: one int, not three."""
    s = KVStore()
    for i in range(300):
        s.put(b"k%03d" % i, b"v")
    t = KVStore()
    t.restore(s.snapshot())
    main, _, kv = t._history[b"k200"][0]
    assert kv is not None and kv.mod_revision is main and kv.create_revision is main


def test_page_bytes_bound_splits_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvstore, "SNAPSHOT_PAGE_BYTES", 2000)
    s = KVStore()
    for i in range(50):
        s.put(b"k%02d" % i, bytes(300))
    s.put(b"k07", bytes(5000))  # one key alone over the bound still makes a page
    data = s.snapshot()
    pages = msgpack.unpackb(data, raw=False)["pages"]
    assert len(pages) > 10 and sum(len(p[0]) for p in pages) == 50
    t = KVStore()
    t.restore(data)
    assert state_of(t) == state_of(s)


def test_empty_store_round_trips() -> None:
    for s in (KVStore(), KVStore(Lessor())):
        t = KVStore(s._lessor and Lessor())
        t.restore(s.snapshot())
        assert state_of(t) == state_of(s) and t.snapshot() == s.snapshot()


def _fields(s: KVStore) -> dict[str, Any]:
    state: dict[str, Any] = msgpack.unpackb(s.snapshot(), raw=False)
    return state


def _page(state: dict[str, Any], i: int = 0) -> list[Any]:
    page: list[Any] = state["pages"][i]
    return page


def _small() -> KVStore:
    s = KVStore()
    s.put(b"a", b"1")
    s.put(b"b", b"2")
    s.put(b"a", b"3")
    s.delete_range(b"b")
    return s


def test_an_older_or_unknown_format_fails_clearly() -> None:
    v1 = msgpack.packb({"format": 1, "rev": 3, "compact_rev": 0, "history": []})
    with pytest.raises(SnapshotError, match=r"unknown snapshot format 1 .*reads format 2"):
        KVStore().restore(v1)
    with pytest.raises(SnapshotError, match="unknown snapshot format 3"):
        KVStore().restore(msgpack.packb({"format": 3}))
    m = KVMachine()
    with pytest.raises(SnapshotError, match="unknown machine snapshot format 1"):
        m.restore(msgpack.packb([1, 5, m.store.snapshot()]))


def _corruptions() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    good = _small().snapshot()
    out += [("truncated", good[:-3]), ("trailing bytes", good + b"\x00"), ("not a map", b"\x01"), ("empty", b"")]

    def mutated(name: str, change: Callable[[dict[str, Any]], object]) -> None:
        state = _fields(_small())
        change(state)
        out.append((name, msgpack.packb(state, use_bin_type=True)))

    def column(i: int, value: object) -> Callable[[dict[str, Any]], object]:
        return lambda st: _page(st).__setitem__(i, value)

    mutated("rev below an entry", lambda st: st.__setitem__("rev", 2))
    mutated("compact above rev", lambda st: st.__setitem__("compact_rev", 99))
    mutated("unsorted keys", column(0, [b"b", b"a"]))
    mutated("duplicate keys", column(0, [b"a", b"a"]))
    mutated("empty key", column(0, [b"", b"b"]))
    mutated("key not bytes", column(0, ["a", b"b"]))
    mutated("counts do not add up", column(1, [1, 1]))
    mutated("zero count", column(1, [0, 4]))
    mutated("bool in an int column", column(5, [True, 1, 1, 0]))
    mutated("history out of order", column(2, [4, 2, 3, 5]))
    mutated("column too short", column(7, [0, 0, 0]))
    mutated("value not bytes", column(6, ["1", b"3", b"2", None]))
    mutated("page shape", lambda st: _page(st).pop())
    mutated("missing field", lambda st: st.pop("compact_rev"))
    mutated("extra field", lambda st: st.__setitem__("extra", 1))
    mutated("second page repeats a key", lambda st: st["pages"].append(_page(st)))
    mutated("leases in a plain store", lambda st: st.__setitem__("leases", [1, []]))
    return out


@pytest.mark.parametrize(("what", "data"), _corruptions(), ids=[w for w, _ in _corruptions()])
def test_a_bad_snapshot_raises_and_changes_nothing(what: str, data: bytes) -> None:
    target = busy_store(keys=200)
    target._lessor = None  # a plain store, as _small's snapshot is a plain store's
    kept = state_of(target)
    with pytest.raises(SnapshotError):
        target.restore(data)
    assert state_of(target) == kept


def test_machine_hands_the_store_a_view_not_a_copy() -> None:
    m = KVMachine()
    m.apply(1, b"")  # a malformed command still advances the applied index
    m.store.put(b"k", b"v")
    data = m.snapshot()
    other = KVMachine()
    other.restore(memoryview(data))
    assert other.applied_index == 1 and other.snapshot() == data
