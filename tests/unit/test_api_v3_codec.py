"""The etcd v3 JSON gateway codec, checked against shapes recorded from a real etcd 3.4.23.

Expected response dicts below are literal copies of what ``curl`` got from etcd (same cluster
and member ids), so a drift from etcd's wire shape shows up as a plain dict diff.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvdisco.api import v3_codec as codec
from kvdisco.api.v3_codec import BadRequest, Member, WatchCancel, WatchCreate, WatchProgress
from kvdisco.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    LeaseGrantResult,
    PutResult,
    RangeResult,
    RequestDeleteRange,
    RequestOp,
    RequestPut,
    RequestRange,
    RequestTxn,
    SortOrder,
    SortTarget,
    TxnResult,
)
from kvdisco.mvcc.commands import RequestCompact
from kvdisco.mvcc.lessor import LeaseGrant
from kvdisco.mvcc.limits import TXN_OPS_MAX

CLUSTER = 6840822015343277315
MEMBER = 10971135352719343375


def hdr(revision: int, term: int = 2) -> dict[str, Any]:
    return codec.header(CLUSTER, MEMBER, revision, term)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


FOO = KeyValue(b"foo", create_revision=2, mod_revision=3, version=2, value=b"bar")
FOO2 = KeyValue(b"foo2", create_revision=4, mod_revision=4, version=1, value=b"bar")


# --- loads / dumps / errors -----------------------------------------------------------------


def test_header_prints_ids_as_decimal_strings_and_leaves_zeros_out() -> None:
    assert hdr(4) == {
        "cluster_id": "6840822015343277315",
        "member_id": "10971135352719343375",
        "revision": "4",
        "raft_term": "2",
    }
    # etcd's member list header has no revision.
    assert hdr(0) == {"cluster_id": "6840822015343277315", "member_id": "10971135352719343375", "raft_term": "2"}
    with pytest.raises(ValueError):
        codec.header(-1, 1, 1, 1)


@pytest.mark.parametrize("body", [b"", b"  \n", b"null", b"{}"])
def test_empty_and_null_bodies_are_empty_objects(body: bytes) -> None:
    assert codec.loads(body) == {}


@pytest.mark.parametrize(
    "body", [b'{"key":"Zm9v"', b"[1]", b'"x"', b"1", b'{"key":"Zm9v"} garbage', b"\xff", b"{'a':1}", b"nan"]
)
def test_malformed_or_non_object_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        codec.loads(body)
    assert info.value.code == 3


def test_dumps_is_compact_and_ordered() -> None:
    assert codec.dumps({"header": hdr(2), "count": "1"}) == (
        b'{"header":{"cluster_id":"6840822015343277315","member_id":"10971135352719343375",'
        b'"revision":"2","raft_term":"2"},"count":"1"}'
    )


@pytest.mark.parametrize(
    ("code", "status"), [(3, 400), (5, 404), (9, 412), (11, 400), (7, 403), (8, 429), (14, 503), (16, 401), (99, 500)]
)
def test_error_body_uses_the_gateway_status_table(code: int, status: int) -> None:
    msg = "etcdserver: requested lease not found"
    assert codec.error_body(code, msg) == (status, {"error": msg, "message": msg, "code": code})


# --- parsing: range, put, delete ------------------------------------------------------------


def test_parse_range_snake_and_camel() -> None:
    snake = {
        "key": "AA==",
        "range_end": "AA==",
        "limit": "1",
        "revision": 5,
        "sort_order": "DESCEND",
        "sort_target": "MOD",
        "serializable": True,
        "keys_only": True,
        "count_only": False,
        "min_mod_revision": "20",
        "max_mod_revision": 21,
        "min_create_revision": " 1 ",
        "max_create_revision": "100",
    }
    expected = RequestRange(b"\0", b"\0", 1, 5, SortOrder.DESCEND, SortTarget.MOD, True, False, 20, 21, 1, 100)
    assert codec.parse_range(snake) == (expected, True)
    camel = {
        "key": "AA==",
        "rangeEnd": "AA==",
        "limit": 1,
        "revision": "5",
        "sortOrder": 2,
        "sortTarget": 3,
        "serializable": True,
        "keysOnly": True,
        "countOnly": False,
        "minModRevision": "20",
        "maxModRevision": 21,
        "minCreateRevision": "1",
        "maxCreateRevision": "100",
    }
    assert codec.parse_range(camel) == (expected, True)


def test_parse_range_defaults_and_nulls() -> None:
    assert codec.parse_range({"key": "Zm9v", "limit": None, "sort_order": None, "keys_only": None}) == (
        RequestRange(b"foo"),
        False,
    )
    # An absent key parses; the store answers "etcdserver: key is not provided" as etcd does.
    assert codec.parse_range({}) == (RequestRange(b""), False)


def test_base64_as_go_decodes_it() -> None:
    assert codec.parse_range({"key": "Zm9v\nMg=="})[0].key == b"foo2"  # Go skips CR/LF
    assert codec.parse_range({"key": "+/+/"})[0].key == base64.b64decode("+/+/")
    assert codec.parse_range({"key": "dx=="})[0].key == b"w"  # non-zero trailing bits pass in Go too


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"key": "!!!"}, "base64"),
        ({"key": "Zm9vMg"}, "base64"),  # no padding
        ({"key": "Zm9v Mg=="}, "base64"),
        ({"key": "_-_-"}, "base64"),  # url-safe alphabet
        ({"key": "Zm9v===="}, "base64"),
        ({"key": "Zm9v\u00e9"}, "base64"),
        ({"key": 123}, "base64"),
        ({"key": "Zm9v", "limit": 1.5}, "limit"),
        ({"key": "Zm9v", "limit": 1.0}, "limit"),
        ({"key": "Zm9v", "limit": "abc"}, "limit"),
        ({"key": "Zm9v", "limit": "+1"}, "limit"),
        ({"key": "Zm9v", "limit": "01"}, "limit"),
        ({"key": "Zm9v", "limit": "1e0"}, "limit"),
        ({"key": "Zm9v", "limit": True}, "limit"),
        ({"key": "Zm9v", "limit": [1]}, "limit"),
        ({"key": "Zm9v", "limit": 2**63}, "int64"),
        ({"key": "Zm9v", "limit": "9223372036854775808"}, "int64"),
        ({"key": "Zm9v", "limit": "9" * 5000}, "limit"),
        ({"key": "Zm9v", "limit": -1}, "below"),  # etcd: no limit; kvdisco: refused
        ({"key": "Zm9v", "revision": "-1"}, "below"),
        ({"key": "Zm9v", "serializable": "true"}, "serializable"),
        ({"key": "Zm9v", "serializable": 1}, "serializable"),
        ({"key": "Zm9v", "sort_order": "BOGUS"}, "enum"),
        ({"key": "Zm9v", "sort_order": "descend"}, "enum"),
        ({"key": "Zm9v", "sortOrder": "2"}, "enum"),
        ({"key": "Zm9v", "sort_order": 7}, "enum"),
        ({"key": "Zm9v", "sort_order": True}, "sort_order"),
        ({"key": "Zm9v", "sort_order": 2.0}, "sort_order"),
        ({"key": "Zm9v", "bogus": 1}, 'unknown field "bogus"'),
        ({"KEY": "Zm9v"}, 'did you mean "key"'),
        ({"key": "Zm9v", "range_end": "Zm9w", "rangeEnd": "AA=="}, "twice"),
    ],
)
def test_parse_range_refuses(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        codec.parse_range(body)
    assert fragment in info.value.message
    assert info.value.code == 3


def test_int64_bounds_are_inclusive() -> None:
    assert codec.parse_range({"key": "Zm9v", "limit": "9223372036854775807"})[0].limit == 2**63 - 1
    assert codec.parse_put({"key": "Zm9v", "lease": "-9223372036854775808"}).lease == -(2**63)


def test_parse_put() -> None:
    assert codec.parse_put({"key": "YQ==", "value": "MQ==", "prev_kv": True, "lease": "12345"}) == RequestPut(
        b"a", b"1", 12345, prev_kv=True
    )
    assert codec.parse_put({"key": "YQ==", "ignoreValue": True, "ignoreLease": True, "prevKv": True}) == RequestPut(
        b"a", prev_kv=True, ignore_value=True, ignore_lease=True
    )
    assert codec.parse_put({"key": "YQ==", "value": None}) == RequestPut(b"a")
    with pytest.raises(BadRequest):
        codec.parse_put({"key": "YQ==", "value": 5})


def test_parse_delete_range() -> None:
    assert codec.parse_delete_range({"key": "bm9uZQ==", "rangeEnd": "AA==", "prevKv": True}) == RequestDeleteRange(
        b"none", b"\0", True
    )
    with pytest.raises(BadRequest, match="unknown field"):
        codec.parse_delete_range({"key": "YQ==", "limit": 1})


# --- parsing: txn ---------------------------------------------------------------------------


def test_parse_txn_as_sent_to_etcd() -> None:
    body = {
        "compare": [{"key": "Zm9v", "target": "VERSION", "result": "GREATER", "version": "0"}],
        "success": [
            {"request_range": {"key": "Zm9v", "serializable": True}},
            {"request_put": {"key": "dHg=", "value": "MQ==", "prev_kv": True}},
            {"request_delete_range": {"key": "bm9uZQ=="}},
            {"request_txn": {"success": [{"request_range": {"key": "dHg="}}]}},
        ],
        "failure": [],
    }
    assert codec.parse_txn(body) == RequestTxn(
        (Compare(b"foo", CompareTarget.VERSION, CompareResult.GREATER, 0),),
        (
            RequestRange(b"foo"),
            RequestPut(b"tx", b"1", prev_kv=True),
            RequestDeleteRange(b"none"),
            RequestTxn(success=(RequestRange(b"tx"),)),
        ),
        (),
    )
    camel = {
        "compare": [{"key": "Zm9v", "target": "VALUE", "result": "EQUAL", "value": "eA=="}],
        "success": [{"requestPut": {"key": "dHg="}}],
        "failure": [
            {"requestRange": {"key": "dHg="}},
            {"requestDeleteRange": {"key": "dHg=", "prevKv": True}},
            {"requestTxn": {}},
        ],
    }
    assert codec.parse_txn(camel) == RequestTxn(
        (Compare(b"foo", CompareTarget.VALUE, CompareResult.EQUAL, b"x"),),
        (RequestPut(b"tx"),),
        (RequestRange(b"tx"), RequestDeleteRange(b"tx", prev_kv=True), RequestTxn()),
    )
    assert codec.parse_txn({}) == RequestTxn()


def test_parse_compare_operands() -> None:
    def one(c: dict[str, Any]) -> Compare:
        return codec.parse_txn({"compare": [c]}).compares[0]

    assert one({"key": "Zm9v", "target": 2, "result": 3, "mod_revision": "1", "rangeEnd": "AA=="}) == Compare(
        b"foo", CompareTarget.MOD, CompareResult.NOT_EQUAL, 1, b"\0"
    )
    assert one({"key": "Zm9v", "target": "CREATE", "result": "NOT_EQUAL", "createRevision": 100}).operand == 100
    assert one({"key": "Zm9v", "target": "LEASE", "result": "EQUAL", "lease": "0"}).operand == 0
    assert one({"key": "Zm9v", "target": "MOD", "result": "LESS", "modRevision": "100"}).operand == 100
    # Defaults: target VERSION, result EQUAL, operand zero.
    assert one({"key": "Zm9v"}) == Compare(b"foo", CompareTarget.VERSION, CompareResult.EQUAL, 0)
    assert one({"key": "Zm9v", "target": "VALUE"}).operand == b""


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"compare": {}}, "array"),
        ({"compare": [{"key": "Zm9v", "target": "MOD", "result": "LESS", "version": "100"}]}, "operand"),
        (
            {"compare": [{"key": "Zm9v", "target": "MOD", "result": "LESS", "version": "1", "mod_revision": "5"}]},
            "operand",
        ),
        ({"compare": [{"key": "Zm9v", "target": "VALUE", "value": 5}]}, "value"),
        ({"compare": [{"key": "Zm9v", "target": "BOGUS"}]}, "enum"),
        ({"compare": [{"key": "Zm9v", "result": "GREATER_EQUAL"}]}, "enum"),
        ({"compare": ["x"]}, "object"),
        ({"success": [{}]}, "exactly one"),
        ({"success": [{"request_put": None}]}, "exactly one"),
        ({"success": [{"request_put": {"key": "eA=="}, "request_range": {"key": "eA=="}}]}, "exactly one"),
        ({"success": [{"request_foo": {}}]}, "unknown field"),
        ({"success": [{"request_put": []}]}, "object"),
        ({"success": [{"request_txn": {"compare": [{"key": 1}]}}]}, "base64"),
        ({"success": [{"request_put": {"key": "eA=="}}] * (TXN_OPS_MAX + 1)}, "too many operations"),
        ({"compare": [{"key": "eA=="}] * (TXN_OPS_MAX + 1)}, "too many operations"),
    ],
)
def test_parse_txn_refuses(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        codec.parse_txn(body)
    assert fragment in info.value.message


def nested(depth: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(depth):
        body = {"success": [{"request_txn": body}]}
    return body


def test_txn_nesting_follows_etcds_op_budget() -> None:
    # Each level spends one op of the budget, so TXN_OPS_MAX levels of single-op txns fit...
    txn = codec.parse_txn(nested(TXN_OPS_MAX))
    depth = 0
    while txn.success:
        (inner,) = txn.success
        assert isinstance(inner, RequestTxn)
        txn, depth = inner, depth + 1
    assert depth == TXN_OPS_MAX
    # ...and one more is refused, as is a body nested far deeper, without recursing into it.
    with pytest.raises(BadRequest, match="too many operations"):
        codec.parse_txn(nested(TXN_OPS_MAX + 1))
    with pytest.raises(BadRequest, match="too many operations"):
        codec.parse_txn(nested(5000))
    # A wide parent leaves its nested txn less room: 127 ops leave 1.
    wide: dict[str, list[Any]] = {
        "success": [{"request_put": {"key": b64(bytes([i]))}} for i in range(TXN_OPS_MAX - 2)]
    }
    wide["success"].append({"request_txn": {"success": [{"request_range": {"key": "eA=="}}]}})
    codec.parse_txn(wide)
    wide["success"][-1] = {"request_txn": {"success": [{"request_range": {"key": "eA=="}}] * 2}}
    with pytest.raises(BadRequest, match="too many operations"):
        codec.parse_txn(wide)


def test_parse_compaction() -> None:
    assert codec.parse_compaction({"revision": "3"}) == RequestCompact(3)
    assert codec.parse_compaction({"revision": 3, "physical": True}) == RequestCompact(3)
    assert codec.parse_compaction({}) == RequestCompact(0)
    with pytest.raises(BadRequest):
        codec.parse_compaction({"revision": "-1"})
    with pytest.raises(BadRequest):
        codec.parse_compaction({"physical": "yes"})


# --- parsing: leases, cluster, watch --------------------------------------------------------


def test_parse_leases() -> None:
    assert codec.parse_lease_grant({"TTL": "60"}) == LeaseGrant(0, 60)
    assert codec.parse_lease_grant({"TTL": 60, "ID": "1000"}) == LeaseGrant(1000, 60)
    assert codec.parse_lease_grant({}) == LeaseGrant(0, 0)
    assert codec.parse_lease_grant({"TTL": "-5"}) == LeaseGrant(0, -5)  # etcd raises it to the minimum TTL
    assert codec.parse_lease_id({"ID": 1000}) == 1000
    assert codec.parse_lease_id({"ID": "1000"}) == 1000
    assert codec.parse_lease_timetolive({"ID": 1000, "keys": True}) == (1000, True)
    assert codec.parse_lease_timetolive({"ID": "1000"}) == (1000, False)
    codec.parse_empty({}, "LeaseLeasesRequest")
    assert codec.parse_member_list({}) is False
    assert codec.parse_member_list({"linearizable": True}) is True


@pytest.mark.parametrize(
    ("parse", "body", "fragment"),
    [
        # etcd silently ignores the lower-case spellings and so revokes lease 0 / grants a random id.
        (codec.parse_lease_id, {"id": 1002}, 'did you mean "ID"'),
        (codec.parse_lease_grant, {"ttl": 60, "id": 1001}, 'did you mean "TTL"'),
        (codec.parse_lease_grant, {"ID": "-7"}, "below"),
        (codec.parse_lease_id, {"ID": "x"}, "decimal"),
        (codec.parse_lease_timetolive, {"ID": "1002", "keys": "yes"}, "keys"),
        (lambda body: codec.parse_empty(body, "StatusRequest"), {"x": 1}, "unknown field"),
    ],
)
def test_parse_leases_refuse(parse: Any, body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(body)
    assert fragment in info.value.message


def test_parse_watch_request() -> None:
    assert codec.parse_watch_request({"create_request": {"key": "dw==", "range_end": "eA==", "prev_kv": True}}) == (
        WatchCreate(b"w", b"x", prev_kv=True)
    )
    camel = {
        "createRequest": {
            "key": "dw==",
            "rangeEnd": "eA==",
            "filters": ["NOPUT", 1],
            "watchId": "7",
            "startRevision": "18",
            "progressNotify": True,
            "prevKv": False,
            "fragment": True,
        }
    }
    assert codec.parse_watch_request(camel) == WatchCreate(
        b"w", b"x", 18, False, True, frozenset({"NOPUT", "NODELETE"}), 7, True
    )
    assert codec.parse_watch_request({"create_request": {}}) == WatchCreate(b"")
    assert codec.parse_watch_request({"cancel_request": {"watch_id": "1"}}) == WatchCancel(1)
    assert codec.parse_watch_request({"cancelRequest": {"watchId": 0}}) == WatchCancel(0)
    assert codec.parse_watch_request({"progress_request": {}}) == WatchProgress()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"create_request": {"key": "dw=="}, "cancel_request": {"watch_id": 1}},
        {"create_request": {"key": "dw==", "filters": ["BOGUS"]}},
        {"create_request": {"key": "dw==", "filters": "NOPUT"}},
        {"create_request": {"key": "!!"}},
        {"create_request": {"key": "dw==", "bogus": 1}},
        {"create_request": {"key": "dw==", "start_revision": -1}},
        {"create_request": {"key": "dw==", "filters": ["NOPUT"] * 100}},
        {"cancel_request": {"watch_id": "x"}},
        {"progress_request": {"x": 1}},
        {"progress_request": 1},
    ],
)
def test_parse_watch_request_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        codec.parse_watch_request(body)


# --- responses, as etcd printed them --------------------------------------------------------


def test_range_responses() -> None:
    assert codec.range_response(hdr(4), RangeResult((FOO, FOO2), 2, False, 4)) == {
        "header": hdr(4),
        "kvs": [
            {"key": "Zm9v", "create_revision": "2", "mod_revision": "3", "version": "2", "value": "YmFy"},
            {"key": "Zm9vMg==", "create_revision": "4", "mod_revision": "4", "version": "1", "value": "YmFy"},
        ],
        "count": "2",
    }
    assert codec.range_response(hdr(4), RangeResult((FOO,), 2, True, 4)) == {
        "header": hdr(4),
        "kvs": [{"key": "Zm9v", "create_revision": "2", "mod_revision": "3", "version": "2", "value": "YmFy"}],
        "more": True,
        "count": "2",
    }
    assert codec.range_response(hdr(4), RangeResult((), 2, False, 4)) == {"header": hdr(4), "count": "2"}
    assert codec.range_response(hdr(4), RangeResult((), 0, False, 4)) == {"header": hdr(4)}
    keys_only = KeyValue(b"foo", 2, 3, 2)
    assert codec.range_response(hdr(4), RangeResult((keys_only,), 1, False, 4))["kvs"] == [
        {"key": "Zm9v", "create_revision": "2", "mod_revision": "3", "version": "2"}
    ]
    leased = KeyValue(b"lk", 15, 15, 1, b"", 1000)
    assert codec.kv_json(leased) == {
        "key": "bGs=",
        "create_revision": "15",
        "mod_revision": "15",
        "version": "1",
        "lease": "1000",
    }


def test_put_and_delete_responses() -> None:
    assert codec.put_response(hdr(5), PutResult(5)) == {"header": hdr(5)}
    prev = KeyValue(b"a", 5, 5, 1, b"1")
    assert codec.put_response(hdr(6), PutResult(6, prev)) == {
        "header": hdr(6),
        "prev_kv": {"key": "YQ==", "create_revision": "5", "mod_revision": "5", "version": "1", "value": "MQ=="},
    }
    gone = KeyValue(b"a", 5, 9, 5)
    assert codec.delete_range_response(hdr(10), DeleteResult(10, 1, (gone,))) == {
        "header": hdr(10),
        "deleted": "1",
        "prev_kvs": [{"key": "YQ==", "create_revision": "5", "mod_revision": "9", "version": "5"}],
    }
    assert codec.delete_range_response(hdr(10), DeleteResult(10, 0)) == {"header": hdr(10)}
    assert codec.delete_range_response(hdr(12), DeleteResult(12, 1)) == {"header": hdr(12), "deleted": "1"}


def test_txn_responses() -> None:
    tx = KeyValue(b"tx", 13, 13, 1, b"1")
    res = TxnResult(
        13,
        True,
        (
            RangeResult((FOO,), 1, False, 12),
            PutResult(13),
            DeleteResult(13, 0),
            TxnResult(13, True, (RangeResult((tx,), 1, False, 13),)),
        ),
    )
    assert codec.txn_response(hdr(13), res) == {
        "header": hdr(13),
        "succeeded": True,
        "responses": [
            {
                "response_range": {
                    "header": {"revision": "12"},
                    "kvs": [
                        {"key": "Zm9v", "create_revision": "2", "mod_revision": "3", "version": "2", "value": "YmFy"}
                    ],
                    "count": "1",
                }
            },
            {"response_put": {"header": {"revision": "13"}}},
            {"response_delete_range": {"header": {"revision": "13"}}},
            {
                "response_txn": {
                    "header": {},
                    "succeeded": True,
                    "responses": [
                        {
                            "response_range": {
                                "header": {"revision": "13"},
                                "kvs": [
                                    {
                                        "key": "dHg=",
                                        "create_revision": "13",
                                        "mod_revision": "13",
                                        "version": "1",
                                        "value": "MQ==",
                                    }
                                ],
                                "count": "1",
                            }
                        }
                    ],
                }
            },
        ],
    }
    failed = TxnResult(
        14, False, (RangeResult((tx,), 1, False, 13), DeleteResult(14, 1, (tx,)), TxnResult(14, True, ()))
    )
    assert codec.txn_response(hdr(14), failed) == {
        "header": hdr(14),
        "responses": [
            {
                "response_range": {
                    "header": {"revision": "13"},
                    "kvs": [
                        {"key": "dHg=", "create_revision": "13", "mod_revision": "13", "version": "1", "value": "MQ=="}
                    ],
                    "count": "1",
                }
            },
            {
                "response_delete_range": {
                    "header": {"revision": "14"},
                    "deleted": "1",
                    "prev_kvs": [
                        {"key": "dHg=", "create_revision": "13", "mod_revision": "13", "version": "1", "value": "MQ=="}
                    ],
                }
            },
            {"response_txn": {"header": {}, "succeeded": True}},
        ],
    }
    assert codec.txn_response(hdr(14), TxnResult(14, True, ())) == {"header": hdr(14), "succeeded": True}


def test_compaction_and_lease_responses() -> None:
    assert codec.compaction_response(hdr(14)) == {"header": hdr(14)}
    assert codec.lease_grant_response(hdr(14), LeaseGrantResult(1000, 60)) == {
        "header": hdr(14),
        "ID": "1000",
        "TTL": "60",
    }
    assert codec.lease_revoke_response(hdr(17)) == {"header": hdr(17)}
    assert codec.lease_keepalive_response(hdr(16), 1000, 60) == {
        "result": {"header": hdr(16), "ID": "1000", "TTL": "60"}
    }
    assert codec.lease_keepalive_response(hdr(16), 999, 0) == {"result": {"header": hdr(16), "ID": "999"}}
    assert codec.lease_timetolive_response(hdr(16), 1000, 59, 60, [b"lk2", b"lk"]) == {
        "header": hdr(16),
        "ID": "1000",
        "TTL": "59",
        "grantedTTL": "60",
        "keys": ["bGsy", "bGs="],
    }
    assert codec.lease_timetolive_response(hdr(16), 1000, 59, 60, None) == {
        "header": hdr(16),
        "ID": "1000",
        "TTL": "59",
        "grantedTTL": "60",
    }
    assert codec.lease_timetolive_response(hdr(16), 999, -1, 0, [b"x"][:0]) == {
        "header": hdr(16),
        "ID": "999",
        "TTL": "-1",
    }
    assert codec.lease_leases_response(hdr(14), [1002, 1000]) == {
        "header": hdr(14),
        "leases": [{"ID": "1002"}, {"ID": "1000"}],
    }
    assert codec.lease_leases_response(hdr(14), []) == {"header": hdr(14)}


def test_status_and_member_list_responses() -> None:
    assert codec.status_response(
        hdr(17),
        version="3.4.23",
        db_size=20480,
        leader=MEMBER,
        raft_index=41,
        raft_term=2,
        raft_applied_index=41,
        db_size_in_use=16384,
    ) == {
        "header": hdr(17),
        "version": "3.4.23",
        "dbSize": "20480",
        "leader": "10971135352719343375",
        "raftIndex": "41",
        "raftTerm": "2",
        "raftAppliedIndex": "41",
        "dbSizeInUse": "16384",
    }
    members = [
        Member(MEMBER, "codec", ("http://127.0.0.1:32080",), ("http://127.0.0.1:32079",)),
        Member(7, "", ("http://127.0.0.1:32082",), (), is_learner=True),
    ]
    assert codec.member_list_response(hdr(0), members) == {
        "header": {"cluster_id": "6840822015343277315", "member_id": "10971135352719343375", "raft_term": "2"},
        "members": [
            {
                "ID": "10971135352719343375",
                "name": "codec",
                "peerURLs": ["http://127.0.0.1:32080"],
                "clientURLs": ["http://127.0.0.1:32079"],
            },
            {"ID": "7", "peerURLs": ["http://127.0.0.1:32082"], "isLearner": True},
        ],
    }


def test_watch_responses() -> None:
    assert codec.watch_response(hdr(19), 0, created=True) == {"result": {"header": hdr(19), "created": True}}
    assert codec.watch_response(hdr(19), 7, created=True) == {
        "result": {"header": hdr(19), "watch_id": "7", "created": True}
    }
    assert codec.watch_response(
        hdr(17), -1, created=True, canceled=True, cancel_reason="mvcc: watcher range is empty"
    ) == {
        "result": {
            "header": hdr(17),
            "watch_id": "-1",
            "created": True,
            "canceled": True,
            "cancel_reason": "mvcc: watcher range is empty",
        }
    }
    assert codec.watch_response(hdr(0), 0, canceled=True, compact_revision=3) == {
        "result": {
            "header": {"cluster_id": "6840822015343277315", "member_id": "10971135352719343375", "raft_term": "2"},
            "canceled": True,
            "compact_revision": "3",
        }
    }
    assert codec.watch_response(hdr(17), -1) == {"result": {"header": hdr(17), "watch_id": "-1"}}  # progress
    prev = KeyValue(b"w", 18, 18, 1, b"1")
    put = Event(EventType.PUT, KeyValue(b"w", 18, 20, 2, b"1"), prev)
    assert codec.watch_response(hdr(20), 0, [put], prev_kv=True) == {
        "result": {
            "header": hdr(20),
            "events": [
                {
                    "kv": {
                        "key": "dw==",
                        "create_revision": "18",
                        "mod_revision": "20",
                        "version": "2",
                        "value": "MQ==",
                    },
                    "prev_kv": {
                        "key": "dw==",
                        "create_revision": "18",
                        "mod_revision": "18",
                        "version": "1",
                        "value": "MQ==",
                    },
                }
            ],
        }
    }
    deleted = Event(EventType.DELETE, KeyValue(b"w", mod_revision=22), put.kv)
    assert codec.watch_response(hdr(22), 7, [deleted]) == {
        "result": {
            "header": hdr(22),
            "watch_id": "7",
            "events": [{"type": "DELETE", "kv": {"key": "dw==", "mod_revision": "22"}}],
        }
    }
    assert codec.event_json(deleted, True)["prev_kv"] == codec.kv_json(put.kv)


# --- round trips ----------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
NAT64 = st.integers(0, 2**63 - 1)
KEYS = st.binary(max_size=6)
#: Hypothesis's draw function (``st.DrawFn`` and ``DataObject.draw`` differ in type, not in use).
Draw = Callable[..., Any]


def int_json(draw: Draw, n: int) -> int | str:
    spelling: int | str = draw(st.sampled_from([n, str(n)]))
    return spelling


@st.composite
def spelled(draw: st.DrawFn, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with each name randomly in snake_case or lowerCamel, zero values maybe left out."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value in (0, "", False) and draw(st.booleans()):
            continue
        out[codec._camel(name) if draw(st.booleans()) else name] = value
    return out


def range_json(draw: Draw, r: RequestRange) -> dict[str, Any]:
    body: dict[str, Any] = draw(
        spelled(
            {
                "key": b64(r.key),
                "range_end": b64(r.range_end),
                "limit": int_json(draw, r.limit),
                "revision": int_json(draw, r.revision),
                "sort_order": draw(st.sampled_from([r.sort_order.name, int(r.sort_order)])),
                "sort_target": draw(st.sampled_from([r.sort_target.name, int(r.sort_target)])),
                "keys_only": r.keys_only,
                "count_only": r.count_only,
                "min_mod_revision": int_json(draw, r.min_mod_revision),
                "max_mod_revision": int_json(draw, r.max_mod_revision),
                "min_create_revision": int_json(draw, r.min_create_revision),
                "max_create_revision": int_json(draw, r.max_create_revision),
            }
        )
    )
    return body


def op_json(draw: Draw, op: RequestOp) -> dict[str, Any]:
    if isinstance(op, RequestRange):
        return {"request_range": range_json(draw, op)}
    if isinstance(op, RequestPut):
        return {
            "request_put": draw(
                spelled(
                    {
                        "key": b64(op.key),
                        "value": b64(op.value),
                        "lease": int_json(draw, op.lease),
                        "prev_kv": op.prev_kv,
                        "ignore_value": op.ignore_value,
                        "ignore_lease": op.ignore_lease,
                    }
                )
            )
        }
    if isinstance(op, RequestDeleteRange):
        return {
            "request_delete_range": draw(
                spelled({"key": b64(op.key), "range_end": b64(op.range_end), "prev_kv": op.prev_kv})
            )
        }
    return {"request_txn": txn_json(draw, op)}


def txn_json(draw: Draw, t: RequestTxn) -> dict[str, Any]:
    compares = []
    for c in t.compares:
        operand = b64(c.operand) if isinstance(c.operand, bytes) else int_json(draw, c.operand)
        compares.append(
            draw(
                spelled(
                    {
                        "key": b64(c.key),
                        "range_end": b64(c.range_end),
                        "target": draw(st.sampled_from([c.target.name, int(c.target)])),
                        "result": draw(st.sampled_from([c.result.name, int(c.result)])),
                        codec._OPERAND_OF[c.target]: operand,
                    }
                )
            )
        )
    return {
        "compare": compares,
        "success": [op_json(draw, o) for o in t.success],
        "failure": [op_json(draw, o) for o in t.failure],
    }


ranges = st.builds(
    RequestRange,
    KEYS,
    KEYS,
    NAT64,
    NAT64,
    st.sampled_from(SortOrder),
    st.sampled_from(SortTarget),
    st.booleans(),
    st.booleans(),
    NAT64,
    NAT64,
    NAT64,
    NAT64,
)
puts = st.builds(RequestPut, KEYS, st.binary(max_size=8), INT64, st.booleans(), st.booleans(), st.booleans())
deletes = st.builds(RequestDeleteRange, KEYS, KEYS, st.booleans())


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(CompareTarget))
    operand: int | bytes = draw(KEYS) if target == CompareTarget.VALUE else draw(INT64)
    return Compare(draw(KEYS), target, draw(st.sampled_from(CompareResult)), operand, draw(KEYS))


txns = st.recursive(
    st.builds(RequestTxn, st.tuples(compares()), st.tuples(puts, ranges), st.tuples(deletes)),
    lambda inner: st.builds(
        RequestTxn,
        st.lists(compares(), max_size=2).map(tuple),
        st.lists(st.one_of(puts, ranges, deletes, inner), max_size=3).map(tuple),
        st.lists(st.one_of(puts, deletes, inner), max_size=2).map(tuple),
    ),
    max_leaves=12,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), txns)
def test_txn_round_trip(data: st.DataObject, txn: RequestTxn) -> None:
    body = codec.loads(codec.dumps(txn_json(data.draw, txn)))
    assert codec.parse_txn(body) == txn


@settings(max_examples=100, deadline=None)
@given(st.data(), ranges, puts, deletes, st.booleans())
def test_kv_round_trips(
    data: st.DataObject, r: RequestRange, p: RequestPut, d: RequestDeleteRange, serializable: bool
) -> None:
    rj = range_json(data.draw, r)
    rj["serializable"] = serializable
    assert codec.parse_range(codec.loads(codec.dumps(rj))) == (r, serializable)
    assert codec.parse_put(op_json(data.draw, p)["request_put"]) == p
    assert codec.parse_delete_range(op_json(data.draw, d)["request_delete_range"]) == d


@settings(max_examples=100, deadline=None)
@given(st.builds(KeyValue, KEYS, NAT64, NAT64, NAT64, st.binary(max_size=8), INT64))
def test_kv_json_round_trip(kv: KeyValue) -> None:
    out = codec.loads(codec.dumps(codec.kv_json(kv)))
    back = KeyValue(
        base64.b64decode(out.get("key", "")),
        int(out.get("create_revision", 0)),
        int(out.get("mod_revision", 0)),
        int(out.get("version", 0)),
        base64.b64decode(out.get("value", "")),
        int(out.get("lease", 0)),
    )
    assert back == kv
    assert all(v not in ("0", "", 0, False) for v in out.values())  # zeros left out, as etcd does


# --- fuzzing: nothing but BadRequest escapes ------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["Zm9v", "AA==", "1", "-1", "VALUE", "NOPUT", "DESCEND", "9223372036854775808"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

PARSERS: list[Any] = [
    codec.parse_range,
    codec.parse_put,
    codec.parse_delete_range,
    codec.parse_txn,
    codec.parse_compaction,
    codec.parse_lease_grant,
    codec.parse_lease_id,
    codec.parse_lease_timetolive,
    codec.parse_member_list,
    codec.parse_watch_request,
    lambda body: codec.parse_empty(body, "StatusRequest"),
]

VALID_BODIES: list[dict[str, Any]] = [
    {"key": "Zm9v", "range_end": "AA==", "limit": "1", "sort_order": "DESCEND", "sort_target": 3, "keys_only": True},
    {"key": "YQ==", "value": "MQ==", "lease": "12345", "prevKv": True},
    {
        "compare": [{"key": "Zm9v", "target": "VALUE", "result": "EQUAL", "value": "eA=="}],
        "success": [
            {"request_put": {"key": "dHg="}},
            {"request_txn": {"failure": [{"requestRange": {"key": "eA=="}}]}},
        ],
        "failure": [{"request_delete_range": {"key": "dHg=", "prev_kv": True}}],
    },
    {"TTL": 60, "ID": "1000", "keys": True},
    {"create_request": {"key": "dw==", "rangeEnd": "eA==", "filters": ["NOPUT"], "watchId": "7", "prev_kv": True}},
    {"cancel_request": {"watch_id": "1"}},
    {"revision": "3", "physical": True},
]


def call_parser(parse: Any, body: Any) -> None:
    try:
        parse(body)
    except BadRequest as exc:
        assert exc.code == 3 and isinstance(exc.message, str) and exc.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PARSERS), json_values)
def test_fuzz_arbitrary_json(parse: Any, body: Any) -> None:
    call_parser(parse, body)


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid body with one value somewhere inside replaced, or one key added or dropped."""
    body = codec.loads(codec.dumps(draw(st.sampled_from(VALID_BODIES))))
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((node, i))
                walk(v)

    walk(body)
    parent, where = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "add", "drop"]))
    if action == "replace":
        parent[where] = draw(json_values)
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=12))] = draw(json_values)
    elif isinstance(parent, dict):
        del parent[where]
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PARSERS), mutated())
def test_fuzz_mutated_valid_bodies(parse: Any, body: Any) -> None:
    call_parser(parse, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()[: -1 if v is not None else None]))
def test_fuzz_loads(raw: bytes) -> None:
    with contextlib.suppress(BadRequest):
        assert isinstance(codec.loads(raw), dict)


def test_watch_compaction_cancel_has_etcds_shape_whatever_the_caller_passes() -> None:
    # etcd 3.4 (observed): no revision in the header, no cancel_reason, on a compaction cancel
    out = codec.watch_response(
        hdr(19),
        0,
        canceled=True,
        compact_revision=4,
        cancel_reason="etcdserver: mvcc: required revision has been compacted",
    )
    assert out == {
        "result": {
            "header": {k: v for k, v in hdr(19).items() if k != "revision"},
            "canceled": True,
            "compact_revision": "4",
        }
    }
