"""DiskStorage against real files: round trips, recovery rules, corruption, crashes, and a model."""

from __future__ import annotations

import logging
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvdisco.raft._codec import pack
from kvdisco.raft._messages import ConfState, Entry, EntryType, HardState, SnapshotMeta
from kvdisco.raft.errors import CorruptLogError, StorageError
from kvdisco.raft.limits import WAL_SEGMENT_BYTES
from kvdisco.raft.storage import DiskStorage

ROOT = Path(__file__).resolve().parents[2]


def ent(index: int, term: int = 1, data: bytes | None = None) -> Entry:
    return Entry(term, index, b"e%d" % index if data is None else data)


def view(s: DiskStorage) -> tuple[Any, ...]:
    """Everything a caller can observe, in comparable form."""
    return (
        s.snapshot,
        s.hard_state,
        [(e.index, e.term, e.data, e.type) for e in s.entries],
        s.last_index(),
        s.load_snapshot_data(),
    )


def wal_files(d: Path) -> list[Path]:
    return sorted((d / "wal").glob("*.wal"))


def snap_files(d: Path) -> list[Path]:
    return sorted((d / "snap").glob("*.snap"))


def reopen(s: DiskStorage, d: Path, **kw: Any) -> DiskStorage:
    s.close()
    return DiskStorage.open(d, **kw)


def raw_record(obj: list[Any]) -> bytes:
    payload = pack(obj)
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


#: segment_bytes for the tests that edit segment bytes: small files, still preallocated.
SEG = 4096


def record_ends(path: Path) -> list[int]:
    """The offset just past each record, found by walking the length fields up to an all-zero header."""
    data, ends, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data) and any(data[pos : pos + 8]):
        pos += 8 + struct.unpack_from(">I", data, pos)[0]
        ends.append(pos)
    return ends


def data_end(path: Path) -> int:
    """Where a segment's records end. File size is no guide: segments are preallocated with zeros."""
    ends = record_ends(path)
    return ends[-1] if ends else 0


def patch(path: Path, offset: int, new: bytes) -> None:
    """Overwrite bytes in place, keeping the file's size and its preallocated space."""
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(new)


# --- round trips ------------------------------------------------------------------------------


def test_empty_dir_opens_empty(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path / "data")
    assert (s.snapshot, s.hard_state, s.entries, s.last_index()) == (SnapshotMeta(), HardState(), [], 0)
    assert s.load_snapshot_data() is None
    s = reopen(s, tmp_path / "data")
    assert (s.snapshot, s.hard_state, s.entries) == (SnapshotMeta(), HardState(), [])
    s.close()


def test_entries_and_hard_state_survive_reopen(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(1), ent(2, data=b""), Entry(2, 3, b"cc", EntryType.CONF_CHANGE)], HardState(2, 3, 1))
    s.save([], HardState(2, 3, 3))
    s.save([ent(4, 2, b"\x00" * 1000)], None)
    before = view(s)
    s = reopen(s, tmp_path)
    assert view(s) == before
    assert s.entries[2].type is EntryType.CONF_CHANGE
    assert s.hard_state == HardState(2, 3, 3)
    s.close()


def test_conflict_truncation_persists(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(i) for i in range(1, 6)], HardState(1, 1, 2))
    s.save([ent(3, 2, b"new3"), ent(4, 2, b"new4")], HardState(2, 2, 2))
    assert [(e.index, e.term) for e in s.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    s = reopen(s, tmp_path)
    assert [(e.index, e.term, e.data) for e in s.entries][2:] == [(3, 2, b"new3"), (4, 2, b"new4")]
    assert s.last_index() == 4
    s.close()


def test_segment_rollover_and_compaction_keep_everything_recoverable(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path, segment_bytes=256)
    for i in range(1, 61):
        s.save([ent(i, data=b"x" * 30)], HardState(1, 1, i - 1))
    assert len(wal_files(tmp_path)) > 5
    before = view(s)
    s = reopen(s, tmp_path, segment_bytes=256)
    assert view(s) == before

    for n, index in enumerate((20, 35, 50), start=1):
        s.save_snapshot(SnapshotMeta(index, 1, ConfState(frozenset({1, 2, 3}))), b"snap-%d" % index)
        assert s.entries[0].index == index + 1 and s.last_index() == 60
        assert len(snap_files(tmp_path)) == min(n, 2)
    # Only segments that still hold entries after index 50 (or the header they need) remain.
    firsts = [int(p.name.split("-")[1].split(".")[0], 16) for p in wal_files(tmp_path)]
    assert firsts[0] <= 51 and (len(firsts) == 1 or firsts[1] > 51)
    assert [p.name for p in snap_files(tmp_path)] == [
        f"{35:016x}-{1:016x}.snap",
        f"{50:016x}-{1:016x}.snap",
    ]
    before = view(s)
    s = reopen(s, tmp_path, segment_bytes=256)
    assert view(s) == before
    assert s.snapshot.conf_state.voters == frozenset({1, 2, 3})
    assert [e.data for e in s.entries] == [b"x" * 30] * 10
    s.save([ent(61)], None)
    s = reopen(s, tmp_path)
    assert s.last_index() == 61
    s.close()


def _first_indexes(d: Path) -> list[int]:
    return [int(p.name[17:33], 16) for p in wal_files(d)]


def test_compaction_keeps_exactly_the_segments_replay_needs(tmp_path: Path) -> None:
    # segment_bytes=1: every save starts a new segment, so segment k holds entry k alone.
    s = DiskStorage.open(tmp_path, segment_bytes=1)
    for i in range(1, 11):
        s.save([ent(i)], HardState(1, 1, i - 1))
    assert _first_indexes(tmp_path) == list(range(1, 12))
    s.save_snapshot(SnapshotMeta(5, 1), b"five")
    # The segment starting at 6 holds entry 6: everything before it goes, nothing after it.
    assert _first_indexes(tmp_path) == [*range(6, 12), 11]
    s = reopen(s, tmp_path, segment_bytes=1)
    assert [e.index for e in s.entries] == list(range(6, 11))
    # Rewrite entry 10 and add 11 in the segment whose entries "start" at 11, then snapshot at 10:
    # replay starts mid-history and must still end with exactly entry 11.
    s.save([ent(10, 2, b"ten"), ent(11, 2)], HardState(2, 1, 9))
    s.save_snapshot(SnapshotMeta(10, 2), b"ten")
    s = reopen(s, tmp_path, segment_bytes=1)
    assert [(e.index, e.term) for e in s.entries] == [(11, 2)]
    assert (s.snapshot.index, s.load_snapshot_data()) == (10, b"ten")
    s.close()


@pytest.mark.parametrize(
    ("snap_index", "snap_term", "kept"),
    [
        (5, 2, [6, 7, 8]),  # our entry 5 has term 2: the snapshot is a prefix of our log
        (5, 3, []),  # same index, other term: our log diverged, drop it all
        (8, 2, []),  # our last entry: nothing after it to keep
        (12, 4, []),  # beyond our log
    ],
)
def test_save_snapshot_keeps_only_a_matching_suffix(
    tmp_path: Path, snap_index: int, snap_term: int, kept: list[int]
) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(1), ent(2), ent(3, 2), ent(4, 2), ent(5, 2), ent(6, 2), ent(7, 3), ent(8, 3)], HardState(3, 1, 4))
    s.save_snapshot(SnapshotMeta(snap_index, snap_term), b"state")
    assert [e.index for e in s.entries] == kept
    assert s.last_index() == (kept[-1] if kept else snap_index)
    before = view(s)
    s = reopen(s, tmp_path)
    assert view(s) == before
    s.save([ent(s.last_index() + 1, 5)], HardState(5, 0, 4))
    s = reopen(s, tmp_path)
    assert s.entries[-1].index == (kept[-1] if kept else snap_index) + 1
    s.close()


def test_snapshot_that_conflicts_below_commit_is_refused(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(1), ent(2), ent(3)], HardState(1, 1, 3))
    with pytest.raises(StorageError, match="commit"):
        s.save_snapshot(SnapshotMeta(2, 5), b"x")
    assert snap_files(tmp_path) == []
    s.close()


# --- preallocation ----------------------------------------------------------------------------


def test_new_segments_are_preallocated_to_segment_bytes(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path / "default")
    (seg,) = wal_files(tmp_path / "default")
    assert seg.stat().st_size == WAL_SEGMENT_BYTES
    s.save([ent(1)], HardState(1, 1, 0))
    assert seg.stat().st_size == WAL_SEGMENT_BYTES  # the write went into the allocated space
    s.close()

    s = DiskStorage.open(tmp_path / "small", segment_bytes=SEG)
    while len(wal_files(tmp_path / "small")) < 2:
        s.save([ent(s.last_index() + 1, data=b"r" * 100)], None)
    old, new = wal_files(tmp_path / "small")
    # The batch that crossed segment_bytes extended the old segment; the new one starts preallocated.
    assert old.stat().st_size == data_end(old) > SEG
    assert new.stat().st_size == SEG
    assert not any(new.read_bytes()[data_end(new) :])
    s.close()


def test_reopen_after_clean_close_neither_warns_nor_changes_the_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = DiskStorage.open(tmp_path, segment_bytes=SEG)
    for i in range(1, 6):
        s.save([ent(i)], HardState(1, 1, i - 1))
    before, seg = view(s), wal_files(tmp_path)[-1]
    data = seg.read_bytes()
    with caplog.at_level(logging.WARNING):
        s = reopen(s, tmp_path, segment_bytes=SEG)
    assert caplog.records == []
    assert view(s) == before
    assert seg.read_bytes() == data and len(data) == SEG
    end = data_end(seg)
    s.save([ent(6)], None)  # goes where the data ended, over the zeros
    assert seg.read_bytes()[:end] == data[:end] and data_end(seg) > end and seg.stat().st_size == SEG
    s = reopen(s, tmp_path, segment_bytes=SEG)
    assert s.last_index() == 6
    s.close()


def test_segment_without_preallocation_is_preallocated_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ends = _log_with_offsets(tmp_path)
    seg = wal_files(tmp_path)[-1]
    os.truncate(seg, ends[-1])  # as an older build, which appended with O_APPEND, left it
    data = seg.read_bytes()
    with caplog.at_level(logging.WARNING):
        s = DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert caplog.records == []
    assert s.last_index() == 4
    assert seg.stat().st_size == SEG and seg.read_bytes()[: len(data)] == data
    s.save([ent(5)], HardState(1, 1, 4))
    s = reopen(s, tmp_path, segment_bytes=SEG)
    assert (s.last_index(), s.hard_state.commit) == (5, 4)
    s.close()


def test_failed_fdatasync_removes_the_partial_record_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = DiskStorage.open(tmp_path, segment_bytes=SEG)
    s.save([ent(1), ent(2)], HardState(1, 1, 1))
    seg = wal_files(tmp_path)[-1]
    good_end = data_end(seg)

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(StorageError, match="WAL append failed"):
        s.save([ent(3)], None)
    monkeypatch.undo()
    with pytest.raises(StorageError, match="unusable"):
        s.save([ent(3)], None)
    assert seg.stat().st_size == good_end  # the unacknowledged record is gone
    with caplog.at_level(logging.WARNING):
        s = reopen(s, tmp_path, segment_bytes=SEG)
    assert caplog.records == []
    assert s.last_index() == 2 and seg.stat().st_size == SEG
    s.close()


# --- torn tails -------------------------------------------------------------------------------


def _log_with_offsets(d: Path, n: int = 4) -> list[int]:
    """Save entries 1..n one per save in a SEG-byte segment; return where the data ends after each save."""
    s = DiskStorage.open(d, segment_bytes=SEG)
    ends = []
    for i in range(1, n + 1):
        s.save([ent(i, data=b"d" * 40)], HardState(1, 1, i - 1))
        ends.append(data_end(wal_files(d)[-1]))
    s.close()
    assert wal_files(d)[-1].stat().st_size == SEG
    return ends


@pytest.mark.parametrize("layout", ["zeros", "cut"])
@pytest.mark.parametrize("damage", ["mid_header", "mid_payload", "bad_crc_at_end"])
def test_torn_tail_is_zeroed_and_earlier_records_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, layout: str
) -> None:
    """The last write was cut by a crash: only a prefix of it reached the disk.

    layout "zeros": the write went into preallocated space, so zeros follow the damage.
    layout "cut": the file ends at the damage (a segment from an older build, or a batch that
    extended the file past its preallocation).
    """
    ends = _log_with_offsets(tmp_path)
    seg = wal_files(tmp_path)[-1]
    good_end, last_end = ends[-2], ends[-1]  # the last save wrote entry 4 and a hard state
    if damage == "mid_header":
        keep = good_end + 6  # the length and half the crc of entry 4's record
    elif damage == "mid_payload":
        keep = good_end + 8 + 5
    else:
        good_end = record_ends(seg)[-2]  # keep entry 4, damage its hard state
        keep = last_end
        patch(seg, last_end - 1, bytes([seg.read_bytes()[last_end - 1] ^ 0xFF]))
    if layout == "zeros":
        patch(seg, keep, bytes(last_end - keep))
    else:
        os.truncate(seg, keep)
    with caplog.at_level(logging.WARNING):
        s = DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert "torn tail" in caplog.text and f"at offset {good_end}" in caplog.text
    data = seg.read_bytes()
    assert data_end(seg) == good_end and not any(data[good_end:]), "the torn bytes are zeroed"
    assert len(data) == SEG, "the segment is preallocated again"
    expected_last = 4 if damage == "bad_crc_at_end" else 3
    assert s.last_index() == expected_last
    assert [e.data for e in s.entries] == [b"d" * 40] * expected_last
    s.save([ent(expected_last + 1)], HardState(1, 1, expected_last))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = reopen(s, tmp_path, segment_bytes=SEG)
    assert caplog.records == []
    assert s.last_index() == expected_last + 1 and s.hard_state.commit == expected_last
    s.close()


@pytest.mark.parametrize("damage", ["last_write_unwritten", "zeros_past_preallocation", "short_zero_tail"])
def test_zeros_after_the_last_record_are_the_normal_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    ends = _log_with_offsets(tmp_path)
    seg = wal_files(tmp_path)[-1]
    expected_last = 4
    if damage == "last_write_unwritten":  # the blocks of the last write read back as zeros
        patch(seg, ends[-2], bytes(ends[-1] - ends[-2]))
        expected_last = 3
    elif damage == "zeros_past_preallocation":
        with seg.open("ab") as f:
            f.write(bytes(4096))
    else:  # fewer zero bytes than a record header
        os.truncate(seg, ends[-1] + 3)
    data = seg.read_bytes()
    with caplog.at_level(logging.WARNING):
        s = DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert caplog.records == []
    assert s.last_index() == expected_last
    assert seg.read_bytes()[: len(data)] == data and seg.stat().st_size >= SEG
    s.save([ent(expected_last + 1)], None)
    s = reopen(s, tmp_path, segment_bytes=SEG)
    assert s.last_index() == expected_last + 1
    s.close()


def test_corrupt_record_in_the_middle_names_file_and_offset(tmp_path: Path) -> None:
    ends = _log_with_offsets(tmp_path, 6)
    seg = wal_files(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    offset = ends[2]  # first record written by the 4th save: entry 4
    data[offset + 8 + 3] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as info:
        DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert (info.value.path, info.value.offset) == (str(seg), offset)
    assert "checksum" in info.value.reason
    assert seg.read_bytes() == bytes(data), "recovery must not touch a corrupt log"


@pytest.mark.parametrize("damage", ["bad_crc_then_stray_byte", "zero_header_then_payload", "zeros_then_stray_byte"])
def test_bad_bytes_followed_by_non_zero_data_are_corruption(tmp_path: Path, damage: str) -> None:
    """Only zeros may follow a torn record or the end of the data; anything else is damage, not a crash."""
    _log_with_offsets(tmp_path)
    seg = wal_files(tmp_path)[-1]
    ends = record_ends(seg)
    if damage == "bad_crc_then_stray_byte":
        offset = ends[-2]  # the last record: the hard state
        patch(seg, ends[-1] - 1, bytes([seg.read_bytes()[ends[-1] - 1] ^ 0xFF]))
        patch(seg, SEG - 1, b"\x01")
    elif damage == "zero_header_then_payload":  # never a zero-length record, though crc32(b"") == 0
        offset = ends[-1]
        patch(seg, offset + 8, pack([1, 1, 1, 3]))
    else:
        offset = ends[-1]
        patch(seg, offset + 100, b"\x07")
    data = seg.read_bytes()
    with pytest.raises(CorruptLogError) as info:
        DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert (info.value.path, info.value.offset) == (str(seg), offset)
    assert "non-zero bytes after" in info.value.reason
    assert seg.read_bytes() == data, "recovery must not touch a corrupt log"


def test_undecodable_record_with_valid_crc_is_corruption(tmp_path: Path) -> None:
    ends = _log_with_offsets(tmp_path, 2)
    seg = wal_files(tmp_path)[-1]
    patch(seg, ends[-1], raw_record([9, 1, 2]))
    with pytest.raises(CorruptLogError) as info:
        DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert info.value.offset == ends[-1]
    assert "undecodable" in info.value.reason


@pytest.mark.parametrize(
    "damage", ["bad_crc_at_end", "cut_mid_payload", "bad_crc_then_zeros", "cut_mid_payload_then_zeros"]
)
def test_damage_in_a_segment_that_is_not_last_is_corruption(tmp_path: Path, damage: str) -> None:
    s = DiskStorage.open(tmp_path, segment_bytes=200)
    for i in range(1, 20):
        s.save([ent(i, data=b"y" * 30)], None)
    s.close()
    first = wal_files(tmp_path)[0]
    data = first.read_bytes()
    assert data_end(first) == len(data) > 200  # the save that crossed 200 bytes extended it
    flipped = data[:-1] + bytes([data[-1] ^ 0xFF])
    damaged = {
        "bad_crc_at_end": flipped,
        "cut_mid_payload": data[:-3],
        "bad_crc_then_zeros": flipped + bytes(64),
        "cut_mid_payload_then_zeros": data[:-3] + bytes(67),
    }[damage]
    first.write_bytes(damaged)
    with pytest.raises(CorruptLogError, match="not the last") as info:
        DiskStorage.open(tmp_path, segment_bytes=200)
    assert (info.value.path, info.value.offset) == (str(first), record_ends(first)[-2])


def test_zero_tail_in_a_segment_that_is_not_last_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Created with a large segment_bytes, rolled after a restart with a small one: the old
    # segment keeps its unused preallocated space.
    s = DiskStorage.open(tmp_path, segment_bytes=SEG)
    s.save([ent(1), ent(2)], HardState(1, 1, 2))
    s = reopen(s, tmp_path, segment_bytes=200)
    for i in range(3, 8):
        s.save([ent(i, data=b"z" * 30)], None)
    old = wal_files(tmp_path)[0]
    assert len(wal_files(tmp_path)) > 1 and old.stat().st_size == SEG > data_end(old)
    before = view(s)
    with caplog.at_level(logging.WARNING):
        s = reopen(s, tmp_path, segment_bytes=200)
    assert caplog.records == []
    assert view(s) == before
    s.close()


def test_invariant_violations_on_load_are_reported(tmp_path: Path) -> None:
    _log_with_offsets(tmp_path, 3)
    seg = wal_files(tmp_path)[-1]
    clean = seg.read_bytes()
    end = data_end(seg)

    def damage_with(record: bytes) -> None:
        seg.write_bytes(clean)
        patch(seg, end, record)

    # An entry that leaves a gap: valid bytes, impossible log.
    damage_with(raw_record([0, 1, 9, 0, b"gap"]))
    with pytest.raises(CorruptLogError, match="not contiguous") as info:
        DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert info.value.offset == end
    # The next entry, with a term below its predecessor's.
    damage_with(raw_record([0, 0, 4, 0, b"old"]))
    with pytest.raises(CorruptLogError, match="below the previous term") as info:
        DiskStorage.open(tmp_path, segment_bytes=SEG)
    assert info.value.offset == end
    # A hard state whose commit is past the log.
    damage_with(raw_record([1, 1, 1, 9]))
    with pytest.raises(StorageError, match="commit 9"):
        DiskStorage.open(tmp_path, segment_bytes=SEG)
    # A term going backwards.
    damage_with(raw_record([1, 0, 1, 0]))
    with pytest.raises(CorruptLogError, match="term went back"):
        DiskStorage.open(tmp_path, segment_bytes=SEG)


def test_lost_segment_is_detected(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path, segment_bytes=200)
    for i in range(1, 20):
        s.save([ent(i, data=b"y" * 30)], None)
    s.close()
    wal_files(tmp_path)[1].unlink()
    with pytest.raises(StorageError, match="missing"):
        DiskStorage.open(tmp_path)
    wal_files(tmp_path)[0].unlink()  # now a clean-looking suffix whose entries do not reach back
    with pytest.raises(StorageError, match="missing"):
        DiskStorage.open(tmp_path)


@pytest.mark.parametrize("damage", ["flip_data", "truncate", "delete"])
def test_bad_snapshot_file_is_corruption(tmp_path: Path, damage: str) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(i) for i in range(1, 5)], HardState(1, 1, 4))
    s.save_snapshot(SnapshotMeta(3, 1), b"snapshot-bytes")
    s.close()
    (snap,) = snap_files(tmp_path)
    data = snap.read_bytes()
    if damage == "flip_data":
        snap.write_bytes(data[:-1] + b"X")
    elif damage == "truncate":
        snap.write_bytes(data[:-4])
    else:
        snap.unlink()
    with pytest.raises(CorruptLogError) as info:
        DiskStorage.open(tmp_path)
    assert info.value.path == str(snap)


def test_snapshot_written_but_never_installed_is_removed(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(i) for i in range(1, 5)], HardState(1, 1, 4))
    s.close()
    orphan = tmp_path / "snap" / f"{3:016x}-{1:016x}.snap"
    orphan.write_bytes(b"half written")
    (tmp_path / "snap" / "x.snap.tmp").write_bytes(b"temp")
    s = DiskStorage.open(tmp_path)
    assert s.snapshot.index == 0 and not orphan.exists()
    assert list((tmp_path / "snap").iterdir()) == []
    s.close()


# --- misuse -----------------------------------------------------------------------------------


def _misuse_cases() -> list[tuple[str, Any]]:
    def save(entries: list[Entry], hs: HardState | None = None) -> Any:
        return lambda s: s.save(entries, hs)

    return [
        ("gap_after_last", save([ent(7, 2)])),
        ("not_contiguous", save([ent(6, 2), ent(8, 2)])),
        ("duplicate_index", save([ent(6, 2), ent(6, 2)])),
        ("at_snapshot", save([ent(2, 1)])),
        ("below_snapshot", save([ent(1, 1)])),
        ("term_decreases_in_batch", save([ent(6, 3), ent(7, 2)])),
        ("term_below_previous_entry", save([ent(6, 1)])),
        ("term_zero", save([ent(6, 0)])),
        ("overwrites_committed", save([ent(4, 3)])),
        ("truncates_committed", save([ent(3, 2)])),
        ("data_not_bytes", save([Entry(2, 6, "text")])),  # type: ignore[arg-type]
        ("bad_entry_type", save([Entry(2, 6, b"", 7)])),  # type: ignore[arg-type]
        ("hard_state_term_back", save([], HardState(1, 1, 4))),
        ("commit_past_last", save([], HardState(2, 1, 6))),
        ("commit_past_new_last", save([ent(6, 2)], HardState(2, 1, 7))),
        ("valid_entries_bad_hard_state", save([ent(6, 2)], HardState(1, 0, 4))),
        ("snapshot_not_newer", lambda s: s.save_snapshot(SnapshotMeta(2, 1), b"x")),
        ("snapshot_term_back", lambda s: s.save_snapshot(SnapshotMeta(4, 0), b"x")),
        ("snapshot_data_not_bytes", lambda s: s.save_snapshot(SnapshotMeta(4, 2), "x")),
    ]


@pytest.mark.parametrize(("name", "call"), _misuse_cases(), ids=[c[0] for c in _misuse_cases()])
def test_invalid_arguments_raise_and_change_nothing(tmp_path: Path, name: str, call: Any) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(1), ent(2), ent(3, 2), ent(4, 2), ent(5, 2)], HardState(2, 1, 4))
    s.save_snapshot(SnapshotMeta(2, 1), b"snap")
    before = view(s)
    files = {p: p.read_bytes() for p in (*wal_files(tmp_path), *snap_files(tmp_path))}
    with pytest.raises(StorageError):
        call(s)
    assert view(s) == before
    assert {p: p.read_bytes() for p in (*wal_files(tmp_path), *snap_files(tmp_path))} == files
    s.save([ent(6, 2)], HardState(2, 1, 6))  # still usable
    s = reopen(s, tmp_path)
    assert s.last_index() == 6
    s.close()


def test_closed_storage_refuses_writes(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.save([ent(1)], None)


# --- crashes ----------------------------------------------------------------------------------

_CHILD = r"""
import sys
from kvdisco.raft._messages import Entry, HardState, SnapshotMeta
from kvdisco.raft.storage import DiskStorage

s = DiskStorage.open(sys.argv[1], segment_bytes=4096)
i = s.last_index()
print("open", i, flush=True)
n = 0
while True:
    n += 1
    batch = [Entry(1 + (i + k) // 500, i + k + 1, b"%d." % (i + k + 1) * 5) for k in range(1 + n % 7)]
    s.save(batch, HardState(1 + i // 500, 1, i))
    i = batch[-1].index
    if n % 40 == 0:
        snap = i - 3
        s.save_snapshot(SnapshotMeta(snap, 1 + (snap - 1) // 500), b"snap%d" % snap)
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_never_loses_an_acknowledged_save(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    data_dir, out = tmp_path / "data", tmp_path / "out.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    acked = 0
    for it in range(20):
        with out.open("w") as f:
            child = subprocess.Popen([sys.executable, "-c", _CHILD, str(data_dir)], stdout=f, env=env)
        deadline = time.monotonic() + 30
        while "open" not in out.read_text() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        lines = out.read_text().split()
        assert lines[:1] == ["open"], f"seed {seed}, iteration {it}: child failed to start: {lines[:5]}"
        assert int(lines[1]) >= acked, f"seed {seed}, iteration {it}: reopened below acked index {acked}"
        acked = max([acked, *(int(x) for x in lines[2:])])
        s = DiskStorage.open(data_dir, segment_bytes=4096)
        context = f"seed {seed}, iteration {it}"
        assert s.last_index() >= acked, context
        assert all(e.data == b"%d." % e.index * 5 for e in s.entries), context
        if s.snapshot.index:
            assert s.load_snapshot_data() == b"snap%d" % s.snapshot.index, context
        assert s.hard_state.commit <= s.last_index(), context
        s.close()


# --- model-based property test ----------------------------------------------------------------


class Model:
    """The intended behaviour, written as plainly as possible."""

    def __init__(self) -> None:
        self.snap = SnapshotMeta()
        self.snap_data: bytes | None = None
        self.log: dict[int, tuple[int, bytes]] = {}  # index -> (term, data), after the snapshot
        self.hs = HardState()

    def last(self) -> int:
        return max(self.log, default=self.snap.index)

    def term(self, i: int) -> int | None:
        return self.snap.term if i == self.snap.index else self.log[i][0] if i in self.log else None

    def save(self, entries: list[Entry], hs: HardState | None) -> bool:
        log, last = dict(self.log), self.last()
        if entries:
            first = entries[0].index
            if not self.snap.index < first <= last + 1:
                return False
            for k, e in enumerate(entries):
                prev = self.term(first - 1) if k == 0 else entries[k - 1].term
                if e.index != first + k or e.term < max(prev or 0, 1):
                    return False
                if e.index <= self.hs.commit and e.term != self.term(e.index):
                    return False
            log = {i: v for i, v in log.items() if i < first} | {e.index: (e.term, e.data) for e in entries}
        new_last = max(log, default=self.snap.index)
        if new_last < min(self.hs.commit, last):
            return False
        if hs is not None and hs != self.hs and (hs.term < self.hs.term or hs.commit > new_last):
            return False
        self.log = log
        self.hs = hs or self.hs
        return True

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> bool:
        keep = self.term(meta.index) == meta.term
        if meta.index <= self.snap.index or meta.term < max(self.snap.term, 1):
            return False
        if not keep and self.hs.commit >= meta.index:
            return False
        self.log = {i: v for i, v in self.log.items() if i > meta.index} if keep else {}
        self.snap, self.snap_data = meta, data
        return True

    def view(self) -> tuple[Any, ...]:
        entries = [(i, t, d, EntryType.NORMAL) for i, (t, d) in sorted(self.log.items())]
        return (self.snap, self.hs, entries, self.last(), self.snap_data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_matches_model_across_saves_snapshots_and_reopens(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Model()
        seg_bytes = data.draw(st.sampled_from([100, 100, 300, 1 << 20]), label="segment_bytes")
        s = DiskStorage.open(tmp, segment_bytes=seg_bytes)
        try:
            for _ in range(data.draw(st.integers(1, 40), label="steps")):
                op = data.draw(st.sampled_from(["save", "save", "save", "snapshot", "reopen"]), label="op")
                if op == "reopen":
                    s = reopen(s, Path(tmp), segment_bytes=seg_bytes)
                elif op == "save":
                    last = model.last()
                    first = data.draw(st.integers(model.snap.index, last + 2), label="first")
                    terms = data.draw(st.lists(st.integers(0, 3), max_size=5), label="terms")
                    if data.draw(st.integers(0, 4), label="unsorted"):
                        terms.sort()
                    base = max(model.hs.term, model.term(first - 1) or 0, 1)
                    entries = [ent(first + k, base + t, b"%d:%d" % (first + k, t)) for k, t in enumerate(terms)]
                    if entries and not data.draw(st.integers(0, 9), label="term_zero"):
                        entries[-1].term = 0
                    hs = None
                    if data.draw(st.booleans(), label="with_hs"):
                        new_last = entries[-1].index if entries else last
                        hs = HardState(
                            data.draw(st.integers(max(model.hs.term - 1, 0), base + 4), label="hs_term"),
                            data.draw(st.integers(0, 3), label="vote"),
                            data.draw(st.integers(model.hs.commit, max(model.hs.commit, new_last) + 1), label="c"),
                        )
                    expected_ok = model.save(entries, hs)
                    event(f"save {'ok' if expected_ok else 'refused'}")
                    if expected_ok:
                        s.save(entries, hs)
                    else:
                        with pytest.raises(StorageError):
                            s.save(entries, hs)
                else:
                    lo = model.snap.index + (model.last() > model.snap.index)
                    index = data.draw(st.integers(lo, model.last() + 1), label="snap_index")
                    match = model.term(index)
                    term = match if match and data.draw(st.integers(0, 3), label="match") else None
                    term = term or data.draw(
                        st.integers(model.snap.term, max(model.snap.term, model.hs.term) + 2), label="snap_term"
                    )
                    meta = SnapshotMeta(index, term, ConfState(frozenset({1, index % 3 + 2})))
                    blob = b"snap:%d" % index
                    keep = model.term(index) == term
                    expected_ok = model.save_snapshot(meta, blob)
                    event(f"snapshot {'refused' if not expected_ok else 'keep' if keep else 'drop'}")
                    if expected_ok:
                        s.save_snapshot(meta, blob)
                    else:
                        with pytest.raises(StorageError):
                            s.save_snapshot(meta, blob)
                assert view(s) == model.view()
            s = reopen(s, Path(tmp), segment_bytes=seg_bytes)
            assert view(s) == model.view()
            assert len(snap_files(Path(tmp))) <= 2
            event(f"segments at end: {min(len(wal_files(Path(tmp))), 3)}")
            event(f"first segment seq > 0: {wal_files(Path(tmp))[0].name[:16] != '0' * 16}")
        finally:
            s.close()


@settings(max_examples=150, deadline=None)
@given(
    damage=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 2_000)),
)
def test_any_damage_opens_as_a_log_or_is_reported_as_corruption(damage: list[tuple[int, int]], cut: int | None) -> None:
    """Bytes overwritten anywhere in the written part of a segment, and perhaps the file cut short: the log
    opens (the damage read as a torn final write, or hit nothing that matters) or the open fails with
    CorruptLogError / StorageError. Never another exception, and never entries that were not written."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        s = DiskStorage.open(d, segment_bytes=SEG)
        written = [ent(i, data=b"d%d" % i * 9) for i in range(1, 25)]
        for e in written:
            s.save([e], HardState(1, 1, e.index - 1))
        s.close()
        seg = wal_files(d)[-1]
        end = data_end(seg)
        for offset, byte in damage:
            patch(seg, offset % end, bytes([byte]))
        if cut is not None:
            os.truncate(seg, cut % (end + 1))
        try:
            s = DiskStorage.open(d, segment_bytes=SEG)
        except (CorruptLogError, StorageError):
            return
        try:
            got = [(e.index, e.term, e.data) for e in s.entries]
            assert got == [(e.index, e.term, e.data) for e in written[: len(got)]]
        finally:
            s.close()
