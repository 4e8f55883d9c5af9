"""Tuning throughput: trials per minute with 1 and 2 worker processes, measured in one run.

    .venv/bin/python bench/bench_tune.py [--trials 24] [--trace examples/specbench-vicuna7b-eagle]

Each measurement is a fresh study (journal storage in a temporary folder) with the default
suite, pruning on, and includes starting the worker processes. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import optuna

from lapsd.tune.context import TuneSpec, load_context
from lapsd.tune.study import StorageSpec, StudyJob, run_job

ROOT = Path(__file__).resolve().parents[1]


def measure(spec: TuneSpec, trials: int, workers: int) -> float:
    """Trials per minute of one study run to ``trials`` finished trials."""
    with tempfile.TemporaryDirectory() as tmp:
        job = StudyJob(spec, StorageSpec(str(Path(tmp) / "study.journal")), "bench", trials)
        start = time.perf_counter()
        run_job(job, workers)
        return trials / (time.perf_counter() - start) * 60


def main() -> None:
    """Time the trials with one and two workers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--trace", default=str(ROOT / "examples" / "specbench-vicuna7b-eagle"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = TuneSpec(traces=(args.trace,))
    load_context(spec)  # warm caches (numba, trace reading) before timing
    one = measure(spec, args.trials, 1)
    two = measure(spec, args.trials, 2)
    print(json.dumps({"cpus": os.cpu_count(), "trials": args.trials,
                      "trials_per_min": {"1": round(one, 1), "2": round(two, 1)},
                      "speedup_2_vs_1": round(two / one, 2)}, indent=2))


if __name__ == "__main__":
    main()
