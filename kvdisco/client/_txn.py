"""Request builders: ranges, puts, deletes, and the typed transaction builder.

A txn is a value: ``Compare`` and ``Op`` objects are frozen and encode themselves to the
gateway's JSON, so the same ops serve ``Client.get`` / ``put`` / ``delete`` and a txn branch.

    await c.txn().if_(Compare.version("k") == 0).then(put("k", "v")).else_(get("k")).commit()
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._types import TxnResult, b64, prefix_end, to_bytes

__all__ = ["Compare", "Op", "SortOrder", "SortTarget", "Txn", "delete", "get", "put", "range_end_for"]

JSON = dict[str, Any]


class SortOrder(enum.Enum):
    NONE = "NONE"
    ASCEND = "ASCEND"
    DESCEND = "DESCEND"


class SortTarget(enum.Enum):
    KEY = "KEY"
    VERSION = "VERSION"
    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"


def range_end_for(key: str | bytes, *, prefix: bool, from_key: bool, range_end: str | bytes | None) -> bytes | None:
    """The ``range_end`` for the one selection the caller asked for (at most one of the three)."""
    if sum((prefix, from_key, range_end is not None)) > 1:
        raise ValueError("use at most one of prefix=True, from_key=True, range_end=...")
    if prefix:
        return prefix_end(key) if to_bytes(key) else b"\0"
    if from_key:
        return b"\0"
    return None if range_end is None else to_bytes(range_end)


@dataclass(frozen=True, slots=True)
class Op:
    """One request inside a txn (or on its own): build with ``Op.get``, ``Op.put``, ``Op.delete``."""

    kind: str  # "request_range" | "request_put" | "request_delete_range" | "request_txn"
    body: JSON = field(hash=False)

    @property
    def read_only(self) -> bool:
        if self.kind == "request_range":
            return True
        if self.kind == "request_txn":
            ops = self.body.get("success", []) + self.body.get("failure", [])
            return all("request_range" in o for o in ops)  # nested txns count as writes: rare
        return False

    def to_json(self) -> JSON:
        return {self.kind: self.body}

    @staticmethod
    def get(
        key: str | bytes,
        *,
        prefix: bool = False,
        from_key: bool = False,
        range_end: str | bytes | None = None,
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
    ) -> Op:
        if not to_bytes(key) and not (prefix or from_key or range_end is not None):
            raise ValueError("an empty key needs prefix=True, from_key=True or range_end")
        end = range_end_for(key, prefix=prefix, from_key=from_key, range_end=range_end)
        body: JSON = {"key": b64(key) if to_bytes(key) else b64(b"\0")}
        if end is not None:
            body["range_end"] = b64(end)
        for name, v in (
            ("revision", revision),
            ("limit", limit),
            ("min_create_revision", min_create_revision),
            ("max_create_revision", max_create_revision),
            ("min_mod_revision", min_mod_revision),
            ("max_mod_revision", max_mod_revision),
        ):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
            if v:
                body[name] = str(v)
        for name, flag in (("keys_only", keys_only), ("count_only", count_only), ("serializable", serializable)):
            if flag:
                body[name] = True
        if sort_order is not SortOrder.NONE:
            body["sort_order"] = sort_order.value
        if sort_target is not SortTarget.KEY:
            body["sort_target"] = sort_target.value
        return Op("request_range", body)

    @staticmethod
    def put(
        key: str | bytes,
        value: str | bytes = b"",
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> Op:
        if not to_bytes(key):
            raise ValueError("key must not be empty")
        body: JSON = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        for name, flag in (("prev_kv", prev_kv), ("ignore_value", ignore_value), ("ignore_lease", ignore_lease)):
            if flag:
                body[name] = True
        return Op("request_put", body)

    @staticmethod
    def delete(
        key: str | bytes,
        *,
        prefix: bool = False,
        from_key: bool = False,
        range_end: str | bytes | None = None,
        prev_kv: bool = False,
    ) -> Op:
        if not to_bytes(key) and not (prefix or from_key or range_end is not None):
            raise ValueError("an empty key needs prefix=True, from_key=True or range_end")
        end = range_end_for(key, prefix=prefix, from_key=from_key, range_end=range_end)
        body: JSON = {"key": b64(key) if to_bytes(key) else b64(b"\0")}
        if end is not None:
            body["range_end"] = b64(end)
        if prev_kv:
            body["prev_kv"] = True
        return Op("request_delete_range", body)

    @staticmethod
    def txn(compares: tuple[Compare, ...], success: tuple[Op, ...], failure: tuple[Op, ...]) -> Op:
        """A nested txn, for use as an op inside another txn's branch."""
        return Op("request_txn", _txn_body(compares, success, failure))


#: Shorthands for building txn branches: ``then(put("k", "v"))``.
get = Op.get
put = Op.put
delete = Op.delete


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn guard. Build with a target and an operator: ``Compare.version("k") == 0``,
    ``Compare.mod("k") < 7``, ``Compare.value("k") != "x"``, ``Compare.lease("k") == lease_id``.
    The named methods (``.eq``, ``.ne``, ``.lt``, ``.gt``) do the same without operator overloading.
    """

    key: bytes
    target: str  # VERSION | CREATE | MOD | VALUE | LEASE
    result: str = "EQUAL"  # EQUAL | NOT_EQUAL | LESS | GREATER
    operand: int | bytes = 0
    range_end: bytes | None = None

    @staticmethod
    def version(key: str | bytes) -> CompareTarget:
        return CompareTarget(to_bytes(key), "VERSION")

    @staticmethod
    def create(key: str | bytes) -> CompareTarget:
        """The key's create_revision (0 when the key does not exist)."""
        return CompareTarget(to_bytes(key), "CREATE")

    @staticmethod
    def mod(key: str | bytes) -> CompareTarget:
        return CompareTarget(to_bytes(key), "MOD")

    @staticmethod
    def value(key: str | bytes) -> CompareTarget:
        return CompareTarget(to_bytes(key), "VALUE")

    @staticmethod
    def lease(key: str | bytes) -> CompareTarget:
        return CompareTarget(to_bytes(key), "LEASE")

    def to_json(self) -> JSON:
        field_name = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "LEASE": "lease"}
        body: JSON = {"key": b64(self.key), "target": self.target, "result": self.result}
        if self.range_end is not None:
            body["range_end"] = b64(self.range_end)
        if self.target == "VALUE":
            assert isinstance(self.operand, bytes)
            body["value"] = b64(self.operand)
        else:
            body[field_name[self.target]] = str(self.operand)
        return body


@dataclass(frozen=True, slots=True)
class CompareTarget:
    """The left side of a compare, waiting for its operator."""

    key: bytes
    target: str

    def _make(self, result: str, operand: int | str | bytes) -> Compare:
        if self.target == "VALUE":
            if isinstance(operand, int):
                raise TypeError("Compare.value(...) compares with str or bytes")
            return Compare(self.key, self.target, result, to_bytes(operand))
        if not isinstance(operand, int) or isinstance(operand, bool):
            raise TypeError(f"Compare.{self.target.lower()}(...) compares with int")
        return Compare(self.key, self.target, result, operand)

    def eq(self, operand: int | str | bytes) -> Compare:
        return self._make("EQUAL", operand)

    def ne(self, operand: int | str | bytes) -> Compare:
        return self._make("NOT_EQUAL", operand)

    def lt(self, operand: int | str | bytes) -> Compare:
        return self._make("LESS", operand)

    def gt(self, operand: int | str | bytes) -> Compare:
        return self._make("GREATER", operand)

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        if not isinstance(operand, int | str | bytes):
            return NotImplemented
        return self.eq(operand)

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        if not isinstance(operand, int | str | bytes):
            return NotImplemented
        return self.ne(operand)

    def __lt__(self, operand: int | str | bytes) -> Compare:
        return self.lt(operand)

    def __gt__(self, operand: int | str | bytes) -> Compare:
        return self.gt(operand)

    __hash__ = None  # type: ignore[assignment]


def _txn_body(compares: tuple[Compare, ...], success: tuple[Op, ...], failure: tuple[Op, ...]) -> JSON:
    body: JSON = {}
    if compares:
        body["compare"] = [c.to_json() for c in compares]
    if success:
        body["success"] = [o.to_json() for o in success]
    if failure:
        body["failure"] = [o.to_json() for o in failure]
    return body


class Txn:
    """``if_(*compares).then(*ops).else_(*ops)``, each at most once and in that order, then ``commit()``.

    A txn whose ops are all reads is retried like a read; any write makes it a write (not retried
    once it may have been sent).
    """

    def __init__(self, commit: Callable[[JSON, bool], Awaitable[TxnResult]]) -> None:
        self._commit = commit
        self._compares: tuple[Compare, ...] = ()
        self._success: tuple[Op, ...] = ()
        self._failure: tuple[Op, ...] = ()
        self._stage = 0  # 0 new, 1 after if_, 2 after then, 3 after else_, 4 committed

    def _advance(self, stage: int, name: str) -> None:
        if self._stage >= stage:
            raise RuntimeError(f"txn: {name}() called twice or out of order (if_ -> then -> else_ -> commit)")
        self._stage = stage

    def if_(self, *compares: Compare) -> Txn:
        self._advance(1, "if_")
        for c in compares:
            if not isinstance(c, Compare):
                raise TypeError(f"if_() takes Compare objects, got {type(c).__name__}")
        self._compares = compares
        return self

    def then(self, *ops: Op) -> Txn:
        self._advance(2, "then")
        self._success = _check_ops(ops)
        return self

    def else_(self, *ops: Op) -> Txn:
        self._advance(3, "else_")
        self._failure = _check_ops(ops)
        return self

    def to_json(self) -> JSON:
        return _txn_body(self._compares, self._success, self._failure)

    @property
    def read_only(self) -> bool:
        return all(o.read_only for o in self._success + self._failure)

    async def commit(self) -> TxnResult:
        self._advance(4, "commit")
        return await self._commit(self.to_json(), self.read_only)


def _check_ops(ops: tuple[Op, ...]) -> tuple[Op, ...]:
    for o in ops:
        if not isinstance(o, Op):
            raise TypeError(f"txn branches take Op objects (put/get/delete), got {type(o).__name__}")
    return ops
