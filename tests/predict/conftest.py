"""Fixtures of the predictor tests: the repo's example traces, and small real data read from
../shared/data (never copied; tests that need it skip without it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest

from lapsd.predict.data import LengthData, load_alpaca_eval, load_token_counter
from lapsd.predict.model import LengthPredictor
from lapsd.predict.train import train_predictor
from lapsd.replay.importers.specbench import import_specbench
from lapsd.replay.trace import Trace, make_trace, read_trace, write_trace

ALPACA = "prompts_alpaca_eval"
SPECBENCH = "specdec_specbench_vicuna7b_yukiki/vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl"
QUESTIONS = "specbench_questions/question.jsonl"
MTBENCH = ("specdec_mtbench_medusa_official/medusa-vicuna-7b-v1.3-temperature-0.0-"
           "posterior_threshold-0.09-posterior_alpha-0.3.jsonl")
ECOMMERCE = ("specdec_ecommerce_bnukhkadiev/sentiment_analysis/model_answer/"
             "vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl")
#: Models of the pooled test predictor: a terse one and a verbose one.
POOLED = ("alpaca-7b", "vicuna-7b-v1.3")

#: Small-model settings that keep each fit around a second.
FAST = {"max_iter": 60, "inner_folds": 3, "offset_rounds": 1}


def _alpaca(shared: Path, model: str) -> LengthData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the characters-per-token estimate is announced
        counter, how = load_token_counter(None)
    return load_alpaca_eval(shared / ALPACA / f"{model}.json", counter, how)


@pytest.fixture(scope="session")
def vicuna(shared_data: Path) -> LengthData:
    """vicuna-7b-v1.3 alpaca_eval responses (805 prompts), tokens estimated from characters."""
    return _alpaca(shared_data, "vicuna-7b-v1.3")


@pytest.fixture(scope="session")
def pooled(shared_data: Path) -> LengthData:
    """The first 400 alpaca_eval prompts answered by the two :data:`POOLED` models."""
    return LengthData.concat([_alpaca(shared_data, m).subset(range(400)) for m in POOLED])


@pytest.fixture(scope="session")
def model_file(pooled: LengthData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "pooled.skops"
    train_predictor(pooled, out, target_model="vicuna-7b-v1.3", cv_folds=3, **FAST)
    return out


@pytest.fixture(scope="session")
def predictor(model_file: Path) -> LengthPredictor:
    from lapsd.predict.persist import load_predictor

    return load_predictor(model_file)


@pytest.fixture(scope="session")
def eagle_trace(shared_data: Path) -> Trace:
    """The Spec-Bench EAGLE answers imported with their text (estimated per-round offsets)."""
    trace, _ = import_specbench([shared_data / SPECBENCH], shared_data / QUESTIONS,
                                target_model="vicuna-7b-v1.3")
    return trace


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    """150 requests of the example Spec-Bench EAGLE trace (with prompts), in a temp folder."""
    trace = read_trace(examples_dir / "specbench-vicuna7b-eagle")
    keep = trace.requests["request_id"][:150]
    small = make_trace(trace.requests.filter(pl.col("request_id").is_in(keep.implode())),
                       trace.rounds.filter(pl.col("request_id").is_in(keep.implode())),
                       trace.manifest)
    return write_trace(small, tmp_path_factory.mktemp("trace") / "eagle")
