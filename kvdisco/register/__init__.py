"""A small replicated register map: the demo state machine served until the KV store lands."""

from .machine import RegisterMachine, decode_command, encode_delete, encode_set

__all__ = ["RegisterMachine", "decode_command", "encode_delete", "encode_set"]
