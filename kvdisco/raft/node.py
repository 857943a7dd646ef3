"""The asyncio driver: runs the sans-I/O core against real disks, sockets and time.

The Ready contract, kept in this order by :meth:`Node._run`:

1. send ``messages_before_persist`` (the leader's outbound log, thesis §10.2.1);
2. persist the snapshot, entries and hard state with one fsync (in the I/O thread,
   so the event loop keeps stepping messages and taking proposals meanwhile; or, for
   a follower and for an unloaded leader, on the loop thread: see ``_persist_inline``);
3. send ``messages`` (votes, acks: only now is what they promise durable);
4. restore the snapshot, apply committed entries, answer waiting callers;
5. ``advance`` the core.

A Ready with nothing to persist (a commit) applies first and sends after: its
messages carry no promise of durability, and the callers answered go first.

Everything the core needs to know arrives through the event loop thread; the
I/O thread only ever touches :class:`DiskStorage`, one call at a time, and the
loop thread calls it only while no job is queued on or running in the I/O thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import gc
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgpack

from . import limits
from ._codec import decode_conf_change, encode_conf_change, msgpack_bin_header, read_msgpack_bin_header
from ._core import Config
from ._messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    SnapshotMeta,
    StateRole,
)
from ._rawnode import RawNode
from .errors import InvariantViolation, NotLeader, ProposalDropped, RaftError, StorageError
from .storage import DiskStorage, SnapshotFilePayload, write_snapshot_file
from .transport import PeerTransport

__all__ = ["MemberInfo", "Node", "NodeConfig", "SnapshotSource", "StateMachine", "member_id"]

log = logging.getLogger("kvdisco.raft.node")

_T = TypeVar("_T")

#: Version of the snapshot wrapper written by Node._encode_snapshot.
_SNAPSHOT_FORMAT = 1

#: A read waits at most this long for its ReadIndex round before failing (the leader may have changed).
READ_TIMEOUT_S = 5.0

#: Applied entries between two automatic snapshots, at least (etcd's --snapshot-count defaults to 100,000;
#: a Python node replays more slowly, so it snapshots more often). A large state waits for more: see
#: SNAPSHOT_GROWTH.
SNAPSHOT_ENTRIES = 20_000

#: Bytes of applied entries between two automatic snapshots, whatever their number: one batched entry
#: can carry a thousand writes, and a node must not replay a huge log on restart for want of entries.
#: Each entry counts SNAPSHOT_ENTRY_BYTES more than its own size here, so that this bounds what a restart
#: replays in time, for a mix of large and small entries too (see SNAPSHOT_ENTRY_BYTES). A restarted member
#: at a million keys applies about 0.09 us a byte of txns and 27 us a single put: 32 MiB is about 3 s of
#: replay whatever the mix (48 MiB let one replay 939 txns and 95,171 puts for 4.95 s, a 10.3 s restart).
SNAPSHOT_BYTES = 32 * 1024 * 1024

#: What one entry costs to apply beyond its bytes, as bytes of a large entry that cost as much: at a
#: million keys a 169-byte single put applied in about 23 us and a 21.5 KB txn of 128 puts in 1.7 ms,
#: so about 10 us an entry plus 0.08 us a byte. Counting bytes alone let a bulk load's tail (34 MB of
#: txns) and then 85,584 single puts (14 MB), each under its own bound, add up to 5-7 s of replay.
SNAPSHOT_ENTRY_BYTES = 128

#: Applied entries after which a snapshot is taken whatever the state's size: what a restart replays
#: is bounded by this and SNAPSHOT_BYTES (100,000 single puts replay in a few seconds at a million keys).
SNAPSHOT_ENTRIES_MAX = 100_000

#: A snapshot costs O(state): encoding it in the child, writing it, the fork's copied pages. Above
#: SNAPSHOT_CHEAP_BYTES one is taken, between SNAPSHOT_ENTRIES and SNAPSHOT_ENTRIES_MAX entries, only
#: once the entries applied since the last one weigh this fraction of it (as an append-only file is
#: rewritten at 100 % growth), so the cost per applied byte stays bounded however large the state.
SNAPSHOT_GROWTH = 1.0

#: Snapshot files smaller than this are cheap enough to take every SNAPSHOT_ENTRIES entries.
SNAPSHOT_CHEAP_BYTES = 8 * 1024 * 1024

#: Members apply the same entries, so the same thresholds would have them all take their large snapshots
#: at one moment, each child slowing its member at once (a quorum's worth of slow members). Each member is
#: offset by this fraction of a period per place of its id among the members (0, 1/4 and 1/2 of a period
#: with three): the SNAPSHOT_ENTRIES_MAX bound falls at log indexes offset by as much (a crossing that
#: comes too soon after the member's last snapshot is skipped: see Node._next_crossing), and the first
#: snapshot after a start under the bytes bound or the growth rule comes as much earlier.
SNAPSHOT_STAGGER = 0.75

#: prctl option (Linux): the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

#: Scheduling niceness of the snapshot child (0 is the member's own; 19 the lowest priority).
SNAPSHOT_CHILD_NICE = 10

#: Seconds before trying again after a snapshot child failed.
SNAPSHOT_RETRY_S = 5.0

#: The leader writes and fsyncs its WAL on the loop thread (see Node._persist_inline) only while at most
#: this many proposals made here wait for their outcome. More mean load: the loop then has requests to
#: take and appends to send while the I/O thread syncs.
LEADER_INLINE_FSYNC_WAITERS_MAX = 2

#: File in the data dir holding the cluster id (hex), written once, when the member first knows it.
CLUSTER_ID_FILE = "cluster_id"


class StateMachine(Protocol):
    """What the library replicates. ``apply`` must be deterministic and must not raise for bad
    commands: return an error value instead (an exception is a bug and stops the node)."""

    def apply(self, index: int, command: bytes) -> Any: ...

    def publish(self) -> None:
        """Tell local observers (watchers) what ``apply`` changed since the last call.

        Called once per batch of applied entries, after this member's messages that others wait on
        (a new commit index, an acknowledgement) are sent: a fan-out to many local watchers then
        never holds back the cluster's commits, nor the followers' own watchers.
        """

    def snapshot(self) -> bytes | list[bytes]:
        """The whole state; as a list of pieces (to be concatenated in order), a large state reaches
        the snapshot file without first being copied into one buffer."""

    def restore(self, data: SnapshotSource) -> None:
        """Replace the state with a snapshot's, read from ``data`` up to its end, in pieces as needed: a
        snapshot is as large as the state, and the file's is never read whole into memory. A read may
        raise (CorruptLogError when the file's checksum fails at its end): then nothing may change."""


class SnapshotSource(Protocol):
    """A snapshot's state, read in order: from the snapshot file (storage.SnapshotFileReader), both at a
    restart and for a snapshot received from the leader (saved to its file first)."""

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end, b"" after it."""

    def remaining(self) -> int:
        """Bytes not read yet."""


def wrap_snapshot(members: dict[int, bytes], state: bytes | list[bytes]) -> list[bytes]:
    """A node's snapshot data, in pieces: ``msgpack.packb([format, members, state])`` once joined,
    with the state's pieces passed through uncopied."""
    parts = [state] if isinstance(state, bytes) else state
    packer = msgpack.Packer(use_bin_type=True)
    head = packer.pack_array_header(3) + packer.pack(_SNAPSHOT_FORMAT) + packer.pack(members)
    return [head + msgpack_bin_header(sum(map(len, parts))), *parts]


def unwrap_snapshot(source: SnapshotSource) -> tuple[object, object]:
    """Read the (format, members) of a node's snapshot data (see wrap_snapshot) from ``source``, leaving
    it at the state, which runs to its end; raises ValueError if it is not a node's snapshot.

    The head is read a byte at a time (it is small), so not a byte of the state is read here: the
    state machine reads the state from ``source`` itself, as it needs it.
    """
    unpacker = msgpack.Unpacker(source, read_size=1, raw=False, strict_map_key=False)
    try:
        fields = unpacker.read_array_header()
        if fields != 3:
            raise ValueError(f"snapshot data is an array of {fields}, not 3")
        fmt, members = unpacker.unpack(), unpacker.unpack()
    except msgpack.OutOfData:
        raise ValueError("snapshot data cut short") from None
    except (msgpack.UnpackException, TypeError) as exc:  # ValueError passes through as it is
        raise ValueError(f"snapshot data does not decode: {exc!r}") from None
    size = read_msgpack_bin_header(source.read)
    if size != source.remaining():
        raise ValueError(f"snapshot state of {size} bytes does not end the data ({source.remaining()} bytes left)")
    return fmt, members


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What the cluster records about a member, carried in its conf change's context."""

    id: int
    name: str
    peer_url: str
    client_urls: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return msgpack.packb({"name": self.name, "peer": self.peer_url, "client": list(self.client_urls)})

    @classmethod
    def decode(cls, node_id: int, data: bytes) -> MemberInfo:
        try:
            d = msgpack.unpackb(data)
            return cls(node_id, str(d["name"]), str(d["peer"]), tuple(str(u) for u in d.get("client", ())))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return cls(node_id, "", "")

    def peer_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.peer_url)


def member_id(name: str) -> int:
    """A member's id from its name: stable across restarts, non-zero, 63 bits (etcd shows ids as int64)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1 or 1


def parse_host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port in {url!r}")
    return host.strip("[]"), int(port)


@dataclass
class NodeConfig:
    name: str
    data_dir: Path
    peer_url: str
    #: Initial members (name -> peer URL), used only to bootstrap a new cluster.
    initial_cluster: dict[str, str]
    client_urls: tuple[str, ...] = ()
    #: Join an existing cluster instead of bootstrapping one (etcd's --initial-cluster-state existing).
    join: bool = False
    tick_interval_s: float = limits.TICK_INTERVAL_S
    election_ticks: int = limits.ELECTION_TICKS
    heartbeat_ticks: int = limits.HEARTBEAT_TICKS
    snapshot_entries: int = SNAPSHOT_ENTRIES
    snapshot_bytes: int = SNAPSHOT_BYTES
    #: Encode snapshots in a forked child (POSIX), so the event loop never stops for them.
    snapshot_in_child: bool = True
    #: Write and fsync small WAL batches on the event loop thread (see Node._persist_inline).
    inline_fsync: bool = True

    @property
    def node_id(self) -> int:
        return member_id(self.name)

    @functools.cached_property
    def cluster_id(self) -> int:
        """Nodes bootstrapped from different initial clusters must never talk: their logs differ at index 1."""
        text = ",".join(f"{n}={u}" for n, u in sorted(self.initial_cluster.items()))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


class _IOThread(concurrent.futures.ThreadPoolExecutor):
    """The node's one I/O thread, counting the jobs handed to it.

    :class:`DiskStorage` takes one call at a time. The loop may call it itself (see
    :meth:`Node._persist_inline`) only while no job is queued or running here.
    """

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)
        self._jobs = 0
        self._jobs_lock = threading.Lock()

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[_T]:
        with self._jobs_lock:
            self._jobs += 1
        try:
            fut = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._job_done(None)
            raise
        fut.add_done_callback(self._job_done)  # runs once fn has returned: storage is free again
        return fut

    def _job_done(self, _fut: object) -> None:
        with self._jobs_lock:
            self._jobs -= 1

    @property
    def idle(self) -> bool:
        return self._jobs == 0


@dataclass
class _Waiter:
    term: int
    future: asyncio.Future[Any]


class Node:
    """A Raft peer: durable log, peer transport, and the loop that drives the core."""

    def __init__(
        self,
        config: NodeConfig,
        state_machine: StateMachine,
        *,
        on_leader_change: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        #: The cluster this member belongs to: from the data dir, else derived from the initial cluster when
        #: bootstrapping, else (joining) learnt from the first member that contacts us; 0 until known.
        self.cluster_id = 0
        self.sm = state_machine
        self._on_leader_change = on_leader_change
        self._storage: DiskStorage | None = None
        self._rn: RawNode | None = None
        self._transport: PeerTransport | None = None
        self._io = _IOThread(f"raft-io-{config.name}")
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[bytes, list[asyncio.Future[int]]] = {}
        self._read_batch: list[asyncio.Future[int]] = []
        self._read_seq = 0
        self._reads_waiting_apply: list[tuple[int, list[asyncio.Future[int]]]] = []
        self._early_scheduled = False
        #: A Ready's messages wait while answered callers run (see _yield_to_callers): send no newer ones.
        self._holding_messages = False
        self._unsynced_hard_state: HardState | None = None
        self._members: dict[int, MemberInfo] = {}
        #: Bytes of entries applied since the last snapshot taken here (see SNAPSHOT_BYTES).
        self._applied_bytes = 0
        #: This member's offset, as a fraction of a period (see SNAPSHOT_STAGGER); None until known.
        self._snapshot_stagger: float | None = None
        #: No snapshot taken since this member started: the bytes bound and growth rule start offset.
        self._first_snapshot = True
        #: The last snapshot was due to the bytes bound (see _maybe_snapshot).
        self._last_snapshot_for_bytes = False
        #: A snapshot is being taken (by a forked child, see _maybe_snapshot); the one saved, to compact to.
        self._snapshotting = False
        self._snapshot_task: asyncio.Future[None] | None = None
        self._snapshot_child = 0
        self._snapshot_done: SnapshotMeta | None = None
        self._snapshot_retry_at = 0.0
        self._closing = False
        self.failure: BaseException | None = None
        self._stopped = asyncio.Event()
        self.metrics: dict[str, float] = {
            "proposals_committed": 0,
            "proposals_failed": 0,
            "fsyncs": 0,
            "fsync_seconds_total": 0.0,
            "snapshots_taken": 0,
            "snapshots_received": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        storage = await loop.run_in_executor(self._io, lambda: DiskStorage.open(cfg.data_dir, logger=log))
        self._storage = storage
        # A restart's time goes to these steps and to replaying the committed log after them: say how
        # much each took, so an operator sees where a slow start went (docs/operations.md).
        log.info(
            "recovered the log in %.2f s: snapshot at index %d, %d entries after it, commit index %d",
            time.monotonic() - began,
            storage.snapshot.index,
            len(storage.entries),
            storage.hard_state.commit,
        )
        fresh = storage.hard_state == HardState() and not storage.entries and storage.snapshot.index == 0
        if fresh and not cfg.join:
            await loop.run_in_executor(self._io, self._bootstrap)
        known = await loop.run_in_executor(self._io, self._read_cluster_id)
        if known is not None:
            self.cluster_id = known
        elif fresh and cfg.join:
            self.cluster_id = 0  # learnt from the first member that contacts us (see _adopt_cluster_id)
        else:
            self.cluster_id = cfg.cluster_id
            await loop.run_in_executor(self._io, self._write_cluster_id, self.cluster_id)
        for name, url in cfg.initial_cluster.items():
            nid = member_id(name)
            self._members.setdefault(nid, MemberInfo(nid, name, url))
        self._members[self.id] = MemberInfo(self.id, cfg.name, cfg.peer_url, cfg.client_urls)
        began = time.monotonic()
        if storage.snapshot.index:
            size = self._restore_saved_snapshot()
            log.info(
                "restored the snapshot at index %d (%d bytes) in %.2f s",
                storage.snapshot.index,
                size,
                time.monotonic() - began,
            )
        raft_cfg = Config(
            self.id,
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks,
            seed=int.from_bytes(os.urandom(8), "big"),
        )
        self._rn = RawNode(
            raft_cfg, hard_state=storage.hard_state, snapshot=storage.snapshot, entries=list(storage.entries)
        )
        self._load_member_addresses(storage)
        host, port = parse_host_port(cfg.peer_url)
        self._transport = PeerTransport(
            self.id,
            self.cluster_id,
            host,
            port,
            on_message=self._on_peer_message,
            on_unreachable=self._on_unreachable,
            on_snapshot_status=self._on_snapshot_status,
            on_peer_hello=self._on_peer_hello,
            on_cluster_id=self._adopt_cluster_id,
            hello_meta=MemberInfo(self.id, cfg.name, cfg.peer_url, cfg.client_urls).encode(),
            logger=logging.getLogger("kvdisco.raft.transport"),
        )
        await self._transport.start()
        for m in self._members.values():
            self._dial(m)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"raft-loop-{cfg.name}"),
            asyncio.create_task(self._ticker(), name=f"raft-tick-{cfg.name}"),
        ]
        self._wake.set()
        log.info("raft node %s (%x) started: %s", cfg.name, self.id, self._rn.status())

    def _read_cluster_id(self) -> int | None:
        try:
            text = (self.config.data_dir / CLUSTER_ID_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text, 16)
        except ValueError:
            raise RaftError(f"{self.config.data_dir / CLUSTER_ID_FILE}: not a cluster id: {text[:40]!r}") from None

    def _write_cluster_id(self, cluster_id: int) -> None:
        """Temp file, fsync, rename: a member must never forget which cluster it belongs to."""
        path = self.config.data_dir / CLUSTER_ID_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{cluster_id:x}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.config.data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _adopt_cluster_id(self, cluster_id: int) -> None:
        """A joining member heard its cluster's id from a member's HELLO: keep it for every restart."""
        log.info("member %s joined cluster %x", self.config.name, cluster_id)
        self.cluster_id = cluster_id
        self._io.submit(self._write_cluster_id, cluster_id)
        for m in self._members.values():
            self._dial(m)

    def _bootstrap(self) -> None:
        """A new cluster: every initial member writes the same first entries, one ADD_VOTER per member."""
        assert self._storage is not None
        members = sorted((member_id(n), n, u) for n, u in self.config.initial_cluster.items())
        if self.id not in {m[0] for m in members}:
            raise RaftError(f"member {self.config.name!r} is not in the initial cluster")
        entries = []
        for i, (nid, name, url) in enumerate(members, start=1):
            cc = ConfChange(ConfChangeType.ADD_VOTER, nid, MemberInfo(nid, name, url).encode())
            entries.append(Entry(1, i, encode_conf_change(cc), EntryType.CONF_CHANGE))
        self._storage.save(entries, HardState(1, 0, len(entries)))

    def _load_member_addresses(self, storage: DiskStorage) -> None:
        for e in storage.entries:
            if e.type == EntryType.CONF_CHANGE:
                cc = decode_conf_change(e.data)
                if cc.type != ConfChangeType.REMOVE_NODE and cc.context:
                    self._learn_member(MemberInfo.decode(cc.node_id, cc.context))

    async def stop(self) -> None:
        """Stop driving the core, then close peers and the log. Pending callers get ProposalDropped."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        if self._snapshot_child:
            with contextlib.suppress(OSError):
                os.kill(self._snapshot_child, signal.SIGKILL)
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:  # already logged where it happened
                pass
        self._fail_all(ProposalDropped("node is stopping"))
        if self._transport is not None:
            await self._transport.close()
        if self._storage is not None:
            storage = self._storage
            await asyncio.get_running_loop().run_in_executor(self._io, storage.close)
        self._io.shutdown(wait=True)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- public API --------------------------------------------------------------------------------------------------

    @property
    def rawnode(self) -> RawNode:
        if self._rn is None:
            raise RaftError("node not started")
        return self._rn

    @property
    def leader_id(self) -> int:
        return self.rawnode.leader_id

    @property
    def is_leader(self) -> bool:
        return self.rawnode.role == StateRole.LEADER

    @property
    def term(self) -> int:
        return self.rawnode.raft.term

    @property
    def applied_index(self) -> int:
        return self.rawnode.raft.log.applied

    @property
    def commit_index(self) -> int:
        return self.rawnode.raft.log.committed

    def members(self) -> dict[int, MemberInfo]:
        cs = self.rawnode.conf_state()
        return {nid: self._members.get(nid, MemberInfo(nid, "", "")) for nid in sorted(cs.voters | cs.learners)}

    def removed_members(self) -> frozenset[int]:
        """Ids removed from the cluster as far as this member has applied: none of them may be added again."""
        return self.rawnode.raft.removed

    def member(self, node_id: int) -> MemberInfo | None:
        return self._members.get(node_id)

    def status(self) -> dict[str, Any]:
        st = self.rawnode.status()
        st["name"] = self.config.name
        st["metrics"] = dict(self.metrics)
        if self._transport is not None:
            st["transport"] = self._transport.stats()
        return st

    def _not_leader(self) -> NotLeader:
        lead = self.rawnode.leader_id
        info = self._members.get(lead)
        return NotLeader(lead, info.peer_url if info else None)

    def _check_running(self) -> None:
        if self.failure is not None:
            raise RaftError(f"node has failed: {self.failure}")
        if self._closing:
            raise ProposalDropped("node is stopping")

    async def propose(self, data: bytes) -> Any:
        """Replicate ``data`` and return what the state machine's ``apply`` returned for it.

        Raises NotLeader on a follower, ProposalDropped when the entry was overwritten by a new
        leader (it was not applied). Cancelling the wait does not withdraw the proposal.
        """
        self._check_running()
        rn = self.rawnode
        try:
            index, term = rn.propose(data)
        except NotLeader:
            raise self._not_leader() from None
        fut = self._wait_for_entry(index, term)
        if not self._holding_messages and rn.replication_idle():
            # Nothing in flight, so nothing for this entry to wait for and share an APP with: send it now rather
            # than next loop turn (proposals made meanwhile are batched as usual, behind it). Not while a Ready
            # holds its messages back (_yield_to_callers): they go first, in the order the core made them.
            self._send_all(rn.take_early_messages())
        self._poke()
        return await fut

    def _wait_for_entry(self, index: int, term: int) -> asyncio.Future[Any]:
        old = self._waiters.get(index)
        if old is not None and not old.future.done():
            # We lost leadership, the entry was truncated, and we lead again at the same index.
            old.future.set_exception(ProposalDropped("the entry was replaced by a new leader's log"))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[index] = _Waiter(term, fut)
        return fut

    async def _propose_conf_change(self, cc: ConfChange) -> ConfState:
        self._check_running()
        try:
            index, term = self.rawnode.propose_conf_change(cc)
        except NotLeader:
            raise self._not_leader() from None
        fut = self._wait_for_entry(index, term)
        self._poke()
        result: ConfState = await fut
        return result

    async def add_member(self, info: MemberInfo, *, learner: bool = True) -> ConfState:
        """Add a member, as a learner by default (promote it once it has caught up)."""
        kind = ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_VOTER
        return await self._propose_conf_change(ConfChange(kind, info.id, info.encode()))

    async def promote_member(self, node_id: int) -> ConfState:
        info = self._members.get(node_id)
        if node_id not in self.rawnode.conf_state().learners:
            raise RaftError(f"member {node_id:x} is not a learner")
        rs = self.rawnode.raft
        if rs.role != StateRole.LEADER:
            raise self._not_leader()
        pr = rs.prs.get(node_id)
        last = rs.log.last_index()
        # As etcd: a learner must have answered the leader and be close to its log, or promoting it could cost
        # the cluster its quorum (a voter that never caught up counts toward the majority but cannot ack).
        if (
            pr is None
            or pr.match == 0
            or pr.match + limits.LEARNER_CATCHUP_ENTRIES_MAX < last
            or pr.match * 10 < last * 9
        ):
            match = pr.match if pr is not None else 0
            raise RaftError(f"learner {node_id:x} has not caught up yet (match {match}, last {last})")
        ctx = info.encode() if info else b""
        return await self._propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, node_id, ctx))

    async def remove_member(self, node_id: int) -> ConfState:
        return await self._propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, node_id))

    def transfer_leadership(self, target: int) -> None:
        self.rawnode.transfer_leader(target)
        self._poke()

    async def linearizable_read(self) -> int:
        """Wait until this node may serve a read that sees every write acknowledged before the call.

        Returns the index the local state machine has applied to (at least the ReadIndex).
        Concurrent callers share one ReadIndex round.
        """
        self._check_running()
        if self.rawnode.leader_id == 0:
            raise NotLeader(0)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_batch.append(fut)
        if len(self._read_batch) == 1:
            asyncio.get_running_loop().call_soon(self._issue_read)
        # One timer per batch (see _issue_read), not one per caller: reads are the hot path.
        return await fut

    async def wait_applied(self, index: int) -> None:
        """Wait until the state machine has applied the log up to ``index``.

        A member started on its data dir applies its own committed log in its loop, after :meth:`start`
        returns; ``wait_applied(node.commit_index)`` right after the start waits for that replay. Raises
        ProposalDropped if the node stops or fails first.
        """
        self._check_running()
        if self.rawnode.raft.log.applied >= index:
            return
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads_waiting_apply.append((index, [fut]))
        self._wake.set()
        await fut

    # -- input from the loop -----------------------------------------------------------------------------------------

    def _issue_read(self) -> None:
        batch, self._read_batch = self._read_batch, []
        if not batch:
            return
        asyncio.get_running_loop().call_later(READ_TIMEOUT_S, self._expire_reads, batch)
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        try:
            self.rawnode.read_index(ctx)
        except NotLeader as exc:
            for f in batch:
                if not f.done():
                    f.set_exception(NotLeader(exc.leader_hint))
            return
        self._reads[ctx] = batch
        self._poke()

    @staticmethod
    def _expire_reads(batch: list[asyncio.Future[int]]) -> None:
        for f in batch:
            if not f.done():
                f.set_exception(ProposalDropped("read index round timed out (leader change?); retry"))

    def _poke(self) -> None:
        self._wake.set()
        if not self._early_scheduled:
            self._early_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_early)

    def _flush_early(self) -> None:
        self._early_scheduled = False
        if self._rn is None or self._transport is None or self._closing or self._holding_messages:
            return
        self._send_all(self._rn.take_early_messages())

    def _on_peer_message(self, msg: Message) -> None:
        if self._rn is None or self._closing or self.failure is not None:
            return
        try:
            stepped = self._rn.step(msg)
        except InvariantViolation as exc:
            # Our log or the sender's is corrupt (Raft assumes peers that follow the protocol). Refuse to go on.
            self._die(exc)
            raise
        if not stepped:
            log.warning("dropped a %s from %x that no peer may send", msg.type.name, msg.frm)
            return
        self._poke()

    def _on_peer_hello(self, node_id: int, meta: bytes) -> None:
        """A peer described itself on connecting: learn its client URLs (to point clients at the leader)."""
        said = MemberInfo.decode(node_id, meta)
        if node_id in self._members and said.name:
            self._learn_member(MemberInfo(node_id, said.name, "", said.client_urls))

    def _learn_member(self, info: MemberInfo) -> None:
        """Merge what we hear of a member: the log's record wins for the peer URL, any source may add client URLs."""
        if info.id == self.id:
            return  # our own description comes from our config
        known = self._members.get(info.id)
        if known is None:
            self._members[info.id] = info
            return
        self._members[info.id] = MemberInfo(
            info.id, info.name or known.name, info.peer_url or known.peer_url, info.client_urls or known.client_urls
        )

    def _on_unreachable(self, node_id: int) -> None:
        if self._rn is not None and not self._closing:
            self._rn.report_unreachable(node_id)

    def _on_snapshot_status(self, node_id: int, ok: bool) -> None:
        if self._rn is not None and not self._closing:
            self._rn.report_snapshot(node_id, ok)
            self._poke()

    async def _ticker(self) -> None:
        interval = self.config.tick_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                self.rawnode.tick()
            except InvariantViolation as exc:
                self._die(exc)
                raise
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                rn = self.rawnode
                if self._snapshot_done is not None:
                    self._compact_to_snapshot()
                while rn.has_ready():
                    await self._handle_ready(rn.ready())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._die(exc)
            raise

    def _die(self, exc: BaseException) -> None:
        """A storage failure or a broken invariant: going on could lose acknowledged data. Stop loudly."""
        if self.failure is not None:
            return
        self.failure = exc
        log.critical("raft node %s stopped: %s", self.config.name, exc, exc_info=exc)
        self._fail_all(ProposalDropped(f"node failed: {exc}"))
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self._stopped.set()

    async def _handle_ready(self, rd: Ready) -> None:
        rn = self.rawnode
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader_id, rd.soft_state.role)
        must_sync = rd.must_sync()
        if must_sync or not rd.committed_entries:
            self._send_all(rd.messages_before_persist)  # the followers' fsyncs start while ours runs
        # Committed entries that were already durable here may be applied while this Ready's fsync runs
        # (the fsync releases the GIL); the rest wait for it. A snapshot must be restored before any of them.
        committed, early = rd.committed_entries, 0
        if rd.snapshot is None and committed:
            stable = rn.raft.log.stable
            while early < len(committed) and committed[early].index <= stable:
                early += 1
        conf_done: list[asyncio.Future[Any]] = []
        if must_sync:
            if rd.hard_state is None and self._unsynced_hard_state is not None:
                rd.hard_state = self._unsynced_hard_state
            self._unsynced_hard_state = None
            t0 = time.perf_counter()
            if self._persist_inline(rd):
                if self._transport is not None:
                    self._transport.write_queued()  # the loop stops for the fsync: let queued frames go first
                self._persist(rd)
                if early:
                    self._apply(committed[:early], conf_done)
            else:
                persisted = asyncio.get_running_loop().run_in_executor(self._io, self._persist, rd)
                if early:
                    self._apply(committed[:early], conf_done)
                    self.sm.publish()  # the messages went before the fsync, which now leaves the loop idle
                await persisted
            self.metrics["fsyncs"] += 1
            self.metrics["fsync_seconds_total"] += time.perf_counter() - t0
        else:
            if rd.hard_state is not None:
                self._unsynced_hard_state = rd.hard_state  # only the commit index moved: write it with the next batch
            # Nothing to persist: a commit. Answer the callers first; the messages (mostly the new commit index
            # for the followers) are not on their path, so they go out once the callers had their turn.
            if early and self._apply(committed[:early], conf_done) and (rd.messages_before_persist or rd.messages):
                await self._yield_to_callers()
            if committed:
                self._send_all(rd.messages_before_persist)
        self._send_all(rd.messages)
        if rd.snapshot is not None and rd.snapshot_data is not None:
            began, size = time.monotonic(), len(rd.snapshot_data)
            # Saved by now: restore from the file, as a restart does, having let go of the received bytes
            # (as large as the store, they were held beside the state being built: a new member's peak).
            rd.snapshot_data = None
            rn.release_snapshot_data()
            self._restore_saved_snapshot()
            self.metrics["snapshots_received"] += 1
            log.info(
                "restored the snapshot the leader sent, at index %d (%d bytes), in %.2f s",
                rd.snapshot.index,
                size,
                time.monotonic() - began,
            )
            self._fail_waiters_below(rd.snapshot.index + 1)
        if early < len(committed):
            self._apply(committed[early:], conf_done)
        rn.advance(rd)
        for fut in conf_done:
            fut.set_result(rn.conf_state())
        if rd.read_states:
            for rs in rd.read_states:
                futs = self._reads.pop(rs.context, None)
                if futs:
                    self._reads_waiting_apply.append((rs.index, futs))
        self._release_reads()
        if committed:
            self.sm.publish()
            await self._maybe_snapshot()

    def _persist_inline(self, rd: Ready) -> bool:
        """Whether to write and fsync ``rd`` on the loop thread instead of the I/O thread.

        A follower's acknowledgement waits for its fsync, and the two thread hand-offs around it (loop to
        I/O thread, and back) cost as much again on a loaded machine. A follower has little else to do
        meanwhile: messages that arrive during the fsync wait in the socket and join the next batch. The
        leader does the same only when hardly any proposal is waiting (a single client); under load it
        keeps its I/O thread, so that it goes on taking proposals and sending appends while it syncs.
        Snapshots are large writes and always go to the thread; so does anything while the thread
        still holds the storage.
        """
        if not self.config.inline_fsync or rd.snapshot is not None or not self._io.idle:
            return False
        return self.rawnode.role != StateRole.LEADER or len(self._waiters) <= LEADER_INLINE_FSYNC_WAITERS_MAX

    def _persist(self, rd: Ready) -> None:
        storage = self._storage
        assert storage is not None
        if rd.snapshot is not None:
            if rd.snapshot_data is None:
                raise InvariantViolation("a Ready snapshot without its data")
            log.info("received a snapshot at index %d (%d bytes); saving it", rd.snapshot.index, len(rd.snapshot_data))
            storage.save_snapshot(rd.snapshot, rd.snapshot_data)
        if rd.entries or rd.hard_state is not None:
            storage.save(rd.entries, rd.hard_state)

    async def _yield_to_callers(self) -> None:
        """Give the loop one turn, so callers just answered reply before this Ready's messages go out.

        Messages the core produces meanwhile are held back (see _flush_early) and leave with the next
        Ready, after this one's: each peer still gets our messages in the order the core made them.
        """
        self._holding_messages = True
        try:
            await asyncio.sleep(0)
        finally:
            self._holding_messages = False

    def _apply(self, entries: list[Entry], conf_done: list[asyncio.Future[Any]]) -> bool:
        """Apply ``entries`` in order and answer their waiters; True if a proposer got its result."""
        answered = False
        waiters = self._waiters
        for e in entries:
            self._applied_bytes += len(e.data)
            result: Any = None
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change_io(decode_conf_change(e.data))
            elif e.data:
                result = self.sm.apply(e.index, e.data)
            if waiters:
                w = waiters.pop(e.index, None)
                if w is not None and not w.future.done():
                    if w.term != e.term:
                        w.future.set_exception(ProposalDropped("the entry was replaced by a new leader's log"))
                        self.metrics["proposals_failed"] += 1
                    elif e.type == EntryType.CONF_CHANGE:
                        conf_done.append(w.future)  # the core applies it in advance(); answer after that
                    else:
                        w.future.set_result(result)
                        self.metrics["proposals_committed"] += 1
                        answered = True
        return answered

    def _apply_conf_change_io(self, cc: ConfChange) -> None:
        transport = self._transport
        if cc.type == ConfChangeType.REMOVE_NODE:
            if transport is not None and cc.node_id != self.id:
                transport.remove_peer(cc.node_id)
            if cc.node_id == self.id:
                log.warning("this member (%x) was removed from the cluster", self.id)
            return
        if cc.context:
            self._learn_member(MemberInfo.decode(cc.node_id, cc.context))
            self._dial(self._members[cc.node_id])

    def _dial(self, info: MemberInfo) -> None:
        """Point the transport at a member and greet it, so every member learns our client URLs.

        A peer URL that does not parse (the log is replicated data: it must never stop a node) is logged
        and the member stays unreachable until a membership change fixes it.
        """
        if self._transport is None or info.id == self.id or not info.peer_url:
            return
        if self._rn is not None and info.id in self._rn.raft.removed:
            return  # a removed member (still in --initial-cluster, say): it has nothing to hear from us
        try:
            host, port = info.peer_host_port()
        except ValueError:
            log.error("member %x has an unusable peer URL %r; not dialling it", info.id, info.peer_url)
            return
        self._transport.set_peer(info.id, host, port)
        self._transport.greet(info.id)

    def _release_reads(self) -> None:
        if not self._reads_waiting_apply:
            return
        applied = self.rawnode.raft.log.applied
        keep = []
        for index, futs in self._reads_waiting_apply:
            if index <= applied:
                for f in futs:
                    if not f.done():
                        f.set_result(applied)
            else:
                keep.append((index, futs))
        self._reads_waiting_apply = keep

    async def _maybe_snapshot(self) -> None:
        """Start a snapshot of the state as applied now, when enough was applied since the last one.

        Enough: SNAPSHOT_BYTES of entries, each counted SNAPSHOT_ENTRY_BYTES more than its size, or
        SNAPSHOT_ENTRIES_MAX entries (a restart replays no more), else the configured snapshot_entries
        and, for a snapshot file above SNAPSHOT_CHEAP_BYTES, as many bytes of entries as SNAPSHOT_GROWTH
        times that file (a snapshot is paid for by the log it saves replaying). Each member is offset
        from the others (SNAPSHOT_STAGGER).

        The encoding runs in a forked child (see _encode_in_child): it sees the state of this instant,
        copy-on-write, while this process goes on applying and answering. Encoding a large store here
        would stop the event loop for seconds, long enough for the followers to elect a new leader.
        When the snapshot is on disk the loop compacts the log to it (_compact_to_snapshot).
        """
        rn = self.rawnode
        log_ = rn.raft.log
        if self._snapshotting or self._closing or time.monotonic() < self._snapshot_retry_at:
            return
        if self._snapshot_done is not None:
            # Saved but not yet compacted to (the loop does that between Readies): the log still starts at
            # the snapshot before, and the entries bound, counted from there, would start another one now.
            return
        cfg, storage = self.config, self._storage
        entries, applied_bytes = log_.applied - log_.snapshot.index, self._applied_bytes
        snapshot_bytes = storage.snapshot_file_bytes if storage is not None else 0
        stagger = self._stagger()
        part = 1.0 - stagger if self._first_snapshot else 1.0
        period = max(cfg.snapshot_entries, SNAPSHOT_ENTRIES_MAX)
        offset = int(stagger * period)
        for_bytes = applied_bytes + entries * SNAPSHOT_ENTRY_BYTES >= cfg.snapshot_bytes * part
        due = (
            for_bytes
            or log_.applied >= self._next_crossing(log_.snapshot.index, period, offset)
            or (
                entries >= cfg.snapshot_entries
                and (snapshot_bytes < SNAPSHOT_CHEAP_BYTES or applied_bytes >= snapshot_bytes * SNAPSHOT_GROWTH * part)
            )
        )
        if not due or entries <= 0:
            return
        term = log_.term(log_.applied)
        if term is None:
            return
        meta = SnapshotMeta(log_.applied, term, rn.conf_state())
        self._snapshotting = True
        self._applied_bytes = 0
        self._first_snapshot = False
        self._last_snapshot_for_bytes = for_bytes
        if self.config.snapshot_in_child and hasattr(os, "fork"):
            pending = self._encode_in_child(meta)
            task = asyncio.ensure_future(self._save_snapshot(meta, pending))
            self._snapshot_task = task
        else:
            await self._save_snapshot(meta, None)

    def _next_crossing(self, last: int, period: int, offset: int) -> int:
        """The log index at which the entries bound is next due: the first multiple of ``period``, shifted
        back by this member's ``offset``, after the last snapshot at ``last``.

        A crossing soon after that snapshot is skipped for the next one: within a quarter of a period,
        or within half of one after a snapshot for the bytes bound (a bulk load's leftover bytes, then
        a crossing, had members take two in a row). A restart thus replays 1.5 periods at most, and
        never more than the bytes bound.
        """
        crossing = ((last + offset) // period + 1) * period - offset
        if crossing - last < (period // 2 if self._last_snapshot_for_bytes else period // 4):
            crossing += period
        return crossing

    def _stagger(self) -> float:
        """This member's snapshot offset, a fraction of a period (SNAPSHOT_STAGGER), from its place
        among the members when first asked."""
        if self._snapshot_stagger is None:
            cs = self.rawnode.conf_state()
            members = sorted(cs.voters | cs.learners)
            place = members.index(self.id) if self.id in members else 0
            self._snapshot_stagger = SNAPSHOT_STAGGER * place / max(1, len(members))
        return self._snapshot_stagger

    async def _save_snapshot(self, meta: SnapshotMeta, child: tuple[int, str] | None) -> None:
        """Get the snapshot file written (by the child, or here), then install it on the I/O thread.

        The file is written and fsynced before the WAL's I/O thread sees it: installing it there is
        a rename, a directory fsync and a marker record, so appends never wait behind snapshot-sized
        writes. A snapshot that could not be written is retried after SNAPSHOT_RETRY_S; a failure to
        install it (the WAL itself) stops the node, as in the loop.
        """
        storage = self._storage
        assert storage is not None
        loop = asyncio.get_running_loop()
        path = storage.snapshot_temp_path(meta)
        try:
            if child is None:
                data = self._encode_snapshot()
                try:
                    await loop.run_in_executor(None, write_snapshot_file, path, meta, data)
                except OSError as exc:
                    log.error("could not write snapshot %d: %s; will retry", meta.index, exc)
                    written = False
                else:
                    written = True
                del data
            else:
                written = await self._wait_for_child(*child)
            if not written:
                self._snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY_S
                return
            if storage.snapshot.index >= meta.index:
                return  # a newer snapshot was installed meanwhile
            try:
                await loop.run_in_executor(self._io, storage.install_snapshot, meta, path)
            except StorageError:
                if storage.snapshot.index >= meta.index:
                    return  # one received from the leader was installed first: ours is not needed
                raise
            self._snapshot_done = meta
            self._poke()
            self.metrics["snapshots_taken"] += 1
            log.info("snapshot at index %d (%d bytes); log compacted", meta.index, storage.snapshot_file_bytes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a WAL or snapshot write failed: as in the loop itself, stop loudly
            self._die(exc)
        finally:
            self._snapshotting = False
            with contextlib.suppress(OSError):
                os.unlink(path)  # gone already once installed (renamed into place)

    def _encode_in_child(self, meta: SnapshotMeta) -> tuple[int, str]:
        """Fork; the child writes the snapshot file of this instant (fsynced) and exits. Returns (pid, path).

        The path is storage's temp name for it, which recovery removes if the snapshot is never installed.
        """
        assert self._storage is not None
        path = self._storage.snapshot_temp_path(meta)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: no logging, no event loop, no threads; only encode, write, exit
            code = 1
            try:
                gc.disable()  # a collection would touch, and so copy, every page of the parent's heap
                # The member's sockets (its client and peer ports above all) must not outlive it in here: a
                # member restarted after kill -9 could not bind its ports again until the child had exited.
                os.closerange(3, max(256, os.sysconf("SC_OPEN_MAX")))
                # A member killed with kill -9 takes its child along (Linux): an orphan would go on taking
                # a core from the restarted member, and write its file after recovery cleaned up.
                with contextlib.suppress(OSError, AttributeError):
                    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                # Seconds of encoding must not take the core from the members' own work (every member
                # snapshots at about the same moment): the child gets what the members leave idle, first.
                with contextlib.suppress(OSError):
                    os.nice(SNAPSHOT_CHILD_NICE)
                if os.getppid() == parent:  # else the parent died before the prctl
                    write_snapshot_file(path, meta, self._encode_snapshot())
                    code = 0
            finally:
                os._exit(code)
        self._snapshot_child = pid
        return pid, path

    async def _wait_for_child(self, pid: int, path: str) -> bool:
        """Whether the child wrote its snapshot file (the file is not read here: storage renames it)."""
        loop = asyncio.get_running_loop()
        try:
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        except OSError as exc:  # the snapshot is lost, not the node: the next one is taken as usual
            log.error("snapshot child %d: %s; will retry", pid, exc)
            return False
        finally:
            self._snapshot_child = 0
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("snapshot child %d failed (status %d); will retry", pid, status)
            return False
        return True

    def _compact_to_snapshot(self) -> None:
        """In the loop, between Readies: drop the log up to a snapshot that is now on disk."""
        meta, self._snapshot_done = self._snapshot_done, None
        if meta is not None and self.rawnode.raft.log.snapshot.index < meta.index:
            self.rawnode.compact(meta)

    def _encode_snapshot(self) -> list[bytes]:
        """The state machine's snapshot, wrapped with what we know of the members, in pieces:
        ``msgpack.packb([format, members, state])``, joined, with the state never copied.

        Their addresses live in conf change entries, which compaction deletes; without this a
        restarted node could no longer reach a member added after the bootstrap.
        """
        cs = self.rawnode.conf_state()
        members = {nid: self._members[nid].encode() for nid in cs.voters | cs.learners if nid in self._members}
        return wrap_snapshot(members, self.sm.snapshot())

    def _restore_saved_snapshot(self) -> int:
        """Restore the snapshot in force from its file, read as the restore goes; its size in bytes."""
        assert self._storage is not None
        source = self._storage.open_snapshot_data()
        if source is None:
            raise InvariantViolation("no snapshot file to restore from")
        with source:
            self._restore_snapshot(source)
        return source.size

    def _restore_snapshot(self, source: SnapshotSource) -> None:
        try:
            fmt, members = unwrap_snapshot(source)
            if fmt != _SNAPSHOT_FORMAT or type(fmt) is not int or not isinstance(members, dict):
                raise ValueError(f"unknown snapshot format {fmt!r}")
        except ValueError as exc:
            # The bytes passed their checksum, so this is a bug or a format from the future: stop.
            raise InvariantViolation(f"snapshot does not decode: {exc}") from exc
        for nid, info in members.items():
            self._learn_member(MemberInfo.decode(nid, info))
            self._dial(self._members[nid])
        self.sm.restore(source)

    def _send_all(self, msgs: list[Message]) -> None:
        transport = self._transport
        if transport is None or not msgs:
            return
        for m in msgs:
            if m.type == MessageType.SNAP:
                payload = self._snapshot_payload_for(m)
                if payload is None or m.snapshot is None:
                    self.rawnode.report_snapshot(m.to, False)
                    continue
                log.info("sending the snapshot at index %d (%d bytes) to %x", m.snapshot.index, len(payload), m.to)
            else:
                payload = None
            try:
                transport.send(m, payload)
            except RaftError as exc:
                log.error("could not send %s to %x: %s", m.type.name, m.to, exc)

    def _snapshot_payload_for(self, m: Message) -> SnapshotFilePayload | None:
        """The snapshot ``m`` names, read from its file as it is sent (a leader never holds a snapshot as
        large as its store to send it); None if it is no longer the one in force or cannot be read."""
        storage = self._storage
        if m.snapshot is None or storage is None or storage.snapshot.index != m.snapshot.index:
            return None
        try:
            return storage.snapshot_payload()
        except (RaftError, OSError) as exc:
            log.error("cannot send the snapshot at index %d: %s", m.snapshot.index, exc)
            return None

    def _on_soft_state(self, leader_id: int, role: StateRole) -> None:
        log.info("member %s: role %s, leader %x, term %d", self.config.name, role.name, leader_id, self.term)
        if self._reads:
            # Reads in flight were addressed to the old leader; their answers may never come.
            for futs in self._reads.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(ProposalDropped("leader changed during the read; retry"))
            self._reads.clear()
        if self._on_leader_change is not None:
            self._on_leader_change(leader_id, role == StateRole.LEADER)

    def _fail_waiters_below(self, index: int) -> None:
        """After a snapshot restore, entries at or below it will not be applied here one by one."""
        for idx in [i for i in self._waiters if i < index]:
            w = self._waiters.pop(idx)
            if not w.future.done():
                w.future.set_exception(ProposalDropped("outcome unknown: state replaced by a snapshot"))

    def _fail_all(self, exc: Exception) -> None:
        for w in self._waiters.values():
            if not w.future.done():
                w.future.set_exception(exc)
        self._waiters.clear()
        for futs in list(self._reads.values()) + [f for _, f in self._reads_waiting_apply]:
            for f in futs:
                if not f.done():
                    f.set_exception(exc)
        self._reads.clear()
        self._reads_waiting_apply.clear()
        for f in self._read_batch:
            if not f.done():
                f.set_exception(exc)
        self._read_batch.clear()
