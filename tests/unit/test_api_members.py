"""Peer URLs a member add accepts (the fuzzer found one that used to raise out of the check)."""

from __future__ import annotations

import pytest

from kvdisco.api.members import _valid_peer_url


@pytest.mark.parametrize("url", ["http://10.0.0.4:2380", "https://node-4.example:2380", "http://[::1]:2380/"])
def test_good_peer_urls(url: str) -> None:
    assert _valid_peer_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://I]\x8c\xe8r6\x08nb:3",  # a stray bracket: urlsplit raises "Invalid IPv6 URL"
        "http://[::1:2380",
        "http://host",  # no port
        "http://host:99999",
        "ftp://host:2380",
        "http://host:2380/path",
        "http://hôst:2380",
        "http://host:2380\n",
        "",
    ],
)
def test_bad_peer_urls_are_refused_without_raising(url: str) -> None:
    assert not _valid_peer_url(url)
