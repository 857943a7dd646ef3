"""The history pipeline against kvdisco: three `kvdisco serve` processes under kill -9 and SIGSTOP.

The same recorder, fault driver, checker and watch audit that pass against a real etcd (see
test_faults_etcd.py, which also proves the pipeline catches stale reads and lost writes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .checker import Outcome
from .clusters import KvdiscoCluster
from .workload import WorkloadConfig, run_pipeline


@pytest.mark.timeout(90)
async def test_kvdisco_history_under_kill9_and_pause_is_linearizable(tmp_path: Path) -> None:
    cluster = KvdiscoCluster(tmp_path, 3)
    await cluster.start()
    try:
        report = await run_pipeline(cluster, WorkloadConfig(duration_s=15.0, seed=1))
    finally:
        await cluster.stop()
    print(report.summary())
    assert not report.problems, report.summary() + "\n" + cluster.logs()
    assert report.check is not None and report.check.outcome is Outcome.OK, report.summary()
    # The run must have exercised something: faults happened, and ops completed on every key.
    assert len(report.faults) >= 3
    assert report.stats.ok > 200
    assert all(r.ops > 30 for r in report.check.keys.values())
    assert report.final_revision - report.start_revision > 100
