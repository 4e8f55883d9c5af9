"""One table of live-vs-replay results from ``lapsd validate --json`` files.

``lapsd validate`` compares one group of live runs (one workload) at a time; this joins its JSON
outputs into the table of ``bench/results/live_validation_h200.txt``, adding the utilisation each
live run really had (its busy time over the span from the first arrival to the last finish),
since a run's ``load`` is relative to a capacity estimated in a short warm-up.

Usage::

    python bench/live_summary.py VALIDATE_JSON [VALIDATE_JSON ...] --runs-root DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl


def utilisation(run_dir: Path) -> float:
    """Busy time over the run's span (first arrival to last finish).

    Busy: the steps' times (a round 0 holds its prefill) and the switches; a batched step counts
    once, not once per member.
    """
    req = pl.read_parquet(run_dir / "requests.parquet")
    sched = pl.read_parquet(run_dir / "schedule.parquet")
    if "step" in sched.columns:
        sched = sched.filter(pl.col("step").is_first_distinct())
    busy = float(sched["round_s"].sum()) + float(sched["switch_s"].sum())
    return busy / float(req["finish_s"].max() - req["arrival_s"].min())


def main(argv: list[str] | None = None) -> int:
    """Print the joined table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("validate_json", nargs="+", type=Path)
    ap.add_argument("--runs-root", type=Path, default=Path("."),
                    help="the folder the run paths in the JSON are relative to")
    args = ap.parse_args(argv)
    head = (f"{'run':<34} {'draft':<9} {'B':>2} {'load':>4} {'util':>5} {'n':>4} {'live mean':>9} "
            f"{'replay':>8} {'mean':>6} {'p90':>6} {'p99':>6} {'preempt l/r':>11} "
            f"{'sched%':>6}")
    print(head)
    print("-" * len(head))
    for path in args.validate_json:
        doc = json.loads(path.read_text())
        for r in doc["runs"]:
            run_dir = args.runs_root / r["run"]
            live = json.loads((run_dir / "live.json").read_text())
            sw, err = r["switches"], r["error"]
            print(f"{r['run']:<34} {live['collector']['draft']:<9} {live.get('batch_size', 1):>2} "
                  f"{live['workload']['offered_load']:>4} {utilisation(run_dir):>5.2f} "
                  f"{r['requests']:>4} {r['live']['mean']:>9.4f} {r['replay']['mean']:>8.4f} "
                  f"{err['mean']:>+6.1%} {err['p90']:>+6.1%} {err['p99']:>+6.1%} "
                  f"{sw['live_preemptions']:>5}/{sw['replay_preemptions']:<5} "
                  f"{r['scheduler']['overhead_ratio']:>6.2%}")
        rank = doc["ranking"]
        print(f"  ranking {'identical' if rank['same'] else 'DIFFERS'}: live "
              f"{' < '.join(x.split(' (')[0] for x in rank['live'])}; replay "
              f"{' < '.join(x.split(' (')[0] for x in rank['replay'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
