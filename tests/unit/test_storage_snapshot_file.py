"""Snapshot files written away from the log's owner and installed by rename, and the WAL's last
segment read only up to its written data."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from kvdisco.mvcc.commands import encode_command
from kvdisco.mvcc.kvstore import RequestPut
from kvdisco.raft._messages import ConfState, Entry, HardState, SnapshotMeta
from kvdisco.raft.errors import CorruptLogError, StorageError
from kvdisco.raft.storage import DiskStorage, write_snapshot_file


def ent(index: int, term: int = 1, data: bytes | None = None) -> Entry:
    return Entry(term, index, b"e%d" % index if data is None else data)


def snap_dir_names(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "snap").iterdir())


def filled(d: Path, n: int = 8) -> DiskStorage:
    s = DiskStorage.open(d)
    s.save([ent(i) for i in range(1, n + 1)], HardState(1, 1, n))
    return s


def test_install_renames_the_written_file_and_compacts(tmp_path: Path) -> None:
    s = filled(tmp_path)
    meta = SnapshotMeta(5, 1, ConfState(frozenset({1, 2})))
    data = b"state" * 1000
    temp = s.snapshot_temp_path(meta)
    write_snapshot_file(temp, meta, data)
    s.install_snapshot(meta, temp)
    assert not os.path.exists(temp)
    assert s.snapshot == meta and [e.index for e in s.entries] == [6, 7, 8]
    assert s.load_snapshot_data() == data
    assert s.snapshot_file_bytes == os.path.getsize(tmp_path / "snap" / f"{5:016x}-{1:016x}.snap")
    size = s.snapshot_file_bytes
    s.close()
    s = DiskStorage.open(tmp_path)
    assert (s.snapshot, s.load_snapshot_data(), s.snapshot_file_bytes) == (meta, data, size)
    assert [e.index for e in s.entries] == [6, 7, 8]
    # save_snapshot writes the same file format.
    s.save_snapshot(SnapshotMeta(7, 1, meta.conf_state), b"seven")
    s.close()
    s = DiskStorage.open(tmp_path)
    assert (s.snapshot.index, s.load_snapshot_data()) == (7, b"seven")


@pytest.mark.parametrize("damage", ["other_meta", "truncated", "garbage"])
def test_install_refuses_a_bad_file_and_changes_nothing(tmp_path: Path, damage: str) -> None:
    s = filled(tmp_path)
    meta = SnapshotMeta(5, 1)
    temp = s.snapshot_temp_path(meta)
    if damage == "other_meta":
        write_snapshot_file(temp, SnapshotMeta(5, 1, ConfState(frozenset({9}))), b"x" * 100)
    elif damage == "truncated":
        write_snapshot_file(temp, meta, b"x" * 100)
        with open(temp, "r+b") as f:
            f.truncate(50)
    else:
        Path(temp).write_bytes(b"not a snapshot at all")
    with pytest.raises(StorageError):
        s.install_snapshot(meta, temp)
    assert s.snapshot == SnapshotMeta() and len(s.entries) == 8 and os.path.exists(temp)
    s.save([ent(9)], None)  # the log is still usable
    s.close()
    s = DiskStorage.open(tmp_path)  # and the temp file is gone after a restart
    assert s.snapshot == SnapshotMeta() and s.last_index() == 9
    assert snap_dir_names(tmp_path) == []


def test_install_refuses_a_snapshot_that_does_not_follow(tmp_path: Path) -> None:
    s = filled(tmp_path)
    s.save_snapshot(SnapshotMeta(6, 1), b"six")
    meta = SnapshotMeta(4, 1)
    temp = s.snapshot_temp_path(meta)
    write_snapshot_file(temp, meta, b"four")
    with pytest.raises(StorageError, match="does not follow"):
        s.install_snapshot(meta, temp)
    assert s.snapshot.index == 6 and s.load_snapshot_data() == b"six"


def test_a_crash_before_install_leaves_a_recoverable_dir(tmp_path: Path) -> None:
    """A child killed mid-write, or a parent killed before the rename: the temp file is dropped."""
    s = filled(tmp_path)
    s.save_snapshot(SnapshotMeta(3, 1), b"three")
    meta = SnapshotMeta(6, 1)
    temp = s.snapshot_temp_path(meta)
    write_snapshot_file(temp, meta, b"six")
    with open(temp, "r+b") as f:
        f.truncate(10)
    s.close()
    s = DiskStorage.open(tmp_path)
    assert (s.snapshot.index, s.load_snapshot_data(), s.last_index()) == (3, b"three", 8)
    assert snap_dir_names(tmp_path) == [f"{3:016x}-{1:016x}.snap"]


def test_load_checks_the_checksum_again(tmp_path: Path) -> None:
    s = filled(tmp_path)
    s.save_snapshot(SnapshotMeta(3, 1), b"snapshot-bytes")
    path = tmp_path / "snap" / f"{3:016x}-{1:016x}.snap"
    blob = bytearray(path.read_bytes())
    blob[-2] ^= 0xFF  # damage after the open checked it
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptLogError, match="checksum"):
        s.load_snapshot_data()


@pytest.mark.parametrize("zeros", [1, 5000, 70_000])
def test_a_last_record_ending_in_zero_bytes_survives_reopen(tmp_path: Path, zeros: int) -> None:
    """The last segment is read up to where its written data ends: a record whose own bytes end in
    zeros (here across block boundaries) is data, not the preallocated tail."""
    s = DiskStorage.open(tmp_path)
    data = b"x" + bytes(zeros)
    s.save([ent(1), ent(2, data=data)], HardState(1, 1, 2))
    s.close()
    s = DiskStorage.open(tmp_path)
    assert [e.data for e in s.entries] == [b"e1", data]
    s.save([ent(3)], HardState(1, 1, 3))  # appends go after it, not over it
    s.close()
    s = DiskStorage.open(tmp_path)
    assert [e.data for e in s.entries] == [b"e1", data, b"e3"]


def test_a_torn_tail_past_the_written_data_is_still_zeroed(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save([ent(i) for i in range(1, 4)], HardState(1, 1, 3))
    end = s._segment_size
    path = s._segments[-1].path
    s.close()
    with open(path, "r+b") as f:  # a header promising a payload that never reached the disk
        f.seek(end)
        f.write(b"\x00\x00\x01\x00\xde\xad\xbe\xef" + b"\x93" * 7)
    s = DiskStorage.open(tmp_path)
    assert s.last_index() == 3
    s.save([ent(4)], HardState(1, 1, 4))
    s.close()
    s = DiskStorage.open(tmp_path)
    assert [e.index for e in s.entries] == [1, 2, 3, 4]


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5 * 1024 + 7])
def test_a_snapshot_written_in_synced_steps_reads_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Written SNAPSHOT_SYNC_BYTES at a time, with an fdatasync between steps: the same bytes, every size."""
    import kvdisco.raft.storage as storage_mod

    monkeypatch.setattr(storage_mod, "SNAPSHOT_SYNC_BYTES", 1024)
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fdatasync(fd)

    s = filled(tmp_path)
    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    meta = SnapshotMeta(5, 1, ConfState(frozenset({1})))
    data = bytes(i % 251 for i in range(size))
    temp = s.snapshot_temp_path(meta)
    write_snapshot_file(temp, meta, data)
    header = os.path.getsize(temp) - size
    # One sync after each full step but the last; the final fsync covers the rest.
    assert synced == [header + 1024 * (i + 1) for i in range(max(0, (size - 1) // 1024))]
    monkeypatch.undo()
    s.install_snapshot(meta, temp)
    s.close()
    s = DiskStorage.open(tmp_path)
    assert s.load_snapshot_data() == data


@pytest.mark.parametrize("cuts", [[], [0, 0], [1, 2, 700], [1023, 1024, 2048], [3000, 5 * 1024 + 7]])
def test_a_snapshot_in_pieces_writes_the_file_of_the_joined_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuts: list[int]
) -> None:
    """A member hands the store's pages over one by one: the file is that of their concatenation."""
    import kvdisco.raft.storage as storage_mod

    monkeypatch.setattr(storage_mod, "SNAPSHOT_SYNC_BYTES", 1024)
    meta = SnapshotMeta(5, 1, ConfState(frozenset({1})))
    data = bytes(i % 251 for i in range(5 * 1024 + 7))
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    write_snapshot_file(tmp_path / "pieces", meta, pieces)
    write_snapshot_file(tmp_path / "whole", meta, data)
    assert (tmp_path / "pieces").read_bytes() == (tmp_path / "whole").read_bytes()


def test_snapshot_data_is_read_in_pieces_as_written(tmp_path: Path) -> None:
    s = filled(tmp_path)
    data = bytes(range(256)) * 5000
    s.save_snapshot(SnapshotMeta(5, 1), data)
    assert s.open_snapshot_data() is not None
    reader = s.open_snapshot_data()
    assert reader is not None
    with reader:
        assert (reader.size, reader.remaining()) == (len(data), len(data))
        pieces = []
        while piece := reader.read(70_000):
            pieces.append(piece)
        assert b"".join(pieces) == data and reader.remaining() == 0 and reader.read(1) == b""
    s.close()
    assert DiskStorage.open(tmp_path / "empty").open_snapshot_data() is None


def test_a_snapshot_damaged_after_recovery_fails_its_restore_and_changes_nothing(tmp_path: Path) -> None:
    """The checksum is checked on the last read: a store built from the file is never put in force."""
    from kvdisco.mvcc.machine import KVMachine

    source = KVMachine()
    for i in range(1, 2000):
        source.apply(i, encode_command(RequestPut(b"k%05d" % i, b"v" * 50)))
    s = filled(tmp_path)
    s.save_snapshot(SnapshotMeta(5, 1), source.snapshot())
    s.close()
    s = DiskStorage.open(tmp_path)  # checks the file whole
    path = tmp_path / "snap" / f"{5:016x}-{1:016x}.snap"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # damage after the open checked the file
    path.write_bytes(bytes(raw))
    target = KVMachine()
    target.apply(1, encode_command(RequestPut(b"mine", b"1")))
    before = target.snapshot()
    reader = s.open_snapshot_data()
    assert reader is not None
    with reader, pytest.raises(CorruptLogError, match="checksum"):
        target.restore(reader)
    assert target.snapshot() == before
    raw[-1] ^= 0xFF  # as written again: it restores
    path.write_bytes(bytes(raw))
    reader = s.open_snapshot_data()
    assert reader is not None
    with reader:
        target.restore(reader)
    assert target.store.range(b"k01999").kvs[0].value == b"v" * 50


def test_a_snapshot_payload_reads_each_chunk_from_the_file_as_it_is_taken(tmp_path: Path) -> None:
    s = filled(tmp_path)
    data = bytes(range(256)) * 4000
    s.save_snapshot(SnapshotMeta(5, 1), data)
    payload = s.snapshot_payload()
    assert payload is not None and len(payload) == len(data)
    # A newer snapshot replaces the file meanwhile, and the old file is deleted: the send under way still
    # reads the one it opened.
    s.save([ent(i) for i in range(9, 12)], HardState(1, 1, 11))
    s.save_snapshot(SnapshotMeta(10, 1), b"newer")
    os.unlink(tmp_path / "snap" / f"{5:016x}-{1:016x}.snap")
    chunks = [payload[i : i + 65_536] for i in range(0, len(payload), 65_536)]
    assert b"".join(chunks) == data
    with pytest.raises(OSError):
        payload[0:1]  # read to its end: closed
    newer = s.snapshot_payload()
    assert newer is not None and newer[0:1_000] == b"newer"


def test_a_snapshot_payload_with_a_bad_checksum_fails_on_its_last_chunk(tmp_path: Path) -> None:
    s = filled(tmp_path)
    data = b"state" * 50_000
    s.save_snapshot(SnapshotMeta(5, 1), data)
    path = tmp_path / "snap" / f"{5:016x}-{1:016x}.snap"
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # damage after the open checked it
    path.write_bytes(bytes(raw))
    payload = s.snapshot_payload()
    assert payload is not None
    first = payload[0:100_000]  # taken: the damage is further on
    assert first == data[:100_000]
    with pytest.raises(OSError, match="checksum"):
        payload[100_000 : len(payload)]
