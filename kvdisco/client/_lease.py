"""A lease that is kept alive while held, and whose loss is impossible to miss.

``async with client.lease(ttl=10) as lease:`` grants the lease, renews it every ``ttl/3`` in the
background and revokes it on exit. When renewal fails for good (the lease was revoked or expired,
or no endpoint answered before the TTL ran out) the lease is *lost*, and the holder learns it in
every way it might be looking:

* ``lease.lost`` (an ``asyncio.Event``) is set and ``lease.error`` holds a ``LeaseLostError``;
* ``await lease.wait_lost()`` raises that error (put it in a TaskGroup next to the work);
* ``lease.check()`` raises it, for code that checks before each action;
* ``async with lease.guard():`` cancels its body and raises it instead.

Expiry is judged conservatively: the local deadline is the time a keepalive was *sent* plus the TTL
it returned, so the client gives up no later than the server could expire the lease. That still
cannot stop a process that was paused past the deadline from acting late: use fencing tokens
(see ``recipes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

from ._errors import KvdiscoError, LeaseLostError, LeaseNotFoundError

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Lease", "LeaseGuard"]

log = logging.getLogger("kvdisco.client.lease")

#: Floor on the keepalive period, so a tiny TTL cannot turn into a busy loop.
KEEPALIVE_INTERVAL_S_MIN = 0.1
#: Pause before trying again after a keepalive round failed but time is left before expiry.
KEEPALIVE_RETRY_PAUSE_S = 0.2


class Lease:
    """A granted lease, renewed in the background while the ``async with`` block runs."""

    def __init__(
        self, client: Client, ttl: int, *, lease_id: int = 0, keepalive_interval_s: float | None = None
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        self._client = client
        self._requested_ttl = ttl
        self._requested_id = lease_id
        self._interval_s = keepalive_interval_s
        #: The lease ID, set once granted.
        self.id = 0
        #: The TTL the server granted, in seconds.
        self.ttl = 0
        #: Set when the lease is lost; ``error`` says why.
        self.lost = asyncio.Event()
        self.error: LeaseLostError | None = None
        self._expires_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._released = False

    # --- lifecycle --------------------------------------------------------------------------------

    async def grant(self) -> Lease:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        g = await self._client.lease_grant(self._requested_ttl, lease_id=self._requested_id)
        self.id, self.ttl = g.id, g.ttl
        self._expires_at = sent + g.ttl
        self._task = loop.create_task(self._keepalive_loop(), name=f"lease-keepalive-{g.id:x}")
        return self

    async def release(self) -> None:
        """Stop renewing and revoke (best effort: an unrevoked lease still expires after its TTL)."""
        if self._released:
            return
        self._released = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.id and not self.lost.is_set():
            try:
                await self._client.lease_revoke(self.id)
            except LeaseNotFoundError:
                pass
            except KvdiscoError as exc:
                log.warning("could not revoke lease %x (it expires in its TTL): %s", self.id, exc)

    async def __aenter__(self) -> Lease:
        return await self.grant()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    # --- loss reporting -----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.id != 0 and not self.lost.is_set() and not self._released

    @property
    def expires_at(self) -> float:
        """Event-loop time by which the server may have expired the lease (a conservative estimate)."""
        return self._expires_at

    def check(self) -> None:
        """Raise ``LeaseLostError`` if the lease is lost; call before acting on its behalf."""
        if self.error is not None:
            raise self.error
        if self._released:
            raise LeaseLostError(self.id, f"lease {self.id:x} was released")

    async def wait_lost(self) -> NoReturn:
        """Wait until the lease is lost, then raise ``LeaseLostError``."""
        await self.lost.wait()
        assert self.error is not None
        raise self.error

    def guard(self) -> LeaseGuard:
        """``async with lease.guard():`` runs the body until the lease is lost, then cancels it and
        raises ``LeaseLostError``."""
        return LeaseGuard(self)

    def add_lost_callback(self, fn: Callable[[], None]) -> None:
        if self.lost.is_set():
            asyncio.get_running_loop().call_soon(fn)
        else:
            self._callbacks.append(fn)

    def remove_lost_callback(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(fn)

    def _declare_lost(self, why: str) -> None:
        if self.lost.is_set():
            return
        log.warning("lease %x lost: %s", self.id, why)
        self.error = LeaseLostError(self.id, f"lease {self.id:x} lost: {why}")
        self.lost.set()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    # --- renewal ---------------------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        try:
            await self._renew_until_lost()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A bug must not leave a dead renewer behind a lease that still looks alive.
            self._declare_lost(f"keepalive task failed: {exc!r}")
            raise

    async def _renew_until_lost(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(self._interval_s or self.ttl / 3, KEEPALIVE_INTERVAL_S_MIN)
        pause = interval
        while True:
            await asyncio.sleep(min(pause, max(self._expires_at - loop.time(), 0)))
            sent = loop.time()
            remaining = self._expires_at - sent
            if remaining <= 0:
                self._declare_lost("not renewed before its TTL ran out (no endpoint answered)")
                return
            try:
                async with asyncio.timeout(remaining):
                    ka = await self._client.lease_keepalive_once(self.id)
            except TimeoutError:
                self._declare_lost("not renewed before its TTL ran out (keepalive timed out)")
                return
            except LeaseNotFoundError as exc:
                self._declare_lost(f"revoked or expired ({exc.message})")
                return
            except KvdiscoError as exc:
                log.info("keepalive of lease %x failed, retrying: %s", self.id, exc)
                pause = KEEPALIVE_RETRY_PAUSE_S
                continue
            self._expires_at = sent + ka.ttl
            pause = interval


class LeaseGuard:
    """Cancels the guarded block when the lease is lost and turns that cancellation into
    ``LeaseLostError`` (like ``asyncio.timeout`` turns its cancellation into ``TimeoutError``)."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._task: asyncio.Task[object] | None = None
        self._fired = False
        self._exited = False

    def _fire(self) -> None:
        if not self._exited and self._task is not None:
            self._fired = True
            self._task.cancel(msg="lease lost")

    async def __aenter__(self) -> Lease:
        self._lease.check()
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("LeaseGuard must be used inside a task")
        self._lease.add_lost_callback(self._fire)
        return self._lease

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exited = True
        self._lease.remove_lost_callback(self._fire)
        if self._fired:
            assert self._task is not None and self._lease.error is not None
            if self._task.uncancel() == 0 and (et is None or et is asyncio.CancelledError):
                raise self._lease.error from exc
