"""The length predictor on prompt sets it never saw: ranking, coverage, re-prediction, speed.

Four parts, each beside a baseline measured in the same run:

1. ``cross``: train on one prompt set, evaluate on another (alpaca_eval, Spec-Bench answers,
   MT-bench answers, e-commerce tasks; read from ../shared/data, never copied). Training
   prompts that are also evaluated are removed first (MT-bench's 80 questions are inside
   Spec-Bench) and counted. Kendall tau, Spearman, MAE, p90 and 80%-interval coverage per
   evaluated target model, beside the training-mean and prompt-length baselines and, where the
   evaluated model is Vicuna-7B, *before*: the predictor of commit c55ec1f (TF-IDF + SVD +
   quantile boosting, trained on vicuna-7b alpaca_eval answers only), loaded from git history
   (``git show``, nothing checked out).
2. ``repredict``: tau and MAE of the *remaining* length at g = 0, 64, 128, 256 tokens on unseen
   prompt sets, re-predicted from the text so far against the prompt-only belief conditioned
   on L > g.
3. ``replay``: lp-srpt and LAPS-SD (default parameters) over srpt-oracle on
   examples/specbench-vicuna7b-eagle (its answers re-imported with their text from the shared
   Spec-Bench file: the same 560 requests) and examples/smollm2-layers-28 (no text: re-predicted
   from prompt and g), on the held-out 30% of prompts of lapsd.tune.split.split_by_prompt
   (holdout 0.3, seed 0), Poisson loads 0.5/0.7/0.9 (n=1000) and bursts 10/30/50, two seeds
   each; predictors: before, (a) alpaca_eval all models pooled (replayed prompts removed from
   training), (b) the same trace's tuning split (fit_on_arrays), each without and with
   re-prediction every 4 and 16 rounds.
4. ``speed``: prompts/s of the predictor (one core) against the prompt-length regression, and
   the cost of one re-prediction.

Run: ``OMP_NUM_THREADS=1 python bench/bench_predict.py [--parts cross,repredict,replay,speed]
[--out bench/results/predict_cpu.txt]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.predict.apply import predictor_source, update_source
from lapsd.predict.data import LengthData, load_data
from lapsd.predict.evaluate import cross_dataset, remaining_metrics, unseen_training
from lapsd.predict.features import embeddings_available
from lapsd.predict.metrics import metrics
from lapsd.predict.model import LengthPredictor
from lapsd.predict.train import fit_on_arrays, fit_predictor
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.importers.specbench import import_specbench
from lapsd.replay.matrix import Case, registry_factories, replay_matrix
from lapsd.replay.trace import read_trace
from lapsd.replay.workload import build_workload
from lapsd.tune.split import split_by_prompt

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BEFORE_COMMIT = "c55ec1f"
SB_QUESTIONS = DATA / "specbench_questions" / "question.jsonl"
SB_VICUNA = DATA / "specdec_specbench_vicuna7b_yukiki" / \
    "vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl"
SB_LLAMA3 = DATA / "specdec_specbench_llama3_8b_eagle2_calispec" / \
    "llama-3-8b-instruct-eagle2-topk1-total7-float16-temp-0.0.jsonl"
MT_VICUNA = DATA / "specdec_mtbench_medusa_official" / \
    "medusa-vicuna-7b-v1.3-temperature-0.0-posterior_threshold-0.09-posterior_alpha-0.3.jsonl"
MT_LLAMA2 = DATA / "specdec_mtbench_eagle_official_llama2_70b" / \
    "llama-2-chat-70b-fp16-ea-in-temperature-0.0.jsonl"
ECOM = DATA / "specdec_ecommerce_bnukhkadiev"
WORKLOADS = [f"poisson:load={x},n=1000,seed={s}" for x in (0.5, 0.7, 0.9) for s in (0, 1)] + \
    [f"burst:n={n},seed={s}" for n in (10, 30, 50) for s in (0, 1)]
_Z90 = 1.2815515655446004


def load_sets() -> dict[str, LengthData]:
    """The four prompt sets, with their target models named consistently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the characters-per-token estimate of alpaca_eval
        alpaca = load_data([DATA / "prompts_alpaca_eval"])
        vicuna = load_data([SB_VICUNA], questions=SB_QUESTIONS)
        # CALISPEC's Llama-3 answers carry a Vicuna model_id (../shared/data/README.md).
        llama3 = load_data([SB_LLAMA3], questions=SB_QUESTIONS).with_models(
            {"vicuna-7b-v1.3": "Meta-Llama-3-8B-Instruct"})
        mt = load_data([MT_VICUNA, MT_LLAMA2], questions=MT_VICUNA.parent /
                       "mt_bench_question.jsonl")
        ecom = load_data(sorted(ECOM.glob("*/model_answer/vicuna-7b-v1.3-eagle*.jsonl")))
    return {"alpaca_eval": alpaca.with_set("alpaca_eval"),
            "spec_bench": LengthData.concat([vicuna, llama3]).with_set("spec_bench"),
            "mt_bench": mt.with_set("mt_bench"), "ecommerce": ecom.with_set("ecommerce")}


def before_predictor(train: LengthData) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """Commit c55ec1f's predictor (loaded from git history), fitted on ``train``: p50, p90."""
    folder = Path(tempfile.mkdtemp(prefix="lapsd-before-"))
    package = folder / "lapsd_before"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("features", "model"):
        source = subprocess.run(["git", "-C", str(ROOT), "show",
                                 f"{BEFORE_COMMIT}:predict/{name}.py"], check=True,
                                capture_output=True, text=True).stdout
        (package / f"{name}.py").write_text(
            source.replace("lapsd.predict.features", "lapsd_before.features"))
    sys.path.insert(0, str(folder))
    spec = importlib.util.find_spec("lapsd_before.model")
    assert spec is not None
    old = importlib.import_module("lapsd_before.model")
    y = old.log_target(train.output_tokens)
    frame = old.to_frame(train.prompts, train.categories)
    pipeline = old.build_pipeline().fit(frame, y)

    def predict(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        q = np.exp(pipeline[-1].predict_quantiles(pipeline[:-1].transform(old.to_frame(prompts))))
        return np.maximum(q[:, 0], 1.0), np.maximum(q[:, -1], 1.0)

    return predict


def _row(label: str, m: dict[str, Any]) -> str:
    def f(key: str, fmt: str) -> str:
        v = m.get(key)
        return f"{'-':>7}" if v is None else format(v, fmt)

    return (f"  {label:<34} {f('kendall_tau', '7.3f')} {f('spearman', '7.3f')} "
            f"{f('mae_tokens', '7.1f')} {f('p90_coverage', '7.3f')} {f('coverage_80', '7.3f')}")


def part_cross(sets: dict[str, LengthData], before: Any) -> dict[str, LengthPredictor]:
    """Cross-dataset table; returns the predictors trained (by training set)."""
    pairs = {"alpaca_eval": ["spec_bench", "mt_bench", "ecommerce"],
             "spec_bench": ["alpaca_eval", "mt_bench", "ecommerce"],
             "mt_bench": ["alpaca_eval", "ecommerce"]}
    print("\n== cross: train on one prompt set (all its target models pooled), evaluate on "
          "another; prompts of the evaluated set removed from training")
    print(f"  {'system':<34} {'tau':>7} {'spearm':>7} {'MAE':>7} {'p90cov':>7} {'80%cov':>7}")
    trained: dict[str, LengthPredictor] = {}
    taus: list[float] = []
    for train_name, targets in pairs.items():
        for eval_name in targets:
            start = time.perf_counter()
            res, predictor = cross_dataset(sets[train_name], sets[eval_name], cap=1024.0)
            trained.setdefault(train_name, predictor)
            print(f"{train_name} -> {eval_name}: trained on {res['n_train']} examples "
                  f"({res['dropped_seen']} dropped: prompt also evaluated), "
                  f"{time.perf_counter() - start:.0f} s")
            for model, r in res["per_model"].items():
                print(f" {model} (n={r['model']['n']:.0f}, calibration {r['calibration']})")
                print(_row("model", r["model"]))
                taus.append(float(r["model"]["kendall_tau"] or 0.0))
                print(_row("training mean", r["mean"]))
                print(_row("prompt-length regression", r["length"]))
                if before is not None and model == "vicuna-7b-v1.3" \
                        and train_name == "alpaca_eval":
                    part = sets[eval_name].for_model(model)
                    p50, p90 = before(part.prompts)
                    print(_row("before (c55ec1f, vicuna only)",
                               metrics(part.output_tokens, np.minimum(p50, 1024.0),
                                       np.minimum(p90, 1024.0))))
    print(f"mean Kendall tau over the {len(taus)} (pair, model) rows: {np.mean(taus):.3f}")
    return trained


def part_repredict(sets: dict[str, LengthData], predictor: LengthPredictor) -> None:
    """Remaining-length ranking and error after g tokens, on sets the predictor never saw."""
    print("\n== repredict: remaining length L - g of requests with L > g; predictor trained "
          "on alpaca_eval (texts cut in proportion to tokens); prompt-only = the prompt belief's "
          "E[L - g | L > g]")
    for name in ("spec_bench", "mt_bench", "ecommerce"):
        for model in sets[name].models:
            part = sets[name].for_model(model)
            kept, _ = unseen_training(part, sets["alpaca_eval"].prompts)
            res = remaining_metrics(predictor, kept, (0, 64, 128, 256),
                                    model if model in predictor.calibration.offsets else None,
                                    1024.0)
            for g, r in res.items():
                a, b = r["prompt_only"], r["repredicted"]
                print(f"  {name}/{model} g={g:<4} n={a['n']:<5.0f} tau {a['kendall_tau']:.3f} "
                      f"-> {b['kendall_tau']:.3f}   MAE {a['mae_tokens']:7.1f} -> "
                      f"{b['mae_tokens']:7.1f}")


def _traces() -> dict[str, TraceArrays]:
    eagle, _ = import_specbench([SB_VICUNA], SB_QUESTIONS, target_model="vicuna-7b-v1.3", k=5)
    return {"specbench-vicuna7b-eagle (+text)": TraceArrays.from_trace(eagle),
            "smollm2-layers-28": TraceArrays.from_trace(
                read_trace(ROOT / "examples" / "smollm2-layers-28"))}


def _before_source(before: Any) -> Callable[[TraceArrays, np.ndarray], list[LengthPrediction]]:
    def source(arrays: TraceArrays, index: np.ndarray) -> list[LengthPrediction]:
        p50, p90 = before([arrays.prompts[i] for i in index])
        return [LengthPrediction.from_quantiles(a, b, arrays.max_new_tokens)
                for a, b in zip(p50, p90, strict=True)]

    return source


def part_replay(sets: dict[str, LengthData], before: Any) -> None:
    """lp-srpt and laps-sd over srpt-oracle with each predictor, on held-out prompts."""
    print("\n== replay: mean latency over srpt-oracle's on the held-out 30% of prompts "
          "(split_by_prompt holdout 0.3 seed 0); mean over 2 seeds; free switches")
    factories = registry_factories(["lp-srpt", "laps-sd", "fcfs"])
    for trace_name, arrays in _traces().items():
        tune_idx, held_idx = split_by_prompt(arrays, 0.3, 0)
        held = arrays.subset(held_idx)
        replayed = [p for p in arrays.prompts if p is not None]
        pooled, dropped = unseen_training(sets["alpaca_eval"], replayed)
        start = time.perf_counter()
        alpaca = fit_predictor(pooled)
        own = fit_on_arrays([arrays], indices=[tune_idx])
        print(f"{trace_name}: {held.n_requests} held-out requests; (a) alpaca_eval pooled, "
              f"{len(pooled)} examples ({dropped} dropped: prompt in the trace); (b) tuning "
              f"split, {tune_idx.size} requests, re-predictor "
              f"{'yes' if own.continuation is not None else 'no (no text)'}; trained in "
              f"{time.perf_counter() - start:.0f} s")
        configs: dict[str, tuple[Any, Any]] = {"before": (_before_source(before), None)}
        for label, predictor in (("(a) alpaca", alpaca), ("(b) own split", own)):
            configs[label] = (predictor_source(predictor), None)
            if predictor.continuation is not None:
                for every in (4, 16):
                    configs[f"{label} +N={every}"] = (predictor_source(predictor),
                                                      update_source(predictor, every))
        header = "  ".join(f"{w.split(',seed')[0].replace(',n=1000', ''):>17}"
                           for w in WORKLOADS[::2])
        print(f"  {'predictor / policy':<28} {header}")
        for label, (pred, upd) in configs.items():
            ratios: dict[tuple[str, str], list[float]] = {}
            for wl in WORKLOADS:
                case = Case(trace_name, held, build_workload(wl, held, pred, upd))
                for row in replay_matrix([case], factories):
                    key = (row.policy, wl.split(",seed")[0])
                    ratios.setdefault(key, []).append(float(row.metrics.norm_mean or math.nan))
            for policy in ("lp-srpt", "laps-sd", "fcfs"):
                if policy == "fcfs" and label != "before":
                    continue
                cells = "  ".join(f"{np.mean(ratios[(policy, w.split(',seed')[0])]):>17.3f}"
                                  for w in WORKLOADS[::2])
                print(f"  {label + ' ' + policy:<28} {cells}")


def part_speed(sets: dict[str, LengthData], predictor: LengthPredictor, n: int) -> None:
    """Prediction throughput and re-prediction cost (one core when OMP_NUM_THREADS=1)."""
    rng = np.random.default_rng(0)
    pool = np.array(sets["alpaca_eval"].prompts[:805] + sets["spec_bench"].prompts, dtype=object)
    prompts = [str(p) for p in rng.choice(pool, n)]
    # distinct texts, so no prompt is featurised only once and reused
    prompts = [f"{p} ({i})" for i, p in enumerate(prompts)]
    for label, fn in (("predictor", lambda: predictor.predictions(prompts)),
                      ("prompt-length regression", lambda: predictor.baseline_lengths(prompts))):
        start = time.perf_counter()
        fn()
        rate = n / (time.perf_counter() - start)
        print(f"  {label:<26} {rate:>10,.0f} prompts/s")
    eagle, _ = import_specbench([SB_VICUNA], SB_QUESTIONS, target_model="vicuna-7b-v1.3", k=5)
    arrays = TraceArrays.from_trace(eagle)
    index = np.arange(arrays.n_requests)
    for every in (4, 16):
        source = update_source(predictor, every)
        start = time.perf_counter()
        updates = source(arrays, index)
        seconds = time.perf_counter() - start
        count = sum(len(u) for u in updates)
        print(f"  re-prediction every {every:>2} rounds: {count} updates for {index.size} "
              f"requests in {seconds:.2f} s: {1e6 * seconds / count:.0f} µs per update, "
              f"{1e3 * seconds / index.size:.2f} ms per request (all its updates)")


def main() -> None:
    """Run the chosen parts; print (and with ``--out`` also save) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="cross,repredict,replay,speed")
    parser.add_argument("--n", type=int, default=10_000, help="prompts timed in speed")
    parser.add_argument("--out", type=Path, help="also write the output to this file")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    buffer = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            sys.__stdout__.write(text)
            sys.__stdout__.flush()
            return buffer.write(text)

    with redirect_stdout(Tee()):
        print(f"$ OMP_NUM_THREADS=1 python bench/bench_predict.py --parts {args.parts}")
        print(f"embeddings: {'on' if embeddings_available() else 'off (no embed extra)'}")
        sets = load_sets()
        for name, d in sets.items():
            print(f"{name}: {len(d)} examples, {len(set(d.prompts))} prompts, models "
                  f"{d.models}, tokens {d.token_count}")
        before = before_predictor(sets["alpaca_eval"].for_model("vicuna-7b-v1.3"))
        trained = part_cross(sets, before) if "cross" in parts else {}
        alpaca = trained.get("alpaca_eval") or fit_predictor(sets["alpaca_eval"])
        if "repredict" in parts:
            part_repredict(sets, alpaca)
        if "replay" in parts:
            part_replay(sets, before)
        if "speed" in parts:
            print("\n== speed")
            part_speed(sets, alpaca, args.n)
    if args.out:
        args.out.write_text(buffer.getvalue())


if __name__ == "__main__":
    main()
