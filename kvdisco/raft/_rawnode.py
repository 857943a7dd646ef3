"""The thread-unsafe public face of the core: step, tick, propose, Ready, advance.

A driver loops: feed input (``step``/``tick``/``propose``...), take a
``Ready`` when :meth:`RawNode.has_ready`, carry out its contract (see
:class:`~kvdisco.raft.Ready`), then :meth:`RawNode.advance`. Only one Ready
is out at a time; input may keep arriving while it is being persisted.
"""

from __future__ import annotations

from typing import Any

from ._codec import encode_conf_change
from ._core import Config, Raft
from ._messages import (
    LOCAL_MESSAGES,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    SnapshotMeta,
    SoftState,
    StateRole,
)
from .errors import RaftError

__all__ = ["RawNode"]


class RawNode:
    def __init__(
        self,
        config: Config,
        *,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        self.raft = Raft(config, hard_state=hard_state, snapshot=snapshot, entries=entries)
        self._prev_hard = self.raft.hard_state()
        self._prev_soft = SoftState(self.raft.lead, self.raft.role)
        self._ready_out: Ready | None = None
        #: The commit index last written with an fsync, as far as this node knows (see Ready.must_sync).
        self._synced_commit = self._prev_hard.commit

    # -- input -------------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.step(Message(MessageType.HUP, frm=self.raft.id))

    def step(self, m: Message) -> bool:
        """Feed a message from a peer. Returns False (and changes nothing) for one no peer may send.

        A well-formed message from a removed member is taken, and ignored by the core (as a stale term's is).
        """
        if m.type in LOCAL_MESSAGES or m.frm == 0 or m.to != self.raft.id:
            return False
        if m.type == MessageType.SNAP and (m.snapshot is None or m.snapshot_data is None):
            return False
        self.raft.step(m)
        return True

    def propose(self, data: bytes) -> tuple[int, int]:
        return self.raft.propose(data)

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        return self.raft.propose_conf_change(cc, encode_conf_change(cc))

    def read_index(self, ctx: bytes) -> None:
        self.raft.read_index(ctx)

    def transfer_leader(self, target: int) -> None:
        self.raft.transfer_leader(target)

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=not ok))

    def release_snapshot_data(self) -> None:
        """The driver has saved the snapshot of the Ready it holds: the node need not keep its data (as
        large as the state) until advance()."""
        self.raft.log.pending_snapshot_data = None

    def compact(self, meta: SnapshotMeta) -> None:
        """The driver saved a snapshot at ``meta.index`` (<= applied): drop the log up to it."""
        self.raft.log.compact(meta)

    # -- output ------------------------------------------------------------------------------------------------------

    def take_early_messages(self) -> list[Message]:
        """Leader messages that may be sent now, before the next Ready is persisted (thesis §10.2.1)."""
        self.raft.flush()
        r, prev = self.raft, self._prev_hard
        if (r.term, r.vote) != (prev.term, prev.vote):
            # Our term or vote is not durable yet (a lone voter wins at once): after a crash we could reuse the
            # term for other entries. They leave with the Ready that persists it, as ready() arranges.
            return []
        if self._reveals_unsynced_conf_commit():
            return []  # they leave with the Ready that makes the commit durable, as ready() arranges
        msgs, self.raft.msgs_early = self.raft.msgs_early, []
        return msgs

    def _reveals_unsynced_conf_commit(self) -> bool:
        """Leader: whether the commit index it would send covers a conf change its own disk does not know committed.

        Followers apply a conf change once told it is committed. Were the leader to crash before writing that
        commit index, it would come back under the old membership while they run the new one, and the two may
        never agree on a leader again (say the new one made a follower a learner: the leader then waits for its
        vote, and the learner never campaigns). So that commit index leaves only after the leader's fsync.
        """
        r = self.raft
        return r.role == StateRole.LEADER and self._synced_commit < r.pending_conf_index <= r.log.committed

    def replication_idle(self) -> bool:
        """Leader only: no APP is in flight to any follower (what it proposes now would travel alone)."""
        r = self.raft
        if r.role != StateRole.LEADER:
            return False
        me = r.id
        return all(pr.inflights.count() == 0 for nid, pr in r.prs.items() if nid != me)

    def has_ready(self) -> bool:
        if self._ready_out is not None:
            return False
        r = self.raft
        r.flush()
        log = r.log
        return bool(
            r.msgs
            or r.msgs_early
            or r.read_states
            or log.stable < log.last_index()
            or log.pending_snapshot is not None
            or log.committed > log.applied
            or r.hard_state() != self._prev_hard
            or r.lead != self._prev_soft.leader_id
            or r.role != self._prev_soft.role
        )

    def ready(self) -> Ready:
        if self._ready_out is not None:
            raise RaftError("ready() called again before advance()")
        r = self.raft
        r.flush()
        log = r.log
        rd = Ready()
        soft = SoftState(r.lead, r.role)
        if soft != self._prev_soft:
            rd.soft_state = soft
        hs = r.hard_state()
        if hs != self._prev_hard:
            rd.hard_state = hs
            rd.term_or_vote_changed = (hs.term, hs.vote) != (self._prev_hard.term, self._prev_hard.vote)
        rd.entries = log.unstable_entries()
        if log.pending_snapshot is not None:
            rd.snapshot = log.pending_snapshot
            rd.snapshot_data = log.pending_snapshot_data
        rd.committed_entries = log.next_committed(r.cfg.apply_batch_bytes_max)
        synced = self._synced_commit
        reveals = self._reveals_unsynced_conf_commit()
        rd.commits_conf_change = reveals or any(
            e.type == EntryType.CONF_CHANGE and e.index > synced for e in rd.committed_entries
        )
        rd.messages_before_persist, r.msgs_early = r.msgs_early, []
        rd.messages, r.msgs = r.msgs, []
        rd.read_states, r.read_states = r.read_states, []
        if r.role == StateRole.LEADER and (reveals or rd.term_or_vote_changed):
            # Our term or vote, or the commit of a conf change, is not durable yet: nothing may leave before
            # the fsync.
            rd.messages = rd.messages_before_persist + rd.messages
            rd.messages_before_persist = []
        self._ready_out = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver finished ``rd``: record what is durable and what is applied."""
        if rd is not self._ready_out:
            raise RaftError("advance() must be given the Ready last returned by ready()")
        self._ready_out = None
        r = self.raft
        log = r.log
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.must_sync():
            # The driver wrote the latest hard state with this fsync (this Ready's, or one it held unsynced).
            self._synced_commit = max(self._synced_commit, self._prev_hard.commit)
        if rd.snapshot is not None and log.pending_snapshot is rd.snapshot:
            log.pending_snapshot = None
            log.pending_snapshot_data = None
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
            r.applied_conf_entries(rd.committed_entries)
        r.on_persisted()

    # -- inspection --------------------------------------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def leader_id(self) -> int:
        return self.raft.lead

    @property
    def role(self) -> StateRole:
        return self.raft.role

    def conf_state(self) -> ConfState:
        return self.raft.conf_state()

    def status(self) -> dict[str, Any]:
        r = self.raft
        st: dict[str, Any] = {
            "id": r.id,
            "term": r.term,
            "vote": r.vote,
            "leader": r.lead,
            "role": r.role.name.lower(),
            "commit": r.log.committed,
            "applied": r.log.applied,
            "last_index": r.log.last_index(),
            "stable": r.log.stable,
            "snapshot_index": r.log.snapshot.index,
            "voters": sorted(r.voters),
            "learners": sorted(r.learners),
        }
        if r.role == StateRole.LEADER:
            st["progress"] = {
                nid: {"match": pr.match, "next": pr.next, "state": pr.state.name.lower()} for nid, pr in r.prs.items()
            }
        return st
