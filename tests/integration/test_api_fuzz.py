"""Fuzz the live HTTP APIs of one real `kvdisco serve` member.

* /v1: schemathesis, driven by the served OpenAPI document (``/v1/openapi.json``), positive and
  negative data, checking: no 5xx, status codes, bodies and content types as documented.
* /v3: hypothesis, random and mutated etcd JSON bodies on every gateway route, raw bytes,
  oversize bodies, a wrong content type, and the first message of the watch stream; checking
  no 5xx, etcd's error shape, a ``header.revision`` on every 200, that refused requests changed
  nothing (the store revision moves by at most the number of accepted writes), and that the
  node is healthy afterwards.

Membership: a fuzzer must not remove the only member, nor make the node dial a generated peer URL
(traffic stays on 127.0.0.1), nor propose a peer URL the node cannot parse (that kills it: see
:func:`test_member_add_with_a_bad_peer_url_is_refused`). So DELETE /v1/members/{id} and
/v3/cluster/member/remove never name the node's own id (a filter; other ids answer 404), and member
add (/v1 and /v3) only gets bodies that :func:`_member_add_would_apply` says the server refuses
before proposing anything: negative data only, every such body must be refused (4xx).

The server bugs this suite found (a bad peer URL in member add killed the node, deep nesting in a
watch body, keys with a newline unreachable through /v1, oversized watch bodies) are fixed; their
reproductions stay below as regular tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from kvdisco.api.openapi import OPENAPI
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX

from .cluster import LocalCluster, Member

TIMEOUT_S = 10.0
WATCH_PATH = "/v1/watch/{key}"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# -- the node ----------------------------------------------------------------------------------------------------------


@dataclass
class Node:
    member: Member
    own_id_hex: str
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.member.client_url

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> requests.Response:
        return self.session.post(self.url + path, data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT_S)

    def post_json(self, path: str, obj: Any) -> requests.Response:
        return self.post(path, json.dumps(obj).encode())

    def revision(self) -> int:
        r = self.post_json("/v3/kv/range", {"key": "AA==", "range_end": "AA==", "count_only": True})
        assert r.status_code == 200, r.text
        return int(r.json()["header"]["revision"])

    def assert_healthy(self) -> None:
        assert self.member.alive(), "the node process died"
        r = self.session.get(self.url + "/livez", timeout=TIMEOUT_S)
        assert r.status_code == 200, r.text
        value = base64.b64encode(f"alive-{time.monotonic_ns()}".encode()).decode()
        key = base64.b64encode(b"fuzz/health").decode()
        r = self.post_json("/v3/kv/put", {"key": key, "value": value})
        assert r.status_code == 200, r.text
        r = self.post_json("/v3/kv/range", {"key": key})
        assert r.status_code == 200, r.text
        assert r.json()["kvs"][0]["value"] == value


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    cluster = LocalCluster(root, 1)
    m = cluster.members[0]
    cluster.start(m)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert m.alive(), cluster.logs()
            with contextlib.suppress(requests.RequestException):
                if requests.get(m.client_url + "/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready in 30 s\n{cluster.logs()}"
            time.sleep(0.1)
        own = requests.get(m.client_url + "/v1/raft/status", timeout=TIMEOUT_S).json()["id"]
        n = Node(m, own)
        yield n
        n.session.close()
        assert m.alive(), f"the node died during the fuzz run\n{cluster.logs()}"
    finally:
        cluster.kill(m, signal.SIGTERM)
        if m.proc is not None:
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()


def _member_add_would_apply(body: Any, *, v3: bool = False) -> bool:
    """Whether the server would accept (and propose) a member add with this body: the cases not to send.

    Mirrors the checks :func:`kvdisco.api.members.add_member` makes before proposing, loosely: when
    unsure, say yes (the case is then not sent).
    """
    if not isinstance(body, dict):
        return False
    if v3:
        urls = body.get("peerURLs", body.get("peer_urls"))
        learner = body.get("isLearner", body.get("is_learner", False))
    else:
        peer = body.get("peer_url")
        urls = [peer] if isinstance(peer, str) else peer
        learner = body.get("learner", True)
    name = body.get("name")
    urls_ok = isinstance(urls, list) and len(urls) == 1 and isinstance(urls[0], str) and bool(urls[0])
    return urls_ok and isinstance(name, str) and bool(name) and isinstance(learner, bool)


# -- /v1: schemathesis against the OpenAPI document --------------------------------------------------------------------

# schemathesis' pytest integration (`from_fixture(...).parametrize()`) breaks on pytest 9.2
# ("'Function' object has no attribute '_nodeid'"), and the schema exists only once the node runs,
# so the operations are parametrized here and each test drives hypothesis with the operation's
# strategy. The list is checked against the served document.
V1_OPERATIONS = [
    f"{method.upper()} {path}" for path, methods in OPENAPI["paths"].items() for method in methods if path != WATCH_PATH
]
V1_EXAMPLES = 25
#: Operations that take input, so that negative (schema-violating) requests exist for them.
V1_WITH_INPUT = {
    f"{method.upper()} {path}"
    for path, methods in OPENAPI["paths"].items()
    for method, op in methods.items()
    if op.get("parameters") or op.get("requestBody")
}


@pytest.fixture(scope="module")
def api_schema(node: Node) -> Any:
    config = schemathesis.Config.from_dict({"request-timeout": TIMEOUT_S})
    schema = schemathesis.openapi.from_url(node.url + "/v1/openapi.json", config=config)
    served = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    assert served == {*V1_OPERATIONS, f"GET {WATCH_PATH}"}
    return schema


def _v1_case_is_safe(node: Node, case: schemathesis.Case) -> bool:
    """Never remove the node itself; never add a member (see the module docstring)."""
    op = case.operation
    if op.method == "delete" and op.path == "/v1/members/{id}":
        with contextlib.suppress(ValueError, TypeError):
            return int(str(case.path_parameters["id"]), 16) != int(node.own_id_hex, 16)
    if op.method == "post" and op.path == "/v1/members":
        return not _member_add_would_apply(case.body)
    return True


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", V1_OPERATIONS)
def test_v1_answers_as_documented(label: str, mode: GenerationMode, node: Node, api_schema: Any) -> None:
    """Every /v1 route but the watch stream (it never ends; see the test below): as documented."""
    if mode == GenerationMode.NEGATIVE and label not in V1_WITH_INPUT:
        pytest.skip("no input to get wrong")
    if mode == GenerationMode.POSITIVE and label == "POST /v1/members":
        pytest.skip("every valid body adds a member (see the module docstring): invalid ones only")
    op = api_schema.find_operation_by_label(label)
    checks = list(CHECKS)
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @given(case=op.as_strategy(generation_mode=mode).filter(lambda c: _v1_case_is_safe(node, c)))
    @settings(max_examples=V1_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(session=node.session, checks=checks, timeout=TIMEOUT_S)

    run()
    node.assert_healthy()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_v1_watch_answers_as_documented(mode: GenerationMode, node: Node, api_schema: Any) -> None:
    """The watch stream never ends, so schemathesis cannot read its body: a 200 is checked here by
    its content type and first line (``{"created": true, "revision"}``), then closed; anything
    else gets schemathesis' checks."""
    op = api_schema.find_operation_by_label(f"GET {WATCH_PATH}")
    checks = list(CHECKS) + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])

    @given(case=op.as_strategy(generation_mode=mode).filter(lambda c: _v1_case_is_safe(node, c)))
    @settings(max_examples=V1_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        kwargs = case.as_transport_kwargs(base_url=node.url)
        with requests.request(**kwargs, stream=True, timeout=TIMEOUT_S) as resp:
            if resp.status_code == 200:
                assert resp.headers["Content-Type"].startswith("application/x-ndjson"), resp.headers
                first = json.loads(next(resp.iter_lines()))
                assert first["created"] is True and isinstance(first["revision"], int), first
                return
            resp.content  # noqa: B018 - read it all before the connection closes
        case.validate_response(resp, checks=checks)

    run()
    node.assert_healthy()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_v1_key_with_a_newline_is_reachable(method: str, node: Node) -> None:
    """``PUT /v1/kv/a%0Ab`` answers 404 ``{"error": "Not Found", "code": 12}``: the route pattern
    ``{key:.+}`` does not match a key holding a newline (fix: ``{key:[\\s\\S]+}`` in v1.add_routes)."""
    resp = node.session.request(method, node.url + "/v1/kv/fuzz%0Anewline", data=b"v", timeout=TIMEOUT_S)
    assert resp.status_code == (404 if method == "GET" else 200), resp.text
    assert resp.json().get("code") != 12, resp.text


# -- /v3: hypothesis fuzzer of the etcd gateway ------------------------------------------------------------------------

#: What a response must look like: an error in etcd's shape, or a 200 whose header carries a revision.
HTTP_STATUS_BY_CODE = {3: 400, 5: 404, 9: 412, 11: 400, 6: 409, 8: 429}

WRITE_ROUTES = {"/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn", "/v3/lease/grant", "/v3/lease/revoke"}
WRITE_ROUTES |= {"/v3/kv/lease/revoke", "/v3/kv/compaction"}

b64 = st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
key64 = st.binary(min_size=1, max_size=12).map(lambda b: base64.b64encode(b).decode())
small = st.integers(min_value=0, max_value=50)
int64ish = small | small.map(str)
flag = st.booleans()
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
any_json = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4))


def _obj(required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]) -> Any:
    return st.fixed_dictionaries(required, optional=optional)


range_req = _obj(
    {"key": key64},
    {
        "range_end": b64,
        "limit": int64ish,
        "revision": st.just(0),
        "sort_order": st.sampled_from(["NONE", "ASCEND", "DESCEND", 0, 1, 2]),
        "sort_target": st.sampled_from(["KEY", "VERSION", "CREATE", "MOD", "VALUE", 4]),
        "serializable": flag,
        "keys_only": flag,
        "count_only": flag,
        "min_mod_revision": int64ish,
        "max_mod_revision": int64ish,
        "min_create_revision": int64ish,
        "max_create_revision": int64ish,
    },
)
put_req = _obj({"key": key64}, {"value": b64, "prev_kv": flag, "lease": st.just(0), "ignore_value": flag})
delete_req = _obj({"key": key64}, {"range_end": b64, "prev_kv": flag})
compare = st.one_of(
    _obj({"key": key64, "target": st.just("VERSION")}, {"version": int64ish, "result": st.sampled_from(["EQUAL"])}),
    _obj({"key": key64, "target": st.just("MOD")}, {"mod_revision": int64ish, "result": st.just("GREATER")}),
    _obj({"key": key64, "target": st.just("VALUE")}, {"value": b64, "result": st.just("NOT_EQUAL")}),
    _obj({"key": key64, "target": st.just("LEASE"), "lease": st.just(0)}, {"result": st.just("LESS")}),
)
request_op = st.one_of(
    range_req.map(lambda r: {"request_range": r}),
    put_req.map(lambda r: {"request_put": r}),
    delete_req.map(lambda r: {"request_delete_range": r}),
)
txn_req = _obj(
    {},
    {
        "compare": st.lists(compare, max_size=3),
        "success": st.lists(request_op, max_size=3),
        "failure": st.lists(request_op, max_size=3),
    },
)
lease_id = st.integers(min_value=0, max_value=2**62) | st.integers(min_value=0, max_value=2**62).map(str)

#: A valid request body per route (what etcd's gateway takes); the fuzzer mutates them.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "/v3/kv/range": range_req,
    "/v3/kv/put": put_req,
    "/v3/kv/deleterange": delete_req,
    "/v3/kv/txn": txn_req,
    "/v3/kv/compaction": _obj({}, {"revision": st.integers(0, 3), "physical": flag}),
    "/v3/lease/grant": _obj({"TTL": st.integers(1, 3600)}, {"ID": lease_id}),
    "/v3/lease/revoke": _obj({"ID": lease_id}, {}),
    "/v3/lease/keepalive": _obj({"ID": lease_id}, {}),
    "/v3/lease/timetolive": _obj({"ID": lease_id}, {"keys": flag}),
    "/v3/lease/leases": st.just({}),
    "/v3/maintenance/status": st.just({}),
    "/v3/maintenance/snapshot": st.just({}),
    "/v3/cluster/member/list": _obj({}, {"linearizable": flag}),
}
VALID["/v3/cluster/member/add"] = _obj({"name": st.just("fuzz"), "peerURLs": st.just(["http://127.0.0.1:9"])}, {})
VALID["/v3/cluster/member/remove"] = _obj({"ID": st.integers(1, 2**63 - 1) | st.integers(1, 2**63 - 1).map(str)}, {})
VALID["/v3/cluster/member/promote"] = VALID["/v3/cluster/member/remove"]
#: Membership changes: only with bodies the server must refuse (see the module docstring).
MEMBER_ROUTES = ["/v3/cluster/member/add", "/v3/cluster/member/remove", "/v3/cluster/member/promote"]
V3_ROUTES = [
    *(r for r in VALID if r not in MEMBER_ROUTES),
    "/v3/kv/lease/revoke",
    "/v3/kv/lease/timetolive",
    "/v3/kv/lease/leases",
]
ALIAS = {"/v3/kv/lease/revoke": "/v3/lease/revoke", "/v3/kv/lease/timetolive": "/v3/lease/timetolive"}
ALIAS["/v3/kv/lease/leases"] = "/v3/lease/leases"

BAD_BASE64 = ["!!", "YQ", "YQ=", "Y===", "-_-_", "a b=", "é", "YWJj\x00", "YW Jj"]
HUGE_INTS: list[Any] = [2**63, -(2**63) - 1, 2**64, 10**30, -1, "9223372036854775808", "1e3", "+1", "01", " 5 x"]
HUGE_INTS += [1.0, 1e300, "0x10", "", "٣", "1_0", True, "-0"]
BAD_ENUMS: list[Any] = ["ascend", "NOPE", "", 99, -1, "2", True, 1.0, ["ASCEND"]]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _deep(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf] if depth % 2 else {"a": leaf}
    return leaf


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """A valid body with one to three things wrong with it (or, sometimes, nothing wrong)."""
    body = copy.deepcopy(draw(valid))  # the strategies may share objects between examples
    for _ in range(draw(st.integers(0, 3))):
        body = _mutate(draw, body)
    return body


def _mutate(draw: st.DrawFn, body: Any) -> Any:
    """Mutate the body, or one object nested in it, in one way."""
    if not isinstance(body, dict):
        return body
    targets = [body]
    stack = [body]
    while stack:
        for v in stack.pop().values():
            items = v if isinstance(v, list) else [v]
            for item in items:
                if isinstance(item, dict):
                    targets.append(item)
                    stack.append(item)
    obj = draw(st.sampled_from(targets))
    name = draw(st.sampled_from(sorted(obj) or ["key"]))
    how = draw(st.sampled_from(["type", "base64", "int", "enum", "deep", "unknown", "camel", "twice", "null", "drop"]))
    if how == "type":
        obj[name] = draw(any_json)
    elif how == "base64":
        obj[name] = draw(st.sampled_from(BAD_BASE64))
    elif how == "int":
        obj[name] = draw(st.sampled_from(HUGE_INTS))
    elif how == "enum":
        obj[name] = draw(st.sampled_from(BAD_ENUMS))
    elif how == "deep":
        obj[name] = _deep(draw(st.integers(1, 600)))
    elif how == "unknown":
        obj[draw(st.sampled_from(["foo", "Key", "KEY", "rangeend", "ttl", "id", "__proto__", ""]))] = draw(any_json)
    elif how == "camel" and name in obj:
        obj[_camel(name)] = obj.pop(name)
    elif how == "twice" and name in obj:
        obj[_camel(name) if _camel(name) != name else name.lower()] = obj[name]
    elif how == "null":
        obj[name] = None
    elif how == "drop":
        obj.pop(name, None)
    return body


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _member_id_of(body: Any) -> int | None:
    """The member id a remove/promote body names, as :func:`kvdisco.api.members._member_id` reads it."""
    if not isinstance(body, dict):
        return None
    raw = body.get("ID", body.get("id"))
    with contextlib.suppress(ValueError, TypeError):
        if isinstance(raw, int | str) and not isinstance(raw, bool):
            return int(raw)
    return None


def _member_body_is_safe(node: Node, route: str, body: Any) -> bool:
    if route == "/v3/cluster/member/add":
        return not _member_add_would_apply(body, v3=True)
    return _member_id_of(body) != int(node.own_id_hex, 16)


@dataclass
class Ledger:
    """Accepted requests on write routes: the store revision may move by at most this many."""

    writes: int = 0
    seen: dict[int, int] = field(default_factory=dict)


def check_v3_answer(route: str, body: bytes, resp: requests.Response, ledger: Ledger) -> None:
    what = f"POST {route} {body[:300]!r} -> {resp.status_code} {resp.text[:300]}"
    ledger.seen[resp.status_code] = ledger.seen.get(resp.status_code, 0) + 1
    assert resp.status_code < 500, what
    assert resp.headers.get("Content-Type", "").startswith("application/json"), what
    if route == "/v3/maintenance/snapshot" and resp.status_code == 200:
        lines = resp.content.splitlines()  # a stream: {"result": {"header", "blob", "remaining_bytes"}} per line
        assert lines and all("blob" in json.loads(line)["result"] for line in lines), what
        answer = json.loads(lines[0])["result"]
    else:
        answer = resp.json()
    if resp.status_code != 200:
        assert isinstance(answer, dict) and set(answer) == {"error", "code", "message"}, what
        code = answer["code"]
        assert isinstance(code, int) and not isinstance(code, bool) and 0 < code <= 16, what
        assert isinstance(answer["message"], str) and answer["error"] == answer["message"], what
        assert HTTP_STATUS_BY_CODE.get(code) == resp.status_code, what
        return
    if route in WRITE_ROUTES:
        ledger.writes += 1
    if route == "/v3/lease/keepalive":
        answer = answer["result"]  # a stream of one: {"result": {...}} as etcd's gateway answers
    header = answer["header"]
    assert isinstance(header, dict), what
    if route != "/v3/cluster/member/list":  # etcd's member list header carries no revision
        assert int(header["revision"]) > 0, what


@contextlib.contextmanager
def refused_requests_change_nothing(node: Node) -> Iterator[Ledger]:
    ledger = Ledger()
    before = node.revision()
    yield ledger
    after = node.revision()
    assert 0 <= after - before <= ledger.writes, (before, after, ledger)
    node.assert_healthy()


V3_EXAMPLES = 60


@pytest.mark.parametrize("route", V3_ROUTES + MEMBER_ROUTES)
def test_v3_gateway_survives_mutated_bodies(route: str, node: Node) -> None:
    valid = VALID[ALIAS.get(route, route)]
    bodies = st.one_of(
        valid.map(_dumps),
        mutated(valid).map(_dumps),
        any_json.map(_dumps),
        st.dictionaries(
            st.sampled_from(["key", "range_end", "ID", "TTL", "compare", "peerURLs", "name"]), any_json
        ).map(_dumps),
    )
    if route in MEMBER_ROUTES:
        bodies = bodies.filter(lambda raw: _member_body_is_safe(node, route, json.loads(raw)))
    with refused_requests_change_nothing(node) as ledger:

        @given(body=bodies)
        @settings(max_examples=V3_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(body: bytes) -> None:
            check_v3_answer(route, body, node.post(route, body), ledger)

        run()
    assert any(400 <= status < 500 for status in ledger.seen), f"the fuzzer never got a refusal: {ledger}"


ALL_V3_ROUTES = V3_ROUTES + MEMBER_ROUTES + ["/v3/watch"]


def test_v3_gateway_survives_raw_bytes(node: Node) -> None:
    """Not JSON at all: every route (the watch included) answers 400, code 3, in etcd's shape."""
    garbage = st.one_of(
        st.binary(min_size=1, max_size=200),
        st.text(min_size=1).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"{", b"[", b'{"key":', b"\xff\xfe{}", b"{}{}", b'{"key": "AA=="} x', b"\x00", b"NaN"]),
        st.integers(1, 3000).map(lambda n: b"[" * n),
    ).filter(lambda raw: not _is_json_object_or_null(raw))
    with refused_requests_change_nothing(node) as ledger:

        @given(route=st.sampled_from(ALL_V3_ROUTES), body=garbage)
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(route: str, body: bytes) -> None:
            resp = node.post(route, body)
            check_v3_answer(route, body, resp, ledger)
            assert (resp.status_code, resp.json()["code"]) == (400, 3), (route, body[:100], resp.text[:300])

        run()
    assert ledger.writes == 0


def _is_json_object_or_null(raw: bytes) -> bool:
    """What the gateway takes as a request: a JSON object, or an empty or null body (as ``{}``)."""
    if not raw.strip(b" \t\n\r"):
        return True
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return value is None or isinstance(value, dict)


@pytest.mark.parametrize("route", ALL_V3_ROUTES)
def test_v3_bodies_just_over_the_limit_are_refused(route: str, node: Node) -> None:
    """1.5 MiB + 1 byte, valid JSON or not: 400, code 3, "request is too large", and no change."""
    value = base64.b64encode(b"v" * REQUEST_BYTES_MAX).decode()
    valid_put = _dumps({"key": "Zm9v", "value": value})
    with refused_requests_change_nothing(node) as ledger:
        for size in (REQUEST_BYTES_MAX + 1, REQUEST_BYTES_MAX + 100):
            bodies = [b" " * size, b"x" * size]
            if route != "/v3/watch":  # see test_v3_watch_request_over_the_limit_is_refused
                bodies.append(valid_put[: size - 2] + b'"}')
            for body in bodies:
                assert len(body) == size
                resp = node.post(route, body)
                check_v3_answer(route, body, resp, ledger)
                assert (resp.status_code, resp.json()["code"]) == (400, 3), (route, size, resp.text[:300])
                assert "request is too large" in resp.json()["message"], resp.text[:300]
    assert ledger.writes == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_v3_non_json_content_type(content_type: str, node: Node) -> None:
    """The gateway reads the body as JSON whatever the Content-Type says (as etcd's does): a valid
    body works, garbage gets 400, never a 5xx."""
    key = base64.b64encode(b"fuzz/content-type").decode()
    with refused_requests_change_nothing(node) as ledger:
        for route, body in [
            ("/v3/kv/put", _dumps({"key": key, "value": "dg=="})),
            ("/v3/kv/range", _dumps({"key": key})),
            ("/v3/kv/put", b"key=Zm9v&value=YmFy"),
            ("/v3/kv/put", b"--x\r\nContent-Disposition: form-data; name=key\r\n\r\nZm9v\r\n--x--\r\n"),
        ]:
            resp = node.post(route, body, content_type=content_type)
            check_v3_answer(route, body, resp, ledger)
            assert resp.status_code == (200 if body.startswith(b"{") else 400), resp.text[:300]


watch_create = _obj(
    {"key": key64},
    {
        "range_end": b64,
        "start_revision": small,
        "prev_kv": flag,
        "progress_notify": flag,
        "filters": st.lists(st.sampled_from(["NOPUT", "NODELETE", 0, 1]), max_size=3),
        "watch_id": small,
        "fragment": flag,
    },
)
watch_request = st.one_of(
    watch_create.map(lambda c: {"create_request": c}),
    _obj({}, {"watch_id": small}).map(lambda c: {"cancel_request": c}),
    st.just({"progress_request": {}}),
)


def test_v3_watch_first_message(node: Node) -> None:
    """A bad first request gets a plain 4xx in etcd's shape; a valid one a 200 stream, whose first
    line (for a create) is a created watch response. The stream is closed after that."""
    bodies = st.one_of(watch_request, mutated(watch_request), any_json)
    with refused_requests_change_nothing(node) as ledger:

        @given(body=bodies)
        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(body: Any) -> None:
            raw = _dumps(body)
            with node.session.post(node.url + "/v3/watch", data=raw, stream=True, timeout=TIMEOUT_S) as resp:
                what = f"POST /v3/watch {raw[:300]!r} -> {resp.status_code}"
                assert resp.status_code < 500, what
                if resp.status_code != 200:
                    check_v3_answer("/v3/watch", raw, resp, ledger)
                    return
                assert resp.headers["Content-Type"].startswith("application/json"), what
                kind = next(iter(body)) if isinstance(body, dict) and len(body) == 1 else ""
                if kind in ("cancel_request", "cancelRequest"):
                    return  # canceling no watch answers nothing: a 200 is all there is
                line = next(resp.iter_lines(), b"")
                assert line, f"{what}: the stream ended without a line"
                result = json.loads(line)["result"]
                assert int(result["header"]["revision"]) > 0, (what, line)
                if kind in ("create_request", "createRequest"):
                    assert result.get("created") is True, (what, line)
                else:  # a progress request of an idle stream: watch_id -1, as etcd
                    assert result.get("watch_id") == "-1", (what, line)

        run()


@pytest.mark.parametrize(
    "create",
    [{}, {"key": "Yg==", "range_end": "YQ=="}, {"key": "YQ==", "range_end": "YQ=="}],
    ids=["no-key", "end-before-key", "end-equals-key"],
)
def test_v3_watch_of_an_empty_range_is_answered(create: dict[str, str], node: Node) -> None:
    """etcd answers a watch it cannot create with created+canceled and a cancel_reason. (Found by
    the fuzzer: WatchHub.watch raised out of v3_watch._WatchStream._create after the 200 had been sent,
    and the stream just ended, "Response ended prematurely".)"""
    raw = _dumps({"create_request": create})
    with node.session.post(node.url + "/v3/watch", data=raw, stream=True, timeout=TIMEOUT_S) as resp:
        if resp.status_code == 200:
            result = json.loads(next(resp.iter_lines()))["result"]
            assert result.get("created") and result.get("canceled") and result.get("cancel_reason"), result
        else:
            check_v3_answer("/v3/watch", raw, resp, Ledger())


def test_v3_watch_request_over_the_limit_is_refused(node: Node) -> None:
    """A watch request object larger than 1.5 MiB is accepted (200, created) when its last bytes
    arrive in the chunk that crosses the limit: _JsonStream.next tries raw_decode before looking
    at len(self._buf)."""
    end = base64.b64encode(b"k" * REQUEST_BYTES_MAX).decode()
    raw = _dumps({"create_request": {"key": "YQ==", "range_end": end}})
    for _ in range(5):
        with node.session.post(node.url + "/v3/watch", data=raw, stream=True, timeout=TIMEOUT_S) as resp:
            assert resp.status_code == 400, "a 2 MiB watch request was accepted"


async def test_member_add_with_a_bad_peer_url_is_refused(tmp_path: Path) -> None:
    """``POST /v3/cluster/member/add {"name": "bad", "peerURLs": ["x"]}`` (or ``POST /v1/members
    {"name": "bad", "peer_url": "x"}``): add_member checks only that the URL is a non-empty string,
    proposes it, and applying the conf change raises ``ValueError: expected host:port in 'x'``
    (MemberInfo.peer_host_port in Node._apply_conf_change_io): the process exits, and every restart
    dies the same way in Node.start, replaying the entry. etcd refuses it: "etcdserver: ... URLs".
    Run on a node of its own, since it kills the node."""
    async with LocalCluster(tmp_path, 1) as cluster:
        m = await cluster.leader()
        assert cluster.session is not None
        async with cluster.session.post(
            m.client_url + "/v3/cluster/member/add", json={"name": "bad", "peerURLs": ["x"]}
        ) as r:
            status, body = r.status, await r.json(content_type=None)
        await asyncio.sleep(1)
        assert m.alive(), f"the node died: {body}"
        assert (status, body["code"]) == (400, 3), body


@pytest.mark.parametrize("body", [b"[" * 1000, b"[" * 1000 + b"]" * 1000, b'{"create_request":' * 1000])
def test_v3_watch_deeply_nested_request_is_refused(body: bytes, node: Node) -> None:
    """``POST /v3/watch`` with 1000 levels of nesting answers ``500 Internal Server Error`` (text/plain,
    "Server got itself in trouble"): _JsonStream.next catches only JSONDecodeError, and the stdlib
    decoder raises RecursionError. 900 levels get a clean 400. (The other routes decode with orjson,
    which refuses depth > 1024 with a JSONDecodeError: 400.)"""
    resp = node.post("/v3/watch", body)
    check_v3_answer("/v3/watch", body, resp, Ledger())
    assert resp.status_code == 400
