r"""What the hidden-state probe is worth to a scheduler, on prompts it never saw.

Issue 22, section 5, second goal, on a long-output collection recorded with ``--states``:

1. **Out-of-set predictions for every request.** Requests are grouped into prompt sets
   (:func:`bench_probe.prompt_set`). For each set, a probe (:func:`~lapsd.predict.probe.
   fit_probe`) and the prompt-only predictor (:func:`~lapsd.predict.train.fit_predictor`) are
   trained on the *other* sets (prompts shared with the set removed) and predict that set's
   requests: the probe at admission and, every ``g`` tokens, from the decode states
   (:func:`~lapsd.predict.apply.with_beliefs`); the prompt-only predictor at admission. So no
   prediction comes from a model that saw its prompt, or its prompt set. Two traces are
   written to ``--work``: ``probe`` (admission beliefs and the recorded re-predictions) and
   ``prompt`` (prompt-only admission beliefs), with the same requests and rounds.
2. **Tuning on the tuning prompts.** ``lapsd tune`` (:func:`~lapsd.tune.run.run_tune`) on each
   trace with ``--predictions column`` (the probe's with ``--recorded-updates``): its split by
   prompt holds 30% of the prompts out, its suite and family are the defaults.
3. **Held-out prompts, every policy.** On the held-out prompts of that split (the same requests
   for both traces), Poisson arrivals at load 0.9 of the capacity at batch size 1, and at batch
   size 8 with the measured step-time table (``--cost-table``) at loads of the capacity at 8;
   held-out seeds. Each predicted policy runs with the probe's beliefs (with and without its
   re-predictions) and with the prompt-only ones; every policy of a row group gets the same
   predictions. Reported: mean latency per policy, averaged over seeds, and ratios against
   FCFS and against prompt-only ``lp-srpt`` measured on the same arrivals.

Run (the trace's text may not be committed; ``--work`` is outside the repository)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/policy_value_long.py /work/data/long/m-coll-ngram4 \\
        --work /tmp/pv --json bench/results/policy_value_long_ngram4.json \\
        --txt bench/results/policy_value_long_ngram4.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_probe import prompt_set, set_folds

from lapsd.predict.apply import with_beliefs, with_predictions
from lapsd.predict.probe import (
    ProbeUpdates,
    StateData,
    fit_probe,
    load_state_data,
)
from lapsd.predict.train import fit_predictor
from lapsd.replay.config import scheduler_factory
from lapsd.replay.costs import BatchCost
from lapsd.replay.matrix import (
    PolicyFactory,
    Server,
    build_cases,
    registry_factories,
    replay_matrix,
)
from lapsd.replay.trace import read_trace, write_trace
from lapsd.replay.workload import WorkloadSpec, recorded_updates
from lapsd.tune.context import TuneSpec, load_context
from lapsd.tune.heldout import HELDOUT_SEEDS
from lapsd.tune.run import RunOptions, run_tune

#: Policies that do not read predictions (one row each).
BLIND = ("fcfs", "las", "mlfq")
#: Policies that read predictions (a row per prediction source).
PREDICTED = ("lp-srpt", "lp-sjf", "gittins", "laps-sd")


def out_of_set(data: StateData, sets: list[str], seed: int,
               ) -> tuple[np.ndarray, np.ndarray, list[ProbeUpdates], np.ndarray, np.ndarray]:
    """Per request: the probe's and the prompt-only predictor's log median and sigma.

    Each set is predicted by models trained on the others (its prompts removed from them);
    also the probe's decode-time re-predictions of every request.
    """
    n = len(data)
    probe_mu, probe_sigma = np.empty(n), np.empty(n)
    prompt_mu, prompt_sigma = np.empty(n), np.empty(n)
    updates: list[ProbeUpdates] = []
    for held, test, train, _ in set_folds(data, sets):
        start = time.perf_counter()
        fit, part = data.subset(train), data.subset(test)
        probe = fit_probe(fit, seed=seed)
        probe_mu[test], probe_sigma[test] = probe.log_beliefs(part)
        updates += probe.updates(part)
        predictor = fit_predictor(fit.length_data(), seed=seed, embeddings=False,
                                  continuation=False, folds=5)
        beliefs = predictor.predictions(part.prompts, cap=part.cap)
        prompt_mu[test] = np.log([b.median for b in beliefs])
        prompt_sigma[test] = [b.sigma for b in beliefs]
        print(f"  {held}: {test.size} requests, trained on {len(train)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return probe_mu, probe_sigma, updates, prompt_mu, prompt_sigma


def write_predicted(source: Path, dest: Path, ids: Sequence[str], mu: np.ndarray,
                    sigma: np.ndarray, updates: Sequence[ProbeUpdates] | None) -> None:
    """``source`` with these beliefs as its prediction columns (and re-predictions) at ``dest``."""
    trace = read_trace(source)
    order = {rid: i for i, rid in enumerate(ids)}
    at = np.array([order[r] for r in trace.requests["request_id"].cast(pl.Utf8).to_list()])
    requests = with_predictions(trace.requests, mu[at], sigma[at])
    rounds = trace.rounds.drop("belief_median", "belief_sigma", strict=False)
    if updates is not None:
        rounds = with_beliefs(rounds, updates)
    manifest = {k: v for k, v in trace.manifest.items() if k != "states"}  # states dropped
    manifest["predictions"] = {
        "model": "bench/policy_value_long.py: each prompt set predicted by a model trained on "
                 "the other sets", "updates": 0 if updates is None else int(
                     rounds.height - rounds["belief_median"].null_count())}
    write_trace(dataclasses.replace(trace, requests=requests, rounds=rounds, states=None,
                                    manifest=manifest), dest, overwrite=True)


def tune(trace: Path, out: Path, recorded: bool, trials: int, seed: int) -> dict[str, Any]:
    """``lapsd tune TRACE --predictions column [--recorded-updates]``; its summary."""
    spec = TuneSpec(traces=(str(trace),), predictions="column", recorded_updates=recorded,
                    seed=seed)
    result = run_tune(spec, RunOptions(out=out, n_trials=trials))
    print(f"  tuned {trace.name}: {result.exported}, {result.verdict} "
          f"({result.elapsed_s:.0f} s)", flush=True)
    return result.to_json()


def heldout_rows(probe_spec: TuneSpec, prompt_spec: TuneSpec, configs: dict[str, Path],
                 server: Server, loads: Sequence[float], n: int) -> list[dict[str, Any]]:
    """Every policy on the held-out prompts, per prediction source, at these loads."""
    probe_ctx, prompt_ctx = load_context(probe_spec), load_context(prompt_spec)
    (name, held), = probe_ctx.heldout_sets
    (_, held_prompt), = prompt_ctx.heldout_sets
    assert held.request_ids == held_prompt.request_ids  # one split: the same prompts
    scale = probe_ctx.scale
    workloads = [WorkloadSpec("poisson", n=n, load=rho, seed=s)
                 for rho in loads for s in HELDOUT_SEEDS]
    predicted = registry_factories(PREDICTED, scale)

    def tag(policies: dict[str, PolicyFactory], label: str) -> dict[str, PolicyFactory]:
        return {f"{p} [{label}]": f for p, f in policies.items()}

    groups: list[tuple[Any, Any, Any, dict[str, PolicyFactory]]] = [
        (held, None, None, registry_factories((*BLIND, "srpt-oracle"), scale)),
        (held, "column", recorded_updates,
         {**tag(predicted, "probe+updates"),
          "config [probe+updates]": scheduler_factory(configs["probe"])}),
        (held, "column", None, tag(predicted, "probe")),
        (held_prompt, "column", None,
         {**tag(predicted, "prompt-only"),
          "config [prompt-only]": scheduler_factory(configs["prompt"])}),
    ]
    rows = []
    for arrays, predictions, updates, policies in groups:
        cases = build_cases([(name, arrays)], workloads, predictions, updates)
        for row in replay_matrix(cases, policies, server=server):
            spec = row.case.workload.name
            rows.append({"batch": server.batch, "workload": spec, "policy": row.policy,
                         "mean_s": row.metrics.mean, "p90_s": row.metrics.p90,
                         "norm_mean": row.metrics.norm_mean,
                         "preemptions": row.result.preemptions})
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch size, load and policy: mean latency over seeds, ratios to two baselines.

    A ratio is the mean over seeds of the per-seed ratio (the same arrivals for both).
    """
    def key(r: dict[str, Any]) -> tuple[int, str]:
        spec = r["workload"]
        return r["batch"], spec.split(",seed=")[0]

    by: dict[tuple[int, str], dict[str, dict[str, float]]] = {}
    for r in rows:
        by.setdefault(key(r), {}).setdefault(r["policy"], {})[r["workload"]] = r["mean_s"]
    out = []
    for (batch, load), policies in by.items():
        fcfs, srpt = policies["fcfs"], policies["lp-srpt [prompt-only]"]
        for policy, means in policies.items():
            out.append({"batch": batch, "workload": load, "policy": policy,
                        "mean_s": float(np.mean(list(means.values()))),
                        "vs_fcfs": float(np.mean([means[w] / fcfs[w] for w in means])),
                        "vs_prompt_lp_srpt": float(np.mean([means[w] / srpt[w]
                                                            for w in means]))})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The plain-text table."""
    head = (f"{'B':>2} {'workload':<34} {'policy':<28} {'mean s':>8} {'x fcfs':>7} "
            f"{'x lp-srpt[prompt-only]':>23}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['batch']:>2} {r['workload']:<34} {r['policy']:<28} "
                     f"{r['mean_s']:>8.2f} {r['vs_fcfs']:>7.3f} {r['vs_prompt_lp_srpt']:>23.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Predict out of set, tune, compare on held-out prompts; print and write the results."""
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="trace folder collected with --states")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the predicted traces and tuning runs")
    parser.add_argument("--cost-table", type=Path, default=Path(__file__).parent / "results"
                        / "cost_table_h200_smollm2_ngram4_batch.json",
                        help="batched step-time table (collect-profile --batches)")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-loads", default="0.7,0.9",
                        help="loads at --batch, as fractions of the capacity there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--txt", type=Path)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    traces = {"probe": args.work / "probe", "prompt": args.work / "prompt"}
    data = load_state_data([args.trace])
    sets = [prompt_set(d, c) for d, c in zip(data.datasets, data.categories, strict=True)]
    if not all(t.exists() for t in traces.values()):
        print("predicting each prompt set from the others", flush=True)
        probe_mu, probe_sigma, updates, prompt_mu, prompt_sigma = out_of_set(data, sets,
                                                                             args.seed)
        write_predicted(args.trace, traces["probe"], data.request_ids, probe_mu, probe_sigma,
                        updates)
        write_predicted(args.trace, traces["prompt"], data.request_ids, prompt_mu,
                        prompt_sigma, None)
    print("tuning on the tuning prompts", flush=True)
    tuned = {k: tune(t, args.work / f"tune-{k}", k == "probe", args.trials, args.seed)
             for k, t in traces.items()}
    specs = {k: TuneSpec(traces=(str(t),), predictions="column",
                         recorded_updates=k == "probe", seed=args.seed)
             for k, t in traces.items()}
    configs = {k: Path(tuned[k]["config"]) for k in traces}
    n = load_context(specs["probe"]).heldout_sets[0][1].n_requests
    cost = BatchCost.from_profile(args.cost_table)
    capacity = args.batch / cost.factor(args.batch)
    batch_loads = [float(x) for x in args.batch_loads.split(",")]
    print(f"held-out prompts: {n} requests; batch size 1 and {args.batch} "
          f"(capacity {capacity:.2f}x batch size 1)", flush=True)
    rows = heldout_rows(specs["probe"], specs["prompt"], configs, Server(), [0.9], n)
    rows += heldout_rows(specs["probe"], specs["prompt"], configs,
                         Server(batch=args.batch, cost=cost),
                         [rho * capacity for rho in batch_loads], n)
    results = {"trace": str(args.trace), "n_requests": len(data), "heldout_requests": n,
               "sets": {s: sets.count(s) for s in sorted(set(sets))},
               "cost_table": str(args.cost_table), "batch": args.batch,
               "batch_loads_of_capacity": batch_loads, "capacity_at_batch": capacity,
               "tuned": {k: {f: v[f] for f in ("exported", "policy", "parameters", "verdict",
                                              "tuning_objective", "elapsed_s")}
                         for k, v in tuned.items()},
               "summary": summary(rows), "rows": rows}
    results["seconds"] = round(time.perf_counter() - start, 1)
    header = (f"{args.trace} ({len(data)} requests; collected on "
              f"{read_trace(args.trace).manifest['collector'].get('gpu')}), replayed on CPU. "
              "Predictions: each prompt set by a probe (and by the prompt-only predictor) "
              f"trained on the other sets; configs tuned on the tuning prompts; {n} held-out "
              f"requests, seeds {list(HELDOUT_SEEDS)}; batch {args.batch} step times from "
              f"{args.cost_table.name}. Ratios: mean over seeds of per-seed ratios.")
    text = header + "\n" + table(results["summary"])
    print(text)
    print(f"{results['seconds']} s")
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.txt:
        args.txt.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
