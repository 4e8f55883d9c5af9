"""Prediction throughput of the length predictor on 10,000 prompts (rows/s).

Trains on the vicuna-7b-v1.3 alpaca_eval responses (read from ../shared/data, never copied),
then times ``predict_lengths`` on prompts drawn with replacement from the 805 instructions,
without and (when the ``embed`` extra is installed) with sentence embeddings. The named baseline,
timed in the same run on the same prompts, is the prompt-length-only regression
(``LengthPredictor.baseline_lengths``), the cheapest predictor a scheduler could use.

Run: ``python bench/bench_predict.py [--n 10000] [--no-embeddings]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lapsd.predict.data import load_alpaca_eval, load_token_counter
from lapsd.predict.features import embeddings_available
from lapsd.predict.model import LengthPredictor
from lapsd.predict.train import train_predictor

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prompts_alpaca_eval"


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def bench(predictor: LengthPredictor, prompts: list[str], label: str) -> None:
    """Print the prediction rate of the model and of its baseline on ``prompts``."""
    model = _rate(lambda: predictor.predict_lengths(prompts), len(prompts))
    base = _rate(lambda: predictor.baseline_lengths(prompts), len(prompts))
    print(f"{label:<22} {model:>12,.0f} rows/s   length-only baseline {base:>12,.0f} rows/s   "
          f"ratio model/baseline {model / base:.3g}")


def main() -> None:
    """Train a predictor, then time it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--no-embeddings", action="store_true")
    args = parser.parse_args()
    counter, how = load_token_counter(None)
    data = load_alpaca_eval(DATA / "vicuna-7b-v1.3.json", counter, how)
    prompts = list(np.random.default_rng(0).choice(np.array(data.prompts, dtype=object), args.n))
    print(f"{args.n} prompts (mean {np.mean([len(p) for p in prompts]):.0f} chars); "
          f"trained on {len(data)} vicuna-7b-v1.3 responses")
    bench(train_predictor(data, cv_folds=0), prompts, "tf-idf + boosting")
    if args.no_embeddings:
        return
    if not embeddings_available():
        print("embeddings: skipped (install the 'embed' extra: pip install 'lapsd[embed]')")
        return
    bench(train_predictor(data, cv_folds=0, embeddings=True), prompts, "+ sentence embeddings")


if __name__ == "__main__":
    main()
