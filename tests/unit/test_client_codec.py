"""The client's pure parts, without a server: key ranges, request JSON, error mapping, result
decoding, and kvctl's txn parser and formatting."""

from __future__ import annotations

import io

import pytest

from kvdisco.cli.kvctl import TxnSyntaxError, humanize_bytes, parse_compare, parse_request, read_txn
from kvdisco.client import (
    CompactedError,
    Compare,
    ConnectionFailedError,
    FailedPreconditionError,
    FutureRevisionError,
    InvalidArgumentError,
    KvdiscoError,
    LeaseNotFoundError,
    NotFoundError,
    Op,
    TxnResult,
    UnavailableError,
    prefix_end,
)
from kvdisco.client._errors import error_from_body
from kvdisco.client._types import GetResult


def test_prefix_end() -> None:
    assert prefix_end("abc") == b"abd"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end("") == b"\0"


def test_range_request_json() -> None:
    assert Op.get("a").body == {"key": "YQ=="}
    assert Op.get("a", prefix=True, limit=2, revision=7).body == {
        "key": "YQ==",
        "range_end": "Yg==",
        "limit": "2",
        "revision": "7",
    }
    assert Op.get("", prefix=True).body == {"key": "AA==", "range_end": "AA=="}  # all keys
    assert Op.get("k", from_key=True).body["range_end"] == "AA=="
    with pytest.raises(ValueError):
        Op.get("")
    with pytest.raises(ValueError):
        Op.get("a", prefix=True, range_end="b")
    with pytest.raises(ValueError):
        Op.get("a", limit=-1)


def test_compare_json_and_type_checks() -> None:
    assert (Compare.version("k") == 0).to_json() == {
        "key": "aw==",
        "target": "VERSION",
        "result": "EQUAL",
        "version": "0",
    }
    assert (Compare.mod("k") > 3).to_json()["mod_revision"] == "3"
    assert (Compare.create("k") < 3).to_json()["result"] == "LESS"
    assert (Compare.value("k") != "v").to_json() == {
        "key": "aw==",
        "target": "VALUE",
        "result": "NOT_EQUAL",
        "value": "dg==",
    }
    assert Compare.lease("k").eq(5).to_json()["lease"] == "5"
    with pytest.raises(TypeError):
        Compare.value("k").eq(1)
    with pytest.raises(TypeError):
        Compare.version("k").eq(True)


@pytest.mark.parametrize(
    ("body", "status", "cls"),
    [
        ({"error": "etcdserver: mvcc: required revision has been compacted", "code": 11}, 400, CompactedError),
        ({"error": "etcdserver: mvcc: required revision is a future revision", "code": 11}, 400, FutureRevisionError),
        ({"error": "etcdserver: requested lease not found", "code": 5}, 404, LeaseNotFoundError),
        ({"error": "etcdserver: member not found", "code": 5}, 404, NotFoundError),
        ({"error": "etcdserver: lease already exists", "code": 9}, 412, FailedPreconditionError),
        ({"error": "etcdserver: duplicate key given in txn request", "code": 3}, 400, InvalidArgumentError),
        ({"error": "etcdserver: no leader", "code": 14}, 503, UnavailableError),
        ({"error": {"grpc_code": 5, "http_code": 404, "message": "etcdserver: requested lease not found"}}, 200,
         LeaseNotFoundError),
        ("<html>bad gateway</html>", 503, UnavailableError),
        ("teapot", 418, KvdiscoError),
    ],
)  # fmt: skip
def test_error_mapping(body: object, status: int, cls: type[KvdiscoError]) -> None:
    err = error_from_body(body, status)
    assert type(err) is cls


def test_compacted_revision_from_body_or_message() -> None:
    msg = "etcdserver: mvcc: required revision has been compacted"
    with_field = error_from_body({"error": msg, "code": 11, "compact_revision": "42"}, 400)
    assert isinstance(with_field, CompactedError) and with_field.compact_revision == 42
    in_text = error_from_body({"error": msg + " (compact revision 17)", "code": 11}, 400)
    assert isinstance(in_text, CompactedError) and in_text.compact_revision == 17
    bare = error_from_body({"error": msg, "code": 11}, 400)
    assert isinstance(bare, CompactedError) and bare.compact_revision is None


def test_not_applied_unavailable() -> None:
    no_leader = error_from_body({"error": "etcdserver: no leader", "code": 14}, 503)
    timed_out = error_from_body({"error": "etcdserver: request timed out", "code": 14}, 503)
    assert isinstance(no_leader, UnavailableError) and no_leader.not_applied
    assert isinstance(timed_out, UnavailableError) and not timed_out.not_applied
    assert ConnectionFailedError(None, "x").not_applied


def test_txn_result_decoding() -> None:
    r = TxnResult.from_json(
        {
            "header": {"revision": "9", "cluster_id": "1", "member_id": "2", "raft_term": "3"},
            "succeeded": True,
            "responses": [
                {"response_range": {"header": {"revision": "9"}, "kvs": [{"key": "aw==", "value": "dg==",
                                                                           "version": "1"}], "count": "1"}},
                {"response_put": {"header": {"revision": "9"}}},
                {"response_delete_range": {"header": {"revision": "9"}, "deleted": "2"}},
            ],
        }
    )  # fmt: skip
    assert r.succeeded and r.revision == 9 and r.header.raft_term == 3
    got = r.responses[0]
    assert isinstance(got, GetResult) and got.kvs[0].value == b"v" and got.kvs[0].lease == 0 and not got.more


def test_kvctl_txn_parser() -> None:
    assert parse_compare('version("k") = "0"') == (Compare.version("k") == 0)
    assert parse_compare('mod("k") > "3"') == Compare.mod("k").gt(3)
    assert parse_compare('val("k") != "a b"') == Compare.value("k").ne("a b")
    assert parse_compare('lease("k") = "ff"') == Compare.lease("k").eq(255)
    assert parse_request("put k 'v 1' --lease=ff").body == {"key": "aw==", "value": "diAx", "lease": "255"}
    assert parse_request("get k --prefix").body["range_end"] == "bA=="
    assert parse_request("del k").kind == "request_delete_range"
    for bad in ('nope("k") = "1"', 'ver("k") = "x"', 'ver("k") ~ "1"', "ver k"):
        with pytest.raises(TxnSyntaxError):
            parse_compare(bad)
    with pytest.raises(TxnSyntaxError):
        parse_request("put k")
    compares, success, failure = read_txn(io.StringIO('ver("k") = "0"\n\nput k v\n\nget k\n'), False, io.StringIO())
    assert len(compares) == 1 and success[0].kind == "request_put" and failure[0].kind == "request_range"


def test_humanize_bytes_like_etcdctl() -> None:
    assert humanize_bytes(5) == "5 B"
    assert humanize_bytes(20480) == "20 kB"
    assert humanize_bytes(2_500_000) == "2.5 MB"
