"""The durable Raft log: a segmented write-ahead log plus snapshot files.

The byte layout and the recovery rules are specified in docs/raft-storage.md;
change the two together. Nothing here is thread-safe: one driver owns it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import struct
import weakref
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ._codec import decode_snapshot_meta, encode_snapshot_meta, obj_to_entry, pack, unpack
from ._messages import Entry, EntryType, HardState, SnapshotMeta
from .errors import CorruptLogError, StorageError
from .limits import PROPOSAL_BYTES_MAX, WAL_SEGMENT_BYTES

__all__ = ["DiskStorage", "SnapshotFilePayload", "SnapshotFileReader", "write_snapshot_file"]

#: Largest WAL record payload. A record holds one entry and an entry is one
#: proposal, so a bigger length field is damage, not data: refusing it stops a
#: flipped bit from posing as a torn tail that would swallow the rest of the log.
WAL_RECORD_BYTES_MAX = PROPOSAL_BYTES_MAX + 64 * 1024

#: Snapshot files kept on disk: the one in force plus one spare for an operator.
SNAP_FILES_KEPT = 2

#: A snapshot file is written and made durable this many bytes at a time (an fdatasync after each).
#: A WAL fsync on the same disk waits for the writes queued before it: while three processes each
#: wrote and fsynced 170 MB at once (three members' snapshots at a million keys), a 300-byte WAL
#: append waited up to 377 ms for its fdatasync; with 8 MiB steps, at most 86 ms (2026-11-27).
SNAPSHOT_SYNC_BYTES = 8 * 1024 * 1024

# WAL record kinds (first element of every payload; never renumber).
_ENTRY = 0
_HARD_STATE = 1
_SNAPSHOT = 2

_HEADER = struct.Struct(">II")  # payload length, zlib.crc32(payload)
_SNAP_MAGIC = b"KVDSNAP1"
_SNAP_HEADER = struct.Struct(">8sIIQ")  # magic, crc32(meta + data), len(meta), len(data)
_SEGMENT_RE = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.wal")
_SNAP_RE = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.snap")
#: Bytes read at a time when a snapshot file is only checked, not loaded.
_SNAP_CHECK_CHUNK_BYTES = 4 * 1024 * 1024
#: Most data/hole boundaries looked at when finding where a segment's written data ends.
_SEGMENT_EXTENTS_MAX = 64
_ENTRY_TYPES = frozenset(int(t) for t in EntryType)


@dataclass(frozen=True, slots=True)
class _Marker:
    """SNAPSHOT record. ``keep``: entries after ``index`` survived (the log matched the snapshot)."""

    index: int
    term: int
    keep: bool


@dataclass(frozen=True, slots=True, order=True)
class _Segment:
    seq: int
    #: last_index() + 1 when the segment was created; entries below it live in older segments.
    first_index: int
    path: str


def _record(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _marker_record(index: int, term: int, keep: bool) -> bytes:
    return _record(pack([_SNAPSHOT, index, term, keep]))


def _hard_state_record(hs: HardState) -> bytes:
    return _record(pack([_HARD_STATE, hs.term, hs.vote, hs.commit]))


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"{what}: expected a non-negative integer, got {v!r}")
    return v


def _decode(obj: Any) -> Entry | HardState | _Marker:
    """Turn one unpacked payload into a record; ValueError if its shape is wrong."""
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ValueError("payload is not an array starting with a record kind")
    kind = obj[0]
    if kind == _ENTRY:
        return obj_to_entry(obj[1:])
    if kind == _HARD_STATE and len(obj) == 4:
        return HardState(_uint(obj[1], "term"), _uint(obj[2], "vote"), _uint(obj[3], "commit"))
    if kind == _SNAPSHOT and len(obj) == 4 and type(obj[3]) is bool:
        return _Marker(_uint(obj[1], "snapshot index"), _uint(obj[2], "snapshot term"), obj[3])
    raise ValueError(f"unknown record kind {kind} or wrong field count {len(obj)}")


@dataclass(frozen=True, slots=True)
class _End:
    """Where a segment's good records end.

    ``torn`` is None for a clean end: EOF, or only zero bytes up to EOF (the unused, preallocated
    rest of the segment). Otherwise it says why the bytes from the end offset up to ``stop`` are a
    torn final write; every byte from ``stop`` to EOF is zero.
    """

    torn: str | None = None
    stop: int = 0


def _zeros_from(data: bytes, pos: int) -> bool:
    return data.count(0, pos) == len(data) - pos


def _records(path: str, data: bytes, is_last: bool) -> Iterator[tuple[int, Entry | HardState | _Marker | _End]]:
    """Yield (offset, record) for each good record, then (offset, _End) for where they end.

    An all-zero header is never a record (a zero-length record would have crc32(b"") == 0): it
    is the end of the data, and every byte after it must be zero too. A damaged final record
    followed only by zeros is a torn write, accepted only in the last segment.
    """
    view = memoryview(data)
    pos, n = 0, len(data)
    header_bytes, read_header, crc32 = _HEADER.size, _HEADER.unpack_from, zlib.crc32
    while pos < n:
        head = min(n - pos, header_bytes)
        if head == header_bytes:
            length, crc = read_header(data, pos)
            end = pos + header_bytes + length
            # A whole record whose checksum holds, as all but a log's last are: nothing else to test.
            if (
                (length or crc)
                and length <= WAL_RECORD_BYTES_MAX
                and end <= n
                and crc32(view[pos + header_bytes : end]) == crc
            ):
                try:
                    rec = _decode(unpack(data[pos + header_bytes : end]))
                except ValueError as exc:
                    raise CorruptLogError(path, pos, f"undecodable record: {exc}") from exc
                yield pos, rec
                pos = end
                continue
        # Not a good record: the end of the data, a torn final write, or damage.
        if data.count(0, pos, pos + head) == head:
            if not _zeros_from(data, pos):
                raise CorruptLogError(path, pos, "zero record header with non-zero bytes after it")
            break
        if head < header_bytes:
            torn, stop = "record header runs past end of file", n
        elif length > WAL_RECORD_BYTES_MAX:
            raise CorruptLogError(path, pos, f"record length {length} exceeds {WAL_RECORD_BYTES_MAX}")
        elif end > n:
            torn, stop = "record payload runs past end of file", n
        else:  # the checksum does not match
            if not _zeros_from(data, end):
                raise CorruptLogError(path, pos, "checksum mismatch with non-zero bytes after the record")
            torn, stop = "checksum mismatch in the final record", end
        if not is_last:
            raise CorruptLogError(path, pos, f"{torn} in a segment that is not the last")
        yield pos, _End(torn, stop)
        return
    yield pos, _End()


class _Replay:
    """Log state rebuilt record by record, mirroring what DiskStorage did live.

    Invariant: entries[k].index == base + 1 + k, and base >= snap_index. base > snap_index
    means entries (snap_index, base] sat in deleted segments; a later snapshot marker
    must cover them, or the log lost data.
    """

    def __init__(self, marker: _Marker, base: int) -> None:
        if base < marker.index:
            raise ValueError(f"segment first index {base + 1} is below its snapshot marker {marker.index}")
        self.snap_index, self.snap_term, self.base = marker.index, marker.term, base
        self.entries: list[Entry] = []
        self.hard_state = HardState()

    def last(self) -> int:
        return self.base + len(self.entries)

    def entry(self, e: Entry) -> None:
        i, last = e.index, self.last()
        if i <= self.snap_index or i > last + 1:
            raise ValueError(f"entry {i} outside ({self.snap_index}, {last + 1}]: the log is not contiguous")
        if i <= self.base:  # overwrites a prefix we never saw: restart the known part here
            self.entries.clear()
            self.base = i - 1
        else:
            del self.entries[i - self.base - 1 :]
        prev = self.entries[-1].term if self.entries else self.snap_term
        if e.term < max(prev, 1):
            raise ValueError(f"entry {i} has term {e.term} below the previous term {prev}")
        self.entries.append(e)

    def marker(self, m: _Marker) -> None:
        if m.index <= self.snap_index or m.term < self.snap_term:
            raise ValueError(f"snapshot marker {m.index}/{m.term} does not follow {self.snap_index}/{self.snap_term}")
        k = m.index - self.base  # position after entry m.index in self.entries, if known
        known = 0 < k <= len(self.entries)
        if m.keep:
            if k > len(self.entries):
                raise ValueError(f"marker at {m.index} keeps entries but the log ends at {self.last()}")
            if known and self.entries[k - 1].term != m.term:
                raise ValueError(f"marker at {m.index} keeps entries but our entry there has another term")
            if k >= 0:
                del self.entries[:k]
                self.base = m.index
        else:
            if known and self.entries[k - 1].term == m.term:
                raise ValueError(f"marker at {m.index} dropped entries that matched its term {m.term}")
            self.entries.clear()
            self.base = m.index
        self.snap_index, self.snap_term = m.index, m.term

    def set_hard_state(self, hs: HardState) -> None:
        if hs.term < self.hard_state.term:
            raise ValueError(f"hard state term went back from {self.hard_state.term} to {hs.term}")
        self.hard_state = hs


def _read_segment(path: str, is_last: bool) -> bytes:
    """A segment's bytes; of the last one, only up to the end of its written data.

    The last segment is preallocated: most of it may be blocks never written, which read as zeros.
    SEEK_DATA / SEEK_HOLE tell where written data ends (on ext4, xfs, btrfs, tmpfs); every byte
    after that is zero, as _records would have found by reading them, and a record that runs into
    them reads as running past the end, a torn write as before. Where the filesystem cannot tell,
    SEEK_HOLE answers the end of the file, and the whole file is read.
    """
    with open(path, "rb") as f:
        if not is_last:
            return f.read()
        end = _written_end(f.fileno(), os.fstat(f.fileno()).st_size)
        f.seek(0)  # the lseeks moved the file offset
        return f.read(end)


def _written_end(fd: int, size: int) -> int:
    """Where the last extent of written data in ``fd`` ends (``size`` when unsure)."""
    end = pos = 0
    try:
        for _ in range(_SEGMENT_EXTENTS_MAX):
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = pos = os.lseek(fd, start, os.SEEK_HOLE)
            if pos >= size:
                return size
    except OSError as exc:
        return end if exc.errno == errno.ENXIO else size  # ENXIO: no data after pos
    return size


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, chunks: list[bytes], preallocate: int = 0) -> None:
    """Write a new file as temp + fsync + rename + fsync(dir): readers see all of it or none.

    ``preallocate``: also allocate (zero-filled) space up to this size before the fsync.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
        _preallocate(fd, preallocate)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def write_snapshot_file(path: str | os.PathLike[str], meta: SnapshotMeta, data: bytes | Sequence[bytes]) -> None:
    """Write a whole snapshot file (header, meta, data) at ``path`` and fsync it. ``data`` may come
    in pieces, written in order as if joined: a store-sized buffer need never exist.

    For a process that encodes a snapshot away from the log's owner (a forked child): the owner
    then installs the file with :meth:`DiskStorage.install_snapshot`, which only renames it, so
    no snapshot-sized write runs where the WAL's appends wait. ``path`` should come from
    :meth:`DiskStorage.snapshot_temp_path`, which recovery removes if the install never happens.

    The data goes to disk SNAPSHOT_SYNC_BYTES at a time, each step synced before the next one is
    written, so a WAL fsync on the same disk never queues behind the whole file.
    """
    parts = [data] if isinstance(data, bytes) else data
    meta_bytes = encode_snapshot_meta(meta)
    crc = zlib.crc32(meta_bytes)
    for part in parts:
        crc = zlib.crc32(part, crc)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, _SNAP_HEADER.pack(_SNAP_MAGIC, crc, len(meta_bytes), sum(map(len, parts))) + meta_bytes)
        unsynced = 0
        for part in parts:
            with memoryview(part) as view:
                for start in range(0, len(view), SNAPSHOT_SYNC_BYTES):
                    if unsynced >= SNAPSHOT_SYNC_BYTES:
                        os.fdatasync(fd)
                        unsynced = 0
                    _write_all(fd, view[start : start + SNAPSHOT_SYNC_BYTES])
                    unsynced += min(SNAPSHOT_SYNC_BYTES, len(view) - start)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, buf: bytes | memoryview) -> None:
    view = memoryview(buf)
    while view:
        view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, buf: bytes, offset: int) -> None:
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _preallocate(fd: int, size: int) -> bool:
    """Allocate the file's blocks up to ``size`` if it is shorter (new space reads as zeros).

    Appends that stay inside allocated space leave the file size alone, so their fdatasync need
    not commit an inode update. The caller fsyncs: the allocation is metadata. True if it grew.
    """
    if os.fstat(fd).st_size >= size:
        return False
    os.posix_fallocate(fd, 0, size)
    return True


class DiskStorage:
    """Raft's stable storage: hard state, the log after the snapshot, and the snapshot.

    Invariants (checked on save and again on load): entries are contiguous and
    entries[0].index == snapshot.index + 1; entry terms never decrease and are >= snapshot.term;
    hard_state.term never decreases; hard_state.commit <= last_index(); no entry at or below
    the stored commit is ever rewritten with another term.
    The ``entries`` list is owned by the storage: read it, never mutate it.
    """

    hard_state: HardState
    snapshot: SnapshotMeta
    entries: list[Entry]

    def __init__(self, data_dir: str, segment_bytes: int, logger: logging.Logger) -> None:
        self._wal_dir = os.path.join(data_dir, "wal")
        self._snap_dir = os.path.join(data_dir, "snap")
        self._segment_bytes = segment_bytes
        self._log = logger
        self._segments: list[_Segment] = []
        self._fd = -1
        self._segment_size = 0
        self._failure: str | None = None
        self.hard_state, self.snapshot, self.entries = HardState(), SnapshotMeta(), []
        #: Size in bytes of the snapshot file in force (0 without one): what a snapshot costs.
        self.snapshot_file_bytes = 0

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        segment_bytes: int = WAL_SEGMENT_BYTES,
        logger: logging.Logger | None = None,
    ) -> DiskStorage:
        """Create data_dir/wal and data_dir/snap if missing, then recover."""
        if segment_bytes <= 0:
            raise StorageError(f"segment_bytes must be positive, got {segment_bytes}")
        st = cls(os.fspath(data_dir), segment_bytes, logger or logging.getLogger(__name__))
        try:
            for d in (st._wal_dir, st._snap_dir):
                if not os.path.isdir(d):
                    os.makedirs(d)
                    _fsync_dir(os.path.dirname(d))
            st._recover()
        except OSError as exc:
            raise StorageError(f"cannot recover the log in {os.fspath(data_dir)}: {exc}") from exc
        return st

    # --- recovery ---------------------------------------------------------------------------

    def _recover(self) -> None:
        for d in (self._wal_dir, self._snap_dir):
            for name in os.listdir(d):
                if name.endswith(".tmp"):  # an interrupted _write_file: never made visible
                    os.unlink(os.path.join(d, name))
        segments = []
        for name in os.listdir(self._wal_dir):
            m = _SEGMENT_RE.fullmatch(name)
            if m is None:
                raise StorageError(f"unexpected file in {self._wal_dir}: {name}")
            segments.append(_Segment(int(m[1], 16), int(m[2], 16), os.path.join(self._wal_dir, name)))
        segments.sort()
        for a, b in itertools.pairwise(segments):
            if b.seq != a.seq + 1:
                raise StorageError(f"WAL segment {a.seq + 1:016x} is missing between {a.path} and {b.path}")
        if not segments:
            if self._snapshot_files():
                raise StorageError(f"snapshot files exist but {self._wal_dir} has no segments: was the WAL lost?")
            self._segments = []
            self._create_segment(seq=0)
            return
        rep, end, tail = self._replay_segment(segments[0], None, is_last=len(segments) == 1)
        for n, seg in enumerate(segments[1:], start=2):
            rep, end, tail = self._replay_segment(seg, rep, is_last=n == len(segments))
        if rep.base > rep.snap_index:
            raise StorageError(f"entries {rep.snap_index + 1}..{rep.base} are missing: a WAL segment was lost")
        if rep.hard_state.commit > rep.last():
            raise StorageError(f"hard state commit {rep.hard_state.commit} is past the last entry {rep.last()}")
        self.hard_state, self.entries = rep.hard_state, rep.entries
        if rep.snap_index:
            path = self._snap_path(rep.snap_index, rep.snap_term)
            self.snapshot, self.snapshot_file_bytes = self._check_snapshot_file(path, rep.snap_index, rep.snap_term)
        for index, term, path in self._snapshot_files():
            if index > self.snapshot.index or (index == self.snapshot.index and term != self.snapshot.term):
                self._log.warning("removing snapshot file %s: it was written but never installed", path)
                os.unlink(path)
        self._segments = segments
        self._open_last_segment(end, tail)
        self._compact(self.snapshot.index + 1)

    def _open_last_segment(self, end: int, tail: _End) -> None:
        """Open the last segment for writing at ``end``: zero a torn tail, re-preallocate, fsync.

        Runs only after every check of the recovery passed, so a refused open changes no WAL byte.
        """
        path = self._segments[-1].path
        fd = os.open(path, os.O_WRONLY)
        try:
            changed = False
            if tail.torn is not None:
                self._log.warning("WAL %s: %s at offset %d; zeroing the torn tail", path, tail.torn, end)
                _pwrite_all(fd, bytes(tail.stop - end), end)
                changed = True
            if _preallocate(fd, self._segment_bytes) or changed:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._segment_size = fd, end

    def _replay_segment(self, seg: _Segment, rep: _Replay | None, is_last: bool) -> tuple[_Replay, int, _End]:
        """Apply one segment's records to ``rep``; return it, the end of the good records and the tail there."""
        data = _read_segment(seg.path, is_last)
        end, tail, count = 0, _End(), 0
        for off, rec in _records(seg.path, data, is_last):
            if isinstance(rec, _End):
                end, tail = off, rec
                break
            try:
                if count == 0:  # header: the snapshot marker in force when the segment was created
                    if not isinstance(rec, _Marker):
                        raise ValueError("segment does not start with a snapshot marker")
                    if rep is None:
                        rep = _Replay(rec, seg.first_index - 1)
                    elif (rec.index, rec.term, rep.last()) != (rep.snap_index, rep.snap_term, seg.first_index - 1):
                        raise ValueError(f"segment header does not continue the log (last index {rep.last()})")
                elif rep is None:
                    raise ValueError("record before the segment header")
                elif count == 1 and not isinstance(rec, HardState):
                    raise ValueError("segment header lacks its hard state record")
                elif isinstance(rec, Entry):
                    rep.entry(rec)
                elif isinstance(rec, HardState):
                    rep.set_hard_state(rec)
                else:
                    rep.marker(rec)
            except ValueError as exc:
                raise CorruptLogError(seg.path, off, str(exc)) from exc
            count += 1
        if rep is None or count < 2:
            raise CorruptLogError(seg.path, end, "segment lacks its snapshot marker and hard state header")
        return rep, end, tail

    # --- public API -------------------------------------------------------------------------

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def load_snapshot_data(self) -> bytes | None:
        """The data of the snapshot in force, whole and checked (None without one). The node reads it in
        order instead (open_snapshot_data, snapshot_payload): a snapshot is as large as the store."""
        source = self.open_snapshot_data()
        if source is None:
            return None
        with source:
            try:
                return source.read(source.size)
            except OSError as exc:
                raise StorageError(f"cannot read snapshot {source.path}: {exc}") from exc

    def open_snapshot_data(self) -> SnapshotFileReader | None:
        """The data of the snapshot in force, to be read in order (None without one); close it after.

        A restore reads it as it goes, so a member never holds the whole snapshot beside the state it
        builds from it: at a million keys that was 180 MB more at the peak of a restart.
        """
        opened = self._open_snapshot_in_force()
        return None if opened is None else SnapshotFileReader(*opened)

    def snapshot_payload(self) -> SnapshotFilePayload | None:
        """The data of the snapshot in force, for a peer: read from the file a chunk at a time as it is
        sent (None without a snapshot). Each send gets its own, so sends to several peers never share
        a position or a checksum."""
        opened = self._open_snapshot_in_force()
        return None if opened is None else SnapshotFilePayload(SnapshotFileReader(*opened), self._log)

    def _open_snapshot_in_force(self) -> tuple[BinaryIO, str, _SnapHead] | None:
        """The snapshot file in force, open and checked up to its data (its header and meta); None without one."""
        self._check_usable()
        if not self.snapshot.index:
            return None
        path = self._snap_path(self.snapshot.index, self.snapshot.term)
        f = self._open_snapshot(path, self.snapshot.index, self.snapshot.term)
        try:
            return f, path, _snapshot_file_header(f, path, self.snapshot.index, self.snapshot.term)
        except BaseException:
            f.close()
            raise

    def snapshot_temp_path(self, meta: SnapshotMeta) -> str:
        """Where :func:`write_snapshot_file` should write the snapshot ``meta`` for install_snapshot."""
        return self._snap_path(meta.index, meta.term) + ".child.tmp"

    def save(self, entries: list[Entry], hard_state: HardState | None) -> None:
        """Durably append entries and/or hard state with one pwrite and one fdatasync (group commit).

        An entries[0].index at or below last_index() first truncates the log there (Raft conflict
        truncation). Misuse raises StorageError with nothing written.
        """
        self._check_usable()
        snap, old = self.snapshot, self.entries
        last, commit = snap.index + len(old), self.hard_state.commit
        parts: list[bytes] = []
        new_last = last
        if entries:
            first = entries[0].index
            if type(first) is not int or not snap.index < first <= last + 1:
                raise StorageError(f"entries start at {first}, outside ({snap.index}, {last + 1}]")
            # Committed entries are final: an overlap may only repeat them.
            for k, e in enumerate(entries[: max(0, min(commit, last) - first + 1)]):
                if e.term != old[first + k - snap.index - 1].term:
                    raise StorageError(f"entry {first + k} would overwrite a committed entry (commit {commit})")
            prev = old[first - snap.index - 2].term if first - 1 > snap.index else snap.term
            prev, expect = max(prev, 1), first
            header, crc32 = _HEADER.pack, zlib.crc32
            for e in entries:
                term = e.term
                if e.index != expect or type(term) is not int or term < prev:
                    raise StorageError(f"entry {e.index}/{term}: expected index {expect} and term >= {prev}")
                if type(e.data) is not bytes or e.type not in _ENTRY_TYPES:
                    raise StorageError(f"entry {expect}: data must be bytes and type an EntryType")
                p = pack([_ENTRY, term, expect, int(e.type), e.data])
                if len(p) > WAL_RECORD_BYTES_MAX:
                    raise StorageError(f"entry {expect} is {len(p)} bytes, over {WAL_RECORD_BYTES_MAX}")
                parts.append(header(len(p), crc32(p)))
                parts.append(p)
                expect += 1
                prev = term
            new_last = expect - 1
            if new_last < min(commit, last):
                raise StorageError(f"truncating to {new_last} would drop committed entries (commit {commit})")
        if hard_state is not None and hard_state != self.hard_state:
            if hard_state.term < self.hard_state.term:
                raise StorageError(f"hard state term would go back from {self.hard_state.term} to {hard_state.term}")
            if hard_state.commit > new_last:
                raise StorageError(f"hard state commit {hard_state.commit} is past the last entry {new_last}")
            parts.append(_hard_state_record(hard_state))
        else:
            hard_state = None
        if not parts:
            return
        self._append(b"".join(parts))
        if entries:
            del old[first - snap.index - 1 :]
            old.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        self._maybe_roll()

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Install a snapshot as the new base of the log.

        Entries after meta.index survive only if our entry at meta.index has meta.term (the
        snapshot is a prefix of our log); otherwise the log restarts at meta.index + 1.
        """
        self._check_usable()
        keep = self._snapshot_keeps_log(meta)
        if not isinstance(data, bytes):
            raise StorageError("snapshot data must be bytes")
        path = self._snap_path(meta.index, meta.term)
        try:
            write_snapshot_file(path + ".tmp", meta, data)
            os.replace(path + ".tmp", path)
            _fsync_dir(self._snap_dir)
        except OSError as exc:
            raise StorageError(f"cannot write snapshot {meta.index}/{meta.term}: {exc}") from exc
        self._snapshot_installed(meta, keep, os.path.getsize(path))

    def install_snapshot(self, meta: SnapshotMeta, temp_path: str) -> None:
        """Install the snapshot that :func:`write_snapshot_file` wrote (and fsynced) at ``temp_path``.

        As :meth:`save_snapshot`, but the data is already on disk: the file's header and meta are
        checked, then it is renamed into place. Its data is not read back (the writer checksummed
        it; recovery and every load check the checksum). On refusal the temp file stays for the
        caller to remove; nothing else changed.
        """
        self._check_usable()
        keep = self._snapshot_keeps_log(meta)
        path = self._snap_path(meta.index, meta.term)
        try:
            with open(temp_path, "rb") as f:
                head = _snapshot_file_header(f, temp_path, meta.index, meta.term)
            if head.meta != meta:
                raise StorageError(f"{temp_path}: holds another snapshot than {meta}")
            os.replace(temp_path, path)
            _fsync_dir(self._snap_dir)
        except (OSError, CorruptLogError) as exc:
            raise StorageError(f"cannot install snapshot {meta.index}/{meta.term}: {exc}") from exc
        self._snapshot_installed(meta, keep, head.file_len)

    def _snapshot_keeps_log(self, meta: SnapshotMeta) -> bool:
        """Check that ``meta`` may become the base; whether our entries after it survive it."""
        old = self.snapshot
        if meta.index <= old.index or meta.term < max(old.term, 1):
            raise StorageError(f"snapshot {meta.index}/{meta.term} does not follow {old.index}/{old.term}")
        k = meta.index - old.index  # entries[:k] are covered by the snapshot
        keep = k <= len(self.entries) and self.entries[k - 1].term == meta.term
        if not keep and self.hard_state.commit >= meta.index:
            raise StorageError(f"snapshot {meta.index}/{meta.term} conflicts with committed entries")
        return keep

    def _snapshot_installed(self, meta: SnapshotMeta, keep: bool, file_bytes: int) -> None:
        """The snapshot file is durable under its name: record it in the WAL, then drop what it covers."""
        k = meta.index - self.snapshot.index
        self._append(_marker_record(meta.index, meta.term, keep))
        if keep:
            del self.entries[:k]
        else:
            self.entries.clear()
        self.snapshot = meta
        self.snapshot_file_bytes = file_bytes
        self._maybe_roll()
        self._compact(meta.index + 1 if keep else None)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._failure = self._failure or "storage is closed"

    # --- writing ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StorageError(f"storage unusable: {self._failure}")

    def _append(self, buf: bytes) -> None:
        """Append to the current segment and fdatasync; on any failure stop for good (fsync errors are sticky).

        The write goes at the end of the data, into the preallocated zeros; a batch that does not
        fit in them extends the file. Every byte after the data is zero, which is how recovery
        tells the end of the data and a torn last write apart.
        """
        try:
            _pwrite_all(self._fd, buf, self._segment_size)
            os.fdatasync(self._fd)
        except OSError as exc:
            self._failure = f"WAL append failed: {exc}"
            with contextlib.suppress(OSError):  # never leave a partial record for the next append to bury
                os.ftruncate(self._fd, self._segment_size)  # recovery preallocates the segment again
            raise StorageError(self._failure) from exc
        self._segment_size += len(buf)

    def _maybe_roll(self) -> None:
        if self._segment_size > self._segment_bytes:
            try:
                self._create_segment(self._segments[-1].seq + 1)
            except OSError as exc:
                self._failure = f"cannot start a new WAL segment: {exc}"
                raise StorageError(self._failure) from exc

    def _create_segment(self, seq: int) -> None:
        """Start a segment that opens with the snapshot marker and hard state, so older ones can go.

        It is preallocated to segment_bytes before its one fsync, and appears whole under its name.
        """
        first = self.last_index() + 1
        path = os.path.join(self._wal_dir, f"{seq:016x}-{first:016x}.wal")
        header = _marker_record(self.snapshot.index, self.snapshot.term, True) + _hard_state_record(self.hard_state)
        _write_file(path, [header], preallocate=self._segment_bytes)
        fd = os.open(path, os.O_WRONLY)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._segment_size = fd, len(header)
        self._segments.append(_Segment(seq, first, path))

    def _compact(self, cut: int | None) -> None:
        """Delete segments replay no longer needs, then all but the newest SNAP_FILES_KEPT snapshots.

        Replay may start at a segment whose first_index <= cut (cut = snapshot.index + 1): the
        entries it did not see are all covered by the snapshot. cut None (the log was dropped)
        lets replay start at the current segment.
        """
        segs = self._segments
        start = len(segs) - 1
        if cut is not None:
            while start > 0 and segs[start].first_index > cut:
                start -= 1
        try:
            for seg in segs[:start]:  # oldest first, each durable, so a crash leaves a suffix
                os.unlink(seg.path)
                _fsync_dir(self._wal_dir)
            del segs[:start]
            snaps = self._snapshot_files()
            for _, _, path in snaps[: max(0, len(snaps) - SNAP_FILES_KEPT)]:
                os.unlink(path)
            if len(snaps) > SNAP_FILES_KEPT:
                _fsync_dir(self._snap_dir)
        except OSError as exc:  # nothing durable depends on this: retry at the next snapshot
            self._log.warning("could not remove obsolete WAL or snapshot files: %s", exc)

    # --- snapshot files ---------------------------------------------------------------------

    def _snap_path(self, index: int, term: int) -> str:
        return os.path.join(self._snap_dir, f"{index:016x}-{term:016x}.snap")

    def _snapshot_files(self) -> list[tuple[int, int, str]]:
        named = ((_SNAP_RE.fullmatch(name), name) for name in os.listdir(self._snap_dir))
        return sorted((int(m[1], 16), int(m[2], 16), os.path.join(self._snap_dir, n)) for m, n in named if m)

    def _check_snapshot_file(self, path: str, index: int, term: int) -> tuple[SnapshotMeta, int]:
        """Check a snapshot file whole (checksum included) a chunk at a time; its meta and size."""
        with self._open_snapshot(path, index, term) as f:
            head = _snapshot_file_header(f, path, index, term)
            crc, left = head.crc_so_far, head.data_len
            while left:
                chunk = f.read(min(left, _SNAP_CHECK_CHUNK_BYTES))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
        if left or crc != head.crc:
            raise CorruptLogError(path, _SNAP_HEADER.size, "snapshot checksum mismatch")
        return head.meta, head.file_len

    @staticmethod
    def _open_snapshot(path: str, index: int, term: int) -> BinaryIO:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise CorruptLogError(
                path, 0, f"snapshot file for the WAL's newest marker {index}/{term} is missing"
            ) from None


class SnapshotFileReader:
    """A snapshot file's data, read in order and checked against the file's checksum as it is read.

    Reading the last byte checks the checksum of the whole: a mismatch raises CorruptLogError then, so a
    consumer that builds its state aside and puts it in force only after reading everything (as a
    restore does) never puts damaged data in force. Recovery checked the file whole already; this
    checks again what is actually read.
    """

    def __init__(self, f: BinaryIO, path: str, head: _SnapHead) -> None:
        self._f, self._head = f, head
        #: The snapshot file.
        self.path = path
        self._left = head.data_len
        self._crc = head.crc_so_far
        #: Bytes of data in the file.
        self.size = head.data_len

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end, b"" after it)."""
        if n <= 0 or not self._left:
            return b""
        chunk = self._f.read(min(n, self._left))
        if not chunk:
            raise CorruptLogError(self.path, _SNAP_HEADER.size, "snapshot file shorter than its header says")
        self._left -= len(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        if not self._left and self._crc != self._head.crc:
            raise CorruptLogError(self.path, _SNAP_HEADER.size, "snapshot checksum mismatch")
        return chunk

    def remaining(self) -> int:
        return self._left

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SnapshotFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotFilePayload:
    """A snapshot file's data to send to a peer, sliced a chunk at a time by the transport: each chunk is
    read from the file as it goes out, so a leader never holds a snapshot (as large as its store) to send
    it. The file is open from the moment the send is queued, so a newer snapshot replacing it meanwhile
    does not cut the send short.

    Chunks are read in order through a SnapshotFileReader, so they are checked against the file's
    checksum: a mismatch makes the last chunk raise OSError (EIO), which fails the send as a lost
    connection would, so damaged bytes never complete a snapshot on the peer; it is logged, since every
    later send of that file will fail the same way.
    """

    def __init__(self, reader: SnapshotFileReader, logger: logging.Logger) -> None:
        self._reader, self._log = reader, logger
        self._close = weakref.finalize(self, reader.close)  # the transport may drop a send before its end

    def __len__(self) -> int:
        return self._reader.size

    def __getitem__(self, part: slice, /) -> bytes:
        reader = self._reader
        if not self._close.alive:
            raise OSError(errno.EBADF, f"{reader.path}: snapshot payload already read to its end")
        start, stop, step = part.indices(reader.size)
        if step != 1 or start != reader.size - reader.remaining():
            raise ValueError("a snapshot payload is read in order, in contiguous chunks")
        try:
            chunk = reader.read(stop - start)
        except CorruptLogError as exc:
            self._log.error("snapshot file %s: %s; not sent", reader.path, exc)
            raise OSError(errno.EIO, str(exc)) from exc
        finally:
            if not reader.remaining():
                self._close()
        return chunk


@dataclass(frozen=True, slots=True)
class _SnapHead:
    meta: SnapshotMeta
    file_len: int
    data_len: int
    #: The checksum the header promises for meta + data, and the running checksum over the meta.
    crc: int
    crc_so_far: int


def _snapshot_file_header(f: BinaryIO, path: str, index: int, term: int) -> _SnapHead:
    """Read and check a snapshot file's header and meta, leaving ``f`` at the start of the data."""
    size = _SNAP_HEADER.size
    head = f.read(size)
    if len(head) < size or head[:8] != _SNAP_MAGIC:
        raise CorruptLogError(path, 0, "not a kvdisco snapshot file (bad magic or short header)")
    _, crc, meta_len, data_len = _SNAP_HEADER.unpack(head)
    file_len = os.fstat(f.fileno()).st_size
    if file_len != size + meta_len + data_len:
        raise CorruptLogError(path, size, f"length {file_len - size} != header's {meta_len} + {data_len}")
    meta_bytes = f.read(meta_len)
    try:
        meta = decode_snapshot_meta(meta_bytes)
    except ValueError as exc:
        raise CorruptLogError(path, size, f"undecodable snapshot meta: {exc}") from exc
    if (meta.index, meta.term) != (index, term):
        raise CorruptLogError(path, size, f"snapshot meta {meta.index}/{meta.term} != expected {index}/{term}")
    return _SnapHead(meta, file_len, data_len, crc, zlib.crc32(meta_bytes))
