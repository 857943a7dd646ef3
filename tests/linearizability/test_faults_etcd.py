"""The history pipeline (recorder + fault driver + checker + watch audit), against etcd and a breakable fake.

The etcd run is the proof that the pipeline has no false alarms: a correct
database, under kill -9 and SIGSTOP of leaders and followers, must pass every
time. The fake runs are the proof that it has teeth: the same pipeline must
flag stale reads and acknowledged-then-lost writes, and transformations of the
real etcd history that inject those bugs must be rejected by the checker.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from .checker import Op, OpKind, Outcome, check
from .clusters import EtcdCluster
from .fake import FakeCluster, FakeStore
from .workload import Report, WorkloadConfig, run_pipeline

needs_etcd = pytest.mark.skipif(not Path(EtcdCluster.binary).exists(), reason="etcd not installed")


def inject_stale_read(history: list[Op]) -> list[Op] | None:
    """Make a later read return a value that an acknowledged write had already replaced.

    Finds gets G1 (read v1, not None) and G2 (read v2 != v1) on one key, and the acknowledged write W2
    of v2, with G1.ret < W2.call and W2.ret < G2.call; then makes G2 read v1. v1's writer is fixed before
    G1, W2 (which replaced it) is fixed before G2, and values are unique, so the result is never linearizable.
    """
    writers = {(op.key, op.value): op for op in history if op.kind in (OpKind.PUT, OpKind.CAS) and op.ok is not False}
    gets = [(i, op) for i, op in enumerate(history) if op.kind is OpKind.GET]
    for j, g2 in gets:
        w2 = writers.get((g2.key, g2.out_value))
        if w2 is None or w2.indeterminate or not w2.ret < g2.call:
            continue
        for _, g1 in gets:
            if g1.key == g2.key and g1.out_value not in (None, g2.out_value) and g1.ret < w2.call:
                out = list(history)
                out[j] = dataclasses.replace(g2, out_value=g1.out_value, out_version=g1.out_version)
                return out
    return None


def drop_acknowledged_write(history: list[Op]) -> list[Op] | None:
    """Make reads behave as if an acknowledged put never happened: they see the value it overwrote instead.

    Picks an acknowledged put W (value v) that overwrote a value u seen by a get before W was called,
    and every get that read v now reads u (version one lower). W is still acknowledged in the history.
    """
    writers = {(op.key, op.value): op for op in history if op.kind in (OpKind.PUT, OpKind.CAS) and op.ok is not False}
    gets = [op for op in history if op.kind is OpKind.GET]
    for g in gets:
        w = writers.get((g.key, g.out_value))
        if w is None or w.kind is not OpKind.PUT or w.indeterminate or g.call <= w.ret:
            continue
        before = [p for p in gets if p.key == w.key and p.ret < w.call and p.out_value is not None]
        if not before:
            continue
        u = before[-1]
        return [
            dataclasses.replace(op, out_value=u.out_value, out_version=(op.out_version or 1) - 1)
            if op.kind is OpKind.GET and op.key == w.key and op.out_value == w.value
            else op
            for op in history
        ]
    return None


def assert_clean(report: Report) -> None:
    assert not report.problems, report.summary()
    assert report.check is not None and report.check.outcome is Outcome.OK


@needs_etcd
@pytest.mark.timeout(60)
async def test_etcd_history_under_kill9_and_pause_is_linearizable(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path, 3)
    await cluster.start()
    try:
        report = await run_pipeline(cluster, WorkloadConfig(duration_s=15.0, seed=1))
    finally:
        await cluster.stop()
    print(report.summary())
    assert_clean(report)
    # The run must have exercised something: faults happened, ops completed on every key, watches survived kills.
    assert len(report.faults) >= 3
    assert report.stats.ok > 300
    assert all(r.ops > 50 for r in report.check.keys.values()) if report.check else False
    assert report.final_revision - report.start_revision > 100

    # The same real history with a bug injected is rejected.
    stale = inject_stale_read(report.history)
    assert stale is not None
    assert check(stale).outcome is Outcome.ILLEGAL
    lost = drop_acknowledged_write(report.history)
    assert lost is not None
    assert check(lost).outcome is Outcome.ILLEGAL
    ghost = list(report.history)
    i = next(i for i, op in enumerate(ghost) if op.kind is OpKind.GET)
    ghost[i] = dataclasses.replace(ghost[i], out_value="never-written")
    res = check(ghost)
    assert res.outcome is Outcome.ILLEGAL and res.keys[ghost[i].key].blocked is not None


FAKE_CFG = WorkloadConfig(duration_s=3.0, seed=3, faults=False, watch_catchup_s=3.0)


@pytest.mark.timeout(60)
async def test_correct_fake_passes_under_emulated_faults() -> None:
    cluster = FakeCluster(3)
    await cluster.start()
    try:
        cfg = dataclasses.replace(FAKE_CFG, faults=True, duration_s=5.0, settle_s=1.0, fault_min_s=0.2, fault_max_s=0.6)
        report = await run_pipeline(cluster, cfg)
    finally:
        await cluster.stop()
    assert_clean(report)
    assert report.faults and report.stats.ok > 100


@pytest.mark.timeout(60)
async def test_fake_with_stale_follower_reads_is_caught() -> None:
    cluster = FakeCluster(3, stale_member=2, store=FakeStore(stale_lag_s=0.3))
    await cluster.start()
    try:
        report = await run_pipeline(cluster, FAKE_CFG)
    finally:
        await cluster.stop()
    assert report.check is not None and report.check.outcome is Outcome.ILLEGAL, report.summary()
    assert any(p.startswith("(a)") for p in report.problems)
    # The explanation points at a read that could not be placed.
    bad = [k for k in report.check.keys.values() if k.outcome is Outcome.ILLEGAL]
    assert any(k.blocked is not None for k in bad)


@pytest.mark.timeout(60)
async def test_fake_that_loses_acknowledged_writes_is_caught() -> None:
    cluster = FakeCluster(3, store=FakeStore(lose_every=7))
    await cluster.start()
    try:
        report = await run_pipeline(cluster, FAKE_CFG)
    finally:
        await cluster.stop()
    assert report.check is not None and report.check.outcome is Outcome.ILLEGAL, report.summary()
    # The lost writes' revisions were acknowledged but no watcher ever delivered them.
    assert any("never seen by any watcher" in p or "missing revisions" in p for p in report.problems), report.summary()
