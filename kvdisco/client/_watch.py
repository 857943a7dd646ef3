"""A watch that survives endpoint failures without losing or repeating an event.

The stream is POST ``/v3/watch`` with one ``create_request``; the answer is a stream of
``{"result": ...}`` objects (first ``created: true``, then event batches and progress
notifications). The client remembers the next revision it needs (``next_revision``: the last
delivered revision + 1, moved forward by progress notifications too) and, when the stream breaks
(connection reset, server gone, stream silent past the deadline), re-creates the watch from exactly
that revision on the next endpoint: events are delivered once each, in order, with no gap.

Dead servers do not hang a watch: the watch asks for progress notifications, and when the stream
has been silent for ``progress_deadline_s`` it probes the same endpoint with a status call bounded
by ``probe_timeout_s``. A live but idle server answers and the stream is kept; a dead, partitioned
or paused one does not, and the watch moves to another endpoint.

If the resume revision has been compacted meanwhile, ``CompactedError`` (with
``compact_revision``) is raised: the caller must re-list and start a new watch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any

from ._errors import (
    CODE_OUT_OF_RANGE,
    CompactedError,
    ConnectionFailedError,
    InvalidArgumentError,
    KvdiscoError,
    UnavailableError,
    WatchCanceledError,
)
from ._transport import Transport, _Ambiguous, _NotSent
from ._types import Event, Header, WatchBatch

__all__ = ["Watch"]

log = logging.getLogger("kvdisco.client.watch")

JSON = dict[str, Any]


class Watch:
    """``async for event in watch`` yields ``Event`` s; ``async for batch in watch.batches()`` yields
    one ``WatchBatch`` per revision (a txn's events together). Use one of the two, not both.

    Close with ``await watch.aclose()`` or ``async with client.watch(...) as w``.
    """

    def __init__(
        self,
        transport: Transport,
        create_request: JSON,
        *,
        start_revision: int,
        progress_deadline_s: float,
        probe_timeout_s: float,
        reconnect_deadline_s: float,
    ) -> None:
        if start_revision < 0:
            raise ValueError("start_revision must be >= 0")
        self._transport = transport
        self._create = create_request
        #: The first revision not yet delivered; 0 until the first connection fixes "now".
        self.next_revision = start_revision
        #: The endpoint currently streaming, or None between connections.
        self.endpoint: str | None = None
        #: How many times the stream was re-created after a failure.
        self.reconnects = 0
        self._progress_deadline_s = progress_deadline_s
        self._probe_timeout_s = probe_timeout_s
        self._reconnect_deadline_s = reconnect_deadline_s
        self._gen: AsyncGenerator[WatchBatch, None] | None = None
        self._pending: deque[Event] = deque()

    # --- iteration ---------------------------------------------------------------------------------

    def batches(self) -> AsyncGenerator[WatchBatch, None]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            batch = await self.batches().__anext__()
            self._pending.extend(batch.events)
        return self._pending.popleft()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- the stream --------------------------------------------------------------------------------

    async def _probe(self, endpoint: str) -> bool:
        """Is ``endpoint`` alive? Called when its stream has been silent past the deadline."""
        try:
            await asyncio.wait_for(
                self._transport.post_once(endpoint, "/v3/maintenance/status", {}, self._probe_timeout_s),
                self._probe_timeout_s,
            )
        except (KvdiscoError, _NotSent, _Ambiguous, TimeoutError) as exc:
            log.info("watch stream on %s silent and probe failed (%s): reconnecting", endpoint, exc)
            return False
        return True

    async def _run(self) -> AsyncGenerator[WatchBatch, None]:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        round_no = 0
        while True:
            ep = self._transport.current
            create = dict(self._create)
            if self.next_revision:
                create["start_revision"] = str(self.next_revision)
            try:
                async for res in self._transport.stream(
                    ep,
                    "/v3/watch",
                    {"create_request": create},
                    idle_timeout_s=self._progress_deadline_s,
                    on_idle=functools.partial(self._probe, ep),
                ):
                    batches = self._handle(res, ep)
                    if self.endpoint is not None:
                        failing_since, round_no = None, 0
                    for b in batches:
                        yield b
                why = "stream ended"
            except (_NotSent, _Ambiguous, TimeoutError) as exc:
                why = repr(exc)
            except UnavailableError as exc:
                why = str(exc)
            except (CompactedError, WatchCanceledError, InvalidArgumentError):
                raise
            except KvdiscoError as exc:
                if exc.code == CODE_OUT_OF_RANGE:
                    raise
                why = str(exc)
            self.endpoint = None
            self._transport.mark_failed(ep)
            now = loop.time()
            failing_since = failing_since if failing_since is not None else now
            if now - failing_since > self._reconnect_deadline_s:
                raise ConnectionFailedError(None, f"watch could not reconnect: last error on {ep}: {why}")
            self.reconnects += 1
            log.info("watch on %s broke (%s); resuming from revision %d", ep, why, self.next_revision)
            if round_no and round_no % len(self._transport.endpoints) == 0:
                await asyncio.sleep(self._transport.backoff_s(round_no // len(self._transport.endpoints) - 1))
            round_no += 1

    def _handle(self, res: JSON, ep: str) -> list[WatchBatch]:
        header = Header.from_json(res.get("header"))
        compact = int(res.get("compact_revision") or 0)
        if compact:
            raise CompactedError(
                CODE_OUT_OF_RANGE,
                f"watch from revision {self.next_revision} canceled: compacted up to {compact}",
                compact,
            )
        if res.get("canceled"):
            raise WatchCanceledError(None, str(res.get("cancel_reason") or "watch canceled by the server"))
        if res.get("created"):
            self.endpoint = ep
            if self.next_revision == 0:
                self.next_revision = header.revision + 1
            return []
        events = res.get("events") or []
        if not events:
            # A progress notification: every event up to header.revision has been sent.
            if self.next_revision and header.revision + 1 > self.next_revision:
                self.next_revision = header.revision + 1
            return []
        out: list[WatchBatch] = []
        current: list[Event] = []
        current_rev = 0
        for raw in events:
            ev = Event.from_json(raw)
            rev = ev.kv.mod_revision
            if rev < self.next_revision:
                continue  # already delivered before a reconnect
            if rev != current_rev and current:
                out.append(WatchBatch(current_rev, tuple(current), header))
                current = []
            current_rev = rev
            current.append(ev)
        if current:
            out.append(WatchBatch(current_rev, tuple(current), header))
        if out:
            self.next_revision = out[-1].revision + 1
        return out
