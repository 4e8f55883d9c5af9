"""Replay speed: simulated rounds per second on one core, per policy.

Baseline: the plain round-by-round reference simulator of the tests (``tests/helpers``), timed
in the same run on a smaller sample (it is slow) and compared per round.

    python bench/bench_replay.py [--trace examples/specbench-vicuna7b-eagle] [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from sim_reference import reference_simulate  # noqa: E402

from lapsd.replay.arrays import TraceArrays  # noqa: E402
from lapsd.replay.engine import simulate  # noqa: E402
from lapsd.replay.policies import available, create  # noqa: E402
from lapsd.replay.trace import read_trace  # noqa: E402
from lapsd.replay.workload import build_workload  # noqa: E402


def _fast(arrays, workload, name):
    return simulate(arrays, workload, create(name, arrays.scale))


def _reference(arrays, workload, name):
    return reference_simulate(arrays, workload, create(name, arrays.scale))


def best_of(fn, repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``fn``, seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    """Time every policy and the reference simulator; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", action="append", type=Path)
    ap.add_argument("--n", type=int, default=10_000, help="requests per replay")
    ap.add_argument("--ref-n", type=int, default=500, help="requests for the reference")
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    traces = args.trace or [ROOT / "examples" / "specbench-vicuna7b-eagle",
                            ROOT / "examples" / "specbench-llama3-8b-eagle2"]
    rows = []
    for path in traces:
        arrays = TraceArrays.from_trace(read_trace(path))
        for wl in (f"poisson:load={args.load},n={args.n},seed=1", "burst:n=200,seed=1"):
            workload = build_workload(wl, arrays, "oracle:sigma=0.5")
            ref_wl = build_workload(wl.replace(f"n={args.n}", f"n={args.ref_n}"), arrays,
                                    "oracle:sigma=0.5")
            for name in available():
                result = simulate(arrays, workload, create(name, arrays.scale))
                t = best_of(partial(_fast, arrays, workload, name), args.repeat)
                rate = result.rounds / t
                ref_rounds = simulate(arrays, ref_wl, create(name, arrays.scale)).rounds
                t_ref = best_of(partial(_reference, arrays, ref_wl, name), 1)
                ref_rate = ref_rounds / t_ref
                rows.append({"trace": path.name, "workload": workload.name, "policy": name,
                             "rounds": result.rounds, "decisions": result.decisions,
                             "seconds": t, "rounds_per_s": rate,
                             "reference_rounds_per_s": ref_rate, "speedup": rate / ref_rate})
                print(f"{path.name:28s} {workload.name:34s} {name:12s} "
                      f"{rate / 1e6:7.2f} M rounds/s  (reference {ref_rate / 1e6:5.3f} M/s, "
                      f"x{rate / ref_rate:6.1f}; {result.rounds / result.decisions:7.1f} "
                      "rounds/decision)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
