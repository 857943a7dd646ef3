"""The OpenAPI 3.0 document of the native /v1 API, served at ``/v1/openapi.json``.

Kept as data beside the handlers in :mod:`v1`; the fuzz test (schemathesis) checks that the
server answers every route as described here, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_ERROR = {
    "type": "object",
    "required": ["error", "code", "message"],
    "properties": {"error": {"type": "string"}, "code": {"type": "integer"}, "message": {"type": "string"}},
}

_KV = {
    "type": "object",
    "required": ["create_revision", "mod_revision", "version"],
    "properties": {
        "key": {"type": "string"},
        "key_base64": {"type": "string", "description": "the key, when it is not UTF-8"},
        "value": {"type": "string"},
        "value_base64": {"type": "string", "description": "the value, when it is not UTF-8"},
        "create_revision": {"type": "integer"},
        "mod_revision": {"type": "integer"},
        "version": {"type": "integer"},
        "lease": {"type": "integer"},
    },
}

_MEMBER = {
    "type": "object",
    "required": ["ID"],
    "properties": {
        "ID": {"type": "string", "description": "decimal member id"},
        "name": {"type": "string"},
        "peerURLs": {"type": "array", "items": {"type": "string"}},
        "clientURLs": {"type": "array", "items": {"type": "string"}},
        "isLearner": {"type": "boolean"},
    },
}


#: What :func:`kvdisco.api.v1._flag` takes: true/1/yes, false/0/no or empty (false), in any case.
_BOOL_PATTERN = "^(|[01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo])$"


def _bool_param(name: str, doc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{doc}: true, 1 or yes; false, 0, no or empty (any case)",
        "schema": {"type": "string", "pattern": _BOOL_PATTERN},
    }


def _int_param(name: str, doc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": doc,
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    }


_KEY_PARAM = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "the key, UTF-8",
    "schema": {"type": "string", "minLength": 1},
}
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "member id, hexadecimal",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{1,16}$"},
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "error", "content": _json_content(_ERROR)} for s in statuses}


_HEX_ID = {"type": "string", "description": "member id, hexadecimal; empty when none"}
_RAFT_STATUS = {
    "type": "object",
    "required": ["id", "name", "role", "term", "leader", "vote", "commit", "applied", "voters", "learners", "revision"],
    "properties": {
        "id": _HEX_ID,
        "name": {"type": "string"},
        "role": {"type": "string"},
        "term": {"type": "integer"},
        "leader": _HEX_ID,
        "vote": _HEX_ID,
        "commit": {"type": "integer"},
        "applied": {"type": "integer"},
        "voters": {"type": "array", "items": _HEX_ID},
        "learners": {"type": "array", "items": _HEX_ID},
        "progress": {"type": "object", "description": "per peer (hexadecimal id), on the leader only"},
        "revision": {"type": "integer"},
        "compact_revision": {"type": "integer"},
    },
}

_MEMBERS = {"type": "array", "items": _MEMBER}
_MEMBERS_BODY = {"type": "object", "required": ["members"], "properties": {"members": _MEMBERS}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "kvdisco native API",
        "version": "1",
        "description": "Plain-UTF-8-key access to the store, NDJSON watches, and cluster administration. "
        "The etcd v3 JSON gateway is served beside it under /v3.",
    },
    "paths": {
        "/v1/kv/{key}": {
            "get": {
                "summary": "Read a key, or every key with the prefix",
                "parameters": [
                    _KEY_PARAM,
                    _bool_param("prefix", "read every key starting with key"),
                    _int_param("rev", "read at this revision (0: current)"),
                    _int_param("limit", "at most this many keys (0: no limit)"),
                    _bool_param("keys_only", "leave values out"),
                    _bool_param("serializable", "read the local replica without a ReadIndex round"),
                ],
                "responses": {
                    "200": {
                        "description": "the keys",
                        "content": _json_content(
                            {
                                "type": "object",
                                "required": ["revision", "count", "more", "kvs"],
                                "properties": {
                                    "revision": {"type": "integer"},
                                    "count": {"type": "integer"},
                                    "more": {"type": "boolean"},
                                    "kvs": {"type": "array", "items": _KV},
                                },
                            }
                        ),
                    },
                    **_errors(400, 404, 503),
                },
            },
            "put": {
                "summary": "Write a key; the request body is the value, as is",
                "parameters": [
                    _KEY_PARAM,
                    _int_param("lease", "attach to this lease"),
                    _bool_param("prev_kv", "return the previous value"),
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "200": {
                        "description": "written",
                        "content": _json_content(
                            {
                                "type": "object",
                                "required": ["revision"],
                                "properties": {"revision": {"type": "integer"}, "prev_kv": _KV},
                            }
                        ),
                    },
                    **_errors(400, 404, 503),
                },
            },
            "delete": {
                "summary": "Delete a key, or every key with the prefix",
                "parameters": [
                    _KEY_PARAM,
                    _bool_param("prefix", "delete every key starting with key"),
                    _bool_param("prev_kv", "return the deleted keys"),
                ],
                "responses": {
                    "200": {
                        "description": "deleted",
                        "content": _json_content(
                            {
                                "type": "object",
                                "required": ["revision", "deleted"],
                                "properties": {
                                    "revision": {"type": "integer"},
                                    "deleted": {"type": "integer"},
                                    "prev_kvs": {"type": "array", "items": _KV},
                                },
                            }
                        ),
                    },
                    **_errors(400, 503),
                },
            },
        },
        "/v1/watch/{key}": {
            "get": {
                "summary": "Stream changes to a key or prefix as NDJSON",
                "description": "First line {created, revision}; then one line per revision with its events "
                "(a txn's events together), lines with no events as progress notifications, and a last line "
                "with canceled:true (and compact_revision when the start revision was compacted).",
                "parameters": [
                    _KEY_PARAM,
                    _bool_param("prefix", "watch every key starting with key"),
                    _int_param("rev", "first revision to deliver (0: the next one)"),
                    _bool_param("prev_kv", "include each key's previous value"),
                    _bool_param("puts", "deliver PUT events (default true)"),
                    _bool_param("deletes", "deliver DELETE events (default true)"),
                ],
                "responses": {
                    "200": {
                        "description": "NDJSON stream",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_errors(400),
                },
            },
        },
        "/v1/members": {
            "get": {
                "summary": "List the members",
                "responses": {"200": {"description": "members", "content": _json_content(_MEMBERS_BODY)}},
            },
            "post": {
                "summary": "Add a member (a learner unless learner is false)",
                "requestBody": {
                    "required": True,
                    "content": _json_content(
                        {
                            "type": "object",
                            "required": ["name", "peer_url"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "peer_url": {
                                    "type": "string",
                                    "pattern": "^https?://[^/]+:[0-9]+/?$",
                                    "description": "the new member's --listen-peer-urls, http(s)://host:port",
                                },
                                "learner": {"type": "boolean"},
                            },
                        }
                    ),
                },
                "responses": {
                    "201": {
                        "description": "added",
                        "content": _json_content(
                            {
                                "type": "object",
                                "required": ["member", "members"],
                                "properties": {"member": _MEMBER, "members": _MEMBERS},
                            }
                        ),
                    },
                    **_errors(400, 409, 412, 503),
                },
            },
        },
        "/v1/members/{id}": {
            "delete": {
                "summary": "Remove a member",
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": {"description": "removed", "content": _json_content(_MEMBERS_BODY)},
                    **_errors(400, 404, 503),
                },
            },
        },
        "/v1/members/{id}/promote": {
            "post": {
                "summary": "Promote a learner that has caught up to a voting member",
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": {"description": "promoted", "content": _json_content(_MEMBERS_BODY)},
                    **_errors(400, 404, 412, 503),
                },
            },
        },
        "/v1/raft/status": {
            "get": {
                "summary": "This member's Raft state: term, leader, indexes, peers' progress (on the leader)",
                "responses": {"200": {"description": "status", "content": _json_content(_RAFT_STATUS)}},
            },
        },
        "/v1/snapshot": {
            "get": {
                "summary": "Download the whole store (kvdisco snapshot format) as of a linearizable point",
                "responses": {
                    "200": {
                        "description": "snapshot",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors(503),
                },
            },
        },
    },
}
