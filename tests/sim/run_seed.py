"""Rerun one simulation seed: ``python -m tests.sim.run_seed SEED [--steps N] [--verbose] [--bug NAME]``.

Exits 0 if every invariant held, 1 (printing the failure, with its recent events) if one broke. With
``--verbose`` every delivered or dropped message and every fault is printed as it happens.
"""

from __future__ import annotations

import argparse
import sys

from tests.sim.simulator import BUGS, SimulationFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim.run_seed", description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("--steps", type=int, default=None, help="ticks of the chaos phase (default: drawn from the seed)")
    ap.add_argument("--verbose", action="store_true", help="print every event as it happens")
    ap.add_argument("--bug", choices=BUGS, default=None, help="inject a deliberate harness bug")
    args = ap.parse_args(argv)
    try:
        sim = run_seed(args.seed, steps=args.steps, bug=args.bug, verbose=args.verbose)
    except SimulationFailure as exc:
        print(exc, file=sys.stderr)
        return 1
    print(sim.summary())
    print(f"profile: {sim.profile_description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
