"""Runs every tests/unit/testdata/*.txt interaction script against its golden output.

Each script is a list of harness commands (``> cmd``) with the transcript
each must print (see tests/unit/raft_harness.py). Set ``KVDISCO_REWRITE=1``
to rewrite the expected output from the current behaviour, then review the
diff like any other change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from raft_harness import run_script

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    rewrite = os.environ.get("KVDISCO_REWRITE") == "1"
    errors = run_script(path, rewrite=rewrite)
    if errors and not rewrite:
        pytest.fail("\n\n".join(errors) + "\n\n(rerun with KVDISCO_REWRITE=1 to accept the new output)")


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 10
