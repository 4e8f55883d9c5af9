"""Replay speed: simulated (request-)rounds per second on one core, per policy.

Baseline: the plain reference simulators of the tests (``tests/helpers``: round by round at
batch size one, a step at a time above), timed in the same run on a smaller sample (they are
slow) and compared per round. The script uses only lapsd's public replay API, so the same file
times an older checkout too (run it with that checkout's environment; see
``bench/replay_before_after.py``).

    python bench/bench_replay.py [--trace examples/specbench-vicuna7b-eagle] [--n 10000]
        [--batch 8 --cost bench/results/cost_table_h200_smollm2_ngram4_batch.json]

Above batch size one the Poisson load is relative to the capacity at that batch size (``B``
over the cost model's slowdown at ``B``), so that batches fill; the burst workload is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from sim_reference import reference_simulate  # noqa: E402
from spec_reference import make, spec_simulate_batched  # noqa: E402

from lapsd.replay.arrays import TraceArrays  # noqa: E402
from lapsd.replay.batch import simulate_batched  # noqa: E402
from lapsd.replay.costs import BatchCost  # noqa: E402
from lapsd.replay.engine import simulate  # noqa: E402
from lapsd.replay.policies import available, create  # noqa: E402
from lapsd.replay.trace import read_trace  # noqa: E402
from lapsd.replay.workload import build_workload  # noqa: E402


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
    ap.add_argument("--batch", type=int, default=1, help="requests per step")
    ap.add_argument("--cost", type=Path, help="the step-time model above batch size one "
                    "(a cost table with batch rows; default: no slowdown)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    traces = args.trace or [ROOT / "examples" / "specbench-vicuna7b-eagle",
                            ROOT / "examples" / "specbench-llama3-8b-eagle2"]
    cost = BatchCost.from_profile(args.cost) if args.cost else BatchCost()
    b = args.batch
    load = args.load * b / cost.factor(b)

    def fast(arrays, workload, name):
        policy = create(name, arrays.scale)
        if b == 1:
            return simulate(arrays, workload, policy)
        return simulate_batched(arrays, workload, policy, b, cost=cost)

    def reference(arrays, workload, name):
        policy = create(name, arrays.scale)
        if b == 1:
            return reference_simulate(arrays, workload, policy)
        params = getattr(policy, "params", None)
        resolved = {} if params is None else dataclasses.asdict(params)
        return spec_simulate_batched(arrays, workload, make(name, **resolved), b, cost.factor)

    rows = []
    for path in traces:
        arrays = TraceArrays.from_trace(read_trace(path))
        for wl in (f"poisson:load={load:.6g},n={args.n},seed=1", "burst:n=200,seed=1"):
            workload = build_workload(wl, arrays, "oracle:sigma=0.5")
            ref_wl = build_workload(wl.replace(f"n={args.n}", f"n={args.ref_n}"), arrays,
                                    "oracle:sigma=0.5")
            for name in available():
                result = fast(arrays, workload, name)
                t = best_of(lambda: fast(arrays, workload, name), args.repeat)  # noqa: B023
                rate = result.rounds / t
                ref_rounds = fast(arrays, ref_wl, name).rounds
                t_ref = best_of(lambda: reference(arrays, ref_wl, name), 1)  # noqa: B023
                ref_rate = ref_rounds / t_ref
                rows.append({"trace": path.name, "workload": workload.name, "policy": name,
                             "batch": b, "rounds": result.rounds, "decisions": result.decisions,
                             "seconds": t, "rounds_per_s": rate,
                             "reference_rounds_per_s": ref_rate, "speedup": rate / ref_rate})
                print(f"{path.name:28s} {workload.name:34s} {name:12s} B={b:<3d}"
                      f"{rate / 1e6:7.2f} M rounds/s  (reference {ref_rate / 1e6:5.3f} M/s, "
                      f"x{rate / ref_rate:6.1f}; {result.rounds / result.decisions:7.1f} "
                      "rounds/decision)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
