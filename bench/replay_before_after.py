"""Replay speed before and after a change: two ``bench_replay.py --json`` runs side by side.

Both runs must time the same traces and workloads on the same machine, one after the other
(``taskset -c 0``). Prints, per trace, workload and policy, each run's simulated rounds per
second, their ratio, and the after run's speed against the plain reference simulator timed in
that same run; then the goal (every policy at least ``--goal`` M rounds/s on the Poisson
workloads).

    python bench/replay_before_after.py BEFORE.json AFTER.json [--goal 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    """Print the side-by-side table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--goal", type=float, default=5.0, help="M rounds/s every policy should reach")
    args = ap.parse_args()
    before = {(r["trace"], r["workload"], r["policy"]): r
              for r in json.loads(args.before.read_text())}
    after = json.loads(args.after.read_text())
    print(f"{'trace':27s} {'workload':33s} {'policy':16s} {'before':>8s} {'after':>8s} "
          f"{'after/before':>12s} {'after/reference':>15s}   (M rounds/s)")
    missed = []
    for r in after:
        b = before.get((r["trace"], r["workload"], r["policy"]))
        rate = r["rounds_per_s"] / 1e6
        old = "" if b is None else f"{b['rounds_per_s'] / 1e6:8.2f}"
        ratio = "" if b is None else f"{r['rounds_per_s'] / b['rounds_per_s']:11.2f}x"
        print(f"{r['trace']:27s} {r['workload']:33s} {r['policy']:16s} {old:>8s} {rate:8.2f} "
              f"{ratio:>12s} {r['speedup']:14.1f}x")
        if r["workload"].startswith("poisson") and rate < args.goal:
            missed.append(f"{r['trace']} {r['policy']} {rate:.2f}")
    batch = after[0].get("batch", 1) if after else 1
    print(f"\nbatch size {batch}, Poisson workloads, goal >= {args.goal:g} M rounds/s for every "
          f"policy: {'met' if not missed else 'missed by ' + '; '.join(missed)}")


if __name__ == "__main__":
    main()
