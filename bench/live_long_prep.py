"""What the long-output live runs (``bench/live_long.sh``) carry to the GPU: prompts and models.

Usage: ``python bench/live_long_prep.py COLLECTION PROMPTS TUNED OUT``

``COLLECTION`` is the long ``ngram:4`` collection with states, ``PROMPTS`` the prompt file it
was collected from (:mod:`long_prompts`), ``TUNED`` the work folder of
:mod:`policy_value_long` (its two tuning runs). Into ``OUT``:

``heldout.jsonl``
    The prompts ``lapsd tune`` holds out of this collection (its split by prompt, holdout 0.3,
    seed 0): the live workloads draw from them only, so no prompt served was tuned on.
``probe.skops``, ``predictor.skops``
    The probe and the prompt-only predictor trained on the *tuning* prompts (every prompt set:
    the deployment case, a server trained on its own earlier traffic), so the prompts served
    are unseen by both. Their scores on the held-out prompts are printed.
``config-probe.json``, ``config-prompt.json``
    The configs tuned on the tuning prompts with the probe's and the prompt-only beliefs.
``layers28-rest.jsonl``
    The shippable prompts (Spec-Bench, MT-bench: :mod:`long_examples`) that the cut-short
    ``layers:28`` collection (``--layers28``) had not reached.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
from long_examples import SHIPPED

from lapsd.predict.persist import save_predictor
from lapsd.predict.probe import evaluate_probe, fit_probe, load_state_data, save_probe
from lapsd.predict.train import fit_predictor
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.trace import read_trace
from lapsd.tune.split import split_by_prompt


def main() -> None:
    """Write the files (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("collection", type=Path)
    ap.add_argument("prompts", type=Path)
    ap.add_argument("tuned", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers28", type=Path, help="the cut-short layers:28 collection")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    arrays = TraceArrays.from_trace(read_trace(args.collection))
    tune_idx, held_idx = split_by_prompt(arrays, 0.3, 0)
    held = {arrays.request_ids[i] for i in held_idx.tolist()}
    lines = args.prompts.read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    (args.out / "heldout.jsonl").write_text(
        "".join(x + "\n" for x, r in zip(lines, rows, strict=True) if r["id"] in held))
    data = load_state_data([args.collection])
    assert data.request_ids == list(arrays.request_ids)
    train, test = data.subset(tune_idx), data.subset(held_idx)
    probe = fit_probe(train, seed=0)
    save_probe(probe, args.out / "probe.skops")
    predictor = fit_predictor(train.length_data(), seed=0, embeddings=False,
                              continuation=False, folds=5)
    save_predictor(predictor, args.out / "predictor.skops")
    scores = evaluate_probe(probe, test, (64,))
    print(f"{len(held)} held-out prompts, {tune_idx.size} tuning; probe on the held-out: "
          f"tau at admission {scores['admission']['kendall_tau']:.3f}, after 64 tokens "
          f"{scores['remaining'][64]['kendall_tau']:.3f}")
    for kind in ("probe", "prompt"):
        shutil.copyfile(args.tuned / f"tune-{kind}" / "lapsd-config.json",
                        args.out / f"config-{kind}.json")
    if args.layers28 is not None:
        done = set(pl.read_parquet(args.layers28 / "requests.parquet")["request_id"].to_list())
        rest = [x for x, r in zip(lines, rows, strict=True)
                if r["dataset"] in SHIPPED and r["id"] not in done]
        (args.out / "layers28-rest.jsonl").write_text("".join(x + "\n" for x in rest))
        print(f"layers:28: {len(rest)} shippable prompts still to collect")
    print(f"lengths of the held-out prompts: median "
          f"{np.median(test.output_tokens):.0f}, {int(test.censored.sum())} at the cap")


if __name__ == "__main__":
    main()
