"""Named registers replicated through Raft: the smallest state machine that shows every write survives.

Commands are msgpack arrays ``["set", key, value]`` or ``["del", key]``. A
malformed command is answered with an error result and changes nothing, so
a bad request can never stop a node (the Raft driver treats an exception
from ``apply`` as a bug).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

__all__ = ["RegisterMachine", "decode_command", "encode_delete", "encode_set"]

#: Longest register name, in bytes of UTF-8.
KEY_BYTES_MAX = 1024


def encode_set(key: str, value: bytes) -> bytes:
    return msgpack.packb(["set", key, value], use_bin_type=True)


def encode_delete(key: str) -> bytes:
    return msgpack.packb(["del", key], use_bin_type=True)


def decode_command(data: bytes) -> tuple[str, str, bytes] | str:
    """Returns (op, key, value) or an error message."""
    try:
        cmd = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        return f"undecodable command: {exc}"
    if not isinstance(cmd, list) or not cmd or cmd[0] not in ("set", "del"):
        return "unknown command"
    if len(cmd) < 2 or not isinstance(cmd[1], str) or len(cmd[1].encode()) > KEY_BYTES_MAX:
        return "bad key"
    if cmd[0] == "set":
        if len(cmd) != 3 or not isinstance(cmd[2], bytes):
            return "bad value"
        return "set", cmd[1], cmd[2]
    if len(cmd) != 2:
        return "bad delete"
    return "del", cmd[1], b""


class RegisterMachine:
    """key -> (value, index of the write that set it). Deterministic; no clock, no I/O."""

    def __init__(self) -> None:
        self.registers: dict[str, tuple[bytes, int]] = {}
        self.applied_index = 0

    def apply(self, index: int, command: bytes) -> dict[str, Any]:
        self.applied_index = index
        parsed = decode_command(command)
        if isinstance(parsed, str):
            return {"error": parsed, "index": index}
        op, key, value = parsed
        prev = self.registers.get(key)
        if op == "set":
            self.registers[key] = (value, index)
        else:
            self.registers.pop(key, None)
        return {"index": index, "prev": None if prev is None else prev[0]}

    def get(self, key: str) -> tuple[bytes, int] | None:
        return self.registers.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb(
            [self.applied_index, sorted([k, v, i] for k, (v, i) in self.registers.items())], use_bin_type=True
        )

    def restore(self, data: bytes) -> None:
        applied, items = msgpack.unpackb(data, raw=False)
        self.applied_index = applied
        self.registers = {k: (v, i) for k, v, i in items}

    def digest(self) -> str:
        """A hash of the whole state, to compare replicas at the same applied index."""
        return hashlib.sha256(self.snapshot()).hexdigest()[:16]
