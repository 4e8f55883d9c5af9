r"""Replays to count under callgrind: instructions per replay, repeatable on a noisy machine.

Wall-clock ratios of a few per cent drown in this project's shared CPUs; callgrind's instruction
counts are the same run after run. Each replay (after a warm-up of every policy, so numba has
compiled) runs inside ``operator.call`` with the garbage collector off (its passes fall where
allocation counts cross its thresholds, which depends on everything run before: it moved one
policy's count by 2% between two warm-ups), and callgrind collects and dumps only there:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg --collect-atstart=no \
        --toggle-collect=_operator_call --dump-after=_operator_call \
        .venv/bin/python bench/replay_instructions.py [--n 10000] [POLICY ...]
    grep -h '^summary:' /tmp/cg.1 /tmp/cg.2 ...   # one dump per policy, in order

Run it in two checkouts (side by side: the counts do not depend on the load) to compare them.
"""

from __future__ import annotations

import argparse
import gc
import operator
from pathlib import Path

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.engine import simulate
from lapsd.replay.policies import available, create
from lapsd.replay.trace import read_trace
from lapsd.replay.workload import build_workload

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Warm every policy up, then replay each once inside ``operator.call``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policies", nargs="*", help="policies (default: all)")
    ap.add_argument("--trace", type=Path, default=ROOT / "examples" / "specbench-vicuna7b-eagle")
    ap.add_argument("--n", type=int, default=10_000, help="requests per replay")
    args = ap.parse_args()
    arrays = TraceArrays.from_trace(read_trace(args.trace))
    # The noisy oracle (sigma 0.5) only gives the length-aware policies predictions to time.
    workload = build_workload(f"poisson:load=0.9,n={args.n},seed=1", arrays, "oracle:sigma=0.5")
    policies = args.policies or available()
    for name in policies:
        simulate(arrays, workload, create(name, arrays.scale))
    for name in policies:
        policy = create(name, arrays.scale)
        gc.collect()
        gc.disable()
        operator.call(simulate, arrays, workload, policy)
        gc.enable()


if __name__ == "__main__":
    main()
