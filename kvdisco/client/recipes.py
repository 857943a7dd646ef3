"""Distributed lock and leader election on leases + txn, the way etcd's ``concurrency`` package does it.

Each contender creates ``<name>/<lease id in hex>`` with its lease, in a txn that only creates the
key if it does not exist. The contender whose key has the lowest ``create_revision`` holds the
lock (or leads); the others each watch the key just before theirs until it is deleted, so a release
wakes exactly one waiter and the order is first come, first served.

**A lock without fencing is unsafe.** A holder that pauses (GC, swap, SIGSTOP, a slow network)
past its lease TTL loses the lock on the server while it still believes it holds it, and another
contender acquires it; the first holder then wakes up and acts. No client-side check can close
that window (Kleppmann, "How to do distributed locking"; Jepsen's analysis of etcd 3.4.3 found
exactly this with etcd locks). So every acquisition returns a *fencing token*: the
``create_revision`` of the holder's key, which only ever increases from one holder to the next.
Send it with every action on the protected resource, and have the resource reject any token lower
than the highest it has seen. Without that, the lock is an efficiency optimisation, not a safety
mechanism.

Within the client, a lost lease is never silent: ``async with Lock(...)`` cancels its body and
raises ``LeaseLostError`` when the lease is lost, and ``check()`` raises it too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

from ._client import Client
from ._errors import (
    CompactedError,
    FailedPreconditionError,
    IndeterminateError,
    KvdiscoError,
    UnavailableError,
)
from ._lease import Lease, LeaseGuard
from ._txn import Compare, SortOrder, SortTarget, get, put
from ._types import EventType, GetResult, Key, KeyValue, to_bytes

__all__ = ["Election", "Lock", "NotLeaderError"]

#: How many times the create txn is re-sent after an indeterminate answer. Re-sending is safe: the
#: txn creates the contender's own key only if it does not exist, else reads it.
CREATE_TXN_TRIES_MAX = 5


class NotLeaderError(FailedPreconditionError):
    """``proclaim`` was called by a contender that is not (or no longer) the leader."""


class _Contender:
    """A key under ``<name>/`` held by a lease, and the wait for every older key to go."""

    def __init__(self, client: Client, name: str, *, ttl: int, lease: Lease | None) -> None:
        if not name:
            raise ValueError("name must not be empty")
        self._client = client
        self.prefix = to_bytes(name).rstrip(b"/") + b"/"
        self._ttl = ttl
        self._given_lease = lease
        self._lease: Lease | None = lease
        self.key = b""
        #: The create_revision of this contender's key: the fencing token once it holds the lock.
        self.fencing_token = 0

    @property
    def lease(self) -> Lease:
        if self._lease is None:
            raise RuntimeError("not acquired")
        return self._lease

    def check(self) -> None:
        """Raise ``LeaseLostError`` if the lease behind this lock/leadership is lost."""
        self.lease.check()

    async def _create(self, value: Key) -> None:
        if self._lease is None:
            self._lease = await Lease(self._client, self._ttl).grant()
        lease = self._lease
        lease.check()
        self.key = self.prefix + f"{lease.id:x}".encode()
        for attempt in range(CREATE_TXN_TRIES_MAX):
            try:
                r = await (
                    self._client.txn()
                    .if_(Compare.create(self.key) == 0)
                    .then(put(self.key, value, lease=lease.id))
                    .else_(get(self.key))
                    .commit()
                )
                break
            except (IndeterminateError, UnavailableError):
                if attempt == CREATE_TXN_TRIES_MAX - 1:
                    raise
        if r.succeeded:
            self.fencing_token = r.revision
        else:
            got = r.responses[0]
            assert isinstance(got, GetResult) and got.kvs, "our key vanished between compare and get"
            self.fencing_token = got.kvs[0].create_revision

    async def _wait_for_older(self) -> None:
        """Until no key under the prefix has a lower create_revision than ours."""
        while True:
            self.lease.check()
            g = await self._client.get(
                self.prefix,
                prefix=True,
                max_create_revision=self.fencing_token - 1,
                sort_order=SortOrder.DESCEND,
                sort_target=SortTarget.CREATE,
                limit=1,
                keys_only=True,
            )
            if not g.kvs:
                return
            try:
                async with (
                    LeaseGuard(self.lease),
                    self._client.watch(g.kvs[0].key, start_revision=g.revision + 1, no_put=True) as w,
                ):
                    async for ev in w:
                        if ev.type is EventType.DELETE:
                            break
            except CompactedError:
                continue  # re-read: the key may be gone already

    async def _delete_key(self) -> None:
        if self.key:
            with contextlib.suppress(KvdiscoError):
                await self._client.delete(self.key)
            self.key = b""

    async def _release(self) -> None:
        try:
            await self._delete_key()
        finally:
            if self._given_lease is None and self._lease is not None:
                await self._lease.release()
                self._lease = None


class Lock(_Contender):
    """A distributed mutex. **Use the fencing token** (see the module docstring).

        async with Lock(client, "jobs/cleanup", ttl=10) as lock:
            await resource.write(data, fencing_token=lock.fencing_token)

    The ``async with`` body is cancelled, and ``LeaseLostError`` raised, if the lease is lost
    while it runs (``cancel_on_loss=False`` turns that off; then call ``check()`` yourself).
    Pass ``lease`` to share one lease (session) between locks; otherwise each lock grants its own
    with ``ttl`` and revokes it on release.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl: int = 10,
        lease: Lease | None = None,
        cancel_on_loss: bool = True,
    ) -> None:
        super().__init__(client, name, ttl=ttl, lease=lease)
        self._cancel_on_loss = cancel_on_loss
        self._guard: LeaseGuard | None = None

    async def acquire(self, timeout_s: float | None = None) -> int:
        """Wait until held; returns the fencing token. On timeout or error the attempt is undone."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._create(b"")
                await self._wait_for_older()
        except BaseException:
            await asyncio.shield(self._release())
            raise
        return self.fencing_token

    async def release(self) -> None:
        await self._release()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        if self._cancel_on_loss:
            self._guard = LeaseGuard(self.lease)
            try:
                await self._guard.__aenter__()
            except BaseException:
                await self._release()
                raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._guard is not None:
                guard, self._guard = self._guard, None
                await guard.__aexit__(et, exc, tb)
        finally:
            await asyncio.shield(self._release())


class Election(_Contender):
    """Leader election: ``campaign`` waits to lead, ``proclaim`` updates the leader's value,
    ``resign`` steps down, ``leader`` and ``observe`` read who leads. Leadership is a lock, so the
    same fencing rule applies: act only with ``fencing_token`` checked by the resource."""

    def __init__(self, client: Client, name: str, *, ttl: int = 10, lease: Lease | None = None) -> None:
        super().__init__(client, name, ttl=ttl, lease=lease)

    async def campaign(self, value: Key, timeout_s: float | None = None) -> int:
        """Wait until this contender leads; returns the fencing token."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._create(value)
                if (await self._client.get(self.key)).kvs[0].value != to_bytes(value):
                    await self.proclaim(value)
                await self._wait_for_older()
        except BaseException:
            await asyncio.shield(self._release())
            raise
        return self.fencing_token

    async def proclaim(self, value: Key) -> None:
        """Change the leader's value; ``NotLeaderError`` if this contender no longer holds its key."""
        if not self.key:
            raise NotLeaderError(None, "not campaigning")
        r = await (
            self._client.txn()
            .if_(Compare.create(self.key) == self.fencing_token)
            .then(put(self.key, value, lease=self.lease.id))
            .commit()
        )
        if not r.succeeded:
            raise NotLeaderError(None, f"key {self.key!r} is gone: leadership lost")

    async def resign(self) -> None:
        await self._release()

    async def leader(self) -> KeyValue | None:
        """The current leader's key and value, or None."""
        g = await self._client.get(
            self.prefix, prefix=True, sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE, limit=1
        )
        return g.kvs[0] if g.kvs else None

    async def observe(self) -> AsyncIterator[KeyValue | None]:
        """The leader now, then again each time it changes (or proclaims a new value)."""
        last: KeyValue | None = None
        first = True
        while True:
            g = await self._client.get(
                self.prefix, prefix=True, sort_order=SortOrder.ASCEND, sort_target=SortTarget.CREATE, limit=1
            )
            cur = g.kvs[0] if g.kvs else None
            if first or cur != last:
                yield cur
                first, last = False, cur
            with contextlib.suppress(CompactedError):
                async with self._client.watch(self.prefix, prefix=True, start_revision=g.revision + 1) as w:
                    async for _ in w:
                        break
