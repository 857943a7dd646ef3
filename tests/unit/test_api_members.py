"""What a member add accepts: peer URLs (the fuzzer found one that used to raise out of the check), and
never the name of a removed member."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from kvdisco.api.backend import RequestFailed
from kvdisco.api.members import _valid_peer_url, add_member
from kvdisco.raft import ConfChangeError
from kvdisco.raft.node import MemberInfo, Node, member_id


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


# -- a removed member's name can never be added again -------------------------------------------------------------


class _FakeNode:
    """What add_member reads of a Node: its members, its removed ids, and add_member itself."""

    def __init__(self, removed: frozenset[int] = frozenset(), refuse: Exception | None = None) -> None:
        self._removed = removed
        self._refuse = refuse
        self.added: list[MemberInfo] = []

    def members(self) -> dict[int, MemberInfo]:
        return {member_id("n1"): MemberInfo(member_id("n1"), "n1", "http://127.0.0.1:21001")}

    def removed_members(self) -> frozenset[int]:
        return self._removed

    async def add_member(self, info: MemberInfo, *, learner: bool = True) -> None:
        if self._refuse is not None:
            raise self._refuse
        self.added.append(info)


def _add(node: _FakeNode, name: str) -> Any:
    body = {"name": name, "peerURLs": ["http://127.0.0.1:21003"]}
    return asyncio.run(add_member(cast(Node, node), body))


def test_adding_a_removed_name_is_refused_with_a_clear_error() -> None:
    node = _FakeNode(removed=frozenset({member_id("n3")}))
    with pytest.raises(RequestFailed) as exc:
        _add(node, "n3")
    assert exc.value.code == 9  # FailedPrecondition: HTTP 412
    msg = exc.value.message
    assert "member ID removed" in msg and "'n3'" in msg and f"{member_id('n3'):x}" in msg and "new name" in msg
    assert node.added == []  # nothing was proposed
    _add(node, "n4")  # another name is fine
    assert [m.name for m in node.added] == ["n4"]


def test_a_leader_refusing_the_change_is_a_failed_precondition() -> None:
    node = _FakeNode(refuse=ConfChangeError("a membership change is already in progress; retry when it is applied"))
    with pytest.raises(RequestFailed) as exc:
        _add(node, "n4")
    assert exc.value.code == 9 and "already in progress" in exc.value.message
