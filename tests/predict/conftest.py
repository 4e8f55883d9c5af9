"""Fixtures of the predictor tests: small real data read from ../shared/data (never copied)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from lapsd.predict.data import LengthData, load_alpaca_eval, load_token_counter
from lapsd.predict.model import LengthPredictor
from lapsd.predict.train import train_predictor
from lapsd.replay.importers.specbench import import_specbench
from lapsd.replay.trace import make_trace, write_trace

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ALPACA = DATA / "prompts_alpaca_eval"
SPECBENCH = DATA / "specdec_specbench_vicuna7b_yukiki" / \
    "vicuna-7b-v1.3-eagle-float16-temperature-0.0.jsonl"
QUESTIONS = DATA / "specbench_questions" / "question.jsonl"

#: Small-model settings that keep each fit around a second.
FAST = {"n_components": 32, "max_iter": 80}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture(scope="session")
def vicuna() -> LengthData:
    """vicuna-7b-v1.3 alpaca_eval responses (805 prompts), tokens estimated from characters."""
    counter, how = load_token_counter(None)
    return load_alpaca_eval(_need(ALPACA / "vicuna-7b-v1.3.json"), counter, how)


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
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 requests of a Spec-Bench EAGLE trace with prompts (imported to a temp folder)."""
    trace, _ = import_specbench([_need(SPECBENCH)], _need(QUESTIONS))
    keep = trace.requests["request_id"][:150]
    small = make_trace(trace.requests.filter(pl.col("request_id").is_in(keep.implode())),
                       trace.rounds.filter(pl.col("request_id").is_in(keep.implode())),
                       trace.manifest)
    return write_trace(small, tmp_path_factory.mktemp("trace") / "eagle")
