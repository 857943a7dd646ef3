"""Cluster membership for the HTTP APIs: etcd's member JSON, and add/remove/promote with etcd's errors.

A member's id is derived from its name (see :func:`kvdisco.raft.node.member_id`), so adding a
member needs its name as well as its peer URL: etcd's ``member add`` request carries only peer
URLs, and kvdisco also takes a ``name`` field. The name must be the new node's ``--name``.

For the same reason a removed member's name can never be added again (etcd refuses a removed
member's id the same way, "ID removed"): its id is recorded as removed in the replicated membership.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from kvdisco.api import v3_codec as codec
from kvdisco.api.backend import RequestFailed
from kvdisco.raft import ConfChangeError, NotLeader, ProposalDropped, RaftError
from kvdisco.raft.node import MemberInfo, Node, member_id

__all__ = ["add_member", "member_json", "member_list", "promote_member", "remove_member"]

_CODE_INVALID_ARGUMENT = 3
_CODE_NOT_FOUND = 5
_CODE_FAILED_PRECONDITION = 9
_CODE_UNAVAILABLE = 14


def member_json(info: MemberInfo, *, learner: bool) -> dict[str, Any]:
    peers = (info.peer_url,) if info.peer_url else ()
    return codec.member_json(codec.Member(info.id, info.name, peers, info.client_urls, learner))


def member_list(node: Node) -> list[dict[str, Any]]:
    learners = node.rawnode.conf_state().learners
    return [member_json(info, learner=nid in learners) for nid, info in node.members().items()]


def _valid_peer_url(url: str) -> bool:
    if not url.isascii() or not url.isprintable():
        return False
    try:
        parts = urlsplit(url)  # raises on a stray "[" or "]" in the host
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port is not None and not parts.path.strip("/")


def _member_id(body: Mapping[str, Any]) -> int:
    raw = body.get("ID", body.get("id"))
    try:
        value = int(raw) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else -1
    except ValueError:
        value = -1
    if not 0 < value < 2**64:
        raise RequestFailed(_CODE_INVALID_ARGUMENT, "etcdserver: member ID must be a positive integer")
    return value


async def _conf_change(coro: Any) -> None:
    try:
        await coro
    except NotLeader as exc:
        if exc.leader_hint == 0:
            raise RequestFailed(_CODE_UNAVAILABLE, "etcdserver: no leader") from None
        raise
    except ProposalDropped:
        raise RequestFailed(_CODE_UNAVAILABLE, "etcdserver: leader changed") from None
    except ConfChangeError as exc:  # the leader refused it: a change in progress, a removed id, the last voter
        raise RequestFailed(_CODE_FAILED_PRECONDITION, f"etcdserver: {exc}") from None


def _removed_error(name: str, node_id: int) -> RequestFailed:
    """Adding a removed member's name: say why, and what to do instead."""
    return RequestFailed(
        _CODE_FAILED_PRECONDITION,
        f"etcdserver: member ID removed: member {name!r} (ID {node_id:x}) was removed from this cluster and can "
        "never be added again (a member's ID is derived from its name); add it under a new name, with an empty "
        "data directory",
    )


async def add_member(node: Node, body: Mapping[str, Any]) -> dict[str, Any]:
    urls = body.get("peerURLs", body.get("peer_urls"))
    name = body.get("name")
    learner = body.get("isLearner", body.get("is_learner", False))
    if not isinstance(urls, list) or len(urls) != 1 or not isinstance(urls[0], str) or not urls[0]:
        raise RequestFailed(_CODE_INVALID_ARGUMENT, "etcdserver: member add needs exactly one peer URL in peerURLs")
    if not _valid_peer_url(urls[0]):
        raise RequestFailed(_CODE_INVALID_ARGUMENT, f"etcdserver: invalid peer URL {urls[0]!r}: want http://host:port")
    if not isinstance(name, str) or not name:
        raise RequestFailed(_CODE_INVALID_ARGUMENT, "kvdisco: member add needs the new member's name (its --name)")
    if not isinstance(learner, bool):
        raise RequestFailed(_CODE_INVALID_ARGUMENT, "etcdserver: isLearner must be a boolean")
    info = MemberInfo(member_id(name), name, urls[0])
    if info.id in node.removed_members():
        raise _removed_error(name, info.id)
    current = node.members()
    if info.id in current:
        raise RequestFailed(_CODE_FAILED_PRECONDITION, "etcdserver: member ID already exist")
    if any(m.peer_url == info.peer_url for m in current.values()):
        raise RequestFailed(_CODE_FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
    await _conf_change(node.add_member(info, learner=learner))
    return member_json(info, learner=learner)


async def remove_member(node: Node, body: Mapping[str, Any]) -> None:
    nid = _member_id(body)
    if nid not in node.members():
        raise RequestFailed(_CODE_NOT_FOUND, "etcdserver: member not found")
    await _conf_change(node.remove_member(nid))


async def promote_member(node: Node, body: Mapping[str, Any]) -> None:
    nid = _member_id(body)
    if nid not in node.members():
        raise RequestFailed(_CODE_NOT_FOUND, "etcdserver: member not found")
    if nid not in node.rawnode.conf_state().learners:
        raise RequestFailed(_CODE_FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
    try:
        await _conf_change(node.promote_member(nid))  # on a follower: NotLeader, so the handler forwards it
    except NotLeader:
        raise
    except RaftError as exc:
        raise RequestFailed(
            _CODE_FAILED_PRECONDITION,
            f"etcdserver: can only promote a learner member which is in sync with leader ({exc})",
        ) from None
