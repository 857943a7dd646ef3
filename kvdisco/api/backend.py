"""What the HTTP handlers call: the store, replicated through a Raft node, and its watchers.

A write is encoded as a command, proposed, and answered with what ``apply`` returned on this
node. A linearizable read first waits for a ReadIndex round, then reads the local replica.
Everything here raises typed errors with a gRPC code (:class:`RequestFailed` or the store's
:class:`~kvdisco.mvcc.errors.MvccError`); the handlers only encode them. ``NotLeader`` passes
through untouched: the handlers forward such a request to the leader.

The leader-only duties live here too, as background tasks: counting leases down (expiry is a
proposed ``LeaseRevoke``), checkpointing their remaining TTLs, automatic compaction, and the
timer that sends watch progress notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kvdisco.mvcc.commands import Command, LeaseRevoke, RequestCompact, encode_command
from kvdisco.mvcc.errors import LeaseNotFoundError, MvccError
from kvdisco.mvcc.kvstore import (
    CompactResult,
    DeleteResult,
    Event,
    LeaseGrantResult,
    PutResult,
    RangeResult,
    RequestRange,
    TxnResult,
)
from kvdisco.mvcc.lease_clock import LeaseClock, NotLeaseLeaderError
from kvdisco.mvcc.lessor import LeaseGrant
from kvdisco.mvcc.machine import ApplyError, KVMachine
from kvdisco.mvcc.watch import WatchHub
from kvdisco.raft import NotLeader, ProposalDropped, RaftError
from kvdisco.raft.node import Node, SnapshotSource

__all__ = [
    "CODE_UNAVAILABLE",
    "Backend",
    "BackendConfig",
    "LeaseInfo",
    "RequestFailed",
    "WatchedMachine",
]

log = logging.getLogger("kvdisco.backend")

CODE_UNAVAILABLE = 14


class RequestFailed(Exception):
    """A request that failed for a reason other than the store's rules; ``code`` is gRPC's."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class BackendConfig:
    #: Seconds between watch progress notifications to watchers that asked for them.
    progress_interval_s: float = 10.0
    #: "revision" keeps the last ``auto_compaction_retention`` revisions; "periodic" keeps that
    #: many seconds of history; "" turns automatic compaction off.
    auto_compaction_mode: str = "revision"
    auto_compaction_retention: int = 10_000
    #: Seconds between the leader's lease checks (expiry, checkpoints).
    lease_tick_s: float = 0.25


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    #: Seconds left, -1 when the lease does not exist (as etcd answers TimeToLive).
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...]


class WatchedMachine:
    """The Raft state machine: a KVMachine whose writes are also told to the watch hub and lease clock.

    A write's events reach the hub when the node publishes (:meth:`publish`), after it has sent the
    messages the other members wait on: the hub's fan-out costs microseconds per watcher. The hub
    keeps its own notified revision, so a watcher created in between is still served exactly once.
    """

    def __init__(self, machine: KVMachine, hub: WatchHub, clock: LeaseClock) -> None:
        self.machine = machine
        self.hub = hub
        self.clock = clock
        #: (revision, events) of the writes applied since the last publish, in order.
        self._unpublished: list[tuple[int, tuple[Event, ...]]] = []

    def apply(self, index: int, command: bytes) -> Any:
        result = self.machine.apply(index, command)
        events = getattr(result, "events", None)
        if events:
            self._unpublished.append((self.machine.store.revision, events))
        elif isinstance(result, LeaseGrantResult):
            self.clock.observe()
        return result

    def publish(self) -> None:
        pending, self._unpublished = self._unpublished, []
        self.hub.notify_writes(pending)

    def snapshot(self) -> list[bytes]:
        return self.machine.snapshot_parts()

    def restore(self, data: SnapshotSource) -> None:
        self._unpublished.clear()  # older than the new state: resync sends the watchers to its history
        self.machine.restore(data)
        self.hub.resync()


class Backend:
    """One member's view of the replicated store."""

    def __init__(self, node: Node, sm: WatchedMachine, config: BackendConfig | None = None) -> None:
        self.node = node
        self.sm = sm
        self.machine = sm.machine
        self.store = sm.machine.store
        self.hub = sm.hub
        self.clock = sm.clock
        self.config = config or BackendConfig()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._db_size_cache: tuple[float, int] | None = None

    # -- identity, for response headers ---------------------------------------------------------------------------

    @property
    def cluster_id(self) -> int:
        return self.node.cluster_id

    @property
    def member_id(self) -> int:
        return self.node.id

    @property
    def raft_term(self) -> int:
        return self.node.term

    @property
    def revision(self) -> int:
        return self.store.revision

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._lease_loop()),
            asyncio.ensure_future(self._progress_loop()),
        ]
        if self.config.auto_compaction_mode:
            self._tasks.append(asyncio.ensure_future(self._compaction_loop()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in [*self._tasks, *self._inflight]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.hub.close()

    # -- reads ----------------------------------------------------------------------------------------------------

    async def read_barrier(self, serializable: bool = False) -> None:
        """Before a linearizable read: wait until this replica has applied every acknowledged write."""
        if serializable:
            return
        try:
            await self.node.linearizable_read()
        except NotLeader as exc:
            if exc.leader_hint == 0:
                raise RequestFailed(CODE_UNAVAILABLE, "etcdserver: no leader") from None
            raise
        except ProposalDropped:
            raise RequestFailed(CODE_UNAVAILABLE, "etcdserver: request timed out") from None
        except RaftError as exc:
            raise RequestFailed(CODE_UNAVAILABLE, f"etcdserver: {exc}") from None

    async def range(self, req: RequestRange, serializable: bool = False) -> RangeResult:
        await self.read_barrier(serializable)
        return self.store.range(
            req.key,
            req.range_end,
            limit=req.limit,
            revision=req.revision,
            sort_order=req.sort_order,
            sort_target=req.sort_target,
            keys_only=req.keys_only,
            count_only=req.count_only,
            min_mod_revision=req.min_mod_revision,
            max_mod_revision=req.max_mod_revision,
            min_create_revision=req.min_create_revision,
            max_create_revision=req.max_create_revision,
        )

    # -- writes ---------------------------------------------------------------------------------------------------

    async def write(self, command: Command) -> Any:
        """Propose one command; its apply result, or a typed error. NotLeader passes through."""
        data = encode_command(command)
        try:
            result = await self.node.propose(data)
        except NotLeader as exc:
            if exc.leader_hint == 0:
                raise RequestFailed(CODE_UNAVAILABLE, "etcdserver: no leader") from None
            raise
        except ProposalDropped:
            raise RequestFailed(CODE_UNAVAILABLE, "etcdserver: leader changed") from None
        except RaftError as exc:
            raise RequestFailed(CODE_UNAVAILABLE, f"etcdserver: {exc}") from None
        if isinstance(result, ApplyError):
            raise RequestFailed(result.code, result.message)
        return result

    async def put(self, command: Command) -> PutResult:
        result: PutResult = await self.write(command)
        return result

    async def delete_range(self, command: Command) -> DeleteResult:
        result: DeleteResult = await self.write(command)
        return result

    async def txn(self, command: Command) -> TxnResult:
        result: TxnResult = await self.write(command)
        return result

    async def compact(self, command: RequestCompact) -> CompactResult:
        result: CompactResult = await self.write(command)
        return result

    # -- leases ---------------------------------------------------------------------------------------------------

    async def lease_grant(self, grant: LeaseGrant) -> LeaseGrantResult:
        # A new leader's clock must run before the grant applies, or the lease would count from promotion.
        self._sync_leadership()
        result: LeaseGrantResult = await self.write(grant)
        return result

    async def lease_revoke(self, lease_id: int) -> None:
        await self.write(LeaseRevoke(lease_id))

    def _require_lease_leader(self) -> None:
        if not self.clock.active:
            raise self.node_not_leader()

    def node_not_leader(self) -> Exception:
        lead = self.node.leader_id
        if lead == 0:
            return RequestFailed(CODE_UNAVAILABLE, "etcdserver: no leader")
        info = self.node.member(lead)
        return NotLeader(lead, info.peer_url if info else None)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Restart the lease's countdown on the leader; returns its TTL."""
        self._sync_leadership()
        self._require_lease_leader()
        try:
            ttl, clear = self.clock.renew(lease_id)
        except NotLeaseLeaderError:
            raise self.node_not_leader() from None
        if clear is not None:
            await self.write(clear)
        return ttl

    async def lease_time_to_live(self, lease_id: int, keys: bool) -> LeaseInfo:
        await self.read_barrier()
        self._sync_leadership()
        self._require_lease_leader()
        try:
            granted, _, attached = self.store.lease_ttl_info(lease_id)
            remaining = self.clock.remaining(lease_id)
        except LeaseNotFoundError:
            return LeaseInfo(lease_id, -1, 0, ())
        except NotLeaseLeaderError:
            raise self.node_not_leader() from None
        return LeaseInfo(lease_id, remaining, granted, attached if keys else ())

    async def leases(self) -> tuple[int, ...]:
        await self.read_barrier()
        return self.store.leases()

    # -- leader duties ----------------------------------------------------------------------------------------------

    def _sync_leadership(self) -> None:
        leading = self.node.failure is None and self.node.is_leader
        if leading and not self.clock.active:
            self.clock.promote()
        elif not leading and self.clock.active:
            self.clock.demote()

    def _spawn(self, command: Command) -> None:
        task = asyncio.ensure_future(self._propose_quietly(command))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _propose_quietly(self, command: Command) -> None:
        """A leader duty's proposal: a lost leadership or an already-revoked lease is no error."""
        with contextlib.suppress(NotLeader, RequestFailed, MvccError):
            await self.write(command)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_tick_s)
            try:
                self._sync_leadership()
                if not self.clock.active:
                    continue
                for lease_id in self.clock.expired():
                    self._spawn(LeaseRevoke(lease_id))
                for checkpoint in self.clock.checkpoints_due():
                    self._spawn(checkpoint)
            except NotLeaseLeaderError:
                continue
            except Exception:
                log.exception("lease loop")

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval_s)
            self.hub.progress()

    async def _compaction_loop(self) -> None:
        """The leader compacts: by revisions kept, or by age (samples of the revision over time)."""
        mode, retention = self.config.auto_compaction_mode, self.config.auto_compaction_retention
        period = 1.0
        samples: deque[tuple[float, int]] = deque()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            samples.append((now, self.store.revision))
            if mode == "periodic":
                while len(samples) > 1 and samples[1][0] <= now - retention:
                    samples.popleft()
                target = samples[0][1] if samples[0][0] <= now - retention else 0
            else:
                target = self.store.revision - retention
            if target <= self.store.compact_revision or not self.node.is_leader:
                continue
            # Compact in steps so that one apply never stalls the loop on a huge backlog.
            step = min(target, self.store.compact_revision + 100_000)
            self._spawn(RequestCompact(step))

    # -- membership -----------------------------------------------------------------------------------------------

    def _db_size(self) -> int:
        """The store's size. Counting is O(history), so a count is reused for 100 times as long as it took."""
        now = time.monotonic()
        if self._db_size_cache is None or now > self._db_size_cache[0]:
            size = self.store.approximate_bytes()
            took = time.monotonic() - now
            self._db_size_cache = (now + 100 * took, size)
        return self._db_size_cache[1]

    def status(self) -> dict[str, Any]:
        return {
            "db_size": self._db_size(),
            "is_learner": self.node.id in self.node.rawnode.conf_state().learners,
            "leader": self.node.leader_id,
            "raft_index": self.node.commit_index,
            "raft_applied_index": self.node.applied_index,
            "raft_term": self.node.term,
        }
