"""The long-output live runs (``bench/live_long.sh``): measured, replayed, and predicted.

Usage::

    python bench/live_long_summary.py LIVE_DIR --probe PROBE.skops --json OUT.json --txt OUT.txt

``LIVE_DIR`` holds ``fcfs-load0.9`` and ``config-probe-load0.9`` (the probe's run). For each
run: its latency, the utilisation it really had (:func:`live_summary.utilisation`), the
scheduler's and the probe's share of its round time, and ``lapsd validate``'s replay of its own
rounds (a consistency check: for the probe's run, with the re-predictions its trace recorded).
Then a prediction: the probe's run replayed on the FCFS run's rounds (the same prompts on the
same GPU, whose round times hold no probe work), with the beliefs ``lapsd predict apply PROBE``
gives on the FCFS run's recorded states: what the config would have done with a probe of
negligible cost (one that takes 0.09 ms a call, as the compiled probe does on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from live_summary import utilisation

from lapsd.collect.validate import compare
from lapsd.predict.apply import apply_to_trace
from lapsd.replay.live_run import read_live

RUNS = ("fcfs-load0.9", "config-probe-load0.9")
#: Rounds after which a run's scheduler time is steady (its kernels' first-use compilation is
#: in the first rounds: up to 1.2 s a round before lapsd live compiled them ahead).
STEADY_AFTER = 100


def steady_share(schedule: pl.DataFrame) -> float:
    """Scheduler time over round time, rounds after :data:`STEADY_AFTER` (batch size one)."""
    late = schedule.slice(STEADY_AFTER)
    return float(late["scheduler_s"].sum()) / float(late["round_s"].sum())


def main() -> None:
    """Print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("live", type=Path)
    ap.add_argument("--probe", type=Path, required=True)
    ap.add_argument("--more", type=Path, nargs="*", default=[],
                    help="other runs to list (measured and replayed only), as NAME=DIR")
    ap.add_argument("--gpu-minutes", help="the device minutes the runs used, for the record")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--txt", type=Path)
    args = ap.parse_args()
    out: dict[str, dict[str, Any]] = {}
    more = dict(str(m).split("=", 1) for m in args.more)
    dirs = {**{name: args.live / name for name in RUNS},
            **{name: Path(path) for name, path in more.items()}}
    runs = {name: read_live(where) for name, where in dirs.items()}
    for name, where in dirs.items():
        run = runs[name]
        info = run.info
        own = compare(run)
        out[name] = {"gpu": info["collector"]["gpu"], "mean_s": own.live["mean"],
                     "p90_s": own.live["p90"], "utilisation": utilisation(where),
                     "requests": own.requests,
                     "scheduler_share": info["scheduler"]["overhead_ratio"],
                     "scheduler_share_steady": steady_share(run.schedule),
                     "probe": info.get("probe"), "preemptions": info["run"]["preemptions"],
                     "busy_s": {c: float(run.schedule[c].sum())
                                for c in ("round_s", "engine_s", "scheduler_s", "prefill_s")},
                     "replay_own_rounds_mean_s": own.replay["mean"],
                     "replay_own_rounds_error": own.error}
    with tempfile.TemporaryDirectory() as tmp:
        fcfs_trace = apply_to_trace(args.probe, args.live / RUNS[0] / "trace", Path(tmp) / "t")
        predicted = compare(runs[RUNS[1]], rounds_from=fcfs_trace)
    # FCFS on the probe run's rounds (probe work, arrival prefills and that run's engine times
    # in them): the probe run's schedule against FCFS on equal service, and the cost of the
    # probe run's extra round time at this load
    fcfs_on_probe = compare(runs[RUNS[0]], rounds_from=dirs[RUNS[1]] / "trace").replay["mean"]
    fcfs = out[RUNS[0]]["mean_s"]
    assert isinstance(fcfs, float)
    out["prediction"] = {"what": "config-probe's run replayed on fcfs's rounds, beliefs from "
                                 "predict apply on fcfs's states", "mean_s": predicted.replay[
                                     "mean"], "vs_live_fcfs": predicted.replay["mean"] / fcfs}
    out["equal_rounds"] = {
        "what": "fcfs replayed on config-probe's rounds and arrivals",
        "fcfs_mean_s": fcfs_on_probe, "fcfs_vs_live_fcfs": fcfs_on_probe / fcfs,
        "config_vs_fcfs": float(out[RUNS[1]]["replay_own_rounds_mean_s"]) / fcfs_on_probe}
    first = runs[RUNS[0]].info
    capacity = first["capacity"]
    reference = (f"a {capacity['warmup_requests']}-request warm-up"
                 if "warmup_requests" in capacity else
                 f"the {capacity['requests']} prompts' mean service in {capacity['source']}")
    lines = [f"lapsd live, {first['collector']['target']} {first['collector']['draft']} "
             f"k={first['collector']['k']}, max_new_tokens {first['collector']['max_new_tokens']}"
             f", batch size 1, {first['workload']['spec']} (nominal; capacity from "
             f"{reference}) over prompts held out of tuning; the probe and the config never "
             "saw them",
             f"{'run':<22} {'n':>4} {'GPU':<22} {'mean s':>7} {'p90 s':>7} {'util':>5} "
             f"{'sched %':>8} {'steady %':>8} {'probe %':>8} {'probe ms/call':>13} "
             f"{'replay err':>10}"]
    for name in dirs:
        r: dict[str, Any] = out[name]
        probe = r["probe"] or {}
        lines.append(
            f"{name:<22} {r['requests']:>4} {r['gpu']:<22} {r['mean_s']:>7.3f} "
            f"{r['p90_s']:>7.3f} {r['utilisation']:>5.2f} {100 * r['scheduler_share']:>8.2f} "
            f"{100 * r['scheduler_share_steady']:>8.2f} "
            f"{100 * probe.get('share_of_rounds', 0.0):>8.2f} "
            f"{1e3 * probe.get('per_call_mean_s', 0.0):>13.2f} "
            f"{100 * r['replay_own_rounds_error']['mean']:>+9.2f}%")
    for name in more:
        info = runs[name].info
        if info["workload"]["spec"] == first["workload"]["spec"] and not info.get("probe"):
            continue  # the same workload, no probe: nothing to add
        lines.append(f"{name}: workload {info['workload']['spec']} (not the 200-request one: "
                     "compare its shares, not its latency); its probe time includes compiling "
                     "the probe's numba kernels on first use (1.2 s on the development CPU), "
                     "which lapsd live now does before serving")
    p = out["prediction"]
    lines.append(f"steady %: scheduler time (probe included) over round time after the first "
                 f"{STEADY_AFTER} rounds")
    lines.append(f"predicted: the config with the probe on fcfs's rounds (no probe time): mean "
                 f"{p['mean_s']:.3f} s = {p['vs_live_fcfs']:.3f} x live fcfs")
    busy = "; ".join(f"{name} " + " ".join(f"{c.removesuffix('_s')} {v:.1f}"
                                           for c, v in out[name]["busy_s"].items())
                     for name in dirs)
    lines.append(f"busy seconds (round = engine + scheduler + arrival prefill + the rest): {busy}")
    e = out["equal_rounds"]
    lines.append(f"equal rounds (config-probe's, fcfs replayed on them): the config "
                 f"{e['config_vs_fcfs']:.3f} x fcfs; fcfs on them {e['fcfs_mean_s']:.3f} s = "
                 f"{e['fcfs_vs_live_fcfs']:.3f} x live fcfs (the probe run's longer rounds)")
    if args.gpu_minutes:
        lines.append(f"GPU minutes used: {args.gpu_minutes}")
        out["gpu_minutes"] = args.gpu_minutes
    text = "\n".join(lines)
    print(text)
    args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    if args.txt:
        args.txt.write_text(text + "\n")


if __name__ == "__main__":
    main()
