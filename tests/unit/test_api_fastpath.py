"""The fast HTTP path's request-head parser: what it takes, and everything it leaves to aiohttp."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvdisco.api.fastpath import Head, parse_head
from kvdisco.api.v3 import UNARY_ROUTES
from kvdisco.mvcc.limits import REQUEST_BYTES_MAX


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


def test_a_plain_post_to_a_unary_route_is_taken() -> None:
    got = parse_head(
        head("POST /v3/kv/put HTTP/1.1", "Host: x", "Content-Length: 12", "Content-Type: application/json"),
        UNARY_ROUTES,
    )
    assert got == Head("/v3/kv/put", 12, True, "application/json", False)


def test_header_names_are_case_insensitive_and_values_trimmed() -> None:
    got = parse_head(
        head("POST /v3/kv/range HTTP/1.1", "content-LENGTH:\t7 ", "CONNECTION: Keep-Alive, Close"), UNARY_ROUTES
    )
    assert got == Head("/v3/kv/range", 7, False, None, False)


def test_the_forwarding_mark_is_seen() -> None:
    got = parse_head(head("POST /v3/kv/put HTTP/1.1", "Content-Length: 0", "X-Kvdisco-Forwarded-By: 1f"), UNARY_ROUTES)
    assert got is not None and got.forwarded


@pytest.mark.parametrize(
    "lines",
    [
        ("GET /v3/kv/range HTTP/1.1", "Content-Length: 2"),  # another method
        ("POST /v3/watch HTTP/1.1", "Content-Length: 2"),  # a streaming route
        ("POST /v1/kv/a HTTP/1.1", "Content-Length: 2"),  # the native API
        ("POST /v3/kv/range?x=1 HTTP/1.1", "Content-Length: 2"),  # a query string
        ("POST http://h/v3/kv/range HTTP/1.1", "Content-Length: 2"),  # absolute form
        ("POST /v3/kv/range HTTP/1.0", "Content-Length: 2"),  # HTTP/1.0
        ("POST  /v3/kv/range HTTP/1.1", "Content-Length: 2"),  # a malformed request line
        ("POST /v3/kv/range HTTP/1.1",),  # no length
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "Content-Length: 2"),  # twice
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: -2"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 0x10"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 99999999999999999999"),
        ("POST /v3/kv/range HTTP/1.1", f"Content-Length: {REQUEST_BYTES_MAX + 1}"),  # aiohttp says "too large"
        ("POST /v3/kv/range HTTP/1.1", "Transfer-Encoding: chunked"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "Transfer-Encoding: chunked"),  # smuggling shape
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "Content-Encoding: gzip"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "Expect: 100-continue"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "Connection: Upgrade", "Upgrade: h2c"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length : 2"),  # space before the colon
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", " folded"),  # obsolete line folding
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "no colon"),
        ("POST /v3/kv/range HTTP/1.1", "Content-Length: 2", "X: a\nb"),  # a bare line feed
    ],
)
def test_everything_else_is_left_to_aiohttp(lines: tuple[str, ...]) -> None:
    assert parse_head(head(*lines), UNARY_ROUTES) is None


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_without_raising(data: bytes) -> None:
    got = parse_head(data, UNARY_ROUTES)
    assert got is None or (got.path in UNARY_ROUTES and 0 <= got.content_length <= REQUEST_BYTES_MAX)
