"""Fixtures of the predictor tests: the repo's example traces, and small real data read from
../shared/data (never copied; tests that need it skip without it)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lapsd.predict.data import LengthData, load_alpaca_eval, load_token_counter
from lapsd.predict.model import LengthPredictor
from lapsd.predict.train import train_predictor
from lapsd.replay.trace import make_trace, read_trace, write_trace

ALPACA = "prompts_alpaca_eval"
SPECBENCH = "specdec_specbench_vicuna7b_yukiki/vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl"
QUESTIONS = "specbench_questions/question.jsonl"

#: Small-model settings that keep each fit around a second.
FAST = {"n_components": 32, "max_iter": 80}


@pytest.fixture(scope="session")
def vicuna(shared_data: Path) -> LengthData:
    """vicuna-7b-v1.3 alpaca_eval responses (805 prompts), tokens estimated from characters."""
    counter, how = load_token_counter(None)
    return load_alpaca_eval(shared_data / ALPACA / "vicuna-7b-v1.3.json", counter, how)


@pytest.fixture(scope="session")
def model_file(vicuna: LengthData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "vicuna.skops"
    train_predictor(vicuna.subset(range(300)), out, cv_folds=0, **FAST)
    return out


@pytest.fixture(scope="session")
def predictor(model_file: Path) -> LengthPredictor:
    from lapsd.predict.persist import load_predictor

    return load_predictor(model_file)


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    """150 requests of the example Spec-Bench EAGLE trace (with prompts), in a temp folder."""
    trace = read_trace(examples_dir / "specbench-vicuna7b-eagle")
    keep = trace.requests["request_id"][:150]
    small = make_trace(trace.requests.filter(pl.col("request_id").is_in(keep.implode())),
                       trace.rounds.filter(pl.col("request_id").is_in(keep.implode())),
                       trace.manifest)
    return write_trace(small, tmp_path_factory.mktemp("trace") / "eagle")
