"""The async client: one object per application, holding the endpoints and an HTTP session.

Which calls are retried on their own (on another endpoint, with backoff, until ``retry_deadline_s``):

* always, on any connection failure, timeout or Unavailable answer (they are idempotent):
  ``get``, a txn with only ``get`` ops, ``status``, ``member_list``, ``lease_time_to_live``,
  ``leases``, ``lease_keepalive_once`` (and so the background keepalive of ``lease``),
  ``snapshot`` (restarted from the first byte), and ``watch`` (resumed from the next revision);
* only when nothing can have been applied (the connection failed before the request was sent, or
  the server answered Unavailable with "no leader"/"not capable"/"too many requests"):
  ``put``, ``delete``, a txn with writes, ``compact``, ``lease_grant``, ``lease_revoke``,
  ``member_add``, ``member_remove``, ``member_promote``. Once such a request may have been
  sent, a failure raises ``IndeterminateError`` (no answer) or the server's error: the write may
  or may not have happened, and only the caller can know whether sending it again is safe.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._errors import ConnectionFailedError, LeaseNotFoundError, UnavailableError
from ._lease import Lease
from ._transport import Transport, _Ambiguous, _NotSent
from ._txn import Op, SortOrder, SortTarget, Txn, range_end_for
from ._types import (
    DeleteResult,
    GetResult,
    Header,
    Key,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseTimeToLive,
    Member,
    MemberAddResult,
    PutResult,
    Status,
    TxnResult,
    b64,
    to_bytes,
)
from ._watch import Watch

__all__ = ["DEFAULT_ENDPOINT", "Client"]

JSON = dict[str, Any]

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


class Client:
    """``async with Client(endpoints=[...]) as c:``; see the module docstring for retry rules.

    Timeouts, in seconds: ``request_timeout_s`` bounds one HTTP attempt, ``retry_deadline_s`` all
    attempts of one call, ``watch_progress_deadline_s`` the silence a watch tolerates before it
    probes its server.
    """

    def __init__(
        self,
        endpoints: Sequence[str] = (DEFAULT_ENDPOINT,),
        *,
        request_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        retry_deadline_s: float = 10.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
        watch_progress_deadline_s: float = 15.0,
        watch_probe_timeout_s: float = 2.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        self._t = Transport(
            endpoints,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
            retry_deadline_s=retry_deadline_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        self.watch_progress_deadline_s = watch_progress_deadline_s
        self.watch_probe_timeout_s = watch_probe_timeout_s

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._t.endpoints

    @property
    def request_timeout_s(self) -> float:
        return self._t.request_timeout_s

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call tries first."""
        return self._t.current

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, path: str, body: JSON, *, idempotent: bool, endpoint: str | None = None) -> JSON:
        return await self._t.call(path, body, idempotent=idempotent, endpoint=endpoint)

    # --- KV ------------------------------------------------------------------------------------------

    async def get(
        self,
        key: Key,
        *,
        prefix: bool = False,
        from_key: bool = False,
        range_end: Key | None = None,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
    ) -> GetResult:
        """Read one key, or a range: ``prefix=True`` (keys starting with ``key``; ``""`` = all keys),
        ``from_key=True`` (keys >= ``key``) or ``range_end`` (keys in ``[key, range_end)``)."""
        op = Op.get(
            key,
            prefix=prefix,
            from_key=from_key,
            range_end=range_end,
            revision=revision,
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
            serializable=serializable,
            sort_order=sort_order,
            sort_target=sort_target,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
        )
        return GetResult.from_json(await self._call("/v3/kv/range", op.body, idempotent=True))

    async def put(
        self,
        key: Key,
        value: Key,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult:
        op = Op.put(key, value, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value, ignore_lease=ignore_lease)
        return PutResult.from_json(await self._call("/v3/kv/put", op.body, idempotent=False))

    async def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        from_key: bool = False,
        range_end: Key | None = None,
        prev_kv: bool = False,
    ) -> DeleteResult:
        op = Op.delete(key, prefix=prefix, from_key=from_key, range_end=range_end, prev_kv=prev_kv)
        return DeleteResult.from_json(await self._call("/v3/kv/deleterange", op.body, idempotent=False))

    def txn(self) -> Txn:
        """``await c.txn().if_(Compare.version("k") == 0).then(put("k", "v")).else_(get("k")).commit()``"""

        async def commit(body: JSON, read_only: bool) -> TxnResult:
            return TxnResult.from_json(await self._call("/v3/kv/txn", body, idempotent=read_only))

        return Txn(commit)

    async def compact(self, revision: int, *, physical: bool = False) -> Header:
        """Discard history before ``revision``; reads and watches below it then fail with ``CompactedError``."""
        body: JSON = {"revision": str(revision)}
        if physical:
            body["physical"] = True
        return Header.from_json((await self._call("/v3/kv/compaction", body, idempotent=False)).get("header"))

    # --- leases --------------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> LeaseGrant:
        body: JSON = {"TTL": str(ttl)}
        if lease_id:
            body["ID"] = str(lease_id)
        return LeaseGrant.from_json(await self._call("/v3/lease/grant", body, idempotent=False))

    async def lease_revoke(self, lease_id: int) -> Header:
        """Revoke the lease and delete its keys; ``LeaseNotFoundError`` if it does not exist."""
        res = await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=False)
        return Header.from_json(res.get("header"))

    async def lease_keepalive_once(self, lease_id: int) -> LeaseKeepAlive:
        """Renew once; ``LeaseNotFoundError`` if the lease is gone (the gateway answers TTL 0)."""
        ka = LeaseKeepAlive.from_json(await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, idempotent=True))
        if ka.ttl <= 0:
            raise LeaseNotFoundError(None, "etcdserver: requested lease not found")
        return ka

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseTimeToLive:
        """Remaining TTL (``ttl == -1`` when the lease has expired or never existed)."""
        body: JSON = {"ID": str(lease_id)}
        if keys:
            body["keys"] = True
        return LeaseTimeToLive.from_json(await self._call("/v3/lease/timetolive", body, idempotent=True))

    async def leases(self) -> tuple[int, ...]:
        res = await self._call("/v3/lease/leases", {}, idempotent=True)
        return tuple(int(item["ID"]) for item in res.get("leases", ()))

    def lease(self, ttl: int, *, lease_id: int = 0, keepalive_interval_s: float | None = None) -> Lease:
        """``async with c.lease(ttl=10) as lease:`` grants, keeps alive (every ttl/3) and revokes on exit."""
        return Lease(self, ttl, lease_id=lease_id, keepalive_interval_s=keepalive_interval_s)

    # --- watch ---------------------------------------------------------------------------------------

    def watch(
        self,
        key: Key,
        *,
        prefix: bool = False,
        from_key: bool = False,
        range_end: Key | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_deadline_s: float | None = None,
    ) -> Watch:
        """Events on ``key`` (or a prefix / range, as in ``get``) from ``start_revision`` (inclusive;
        0 = from now). Resumes on another endpoint after failures; see ``Watch``."""
        end = range_end_for(key, prefix=prefix, from_key=from_key, range_end=range_end)
        create: JSON = {"key": b64(key) if to_bytes(key) else b64(b"\0"), "progress_notify": True}
        if end is not None:
            create["range_end"] = b64(end)
        elif not to_bytes(key):
            raise ValueError("an empty key needs prefix=True, from_key=True or range_end")
        if prev_kv:
            create["prev_kv"] = True
        filters = [name for name, on in (("NOPUT", no_put), ("NODELETE", no_delete)) if on]
        if filters:
            create["filters"] = filters
        return Watch(
            self._t,
            create,
            start_revision=start_revision,
            progress_deadline_s=progress_deadline_s or self.watch_progress_deadline_s,
            probe_timeout_s=self.watch_probe_timeout_s,
            reconnect_deadline_s=self._t.retry_deadline_s,
        )

    # --- cluster and maintenance -----------------------------------------------------------------------

    async def member_list(self) -> tuple[Member, ...]:
        res = await self._call("/v3/cluster/member/list", {}, idempotent=True)
        return tuple(Member.from_json(m) for m in res.get("members", ()))

    async def member_add(
        self, peer_urls: Sequence[str], *, learner: bool = False, name: str | None = None
    ) -> MemberAddResult:
        """Add a member. ``name`` is the new member's ``--name``: kvdisco derives the member ID from it
        and requires it; etcd ignores it (it learns the name when the member starts)."""
        body: JSON = {"peerURLs": list(peer_urls)}
        if name:
            body["name"] = name
        if learner:
            body["isLearner"] = True
        res = await self._call("/v3/cluster/member/add", body, idempotent=False)
        return MemberAddResult(
            Header.from_json(res.get("header")),
            Member.from_json(res.get("member", {})),
            tuple(Member.from_json(m) for m in res.get("members", ())),
        )

    async def member_remove(self, member_id: int) -> tuple[Member, ...]:
        res = await self._call("/v3/cluster/member/remove", {"ID": str(member_id)}, idempotent=False)
        return tuple(Member.from_json(m) for m in res.get("members", ()))

    async def member_promote(self, member_id: int) -> tuple[Member, ...]:
        res = await self._call("/v3/cluster/member/promote", {"ID": str(member_id)}, idempotent=False)
        return tuple(Member.from_json(m) for m in res.get("members", ()))

    async def status(self, endpoint: str | None = None) -> Status:
        """Status of ``endpoint`` (that one only, no failover), or of whichever endpoint answers."""
        if endpoint is not None:
            endpoint = endpoint.rstrip("/")
            if "://" not in endpoint:
                endpoint = "http://" + endpoint
            res = await self._call("/v3/maintenance/status", {}, idempotent=True, endpoint=endpoint)
            return Status.from_json(endpoint, res)
        res = await self._call("/v3/maintenance/status", {}, idempotent=True)
        return Status.from_json(self._t.current, res)  # a success leaves the answering endpoint current

    async def snapshot_chunks(self, endpoint: str | None = None) -> AsyncIterator[bytes]:
        """The backend snapshot, streamed from one endpoint (no failover mid-stream: a broken stream
        raises ``ConnectionFailedError``; ``snapshot_save`` restarts from the first byte instead)."""
        ep = endpoint or self._t.current
        try:
            stream = self._t.stream(ep, "/v3/maintenance/snapshot", {}, idle_timeout_s=self._t.request_timeout_s)
            async for res in stream:
                blob = res.get("blob")
                if blob:
                    yield base64.b64decode(blob)
        except (_NotSent, _Ambiguous, TimeoutError) as exc:
            self._t.mark_failed(ep)
            raise ConnectionFailedError(None, f"snapshot stream from {ep} broke: {exc!r}") from exc

    async def snapshot_save(self, path: str | os.PathLike[str]) -> int:
        """Write the snapshot to ``path`` (via ``path.part`` and a rename); returns its size in bytes."""
        dest = Path(path)
        part = dest.with_name(dest.name + ".part")
        tries = len(self._t.endpoints)
        for i in range(tries):
            size = 0
            try:
                with part.open("wb") as f:
                    async for chunk in self.snapshot_chunks():
                        f.write(chunk)
                        size += len(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            except UnavailableError:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                if i == tries - 1:
                    raise
                continue
            part.replace(dest)
            return size
        raise AssertionError("unreachable")
