"""Snapshot encode and restore of the kvstore at scale, in-process: cheap to repeat while tuning.

1. Build a KVMachine with --keys keys (32-byte keys, --value-bytes values), written as txns of 128
   puts as bench/scale.py loads them, then --overwrites random single puts (history) and a compaction
   keeping --keep-revisions revisions, as the server's automatic compaction does.
2. Encode the snapshot as a member does (the node's wrapper around the machine's snapshot), write
   it to a file, and time the encode.
3. In a fresh child process (so its peak RSS is that of a restart): read the file, unwrap it as the
   node does, restore a new machine from it; report the time of each step and VmRSS / VmHWM.

Usage:
    .venv/bin/python bench/snapshot_bench.py [--keys 1000000] [--value-bytes 128] [--overwrites 0] [--fork]

With --fork it also takes the snapshot as a member does (fork; the child encodes and writes the file)
and reports how long fork() held the parent and the child's CPU, minor page faults and peak RSS.

Run it under the benchmark lock (flock /tmp/kvdisco-bench.lock ...): it is CPU bound.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack

from kvdisco.mvcc.commands import RequestCompact, encode_command
from kvdisco.mvcc.kvstore import RequestPut, RequestTxn
from kvdisco.mvcc.machine import KVMachine
from kvdisco.raft.node import wrap_snapshot

TXN_OPS = 128


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _unit = line.split()
                out[name.rstrip(":")] = int(value) / 1024
    return out


def key_of(i: int) -> bytes:
    return f"/registry/pods/{i:016d}".encode().ljust(32, b"_")


def build(keys: int, value_bytes: int, overwrites: int, keep_revisions: int) -> KVMachine:
    m = KVMachine()
    index = 0
    value = b"v" * value_bytes
    for start in range(0, keys, TXN_OPS):
        ops = tuple(RequestPut(key_of(i), bytes(value)) for i in range(start, min(start + TXN_OPS, keys)))
        index += 1
        m.apply(index, encode_command(RequestTxn((), ops, ())))
    rng = random.Random(1)
    t0 = time.perf_counter()
    for _ in range(overwrites):
        index += 1
        m.apply(index, encode_command(RequestPut(key_of(rng.randrange(keys)), bytes(value))))
    if overwrites:
        took = time.perf_counter() - t0
        print(
            f"applied {overwrites:,} single puts in {took:.2f} s ({took / overwrites * 1e6:.1f} us each, with full"
            " collections over the unfrozen store, which a member avoids: see kvdisco/cli/heap.py)"
        )
    if m.store.revision - keep_revisions > m.store.compact_revision:
        index += 1
        m.apply(index, encode_command(RequestCompact(m.store.revision - keep_revisions)))
    return m


def fork_encode(m: KVMachine, path: Path) -> None:
    """A member's snapshot as the node takes it: fork; the child encodes and writes the file, then exits.

    Reports how long fork() held the parent, and the child's CPU and minor page faults (every
    page of the heap the child touches is copied: encoding reads, so increments the reference
    count of, every object).
    """
    from kvdisco.raft._messages import ConfState, SnapshotMeta
    from kvdisco.raft.storage import write_snapshot_file

    meta = SnapshotMeta(1, 1, ConfState(frozenset({1})))
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            gc.disable()
            write_snapshot_file(path, meta, wrap_snapshot({}, m.snapshot_parts()))
            code = 0
        finally:
            os._exit(code)
    forked = time.perf_counter() - t0
    _, status, ru = os.wait4(pid, 0)
    waited = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"snapshot child failed: {status}")
    print(
        f"fork {forked * 1e3:.1f} ms; child done after {waited:.2f} s: user {ru.ru_utime:.2f} s, system"
        f" {ru.ru_stime:.2f} s, {ru.ru_minflt:,} minor faults, peak RSS {ru.ru_maxrss / 1024:.0f} MiB;"
        f" file {path.stat().st_size / 2**20:.1f} MiB"
    )


def restore_child(path: str) -> None:
    """The restart path: storage reads the file, the node unwraps it, the machine restores."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    t1 = time.perf_counter()
    _fmt, _members, sm_data = msgpack.unpackb(data, raw=False, strict_map_key=False)
    t2 = time.perf_counter()
    m = KVMachine()
    m.restore(sm_data)
    t3 = time.perf_counter()
    st = proc_status()
    print(
        json.dumps(
            {
                "read_s": round(t1 - t0, 3),
                "unwrap_s": round(t2 - t1, 3),
                "restore_s": round(t3 - t2, 3),
                "keys": len(m.store._keys),
                "rss_mib": round(st["VmRSS"], 1),
                "hwm_mib": round(st["VmHWM"], 1),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-bytes", type=int, default=128)
    p.add_argument("--overwrites", type=int, default=0, help="random single puts after the load")
    p.add_argument("--keep-revisions", type=int, default=10_000, help="compaction keeps this many revisions")
    p.add_argument("--fork", action="store_true", help="also time a forked child writing the snapshot file")
    p.add_argument("--restore-only", metavar="FILE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.restore_only:
        restore_child(args.restore_only)
        return
    t0 = time.perf_counter()
    m = build(args.keys, args.value_bytes, args.overwrites, args.keep_revisions)
    gc.collect()
    gc.freeze()
    built = proc_status()
    t1 = time.perf_counter()
    data = b"".join(wrap_snapshot({}, m.snapshot_parts()))
    t2 = time.perf_counter()
    print(
        f"built {args.keys:,} keys (+{args.overwrites:,} overwrites) in {t1 - t0:.1f} s, RSS {built['VmRSS']:.0f} MiB;"
        f" encode {t2 - t1:.2f} s, {len(data) / 2**20:.1f} MiB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.fork:
            fork_encode(m, Path(tmp) / "forked.snap")
        path = Path(tmp) / "snap"
        path.write_bytes(data)
        del data
        out = subprocess.run(
            [sys.executable, __file__, "--restore-only", str(path)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
    r = json.loads(out.stdout)
    print(
        f"restore in a fresh process: read {r['read_s']} s, unwrap {r['unwrap_s']} s, restore {r['restore_s']} s;"
        f" RSS {r['rss_mib']} MiB, peak {r['hwm_mib']} MiB ({r['keys']:,} keys)"
    )


if __name__ == "__main__":
    main()
